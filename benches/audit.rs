//! The background audit at scale: fills a test kube-apiserver (1.20.2, the e2e suite's) with N
//! workloads, runs `prodguard serve` with the default policy set and a 1 s audit interval,
//! and reports the time of each scan, the resident memory after each of 10 scans and at its
//! peak, and the Events and reports written. See docs/benchmarks.md.
//!
//!     scripts/test-deps.sh && cargo bench --bench audit                 (N = 1,000, 10,000, 30,000)
//!     cargo bench --bench audit -- --objects 10000 --scans 10 --audit-page-size=100
//!
//! Arguments it does not know go to `prodguard serve`.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "../tests/e2e/workload.rs"]
mod workload;

use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cluster::{metric, scrape, TestCluster};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::Value;
use workload::status_kib;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Options {
    objects: Vec<usize>,
    scans: usize,
    namespaces: usize,
    /// Another prodguard binary (an older build, to compare).
    prodguard: Option<String>,
    /// A command to run prodguard under (`"heaptrack -o FILE"`).
    via: Option<String>,
    /// After the scans, `loadbench --soak-minutes 1` against a prodguard that audits the same
    /// cluster every second: admission latency during scans.
    loadbench: Option<String>,
    extra: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        objects: vec![1_000, 10_000, 30_000],
        scans: 10,
        namespaces: 20,
        prodguard: None,
        via: None,
        loadbench: None,
        extra: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench.
            "--bench" => {}
            "--objects" => {
                options.objects = value("--objects")?
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|e| format!("--objects: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--scans" => {
                options.scans = value("--scans")?
                    .parse()
                    .map_err(|e| format!("--scans: {e}"))?
            }
            "--namespaces" => {
                options.namespaces = value("--namespaces")?
                    .parse()
                    .map_err(|e| format!("--namespaces: {e}"))?
            }
            "--prodguard" => options.prodguard = Some(value("--prodguard")?),
            "--via" => options.via = Some(value("--via")?),
            "--loadbench" => options.loadbench = Some(value("--loadbench")?),
            // Anything else goes to `prodguard serve` (`--audit-page-size=100`).
            other if other.starts_with("--") => options.extra.push(other.to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("audit bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("audit bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "| objects | scan 1 s | scan {n} s | peak RSS MiB | RSS after scans 1..{n} MiB | after scan {n} vs 2 | Events (summary) | pending | report results (dropped) |",
        n = options.scans
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &objects in &options.objects {
        if let Err(e) = run(&runtime, &options, objects) {
            eprintln!("audit bench at {objects} objects: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The result of one run, printed as a table row.
struct Measured {
    scan_seconds: Vec<f64>,
    rss_after: Vec<u64>,
    peak: u64,
    idle: u64,
    pending: u64,
}

fn run(runtime: &tokio::runtime::Runtime, options: &Options, objects: usize) -> Result<(), String> {
    let cluster = TestCluster::start()?;
    let client = runtime.block_on(cluster.client())?;
    let crds = cluster.kubectl(&["apply", "-f", "deploy/base/crds.yaml"]);
    if !crds.status.success() {
        return Err(String::from_utf8_lossy(&crds.stderr).into_owned());
    }
    let filled = Instant::now();
    runtime.block_on(workload::fill(&client, 0, objects, options.namespaces))?;
    eprintln!(
        "audit bench: {objects} workloads in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let measured = measure(&cluster, options)?;
    let events: Vec<Event> = runtime
        .block_on(Api::<Event>::all(client.clone()).list(&ListParams::default()))
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("prodguard-audit"))
        .collect();
    let summaries = events
        .iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .and_then(|r| r.kind.as_deref())
                .is_some_and(|k| k.ends_with("PolicyReport"))
        })
        .count();
    let reports = cluster.kubectl(&["get", "policyreports", "-A", "-o", "json"]);
    let reports: Value = serde_json::from_slice(&reports.stdout).unwrap_or(Value::Null);
    let (mut results, mut dropped) = (0, 0);
    for report in reports["items"].as_array().into_iter().flatten() {
        results += report["results"].as_array().map_or(0, Vec::len);
        dropped += report["metadata"]["annotations"]["prodguard.io/results-dropped"]
            .as_str()
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or(0);
    }
    let rss: Vec<String> = measured
        .rss_after
        .iter()
        .map(|k| format!("{:.0}", mib(*k)))
        .collect();
    let growth = match (measured.rss_after.get(1), measured.rss_after.last()) {
        (Some(second), Some(last)) if *second > 0 => {
            format!("{:+.1} %", (*last as f64 / *second as f64 - 1.0) * 100.0)
        }
        _ => "-".to_owned(),
    };
    println!(
        "| {objects} | {:.2} | {:.2} | {:.1} | {} | {growth} | {} ({summaries}) | {} | {results} ({dropped}) |",
        measured.scan_seconds.first().copied().unwrap_or(0.0),
        measured.scan_seconds.last().copied().unwrap_or(0.0),
        mib(measured.peak),
        rss.join(", "),
        events.len(),
        measured.pending,
    );
    eprintln!(
        "audit bench: idle RSS before the first scan {:.1} MiB",
        mib(measured.idle)
    );
    if let Some(loadbench) = &options.loadbench {
        soak(
            loadbench,
            &cluster,
            "prodguard auditing every second",
            true,
            false,
        )?;
        // The same load on the API server without prodguard's audit: what its lists cost
        // the machine when the API server shares its cores.
        soak(
            loadbench,
            &cluster,
            "no audit, kubectl listing the workloads in a loop",
            false,
            true,
        )?;
        soak(loadbench, &cluster, "no audit, nothing else", false, false)?;
    }
    Ok(())
}

/// `loadbench --soak-minutes 1`: admission at 1,000 reviews/s for a minute, with prodguard
/// auditing the cluster every second, or not, and with a kubectl listing every workload in
/// a loop, or not.
fn soak(
    loadbench: &str,
    cluster: &TestCluster,
    what: &str,
    audit: bool,
    lister: bool,
) -> Result<(), String> {
    println!("\nloadbench --soak-minutes 1, {what}:\n");
    let mut command = std::process::Command::new(loadbench);
    command.args(["--soak-minutes", "1"]);
    if audit {
        command.arg("--kubeconfig").arg(&cluster.kubeconfig).args([
            "--serve-arg=--audit-interval=1s",
            "--serve-arg=--lease-namespace=default",
        ]);
    }
    let mut listing = if lister {
        let script =
            "while kubectl get deployments -A --chunk-size=500 -o json >/dev/null; do :; done";
        Some(
            std::process::Command::new("sh")
                .args(["-c", script])
                .env("KUBECONFIG", &cluster.kubeconfig)
                .spawn()
                .map_err(|e| format!("kubectl loop: {e}"))?,
        )
    } else {
        None
    };
    let status = command.status().map_err(|e| format!("{loadbench}: {e}"));
    if let Some(child) = listing.take() {
        cluster::stop("kubectl loop", child);
    }
    let status = status?;
    if !status.success() {
        return Err(format!("{loadbench} failed: {status}"));
    }
    Ok(())
}

impl Measured {
    fn new() -> Measured {
        Measured {
            scan_seconds: Vec::new(),
            rss_after: Vec::new(),
            peak: 0,
            idle: 0,
            pending: 0,
        }
    }
}

fn measure(cluster: &TestCluster, options: &Options) -> Result<Measured, String> {
    let port = cluster::free("prodguard");
    let metrics_port = cluster::free("metrics");
    let log = cluster.dir.path().join("bench-prodguard.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut command = cluster.prodguard();
    if let Some(binary) = &options.prodguard {
        command = std::process::Command::new(binary);
        command
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
    }
    if let Some(via) = &options.via {
        let program = command.get_program().to_owned();
        let mut words = via.split_whitespace();
        let mut wrapped = std::process::Command::new(words.next().unwrap_or("env"));
        wrapped
            .args(words)
            .arg(program)
            .env("KUBECONFIG", &cluster.kubeconfig);
        command = wrapped;
    }
    command
        .arg("serve")
        .arg(format!("--addr=127.0.0.1:{port}"))
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!(
            "--ca-out={}",
            cluster.dir.path().join("bench-ca.crt").display()
        ))
        .args([
            "--audit-interval=1s",
            "--lease-namespace=default",
            "--log=info",
        ])
        .args(&options.extra)
        .env("POD_NAME", "bench")
        .stdout(Stdio::null())
        .stderr(log_file);
    let child = command.spawn().map_err(|e| e.to_string())?;
    let result = sample(&child, metrics_port, options.scans);
    if options.via.is_some() {
        // The wrapper does not pass SIGTERM on to prodguard, its child.
        let _ = std::process::Command::new("pkill")
            .args(["-TERM", "-P", &child.id().to_string()])
            .status();
    }
    cluster::stop("prodguard", child);
    result.map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
}

fn sample(child: &Child, metrics_port: u16, scans: usize) -> Result<Measured, String> {
    let pid = child.id();
    let mut measured = Measured::new();
    let deadline = Instant::now() + Duration::from_secs(60 + 60 * scans as u64);
    let mut runs = 0.0;
    while measured.rss_after.len() < scans {
        if Instant::now() > deadline {
            return Err(format!("only {} scans in time", measured.rss_after.len()));
        }
        std::thread::sleep(Duration::from_millis(50));
        let rss = status_kib(pid, "VmRSS:").ok_or("prodguard exited")?;
        if runs == 0.0 && measured.idle == 0 {
            measured.idle = rss;
        }
        let text = scrape(metrics_port);
        let now = metric(&text, "prodguard_audit_runs_total");
        if now > runs {
            runs = now;
            measured.rss_after.push(rss);
            measured
                .scan_seconds
                .push(metric(&text, "prodguard_audit_duration_seconds"));
            measured.pending = metric(&text, "prodguard_audit_events_pending") as u64;
        }
        if metric(&text, "prodguard_audit_failures_total") > 0.0 {
            return Err("a scan failed".into());
        }
    }
    measured.peak = status_kib(pid, "VmHWM:").unwrap_or(0);
    Ok(measured)
}
