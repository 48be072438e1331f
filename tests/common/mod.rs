//! Test harness: starts the real server on 127.0.0.1:0 with rcgen certificates and talks to
//! it over TLS, verifying its certificate, as the API server does.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prodguard::certs::pki;
use prodguard::cluster::Snapshot;
use prodguard::engine::Engine;
use prodguard::http::{app, AppState};
use prodguard::policies::Config;
use prodguard::report::{MemoryReporter, Report};
use prodguard::server::{self, tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

pub struct TestServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub reporter: Arc<MemoryReporter>,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts prodguard with `config` and a Pod lookup that knows `pods`.
pub async fn start(config: Config, pods: Vec<String>) -> TestServer {
    start_with(
        config,
        Snapshot {
            pods,
            ..Snapshot::default()
        },
    )
    .await
}

/// Starts prodguard with `config`, answering cluster lookups from `cluster`.
pub async fn start_with(config: Config, cluster: Snapshot) -> TestServer {
    start_with_exceptions(
        config,
        cluster,
        prodguard::exceptions::Exceptions::fixed(Default::default()),
    )
    .await
}

/// Starts prodguard with `config`, lookups answered from `cluster`, and `exceptions`.
pub async fn start_with_exceptions(
    config: Config,
    cluster: Snapshot,
    exceptions: Arc<prodguard::exceptions::Exceptions>,
) -> TestServer {
    start_engine(config, cluster, exceptions, false).await
}

/// The default policy set, reporting patches too (`serve --patch-events`).
pub async fn start_reporting_patches() -> TestServer {
    start_engine(
        Config::embedded_default().expect("default config"),
        Snapshot::default(),
        prodguard::exceptions::Exceptions::fixed(Default::default()),
        true,
    )
    .await
}

async fn start_engine(
    config: Config,
    cluster: Snapshot,
    exceptions: Arc<prodguard::exceptions::Exceptions>,
    patch_reports: bool,
) -> TestServer {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let pki = pki::generate("test CA", &names).expect("certificates");
    let tls = tls::from_pem(
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
        "cert",
        "key",
    )
    .expect("tls config");
    let reporter = Arc::new(MemoryReporter::default());
    let engine = Engine::new(&config, Arc::new(cluster), reporter.clone())
        .with_exceptions(exceptions)
        .with_patch_reports(patch_reports);
    let state = AppState::new(engine);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let router = app(state.clone());
    tokio::spawn(server::serve(listener, tls, router, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        ca_pem: pki.ca_cert_pem,
        reporter,
        state,
        stop: Some(stop),
    }
}

/// Serves the embedded default policy set over `tls` with `limits` on 127.0.0.1:0, with no
/// reporting; for tests of the transport rather than the policies.
pub async fn serve_default(
    tls: Arc<rustls::ServerConfig>,
    limits: server::Limits,
) -> std::net::SocketAddr {
    serve_default_with(tls, limits, prodguard::http::BodyLimits::default()).await
}

/// [`serve_default`] with explicit body limits.
pub async fn serve_default_with(
    tls: Arc<rustls::ServerConfig>,
    limits: server::Limits,
    bodies: prodguard::http::BodyLimits,
) -> std::net::SocketAddr {
    let engine = Engine::new(
        &Config::embedded_default().expect("default config"),
        Arc::new(Snapshot::default()),
        Arc::new(prodguard::report::NoReporter),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve_with(
        listener,
        tls,
        app(AppState::with_limits(
            engine,
            Arc::new(prodguard::report::metrics::Metrics::new()),
            bodies,
        )),
        limits,
        std::future::pending(),
    ));
    addr
}

pub async fn start_default() -> TestServer {
    start(
        Config::embedded_default().expect("default config"),
        Vec::new(),
    )
    .await
}

/// A TLS connector that trusts only `ca_pem`, offering `alpn`.
pub fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    connector_as(ca_pem, alpn, None)
}

/// [`connector`] presenting a client certificate (`(chain PEM, key PEM)`) when asked.
pub fn connector_as(ca_pem: &str, alpn: &[&[u8]], client: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots);
    let mut config = match client {
        None => config.with_no_client_auth(),
        Some((cert, key)) => config
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.expect("client certificate PEM"))
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .expect("client key PEM"),
            )
            .expect("client certificate"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection that verifies the server's certificate for `server_name`, offering
/// `alpn`; returns the stream and the protocol the server chose.
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    server_name: &str,
    alpn: &[u8],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    tls_connect_from(None, addr, ca_pem, server_name, alpn).await
}

/// [`tls_connect`] from a chosen local address (any of 127.0.0.0/8 on Linux).
async fn tls_connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    ca_pem: &str,
    server_name: &str,
    alpn: &[u8],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let tcp = match source {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(ip, 0))
                .expect("bind the source");
            socket.connect(addr).await.expect("connect")
        }
    };
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let tls = connector(ca_pem, &[alpn])
        .connect(name, tcp)
        .await
        .expect("TLS handshake verifying the server certificate");
    let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, chosen)
}

/// One HTTP/1.1 keep-alive connection, as kube-apiserver keeps to a webhook.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub alpn: Option<Vec<u8>>,
}

impl Client {
    pub async fn connect(server: &TestServer) -> Client {
        Client::connect_to(server.addr, &server.ca_pem, "localhost").await
    }

    pub async fn connect_to(addr: SocketAddr, ca_pem: &str, server_name: &str) -> Client {
        Client::connect_from(None, addr, ca_pem, server_name).await
    }

