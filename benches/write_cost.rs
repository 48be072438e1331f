//! The cost a write pays, as the API server sees it. Registers deploy/base's webhook
//! configurations on the test kube-apiserver (1.20.2, the e2e suite's), serves them first with
//! the no-op server (`loadbench noop-server`: read the uid, answer allowed), then with the no-op
//! server answering the patch prodguard makes (`--patch`), and then with `prodguard serve` (the
//! default policy set), creates the same Deployments over one keep-alive client each time, and
//! reads the API server's
//! `apiserver_admission_webhook_admission_duration_seconds` for each webhook: the time per call,
//! its TLS, HTTP, the webhook's work and (for the mutating one) applying its patch included.
//! See docs/benchmarks.md.
//!
//!     scripts/test-deps.sh && cargo build --release --workspace --bins && cargo bench --bench write_cost
//!     cargo bench --bench write_cost -- --deployments 500 --loadbench target/release/loadbench

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cluster::TestCluster;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;

struct Options {
    deployments: usize,
    loadbench: PathBuf,
}

fn options() -> Result<Options, String> {
    // Next to the prodguard binary cargo built for this bench (target/release).
    let beside = PathBuf::from(env!("CARGO_BIN_EXE_prodguard")).with_file_name("loadbench");
    let mut options = Options {
        deployments: 500,
        loadbench: beside,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--deployments" => {
                options.deployments = value("--deployments")?
                    .parse()
                    .map_err(|e| format!("--deployments: {e}"))?
            }
            "--loadbench" => options.loadbench = PathBuf::from(value("--loadbench")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !options.loadbench.exists() {
        return Err(format!(
            "no loadbench binary at {} (its no-op server is the baseline): cargo build --release --workspace --bins, or --loadbench PATH",
            options.loadbench.display()
        ));
    }
    Ok(options)
}

/// The API server's total time and count of calls to `webhook` on CREATE, admitted.
fn webhook_seconds(cluster: &TestCluster, webhook: &str, kind: &str) -> Result<(f64, f64), String> {
    let output = cluster.kubectl(&["get", "--raw", "/metrics"]);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let find = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "apiserver_admission_webhook_admission_duration_seconds_{suffix}{{"
                )) && l.contains(&format!("name=\"{webhook}\""))
                    && l.contains("operation=\"CREATE\"")
                    && l.contains(&format!("type=\"{kind}\""))
                    && l.contains("rejected=\"false\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((find("sum"), find("count")))
}

