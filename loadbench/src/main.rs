//! The load benchmark: starts `prodguard serve` (and, for comparison, a no-op server built
//! from the same stack) and drives it as kube-apiserver does: TLS, HTTP/1.1 keep-alive, up to
//! 25 connections; also a new TLS connection per request. See docs/benchmarks.md.
//!
//!     cargo build --release --workspace --bins && target/release/loadbench
//!     target/debug/loadbench --smoke        (what CI runs: every mode, briefly, checked)

use loadbench::noop;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FIXTURES: [(&str, &str); 3] = [
    (
        "Pod CREATE (6 KB)",
        include_str!("../../tests/fixtures/bench/pod-create.json"),
    ),
    (
        "Deployment CREATE (11 KB)",
        include_str!("../../tests/fixtures/bench/deployment-create.json"),
    ),
    (
        "Deployment UPDATE (21 KB)",
        include_str!("../../tests/fixtures/bench/deployment-update.json"),
    ),
];
const KEEPALIVE_CONNECTIONS: usize = 25;
const MANY_CONNECTIONS: usize = 256;

#[derive(Parser)]
#[command(about = "Load benchmark for prodguard serve")]
struct Args {
    /// Every mode for a moment, every answer checked: for CI, so the benchmark cannot rot.
    #[arg(long)]
    smoke: bool,
    /// The prodguard binary; by default the one next to this program.
    #[arg(long)]
    prodguard: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Only the closed-loop throughput of each review (to profile the server under it).
    #[arg(long)]
    throughput_only: bool,
    /// Soak instead: this many minutes at 1,000 requests/s on the 11 KB review, with errors,
    /// latency and RSS every 30 s.
    #[arg(long)]
    soak_minutes: Option<u64>,
    /// Instead: the memory one review costs, per size (1 KB to the largest body), each in a
    /// fresh prodguard: its peak RSS and its RSS after, above the idle RSS.
    #[arg(long)]
    memory_per_size: bool,
    /// A kubeconfig for prodguard (none by default: no cluster, no audit). With
    /// `--serve-arg=--audit-interval=1s` the soak measures admission while the background
    /// audit scans that cluster.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Another argument for `prodguard serve` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand)]
enum Sub {
    /// The no-op server: same TLS and HTTP stack, answers allowed for the uid.
    NoopServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        tls_cert: PathBuf,
        #[arg(long)]
        tls_key: PathBuf,
        /// A JSON Patch to answer every /mutate with (the same for every object): the API
        /// server's cost of applying a patch, with none of a webhook's work.
        #[arg(long)]
        patch: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(Sub::NoopServer {
        addr,
        tls_cert,
        tls_key,
        patch,
    }) = args.command
    {
        return runtime.block_on(noop_server(addr, tls_cert, tls_key, patch));
    }
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- the no-op server ---------------------------------------------------------------------

async fn noop_server(
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    patch: Option<String>,
) -> ExitCode {
    use axum::routing::post;
    let patch = match patch.as_deref().map(noop::encode_patch).transpose() {
        Ok(patch) => Arc::new(patch),
        Err(e) => {
            eprintln!("noop-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    // /mutate answers with the patch when one is given; /validate never does.
    let answer = |patch: Arc<Option<String>>| {
        move |body: Bytes| async move {
            match noop::noop_answer_patching(&body, patch.as_deref()) {
                Ok(answer) => (StatusCode::OK, answer),
                Err(e) => (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
            }
        }
    };
    let tls = match prodguard::server::tls::load(&cert, &key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("noop-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = axum::Router::new()
        .route("/mutate", post(answer(patch)))
        .route("/validate", post(answer(Arc::new(None))))
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("noop-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    prodguard::server::serve(listener, tls, app, std::future::pending()).await;
    ExitCode::SUCCESS
}

// ---- the client ---------------------------------------------------------------------------

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    /// Connections come from this many loopback addresses (127.0.0.1, .2, ...) in turn, as
    /// from several API servers: prodguard caps the connections of one peer address.
    sources: u8,
}

/// Connections opened so far, to spread them over `Target::sources`.
static OPENED: AtomicU64 = AtomicU64::new(0);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Target {
    async fn connect(&self) -> Result<Sender, String> {
        let tcp = if self.sources > 1 {
            let n = OPENED.fetch_add(1, Ordering::Relaxed) % u64::from(self.sources);
            let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + n as u8);
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::from((source, 0)))
                .map_err(|e| e.to_string())?;
            socket.connect(self.addr).await
        } else {
            TcpStream::connect(self.addr).await
        }
        .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// One review on a connection; checks the answer names the review's uid.
async fn send(sender: &mut Sender, path: &str, body: &Bytes, uid: &str) -> Result<Bytes, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if !answer.windows(uid.len()).any(|w| w == uid.as_bytes()) {
        return Err("the answer does not name the review's uid".into());
    }
    Ok(answer)
}

struct Load {
    body: Bytes,
    uid: String,
}

impl Load {
    fn new(json: &str) -> Load {
        let value: serde_json::Value = serde_json::from_str(json).expect("fixture");
        Load {
            uid: value["request"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body: Bytes::from(json.to_owned()),
        }
    }

    /// Alternating webhooks: even requests mutate, odd ones validate.
    fn path(i: u64) -> &'static str {
        if i % 2 == 0 {
            "/mutate"
        } else {
            "/validate"
        }
    }
}

/// Closed loop on `connections` keep-alive connections: requests per second.
async fn closed_loop(
    target: &Target,
    load: &Arc<Load>,
    connections: usize,
    time: Duration,
) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(target.connect().await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut sender in senders {
        let (load, done, errors, stop) = (load.clone(), done.clone(), errors.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match send(&mut sender, Load::path(i), &load.body, &load.uid).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Requests, seconds and server CPU seconds summed over the rounds of one server.
#[derive(Default)]
struct Tally {
    requests: f64,
    seconds: f64,
    cpu: f64,
}

impl Tally {
    fn add(&mut self, rate: f64, seconds: f64, cpu: f64) {
        self.requests += rate * seconds;
        self.seconds += seconds;
        self.cpu += cpu;
    }
    fn rate(&self) -> f64 {
        self.requests / self.seconds
    }
    fn cpu_per_request(&self) -> f64 {
        self.cpu / self.requests
    }
}

struct Rounds {
    /// prodguard's, then the no-op server's.
    tally: [Tally; 2],
    lowest_ratio: f64,
    highest_ratio: f64,
}

/// The closed loop against both servers in alternating one-second rounds (the order flips
/// every round), so that a change in what else the machine runs falls on both alike: a
/// sequential measurement of one server after the other moved the ratio by ten points from
/// run to run on this shared virtual machine.
async fn closed_loop_rounds(
    pg: &Server,
    noop: &Server,
    load: &Arc<Load>,
    time: Duration,
) -> Result<Rounds, String> {
    let count = time.as_secs().max(1);
    let round = time / count as u32;
    let mut rounds = Rounds {
        tally: [Tally::default(), Tally::default()],
        lowest_ratio: f64::INFINITY,
        highest_ratio: 0.0,
    };
    for i in 0..count {
        // Index 0 is prodguard, 1 the no-op server; odd rounds start with the no-op server.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut rates = [0.0; 2];
        for index in order {
            let server = [pg, noop][index];
            let (rate, cpu) = with_cpu(
                server,
                closed_loop(&server.target, load, KEEPALIVE_CONNECTIONS, round),
            )
            .await?;
            rates[index] = rate;
            rounds.tally[index].add(rate, round.as_secs_f64(), cpu);
        }
        let ratio = rates[0] / rates[1];
        rounds.lowest_ratio = rounds.lowest_ratio.min(ratio);
        rounds.highest_ratio = rounds.highest_ratio.max(ratio);
    }
    Ok(rounds)
}

/// A new TLS connection for every request: requests per second.
async fn connection_per_request(
    target: &Target,
    load: &Arc<Load>,
    concurrency: usize,
    time: Duration,
) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let deadline = started + time;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (target, load, done, failures) =
            (target.clone(), load.clone(), done.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let result = async {
                    let mut sender = target.connect().await?;
                    send(&mut sender, Load::path(i), &load.body, &load.uid).await
                }
                .await;
                match result {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Ok(mut f) = failures.lock() {
                            f.push(e);
                        }
                    }
                }
                i += 1;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} requests failed, first: {first}",
            failures.len()
        ));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    achieved: f64,
}

/// Open loop at `rate` requests per second over 25 connections. Latency is measured from the
/// time each request was due, so a stall delays every request behind it and shows.
async fn open_loop(
    target: &Target,
    load: &Arc<Load>,
    rate: f64,
    time: Duration,
) -> Result<Latency, String> {
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
    let mut workers = Vec::new();
    for _ in 0..KEEPALIVE_CONNECTIONS {
        let mut sender = target.connect().await?;
        let (load, jobs_rx) = (load.clone(), jobs_rx.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let job = jobs_rx.lock().await.recv().await;
                let Some((i, due)) = job else { break };
                match send(&mut sender, Load::path(i), &load.body, &load.uid).await {
                    Ok(_) => latencies.push(due.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let total = (rate * time.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    // A thread of its own paces the requests: the async timer's millisecond resolution would
    // add up to a millisecond to every latency.
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let due = started + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if jobs_tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((latencies, e)) = worker.await {
            all.extend(latencies);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Latency {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: all.last().copied().unwrap_or(0.0),
        achieved: all.len() as f64 / elapsed,
    })
}

// ---- processes ----------------------------------------------------------------------------

fn free_port() -> Result<u16, String> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 if unreadable.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Server {
    name: &'static str,
    child: Child,
    target: Target,
    /// Process start to a listening socket, and to the first answered /healthz.
    listening: Duration,
    ready: Duration,
}

impl Drop for Server {
    /// SIGTERM (prodguard shuts down gracefully), SIGKILL after 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(
    name: &'static str,
    command: &mut Command,
    port: u16,
    connector: &TlsConnector,
) -> Result<Server, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let mut server = Server {
        name,
        child,
        target: Target {
            addr,
            connector: connector.clone(),
            sources: 1,
        },
        listening: Duration::ZERO,
        ready: Duration::ZERO,
    };
    let deadline = started + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{name} did not listen within 10 s"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    server.listening = started.elapsed();
    loop {
        if let Ok(mut sender) = server.target.connect().await {
            let request = Request::get("/healthz")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()));
            if let Ok(request) = request {
                if let Ok(response) = sender.send_request(request).await {
                    if response.status() == StatusCode::OK {
                        break;
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not answer /healthz within 10 s"));
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    server.ready = started.elapsed();
    Ok(server)
}

/// CPU seconds (user and system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Runs `measure` and returns its result with the CPU seconds the server used meanwhile.
async fn with_cpu<T>(
    server: &Server,
    measure: impl std::future::Future<Output = Result<T, String>>,
) -> Result<(T, f64), String> {
    let before = cpu_seconds(server.child.id());
    let result = measure.await?;
    Ok((result, cpu_seconds(server.child.id()) - before))
}

/// RSS while `connections` keep-alive connections send reviews in a closed loop: the peak.
async fn rss_under_connections(
    server: &Server,
    load: &Arc<Load>,
    connections: usize,
    time: Duration,
) -> Result<u64, String> {
    let pid = server.child.id();
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Eight peers, as from several API servers (one address may hold 128 connections).
    let target = Target {
        sources: 8,
        ..server.target.clone()
    };
    let result = closed_loop(&target, load, connections, time).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    result?;
    Ok(peak.load(Ordering::Relaxed))
}

// ---- the run ------------------------------------------------------------------------------

fn prodguard_binary(args: &Args) -> Result<PathBuf, String> {
    let path = match &args.prodguard {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("prodguard"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no prodguard binary at {} (cargo build --release --workspace --bins)",
            path.display()
        ))
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn run(args: Args) -> Result<(), String> {
    let time = if args.smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(args.seconds)
    };
    let prodguard = prodguard_binary(&args)?;
    let dir = std::env::temp_dir().join(format!("prodguard-loadbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pki = prodguard::certs::pki::generate("loadbench CA", &names).map_err(|e| e.to_string())?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    write(&cert, &pki.cert_pem)?;
    write(&key, &pki.key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(client));

    let port = free_port()?;
    let mut prodguard_cmd = Command::new(&prodguard);
    prodguard_cmd
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--metrics-addr",
            "off",
            "--log",
            "warn",
            "--shutdown-delay",
            "0s",
        ])
        .args(
            (!args
                .serve_arg
                .iter()
                .any(|a| a.starts_with("--audit-interval")))
            .then_some("--audit-interval=off"),
        )
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(&args.serve_arg)
        .env(
            "KUBECONFIG",
            args.kubeconfig
                .clone()
                .unwrap_or_else(|| dir.join("no-kubeconfig")),
        )
        .env_remove("KUBERNETES_SERVICE_HOST");
    let noop_port = free_port()?;
    let mut noop_cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    noop_cmd
        .args(["noop-server", "--addr", &format!("127.0.0.1:{noop_port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);

    if args.memory_per_size {
        return memory_per_size(&mut prodguard_cmd, port, &connector, args.smoke).await;
    }
    let loads: Vec<(&str, Arc<Load>)> = FIXTURES
        .iter()
        .map(|(name, json)| (*name, Arc::new(Load::new(json))))
        .collect();
    let eleven = loads[1].1.clone();
    if let Some(minutes) = args.soak_minutes {
        return soak(
            &mut prodguard_cmd,
            port,
            &connector,
            &eleven,
            minutes,
            args.smoke,
        )
        .await;
    }

    println!("| measure | prodguard | no-op server | prodguard / no-op |");
    println!("|---|---|---|---|");
    let pg = start("prodguard", &mut prodguard_cmd, port, &connector).await?;
    let idle = {
        tokio::time::sleep(Duration::from_millis(if args.smoke { 100 } else { 1000 })).await;
        rss_kib(pg.child.id())
    };
    // The policies act on the fixtures: every one is patched, the Deployments are denied
    // (one replica).
    for (index, (name, load)) in loads.iter().enumerate() {
        let mut sender = pg.target.connect().await?;
        let mutated = send(&mut sender, "/mutate", &load.body, &load.uid).await?;
        let validated = send(&mut sender, "/validate", &load.body, &load.uid).await?;
        let mutated = String::from_utf8_lossy(&mutated);
        let validated = String::from_utf8_lossy(&validated);
        let denied = validated.contains("\"allowed\":false");
        if !mutated.contains("\"patchType\":\"JSONPatch\"") || denied != (index > 0) {
            return Err(format!(
                "{name}: the policies did not act (mutate: {mutated}; validate: {validated})"
            ));
        }
    }
    let noop = start("no-op server", &mut noop_cmd, noop_port, &connector).await?;
    let noop_idle = {
        tokio::time::sleep(Duration::from_millis(if args.smoke { 100 } else { 1000 })).await;
        rss_kib(noop.child.id())
    };
    println!(
        "| start to listening | {:.1} ms | {:.1} ms | |",
        ms(pg.listening),
        ms(noop.listening)
    );
    println!(
        "| start to first answered /healthz over TLS | {:.1} ms | {:.1} ms | |",
        ms(pg.ready),
        ms(noop.ready)
    );
    println!(
        "| RSS idle | {:.1} MiB | {:.1} MiB | |",
        idle as f64 / 1024.0,
        noop_idle as f64 / 1024.0
    );

    for (name, load) in &loads {
        let rounds = closed_loop_rounds(&pg, &noop, load, time).await?;
        println!(
            "| closed loop, 25 keep-alive connections, {name} | {:.0} req/s | {:.0} req/s | {:.0} % (rounds {:.0}-{:.0} %) |",
            rounds.tally[0].rate(),
            rounds.tally[1].rate(),
            100.0 * rounds.tally[0].rate() / rounds.tally[1].rate(),
            100.0 * rounds.lowest_ratio,
            100.0 * rounds.highest_ratio
        );
        println!(
            "| server CPU per request in that loop, {name} | {:.1} us | {:.1} us | |",
            rounds.tally[0].cpu_per_request() * 1e6,
            rounds.tally[1].cpu_per_request() * 1e6
        );
    }
    if args.throughput_only {
        return Ok(());
    }
    for rate in [1000.0, 3000.0] {
        let rate = if args.smoke { rate / 10.0 } else { rate };
        for server in [&pg, &noop] {
            let l = open_loop(&server.target, &eleven, rate, time).await?;
            let line = format!(
                "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({:.0} req/s done)",
                l.p50, l.p99, l.p999, l.max, l.achieved
            );
            println!(
                "| open loop {rate:.0} req/s, 11 KB, {} | {line} | | |",
                server.name
            );
        }
    }
    let a = connection_per_request(&pg.target, &eleven, KEEPALIVE_CONNECTIONS, time).await?;
    let b = connection_per_request(&noop.target, &eleven, KEEPALIVE_CONNECTIONS, time).await?;
    println!(
        "| new TLS connection per request, 11 KB | {a:.0} req/s | {b:.0} req/s | {:.0} % |",
        100.0 * a / b
    );
    let connections = if args.smoke { 32 } else { MANY_CONNECTIONS };
    let a = rss_under_connections(&pg, &eleven, connections, time).await?;
    let b = rss_under_connections(&noop, &eleven, connections, time).await?;
    println!(
        "| peak RSS, {connections} keep-alive connections in a closed loop | {:.1} MiB | {:.1} MiB | |",
        a as f64 / 1024.0,
        b as f64 / 1024.0
    );
    drop(pg);
    drop(noop);
    let _ = std::fs::remove_dir_all(&dir);
    if args.smoke {
        println!("\nsmoke run: every mode ran and every answer named its uid");
    }
    Ok(())
}

/// A long open loop: every window's requests, errors, latency and the RSS after it.
async fn soak(
    command: &mut Command,
    port: u16,
    connector: &TlsConnector,
    load: &Arc<Load>,
    minutes: u64,
    smoke: bool,
) -> Result<(), String> {
    let pg = start("prodguard", command, port, connector).await?;
    let window = if smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    let windows = (minutes * 60 / window.as_secs()).max(1);
    let windows = if smoke { windows.min(3) } else { windows };
    println!("| minute | requests/s done | p50 | p99 | p99.9 | max | RSS |");
    println!("|---|---|---|---|---|---|---|");
    for w in 0..windows {
        let l = open_loop(&pg.target, load, 1000.0, window)
            .await
            .map_err(|e| format!("soak window {}: {e}", w + 1))?;
        println!(
            "| {:.1} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} MiB |",
            (w + 1) as f64 * window.as_secs_f64() / 60.0,
            l.achieved,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            rss_kib(pg.child.id()) as f64 / 1024.0
        );
    }
    println!("\nno request failed");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- memory per review size ---------------------------------------------------------------

/// A review of about `size` bytes in one of two shapes: an UPDATE of a Deployment whose object
/// and old version carry an annotation of `<` as the API server escapes it (the largest
/// legitimate reviews look like this), or a Pod of as many containers as fit (the shape that
/// builds the most per byte).
fn review_of_size(shape: &str, size: usize) -> String {
    let containers = |n: usize| {
        let one = r#"{"name":"c","image":"a"}"#;
        format!("[{}]", vec![one; n.max(1)].join(","))
    };
    // As the API server sends it: the kind and the resource in the kind's group.
    let envelope = |operation: &str, kind: &str, object: &str, old: &str| {
        let (group, resource) = match kind {
            "Pod" => ("", "pods"),
            _ => ("apps", "deployments"),
        };
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"mem-{size}","kind":{{"group":"{group}","version":"v1","kind":"{kind}"}},"resource":{{"group":"{group}","version":"v1","resource":"{resource}"}},"namespace":"openg2p","operation":"{operation}","userInfo":{{"username":"alice"}},"object":{object},"oldObject":{old}}}}}"#
        )
    };
    if shape == "pod" {
        let empty = envelope("CREATE", "Pod", &pod_json(&containers(1)), "null");
        let n = size.saturating_sub(empty.len()) / 25 + 1;
        return envelope("CREATE", "Pod", &pod_json(&containers(n)), "null");
    }
    let deployment = |replicas: u32, pad: &str| {
        format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web","namespace":"openg2p","annotations":{{"note":"{pad}"}}}},"spec":{{"replicas":{replicas},"template":{{"spec":{{"containers":[{{"name":"app","image":"registry.local/app:1","imagePullPolicy":"IfNotPresent"}}]}}}}}}}}"#
        )
    };
    let empty = envelope(
        "UPDATE",
        "Deployment",
        &deployment(1, ""),
        &deployment(3, ""),
    );
    let room = size.saturating_sub(empty.len());
    let pad = |bytes: usize| format!("{}{}", "\\u003c".repeat(bytes / 6), "a".repeat(bytes % 6));
    envelope(
        "UPDATE",
        "Deployment",
        &deployment(1, &pad(room / 2)),
        &deployment(3, &pad(room - room / 2)),
    )
}

fn pod_json(containers: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"many","namespace":"openg2p"}},"spec":{{"containers":{containers}}}}}"#
    )
}

async fn memory_per_size(
    command: &mut Command,
    port: u16,
    connector: &TlsConnector,
    smoke: bool,
) -> Result<(), String> {
    let largest = prodguard::http::MAX_BODY_BYTES;
    let sizes: &[(&str, usize)] = if smoke {
        &[("update", 100_000), ("pod", 1_000_000)]
    } else {
        &[
            ("update", 1_000),
            ("update", 10_000),
            ("update", 100_000),
            ("update", 1_048_576),
            ("update", 3_145_728),
            ("update", largest),
            ("pod", 1_000),
            ("pod", 10_000),
            ("pod", 100_000),
            ("pod", 1_048_576),
            ("pod", 3_145_728),
        ]
    };
    println!("| review | body | answer | peak RSS above idle | RSS after, above idle |");
    println!("|---|---|---|---|---|");
    for (shape, size) in sizes {
        let body = Bytes::from(review_of_size(shape, *size));
        let uid = format!("mem-{size}");
        let server = start("prodguard", command, port, connector).await?;
        let pid = server.child.id();
        let mut sender = server.target.connect().await?;
        let small = Bytes::from(review_of_size("update", 1_000));
        send(&mut sender, "/mutate", &small, "mem-1000").await?;
        tokio::time::sleep(Duration::from_millis(if smoke { 50 } else { 500 })).await;
        let idle = rss_kib(pid);
        let mutated = send(&mut sender, "/mutate", &body, &uid).await?;
        let validated = send(&mut sender, "/validate", &body, &uid).await?;
        let peak = status_kib(pid, "VmHWM:");
        for _ in 0..3 {
            send(&mut sender, "/mutate", &small, "mem-1000").await?;
        }
        let after = rss_kib(pid);
        let answer = |text: &[u8]| {
            let text = String::from_utf8_lossy(text);
            if text.contains("builds more than") {
                "refused (builds over 4 MiB)".to_owned()
            } else if text.contains("\"patchType\"") {
                format!("patched ({} KB)", text.len() / 1000)
            } else if text.contains("\"allowed\":false") {
                "denied".to_owned()
            } else {
                "allowed".to_owned()
            }
        };
        let what = match *shape {
            "pod" => "Pod CREATE, containers",
            _ => "Deployment UPDATE, escaped",
        };
        println!(
            "| {what} | {} | mutate {}, validate {} | {:.1} MiB | {:.1} MiB |",
            body.len(),
            answer(&mutated),
            answer(&validated),
            peak.saturating_sub(idle) as f64 / 1024.0,
            after.saturating_sub(idle) as f64 / 1024.0,
        );
        if smoke {
            let expected = if *shape == "pod" { "refused" } else { "denied" };
            if !answer(&validated).starts_with(expected) {
                return Err(format!(
                    "{what} of {} bytes: expected {expected}, got {}",
                    body.len(),
                    answer(&validated)
                ));
            }
        }
        drop(server);
    }
    Ok(())
}
