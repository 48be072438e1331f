//! Hostile clients: slow headers are cut off, a flood of idle connections is bounded, and the
//! server keeps answering reviews throughout.

mod common;

use std::time::{Duration, Instant};

use common::{pod_bearing_objects, Client, Review};
use prodguard::certs::pki;
use prodguard::server::{tls, Limits};
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

/// A review on a new connection is answered (allowed false) in less than `within`, though
/// `behind` holds the server's slots; a wait of 5 s (the webhooks' timeout) fails outright.
async fn answered_within(addr: std::net::SocketAddr, ca: &str, within: Duration, behind: &str) {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), one_review(addr, ca))
        .await
        .unwrap_or_else(|_| panic!("the review waited behind {behind}"));
    assert!(
        started.elapsed() < within,
        "{:?} behind {behind}",
        started.elapsed()
    );
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
    answered_within(
        addr,
        &ca,
        Duration::from_secs(3),
        "connections that sent nothing",
    )
    .await;
    for mut idler in idlers {
        assert!(
            closed_within(&mut idler, Duration::from_secs(2)).await,
            "an idle connection was left open"
        );
    }
}

/// A Pod with `n` containers that all lack a pull policy: its answer carries a patch of `n`
/// operations.
fn pod_with_containers(n: usize) -> serde_json::Value {
    let containers: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "registry.local/app:1"}))
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "many", "namespace": "openg2p"},
        "spec": {"containers": containers}
    })
}