    /// A connection from `source` (a loopback address other than 127.0.0.1 is another peer).
    pub async fn connect_from(
        source: Option<std::net::IpAddr>,
        addr: SocketAddr,
        ca_pem: &str,
        server_name: &str,
    ) -> Client {
        let (tls, alpn) = tls_connect_from(source, addr, ca_pem, server_name, b"http/1.1").await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        Client { sender, alpn }
    }

    /// A connection presenting a client certificate (`(chain PEM, key PEM)`), or none; `Err`
    /// when the handshake (or, in TLS 1.3, the server's first answer) refuses it.
    pub async fn connect_as(
        addr: SocketAddr,
        ca_pem: &str,
        server_name: &str,
        client: Option<(&str, &str)>,
    ) -> Result<Client, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        let tls = connector_as(ca_pem, &[b"http/1.1"], client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Client {
            sender,
            alpn: Some(b"http/1.1".to_vec()),
        })
    }

    /// [`Client::send`] that reports a refused connection instead of panicking.
    pub async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(read(response).await)
    }

    /// Whether the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn send(&mut self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        self.try_send(method, path, body).await.expect("response")
    }

    /// Posts a review and returns the `response` of the answer, checking the envelope.
    pub async fn review(&mut self, webhook: &str, review: &Value) -> Value {
        let body = serde_json::to_vec(review).expect("encode");
        let (status, body) = self.send(Method::POST, &format!("/{webhook}"), body).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).expect("JSON answer");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"], "uid echoed");
        response
    }
}

/// An HTTP/2 connection (ALPN h2).
pub async fn h2_post(
    server: &TestServer,
    path: &str,
    body: Vec<u8>,
) -> (Option<Vec<u8>>, StatusCode, Bytes) {
    let (tls, alpn) = tls_connect(server.addr, &server.ca_pem, "localhost", b"h2").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("https://localhost{path}"))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let (status, body) = read(sender.send_request(request).await.expect("response")).await;
    (alpn, status, body)
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> (StatusCode, Bytes) {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Applies the base64 JSON patch of `response` to `object` with the json-patch crate.
pub fn apply_patch(response: &Value, object: &Value) -> Value {
    let mut doc = object.clone();
    if let Some(patch) = decode_patch(response) {
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
    }
    doc
}

pub fn decode_patch(response: &Value) -> Option<json_patch::Patch> {
    let encoded = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 patch");
    Some(serde_json::from_slice(&bytes).expect("RFC 6902 patch"))
}

pub fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn reports(server: &TestServer) -> Vec<Report> {
    server.reporter.take()
}

/// Builds AdmissionReview requests.
#[derive(Clone)]
pub struct Review {
    pub request: Value,
}

impl Review {
    pub fn new(operation: &str, api_version: &str, kind: &str, resource: &str) -> Review {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        Review {
            request: json!({
                "uid": format!("uid-{}-{}", kind.to_lowercase(), operation.to_lowercase()),
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "requestKind": {"group": group, "version": version, "kind": kind},
                "requestResource": {"group": group, "version": version, "resource": resource},
                "name": "",
                "namespace": "openg2p",
                "operation": operation,
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": null,
                "oldObject": null,
                "dryRun": false,
                "options": null
            }),
        }
    }

    pub fn create(object: Value) -> Review {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let resource = format!("{}s", kind.to_lowercase());
        let mut review = Review::new("CREATE", &api_version, &kind, &resource);
        review.request["name"] = object["metadata"]["name"].clone();
        review.request["object"] = object;
        review
    }

    pub fn set(mut self, key: &str, value: Value) -> Review {
        self.request[key] = value;
        self
    }

    pub fn user(mut self, username: &str, groups: &[&str]) -> Review {
        self.request["userInfo"] = json!({"username": username, "groups": groups});
        self
    }

    pub fn uid(self, uid: &str) -> Review {
        self.set("uid", json!(uid))
    }

    pub fn json(&self) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": self.request})
    }
}

/// A pod spec with one container in each list.
pub fn pod_spec(image: &str) -> Value {
    json!({
        "initContainers": [{"name": "init", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}],
        "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}],
        "ephemeralContainers": [{"name": "debug", "image": "busybox"}]
    })
}

/// An object of every pod-bearing kind, with `replicas` where the kind has them.
pub fn pod_bearing_objects(image: &str, replicas: i64) -> Vec<(Value, &'static str)> {
    let spec = pod_spec(image);
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": spec});
    let meta = |name: &str| json!({"name": name, "namespace": "openg2p"});
    vec![
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("web"), "spec": spec}),
            "/spec",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("web"), "spec": {"replicas": replicas, "template": template}}),
            "/spec/template/spec",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("web"), "spec": {"replicas": replicas, "serviceName": "web", "template": template}}),
            "/spec/template/spec",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("web"), "spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta("web"), "spec": {"replicas": replicas, "template": template}}),
            "/spec/template/spec",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": meta("web"), "spec": {"replicas": replicas, "template": template}}),
            "/spec/template/spec",
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("web"), "spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("web"), "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}}),
            "/spec/jobTemplate/spec/template/spec",
        ),
        (
            json!({"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta("web"), "template": template}),
            "/template/spec",
        ),
    ]
}

pub fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, "test config").expect("test config")
}

/// A Pod, as JSON (the cluster lookups answer pods as the API server sends them).
pub fn pod(namespace: &str, name: &str, labels: Value, image: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": image}]}
    })
    .to_string()
}

/// An RFC 3339 time `seconds` from now (negative: past), as a PolicyException's `expires`.
pub fn rfc3339_from_now(seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    k8s_openapi::jiff::Timestamp::from_second(now + seconds)
        .expect("a representable time")
        .to_string()
}

/// The crate's root, where `examples/`, `deploy/` and the fixtures are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.yaml`, `.yml` and `.json` file under `dir`, depth first, in name order.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}
