//! The axum router: `POST /mutate`, `POST /validate`, `GET /healthz`, `GET /readyz`.
//! [`app`] builds it from the state, so tests can drive it without a socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

pub mod metrics_auth;

use crate::admission::{self, Decoded};
use crate::engine::{Engine, Verdict};
use crate::report::metrics::{
    kind_label, FindingLabels, Metrics, PolicyLabels, RequestLabels, WebhookLabels,
};
use crate::unit::Webhook;

/// The largest review body accepted; larger ones get 413. It fits the largest legitimate
/// review: an UPDATE carries the object and its old version, each at most etcd's request
/// limit (1.5 MiB) as stored, and the API server writes `<`, `>` and `&` as `\u003c` (six
/// bytes for one); 64 KiB more hold the review's envelope (user, groups, options). The API
/// server's own 3 MiB cap is on what a client sends it, not on what it sends a webhook.
pub const MAX_BODY_BYTES: usize = 2 * ETCD_MAX_REQUEST_BYTES * MAX_ESCAPE + 64 * 1024;
/// etcd's default `--max-request-bytes`, the largest object the API server can store.
pub const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The most bytes the API server's JSON encoding writes for one byte of a stored object.
pub const MAX_ESCAPE: usize = 6;

/// The default of [`BodyLimits::in_flight_bytes`].
pub const DEFAULT_BYTES_IN_FLIGHT: usize = 40 * 1024 * 1024;
/// Reviews decoded at once: what decoding builds is held against the in-flight budget only
/// once it is done, so at most this many times [`crate::view::MAX_KEPT_BYTES`] (for
/// each of the object, its old version and a retry that explains an error) is ever built
/// beyond the budget, whatever the number of cores.
pub const DECODE_SLOTS: usize = 2;
/// The least in-flight budget: the largest body and twice what its objects may build.
pub const MIN_BYTES_IN_FLIGHT: usize = MAX_BODY_BYTES + 4 * crate::view::MAX_KEPT_BYTES;

/// Memory that admission may hold with a budget of `in_flight` bytes: the budget, and what
/// decodes in progress build beyond it. The background audit plans around it.
pub fn admission_memory(in_flight: usize) -> u64 {
    (in_flight + DECODE_SLOTS * 3 * crate::view::MAX_KEPT_BYTES) as u64
}

/// Bounds on the review bodies being read and evaluated.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The largest body; see [`MAX_BODY_BYTES`].
    pub max_bytes: usize,
    /// How long a body has to arrive, from its request's headers (kube-apiserver sends it at
    /// once; a body trickled slowly is cut off).
    pub read_timeout: Duration,
    /// The memory all reviews hold at once, from the first byte read to the answer sent: each
    /// body, and twice the estimate of what decoding built from it (the objects, and the
    /// findings and patches made from them). A review that does not fit waits (within its
    /// read timeout) and is then refused with 503.
    pub in_flight_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_bytes: MAX_BODY_BYTES,
            read_timeout: Duration::from_secs(10),
            in_flight_bytes: DEFAULT_BYTES_IN_FLIGHT,
        }
    }
}

/// The body budget: [`BodyLimits`] and the bytes still free.
struct Bodies {
    limits: BodyLimits,
    free: Arc<Semaphore>,
    /// See [`DECODE_SLOTS`].
    decoding: Semaphore,
}

impl Bodies {
    /// Takes `bytes` of the budget, waiting for room until `deadline`; 503 after it.
    async fn reserve(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Option<OwnedSemaphorePermit>, Response> {
        if bytes == 0 {
            return Ok(None);
        }
        let permits = u32::try_from(bytes.min(self.limits.in_flight_bytes)).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(deadline, self.free.clone().acquire_many_owned(permits)).await
        {
            Ok(Ok(share)) => Ok(Some(share)),
            _ => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "prodguard holds {} bytes of reviews in flight (--max-bytes-in-flight); this one waited {:?} for room",
                    self.limits.in_flight_bytes, self.limits.read_timeout
                ),
            )),
        }
    }

    fn new(limits: BodyLimits) -> Bodies {
        let budget = limits
            .in_flight_bytes
            .clamp(MIN_BYTES_IN_FLIGHT, Semaphore::MAX_PERMITS);
        Bodies {
            limits: BodyLimits {
                in_flight_bytes: budget,
                ..limits
            },
            free: Arc::new(Semaphore::new(budget)),
            decoding: Semaphore::new(DECODE_SLOTS),
        }
    }
}

