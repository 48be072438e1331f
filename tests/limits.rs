//! Hostile clients: slow headers are cut off, a flood of idle connections is bounded, and the
//! server keeps answering reviews throughout.

mod common;

use std::time::{Duration, Instant};

use common::{pod_bearing_objects, Client, Review};
use prodguard::server::{pki, tls, Limits};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: Limits) -> (std::net::SocketAddr, String) {
    let names = vec!["localhost".to_string()];
    let pki = pki::generate("limits CA", &names).unwrap();
    let config = tls::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), "c", "k").unwrap();
    (common::serve_default(config, limits).await, pki.ca_cert_pem)
}

/// Whether the server closes `stream` within `limit` (what it sends meanwhile is read and
/// dropped).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn one_review(addr: std::net::SocketAddr, ca: &str) {
    let mut client = Client::connect_to(addr, ca, "localhost").await;
    let review = Review::create(pod_bearing_objects("nginx", 1).remove(1).0).json();
    let response = client.review("validate", &review).await;
    assert_eq!(response["allowed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_headers_slowly_is_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = common::connector(&ca, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    // ...and nothing more: the server closes the connection.
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)).await,
        "the slow client was not cut off"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // Everyone else is still served.
    one_review(addr, &ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_is_bounded_and_reviews_still_pass() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        max_connections: 16,
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    // Connections that never start TLS.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), one_review(addr, &ca))
        .await
        .expect("a review got through while 300 idle connections were open");
    // At most 16 are held at a time, each for the handshake timeout: the flood drains.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // The idle connections were closed by the server.
    let mut closed = 0;
    for mut socket in idle.drain(..64) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed > 0, "the server holds idle connections for ever");
    one_review(addr, &ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_request_lose_their_slots_to_a_review() {
    let limits = Limits {
        max_connections: 4,
        first_request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    // Every slot taken by a connection that finished its TLS handshake and then sent nothing,
    // or only "P", the start of the HTTP/2 preface.
    let mut idlers = Vec::new();
    for (alpn, sends) in [
        (&b"http/1.1"[..], &b""[..]),
        (&b"http/1.1"[..], &b""[..]),
        (&b"h2"[..], &b""[..]),
        (&b"h2"[..], &b"P"[..]),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = common::connector(&ca, &[alpn])
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(sends).await.unwrap();
        tls.flush().await.unwrap();
        idlers.push(tls);
    }
    // A review on a new connection is answered well within the webhooks' 5 s timeout: the
    // idlers are closed after their first-request timeout, which frees the slots. (With the
    // timeout at 30 s this fails: the review waits behind them.)
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), one_review(addr, &ca))
        .await
        .expect("the review waited behind connections that sent nothing");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for mut idler in idlers {
        assert!(
            closed_within(&mut idler, Duration::from_secs(2)).await,
            "an idle connection was left open"
        );
    }
}
