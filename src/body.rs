//! Reading HTTP bodies frame by frame: review bodies (within their limits, `http`) and the
//! audit's list pages (`audit`).

use std::pin::Pin;

use http_body::{Body, Frame};
use hyper::body::Bytes;

/// The body's next frame; `None` at its end.
pub async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// The whole body: its data frames (trailers are skipped), a single frame without a copy.
pub async fn collect<B>(mut body: B) -> Result<Bytes, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut buffer = Vec::new();
    while let Some(frame) = next_frame(&mut body).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match first.take() {
            None if buffer.is_empty() => first = Some(data),
            None => buffer.extend_from_slice(&data),
            Some(kept) => {
                buffer.extend_from_slice(&kept);
                buffer.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buffer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the frames given, and trailers at the end.
    struct Frames(Vec<&'static [u8]>, bool);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0.is_empty() {
                let trailers = std::mem::take(&mut self.1);
                return std::task::Poll::Ready(
                    trailers.then(|| Ok(Frame::trailers(Default::default()))),
                );
            }
            let data = self.0.remove(0);
            std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(data)))))
        }
    }

    #[tokio::test]
    async fn collects_data_frames_and_skips_trailers() {
        assert_eq!(collect(Frames(vec![], true)).await.unwrap(), "");
        let one = collect(Frames(vec![b"{\"a\":1}"], true)).await.unwrap();
        assert_eq!(one, "{\"a\":1}");
        let three = collect(Frames(vec![b"{\"a\"", b":", b"1}"], false))
            .await
            .unwrap();
        assert_eq!(three, "{\"a\":1}");
    }
}