pub struct AppState {
    /// The policies in force; replaced whole when the configuration is reloaded.
    engine: RwLock<Arc<Engine>>,
    /// True until shutdown begins (SIGTERM): `/readyz` then fails, and the background audit
    /// hands its Lease back and stops.
    pub serving: Arc<AtomicBool>,
    /// With `--manage-certs`: false until the certificate served is one the webhooks' CA
    /// bundle trusts (`/readyz` then fails).
    pub certificate_ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    bodies: Bodies,
    /// With `--client-ca`: who may have a review answered (set once, before serving).
    pub clients: std::sync::OnceLock<crate::server::clients::ClientPolicy>,
}

impl AppState {
    pub fn new(engine: Engine) -> Arc<AppState> {
        AppState::with_metrics(engine, Arc::new(Metrics::new()))
    }

    pub fn with_metrics(engine: Engine, metrics: Arc<Metrics>) -> Arc<AppState> {
        AppState::with_limits(engine, metrics, BodyLimits::default())
    }

    /// With explicit bounds on the review bodies (`serve`'s flags).
    pub fn with_limits(engine: Engine, metrics: Arc<Metrics>, bodies: BodyLimits) -> Arc<AppState> {
        Arc::new(AppState {
            engine: RwLock::new(Arc::new(engine)),
            serving: Arc::new(AtomicBool::new(true)),
            certificate_ready: AtomicBool::new(true),
            metrics,
            bodies: Bodies::new(bodies),
            clients: std::sync::OnceLock::new(),
        })
    }

    /// The engine reviews are evaluated with now.
    pub fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(engine) => engine.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a new engine in force for the next reviews; reviews in flight finish with theirs.
    pub fn replace_engine(&self, engine: Engine) {
        match self.engine.write() {
            Ok(mut current) => *current = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
    }
}

/// The metrics router: `GET /metrics`, to anyone or (with `auth`) to an authorized token.
pub fn metrics_app(metrics: Arc<Metrics>, auth: Option<Arc<metrics_auth::MetricsAuth>>) -> Router {
    Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let metrics = metrics.clone();
            let auth = auth.clone();
            async move {
                if let Some(auth) = auth {
                    if let Some(refused) = auth.check(&headers).await {
                        return refused;
                    }
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
                    .into_response()
            }
        }),
    )
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            close_while_draining,
        ))
        .with_state(state)
}

/// From SIGTERM on, each HTTP/1.1 answer says `Connection: close`, so that the client closes
/// its kept-alive connection itself after the answer and opens the next one where the Service
/// sends it. Closing an idle kept-alive connection from this side, once the delay is over,
/// races a request the client may be writing on it at that moment, and the API server does not
/// retry a POST that was lost so (a failed write with failurePolicy Fail). HTTP/2 clients get a
/// GOAWAY when the listener closes instead.
async fn close_while_draining(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = next.run(request).await;
    if http1 && !state.serving.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.serving.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !state.certificate_ready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the certificate served is not yet in the webhooks' CA bundle",
        )
            .into_response()
    } else {
        "ok".into_response()
    }
}

async fn mutate(state: State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    review(state, Webhook::Mutate, request).await
}

async fn validate(state: State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    review(state, Webhook::Validate, request).await
}

/// A body read whole, and its share of the in-flight budget (given back when dropped).
struct Body {
    bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

/// One share of the in-flight budget holding both.
fn merged(
    share: Option<OwnedSemaphorePermit>,
    more: Option<OwnedSemaphorePermit>,
) -> Option<OwnedSemaphorePermit> {
    match (share, more) {
        (Some(mut share), Some(more)) => {
            share.merge(more);
            Some(share)
        }
        (share, more) => share.or(more),
    }
}

/// Reads a request's body within [`BodyLimits`]: its size, its read timeout and the in-flight
/// budget. A declared length is reserved before the first byte is read, so that bodies never
/// wait for each other half-read; a chunked body reserves as it grows.
async fn read_body(bodies: &Bodies, request: axum::extract::Request) -> Result<Body, Response> {
    let limits = bodies.limits;
    let max = limits.max_bytes;
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the body is larger than {max} bytes, the largest review (an UPDATE of two objects at etcd's 1.5 MiB limit, escaped)"
            ),
        )
    };
    let declared = match request.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(length) => Some(length),
            None => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "the Content-Length header is not a number",
                ))
            }
        },
    };
    if declared.is_some_and(|length| length > max) {
        discard_rest(request.into_body(), max, limits.read_timeout);
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    let mut share = bodies.reserve(declared.unwrap_or(0), deadline).await?;
    let mut reserved = declared.unwrap_or(0);
    // The first chunk is kept as it came (a body in one frame is not copied); a second one
    // starts a buffer.
    let mut first: Option<Bytes> = None;
    let mut buffer: Vec<u8> = Vec::new();
    let mut length = 0usize;
    let mut body = request.into_body();
    loop {
        let frame =
            match tokio::time::timeout_at(deadline, crate::body::next_frame(&mut body)).await {
                Err(_) => {
                    return Err(json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!(
                            "the body did not arrive within {:?} (--body-read-timeout)",
                            limits.read_timeout
                        ),
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the body: {e}"),
                    ))
                }
                Ok(Some(Ok(frame))) => frame,
            };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        length += data.len();
        if length > max {
            discard_rest(body, max, limits.read_timeout);
            return Err(too_large());
        }
        if length > reserved {
            // More than declared (hyper refuses that) or chunked: reserve at least 64 KiB more.
            let more = (length - reserved).max(64 * 1024).min(max - reserved);
            let added = bodies.reserve(more, deadline).await?;
            share = merged(share, added);
            reserved += more;
        }
        match first.take() {
            None if buffer.is_empty() => first = Some(data),
            None => buffer.extend_from_slice(&data),
            Some(kept) => {
                buffer.reserve_exact(declared.unwrap_or(length).max(length));
                buffer.extend_from_slice(&kept);
                buffer.extend_from_slice(&data);
            }
        }
    }
    let bytes = match first {
        Some(kept) => kept,
        None => Bytes::from(buffer),
    };
    Ok(Body {
        bytes,
        _share: share,
    })
}