fn wait_listening(port: u16, child: &mut Child, name: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("{name} does not listen on {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Creates `count` Deployments (2 replicas, a tagged image: its pull policy is defaulted to
/// IfNotPresent, so prodguard patches one thing, a topology spread) in `namespace`, one after
/// the other over the client's connection.
fn create(
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    namespace: &str,
    count: usize,
) -> Result<f64, String> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..count {
            let deployment: Deployment = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("web-{i}"), "labels": {"app": format!("web-{i}")}},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": format!("web-{i}")}},
                    "template": {
                        "metadata": {"labels": {"app": format!("web-{i}")}},
                        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
                    }
                }
            }))
            .map_err(|e| e.to_string())?;
            api.create(&PostParams::default(), &deployment)
                .await
                .map_err(|e| format!("creating web-{i} in {namespace}: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

struct Costs {
    mutate_ms: f64,
    validate_ms: f64,
    calls: f64,
    wall_s: f64,
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    client: &kube::Client,
    namespace: &str,
    count: usize,
) -> Result<Costs, String> {
    let mutate = |c: &TestCluster| webhook_seconds(c, "mutate.prodguard.io", "admit");
    let validate = |c: &TestCluster| webhook_seconds(c, "validate.prodguard.io", "validating");
    let (m0, v0) = (mutate(cluster)?, validate(cluster)?);
    let wall_s = create(runtime, client, namespace, count)?;
    let (m1, v1) = (mutate(cluster)?, validate(cluster)?);
    let per_call = |(s0, n0): (f64, f64), (s1, n1): (f64, f64)| {
        if n1 > n0 {
            (s1 - s0) / (n1 - n0) * 1000.0
        } else {
            f64::NAN
        }
    };
    Ok(Costs {
        mutate_ms: per_call(m0, m1),
        validate_ms: per_call(v0, v1),
        calls: m1.1 - m0.1,
        wall_s,
    })
}

/// Serves the webhooks with the no-op server (answering `patch` on /mutate when given), makes
/// `warm` Deployments in `default` first, and measures `options.deployments` in `namespace`.
fn noop(
    runtime: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    client: &kube::Client,
    options: &Options,
    patch: Option<&str>,
    namespace: &str,
    warm: usize,
) -> Result<Costs, String> {
    let port = cluster.prodguard_port;
    let mut command = Command::new(&options.loadbench);
    command
        .args(["noop-server", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(cluster.certs_dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(cluster.certs_dir.join("tls.key"));
    if let Some(patch) = patch {
        command.args(["--patch", patch]);
    }
    let mut server = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", options.loadbench.display()))?;
    wait_listening(port, &mut server, "the no-op server")?;
    let costs = create(runtime, client, "default", warm)
        .and_then(|_| measure(runtime, cluster, client, namespace, options.deployments));
    cluster::stop("no-op server", server);
    costs
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write_cost bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut cluster = TestCluster::start()?;
    cluster.register_webhooks()?;
    let client = runtime.block_on(cluster.client())?;
    for ns in ["bench-noop", "bench-noop-patch", "bench-prodguard"] {
        let created = cluster.kubectl(&["create", "namespace", ns]);
        if !created.status.success() {
            return Err(String::from_utf8_lossy(&created.stderr).into_owned());
        }
    }

    // A few writes first: the API server's connection to the webhook and its caches are warm
    // for every server.
    let noop_costs = noop(
        &runtime,
        &cluster,
        &client,
        &options,
        None,
        "bench-noop",
        20,
    )?;
    // The no-op server answering with the one operation prodguard patches these Deployments
    // with (node-spread's; their pull policy is already IfNotPresent once defaulted): what
    // applying a patch costs the API server, with none of prodguard's work.
    let patch = json!([{"op": "add", "path": "/spec/template/spec/topologySpreadConstraints",
        "value": [{"labelSelector": {"matchLabels": {"app": "web"}}, "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]}]);
    let patching_costs = noop(
        &runtime,
        &cluster,
        &client,
        &options,
        Some(&patch.to_string()),
        "bench-noop-patch",
        0,
    )?;

    cluster.serve(include_str!("../policies/openg2p-production.yaml"), &[])?;
    let ours = measure(
        &runtime,
        &cluster,
        &client,
        "bench-prodguard",
        options.deployments,
    )?;
    cluster.stop_prodguard();
    // The same without a cluster client (no lookups, no Events even with --patch-events), to
    // see what the client's work costs the API server's other calls.
    let created = cluster.kubectl(&["create", "namespace", "bench-offline"]);
    if !created.status.success() {
        return Err(String::from_utf8_lossy(&created.stderr).into_owned());
    }
    let offline = cluster.start_prodguard_as(
        "prodguard-offline",
        cluster.prodguard_port,
        cluster::free("offline metrics"),
        include_str!("../policies/openg2p-production.yaml"),
        &[],
        std::path::Path::new("/nonexistent/kubeconfig"),
    )?;
    let without_events = measure(
        &runtime,
        &cluster,
        &client,
        "bench-offline",
        options.deployments,
    );
    cluster::stop("prodguard-offline", offline);
    let without_events = without_events?;

    println!(
        "| server | mutate ms per call | validate ms per call | calls | wall s for {} creates |",
        options.deployments
    );
    println!("|---|---|---|---|---|");
    for (name, c) in [
        ("no-op", &noop_costs),
        ("no-op answering prodguard's patch", &patching_costs),
        ("prodguard", &ours),
        ("prodguard, no cluster client", &without_events),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.0} | {:.1} |",
            c.mutate_ms, c.validate_ms, c.calls, c.wall_s
        );
    }
    println!(
        "| prodguard / no-op | {:.2}x | {:.2}x | | |",
        ours.mutate_ms / noop_costs.mutate_ms,
        ours.validate_ms / noop_costs.validate_ms
    );
    println!(
        "| prodguard / no-op answering its patch | {:.2}x | {:.2}x | | |",
        ours.mutate_ms / patching_costs.mutate_ms,
        ours.validate_ms / patching_costs.validate_ms
    );
    Ok(())
}