fn http1_post(path: &str, body: &[u8], declared: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// TLS on an open `tcp` (a socket the test shaped), trusting `ca`, offering `alpn`.
async fn tls_to(
    ca: &str,
    alpn: &[u8],
    tcp: TcpStream,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    common::connector(ca, &[alpn])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    // Two keep-alive connections, each after one review: idle (for up to 100 s by default).
    let mut first = Client::connect_to(addr, &ca, "localhost").await;
    let review = Review::create(pod_bearing_objects("nginx", 1).remove(1).0).json();
    first.review("validate", &review).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = Client::connect_to(addr, &ca, "localhost").await;
    second.review("validate", &review).await;
    // A third connection is answered at once: the one idle longest gave its slot up. (Without
    // eviction it waits for the 100 s idle timeout.)
    answered_within(
        addr,
        &ca,
        Duration::from_secs(2),
        "idle keep-alive connections",
    )
    .await;
    assert!(
        first.is_closed(),
        "the longest-idle connection is the one closed"
    );
    assert!(!second.is_closed(), "the newer idle connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_the_keep_alive_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tls_to(&ca, b"h2", tcp).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let review = Review::create(pod_bearing_objects("nginx", 1).remove(1).0).json();
    let request = hyper::Request::builder()
        .method("POST")
        .uri("https://localhost/validate")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            serde_json::to_vec(&review).unwrap(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // Now idle: the server sends GOAWAY and closes after the timeout (hyper's own HTTP/1.1
    // header timeout does not cover HTTP/2).
    let started = Instant::now();
    // Within the keep-alive time and a margin: not at the 5 s first-request deadline.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("an idle HTTP/2 connection was held open")
        .unwrap()
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_tricklers_get_408_and_free_their_slots() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let bodies = prodguard::http::BodyLimits {
        read_timeout: Duration::from_millis(500),
        ..prodguard::http::BodyLimits::default()
    };
    let names = vec!["localhost".to_string()];
    let pki = pki::generate("limits CA", &names).unwrap();
    let config = tls::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), "c", "k").unwrap();
    let addr = common::serve_default_with(config, limits, bodies).await;
    let ca = pki.ca_cert_pem;
    // Both slots taken by requests whose bodies come one byte every 100 ms.
    let mut tricklers = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls_to(&ca, b"http/1.1", tcp).await;
        tls.write_all(&http1_post("/validate", b"", 1000))
            .await
            .unwrap();
        tls.flush().await.unwrap();
        tricklers.push(tokio::spawn(async move {
            let mut answer = Vec::new();
            for _ in 0..100 {
                if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut buf = [0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(1), tls.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    answer.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A review on a new connection is answered once the tricklers are cut off.
    answered_within(addr, &ca, Duration::from_secs(3), "body tricklers").await;
    for trickler in tricklers {
        let answer = trickler.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("the body did not arrive within 500ms"),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    let limits = Limits {
        max_connections: 1,
        write_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    // A small receive buffer, 64 pipelined reviews with 2,000-operation patches (about 12 MB
    // of answers), and nothing read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let tls = tls_to(&ca, b"http/1.1", tcp).await;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let review = serde_json::to_vec(&Review::create(pod_with_containers(2000)).json()).unwrap();
    let writes = tokio::spawn(async move {
        for _ in 0..64 {
            if writer
                .write_all(&http1_post("/mutate", &review, review.len()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = writer.flush().await;
        writer
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only slot is the non-reader's; a review on a new connection is answered once the
    // stalled write times out.
    answered_within(
        addr,
        &ca,
        Duration::from_secs(3),
        "a client that does not read",
    )
    .await;
    // What the non-reader can still read ends well before its 64 answers.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed");
    assert!(
        received < 32 * 190_000,
        "{received} bytes: the answers kept coming"
    );
    writes.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_slot() {
    let limits = Limits {
        max_connections: 16,
        max_connections_per_peer: 2,
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    // 127.0.0.1 holds its two connections with requests in progress (bodies still due).
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls_to(&ca, b"http/1.1", tcp).await;
        tls.write_all(&http1_post("/validate", b"{", 1000))
            .await
            .unwrap();
        tls.flush().await.unwrap();
        held.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third from the same address is refused at once...
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "a peer over its cap was admitted"
    );
    // ...while another peer is served.
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut client = Client::connect_from(Some(other), addr, &ca, "localhost").await;
    let review = Review::create(pod_bearing_objects("nginx", 1).remove(1).0).json();
    assert_eq!(client.review("validate", &review).await["allowed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_does_not_delay_a_review() {
    // The default 10 s handshake timeout: only the bound on handshakes in progress helps.
    let limits = Limits {
        max_handshakes: 8,
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a ClientHello, and no more.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        flood.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    answered_within(addr, &ca, Duration::from_secs(2), "unfinished handshakes").await;
    // The oldest handshakes were dropped, not held for the timeout.
    let mut closed = 0;
    for tcp in flood.iter_mut().take(20) {
        if closed_within(tcp, Duration::from_millis(100)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 10,
        "only {closed} of the 20 oldest handshakes were dropped"
    );
}

/// An UPDATE review of exactly `size` bytes: a Deployment and its old version, each with an
/// annotation of `<` characters as the API server writes them (`\u003c`, six bytes each).
fn escaped_update_of_size(size: usize) -> Vec<u8> {
    let mut object = pod_bearing_objects("nginx", 1).remove(1).0;
    object["metadata"]["annotations"] = serde_json::json!({"note": "PAD_NEW"});
    // Scaled down from 3 to 1: min-replicas judges the change.
    let mut old = object.clone();
    old["metadata"]["annotations"]["note"] = serde_json::json!("PAD_OLD");
    old["spec"]["replicas"] = serde_json::json!(3);
    let review = Review::create(object)
        .set("operation", serde_json::json!("UPDATE"))
        .set("oldObject", old)
        .json();
    let text = serde_json::to_string(&review).unwrap();
    let room = size - (text.len() - "PAD_NEW".len() - "PAD_OLD".len());
    let pad = |bytes: usize| format!("{}{}", "\\u003c".repeat(bytes / 6), "a".repeat(bytes % 6));
    let body = text
        .replace("PAD_NEW", &pad(room / 2))
        .replace("PAD_OLD", &pad(room - room / 2));
    assert_eq!(body.len(), size);
    body.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_legitimate_review_is_judged_and_one_byte_more_is_refused() {
    use prodguard::http::{ETCD_MAX_REQUEST_BYTES, MAX_BODY_BYTES, MAX_ESCAPE};
    // The limit is derived: two objects at etcd's limit, every byte escaped, and an envelope.
    assert_eq!(
        MAX_BODY_BYTES,
        2 * ETCD_MAX_REQUEST_BYTES * MAX_ESCAPE + 64 * 1024
    );
    let (addr, ca) = start(Limits::default()).await;
    let mut client = Client::connect_to(addr, &ca, "localhost").await;
    let (status, body) = client
        .send(
            hyper::Method::POST,
            "/validate",
            escaped_update_of_size(MAX_BODY_BYTES),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // Judged: a Deployment of one replica is denied by min-replicas.
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(
        common::message(&answer["response"]).contains("min-replicas"),
        "{answer}"
    );
    // One byte more is refused from its Content-Length, before the body is read.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tls_to(&ca, b"http/1.1", tcp).await;
    tls.write_all(&http1_post("/validate", b"", MAX_BODY_BYTES + 1))
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut answer))
        .await
        .expect("an answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("the body is larger than 18939904 bytes"),
        "{answer}"
    );
}

/// A client that sends the whole of a body above the limit reads the 413: the rest of the body
/// is read and thrown away beside the answer, so the connection is not reset under it (curl and
/// Python's http.client saw a reset when the server closed with the body unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_the_whole_body_above_the_limit_reads_the_413() {
    use prodguard::http::MAX_BODY_BYTES;
    let (addr, ca) = start(Limits::default()).await;
    for (declared, sent) in [
        // Refused from its Content-Length, sent anyway.
        (MAX_BODY_BYTES + 1, MAX_BODY_BYTES + 1),
        // Refused as it arrives: chunked, no length declared.
        (0, MAX_BODY_BYTES + 64 * 1024),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_to(&ca, b"http/1.1", tcp).await;
        let (mut reader, mut writer) = tokio::io::split(tls);
        let sender = tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            if declared > 0 {
                writer
                    .write_all(&http1_post("/validate", b"", declared))
                    .await?;
                let mut left = sent;
                while left > 0 {
                    let n = left.min(chunk.len());
                    writer.write_all(&chunk[..n]).await?;
                    left -= n;
                }
            } else {
                writer
                    .write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await?;
                let mut left = sent;
                while left > 0 {
                    let n = left.min(chunk.len());
                    writer.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    writer.write_all(&chunk[..n]).await?;
                    writer.write_all(b"\r\n").await?;
                    left -= n;
                }
                writer.write_all(b"0\r\n\r\n").await?;
            }
            writer.flush().await?;
            Ok::<_, std::io::Error>(writer)
        });
        // The sender finishes the whole body: nothing reset the connection under it.
        let writer = tokio::time::timeout(Duration::from_secs(20), sender)
            .await
            .expect("the body is sent within 20 s")
            .unwrap();
        assert!(
            writer.is_ok(),
            "declared {declared}: sending the body failed: {writer:?}"
        );
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buffer = [0u8; 4096];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        answer.extend_from_slice(&buffer[..n]);
                        if answer.windows(4).any(|w| w == b"}\r\n\r" || w == b"413}") {
                            return Ok(());
                        }
                        if String::from_utf8_lossy(&answer).contains("\"code\":413") {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("the answer within 10 s");
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "declared {declared}: {read:?} after {text:?}");
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "declared {declared}: {text}"
        );
        assert!(text.contains("\"code\":413"), "declared {declared}: {text}");
    }
}

/// A node behind SNAT is one address: connections of it that finished TLS and never sent a
/// request are the first to make room for a new one, so a real review from the same address is
/// answered at once rather than refused or kept waiting for their first-request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_connections_without_a_request_make_room_for_its_review() {
    let limits = Limits {
        max_connections: 64,
        max_connections_per_peer: 4,
        // Far beyond the review's wait: only making room can answer it in time.
        first_request_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (addr, ca) = start(limits).await;
    let mut silent = Vec::new();
    for alpn in [&b"http/1.1"[..], b"http/1.1", b"h2", b"h2"] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        silent.push(tls_to(&ca, alpn, tcp).await);
    }
    // Younger ones might be a real client's with its request on the way; these have stalled.
    tokio::time::sleep(prodguard::server::STALLED + Duration::from_millis(100)).await;
    answered_within(
        addr,
        &ca,
        Duration::from_secs(2),
        "its own connections that sent nothing",
    )
    .await;
    // The oldest silent one made room.
    assert!(
        closed_within(&mut silent[0], Duration::from_secs(2)).await,
        "the oldest connection without a request was left open"
    );
}