/// How much of a refused body is read and thrown away, at most, so that its sender sees the 413:
/// a connection closed with unread data in it is reset, and a reset loses the answer the client
/// has not read yet (curl and Python's http.client report the reset, not the 413).
const DISCARD_FACTOR: usize = 2;

/// Reads and discards what is left of a refused body (at most [`DISCARD_FACTOR`] times `max`
/// bytes, within `timeout`), beside the 413 answer: nothing is kept, and the connection closes
/// cleanly once the sender is done (or is cut off at either bound).
fn discard_rest(mut body: axum::body::Body, max: usize, timeout: Duration) {
    tokio::spawn(async move {
        let mut left = max.saturating_mul(DISCARD_FACTOR);
        let deadline = tokio::time::Instant::now() + timeout;
        while left > 0 {
            match tokio::time::timeout_at(deadline, crate::body::next_frame(&mut body)).await {
                Ok(Some(Ok(frame))) => {
                    left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len));
                }
                _ => break,
            }
        }
    });
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "code": status.as_u16()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_body(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn review(
    State(state): State<Arc<AppState>>,
    webhook: Webhook,
    request: axum::extract::Request,
) -> Response {
    // With --client-ca, only the API server's certificate gets a review read, before any of
    // its body is.
    if let Some(clients) = state.clients.get() {
        let identity = request
            .extensions()
            .get::<Arc<crate::server::clients::ClientIdentity>>();
        if let Err(refusal) = clients.check(identity.map(|i| &**i)) {
            tracing::debug!(
                reason = refusal.as_str(),
                names = ?identity.map(|i| &i.names),
                "refused a caller of /{}",
                webhook.as_str()
            );
            return json_error(
                StatusCode::FORBIDDEN,
                match refusal {
                    crate::server::clients::Refusal::NoCertificate => {
                        "a client certificate is required (--client-ca): only the API server may call this endpoint"
                    }
                    _ => "the client certificate's name is not in --client-subjects: only the API server may call this endpoint",
                },
            );
        }
    }
    let body = match read_body(&state.bodies, request).await {
        Ok(body) => body,
        Err(refused) => {
            tracing::debug!(status = %refused.status(), "body refused");
            return refused;
        }
    };
    let started = Instant::now();
    let metrics = &state.metrics;
    let count = |operation: &'static str, kind: &'static str, verdict: &'static str| {
        metrics
            .requests
            .get_or_create(&RequestLabels {
                webhook: webhook.as_str(),
                operation,
                kind,
                verdict,
            })
            .inc();
    };
    let decoded = {
        // The semaphore is never closed.
        let _slot = state.bodies.decoding.acquire().await;
        let _ = crate::view::take_kept();
        admission::decode(&body.bytes)
    };
    // What decoding built is held until the answer is sent: its share of the budget, twice its
    // estimate (the objects, and the findings and patches made from them).
    let built = crate::view::take_kept();
    let deadline = tokio::time::Instant::now() + state.bodies.limits.read_timeout;
    let _built_share = match state.bodies.reserve(2 * built, deadline).await {
        Ok(share) => share,
        Err(busy) => {
            tracing::debug!(built, "no room for a decoded review");
            return busy;
        }
    };
    let encoded = match decoded {
        Err(e) => {
            tracing::debug!(webhook = webhook.as_str(), "not a review: {e}");
            count("", "", "invalid");
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        Ok(Decoded::Malformed { uid, message }) => {
            tracing::debug!(%uid, webhook = webhook.as_str(), "malformed request: {message}");
            count("", "", "malformed");
            admission::encode_malformed(&uid, &message)
        }
        Ok(Decoded::Request(request)) => {
            let view = request.as_request();
            let span = tracing::debug_span!(
                "review",
                webhook = webhook.as_str(),
                uid = view.uid,
                kind = view.kind,
                namespace = view.namespace,
                name = view.object_name(),
                operation = ?view.operation,
                user = view.username,
            );
            async {
                let verdict = state.engine().review(webhook, &view).await;
                let operation = view.operation_name();
                match &verdict {
                    Verdict::Decided(d) => {
                        tracing::debug!(
                            allowed = d.allowed,
                            patch_ops = d.patch.len(),
                            warnings = d.warnings.len(),
                            "reviewed"
                        );
                        let label = if !d.allowed {
                            "denied"
                        } else if !d.patch.is_empty() {
                            "patched"
                        } else {
                            "allowed"
                        };
                        count(operation, kind_label(view.kind), label);
                        for item in &d.reports {
                            metrics
                                .findings
                                .get_or_create(&FindingLabels {
                                    policy: item.policy,
                                    action: item.action.as_str(),
                                    source: "admission",
                                })
                                .inc();
                            if item.action == crate::engine::Action::Excepted {
                                metrics
                                    .exceptions_applied
                                    .get_or_create(&PolicyLabels {
                                        policy: item.policy,
                                    })
                                    .inc();
                            }
                        }
                    }
                    Verdict::Malformed(m) => {
                        tracing::debug!("malformed object: {m}");
                        count(operation, kind_label(view.kind), "malformed");
                    }
                }
                admission::encode_verdict(&request.uid, &verdict)
            }
            .instrument(span)
            .await
        }
    };
    metrics
        .latency
        .get_or_create(&WebhookLabels {
            webhook: webhook.as_str(),
        })
        .observe(started.elapsed().as_secs_f64());
    match encoded {
        Ok(body) => json_body(body),
        Err(e) => {
            tracing::error!("cannot encode a response: {e}");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the response",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(read_timeout: Duration) -> Bodies {
        Bodies::new(BodyLimits {
            read_timeout,
            in_flight_bytes: MIN_BYTES_IN_FLIGHT,
            ..BodyLimits::default()
        })
    }

    #[tokio::test]
    async fn a_review_that_does_not_fit_waits_then_gets_503() {
        let bodies = bodies(Duration::from_millis(200));
        let soon = || tokio::time::Instant::now() + Duration::from_millis(200);
        let first = bodies.reserve(MAX_BODY_BYTES, soon()).await.unwrap();
        assert!(first.is_some());
        // The rest of the budget is less than another largest body.
        let refused = bodies.reserve(MAX_BODY_BYTES, soon()).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        // It waits for room, and gets it when the first is done.
        let waiting = bodies.reserve(
            MAX_BODY_BYTES,
            tokio::time::Instant::now() + Duration::from_secs(5),
        );
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(waiting, release);
        assert!(second.unwrap().is_some());
        // Nothing to hold takes nothing.
        assert!(bodies.reserve(0, soon()).await.unwrap().is_none());
    }

    #[test]
    fn the_budget_is_never_below_the_largest_review() {
        let small = Bodies::new(BodyLimits {
            in_flight_bytes: 1,
            ..BodyLimits::default()
        });
        assert_eq!(small.limits.in_flight_bytes, MIN_BYTES_IN_FLIGHT);
        assert!(admission_memory(DEFAULT_BYTES_IN_FLIGHT) <= 64 * 1024 * 1024);
    }

    /// What the least budget protects: the largest body, and then what decoding its object and
    /// old object may build, held twice, fit at once, without waiting; not a byte more.
    #[tokio::test]
    async fn the_least_budget_holds_the_largest_review_and_what_it_builds() {
        let bodies = bodies(Duration::from_millis(1));
        let now = tokio::time::Instant::now();
        let body = bodies.reserve(MAX_BODY_BYTES, now).await.unwrap();
        // Each of the object and its old version builds at most MAX_KEPT_BYTES, held twice.
        let built = 2 * (2 * crate::view::MAX_KEPT_BYTES);
        let decoded = bodies.reserve(built, now).await.unwrap();
        assert!(body.is_some() && decoded.is_some());
        let more = bodies.reserve(1, now).await.unwrap_err();
        assert_eq!(more.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
