//! Zero failed writes while prodguard rolls out, loses a replica, has its API server
//! restarted and its configuration changed, all under a steady load of writes.
//!
//! Replicas of `serve --manage-certs` (deploy/base's flags: `--shutdown-delay=5s`, the Leases)
//! run behind [`Balancer`], the Service the webhooks' URL names. Writes arrive at [`RATE`] a
//! second for the whole scenario, each answer checked (an admitted Deployment came back
//! patched; a denied write carries prodguard's message), while, one after the other:
//! 1. a rolling update replaces both replicas (start a new one, wait until it is ready, SIGTERM
//!    an old one; twice): no write may fail;
//! 2. the replica writing the certificates is SIGKILLed: no more writes may fail than it had
//!    requests in flight, and both Leases move to the survivor within `--lease-duration`;
//! 3. kube-apiserver and etcd are restarted: prodguard is not, its watches resume (a
//!    PolicyException made afterwards lifts, and stops lifting once deleted; the failure policy
//!    it keeps is restored), and writes are judged as before;
//! 4. the policy file changes (min-replicas 2 -> 3): no write fails, and the new setting
//!    applies within the reload interval.
//!
//! The figures are printed, and docs/operations.md quotes them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};

use super::balancer::{self, Backend, Balancer};
use super::certs::Killed;
use super::{default_exempting, deployment, err, running_pod, Env};

const NS: &str = "e2e-rollout";
/// Writes a second, for the whole scenario. At 200 a second on this 2-core machine (the API
/// server, etcd and three debug builds of prodguard), one run of seven had 2 writes admitted
/// unpatched in the burst after the API server's restart (up to 357 connections at once to one
/// replica); docs/operations.md has the figures.
const RATE: u64 = 100;
const LEASE_DURATION: Duration = Duration::from_secs(6);
/// Past the end of a dead holder's term, what a takeover may take: the retry's 20 ms slack and
/// a Lease GET and PUT on a loaded 2-core machine.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(1);
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long after a pod's deletion kube-proxy stops sending it new connections (the endpoints
/// controller and every node's proxy take about a second).
const ENDPOINTS_LAG: Duration = Duration::from_secs(1);
/// deploy/base's webhooks' timeoutSeconds.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// deploy/base's terminationGracePeriodSeconds.
const GRACE: Duration = Duration::from_secs(30);

/// The kinds of write the load sends, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// A Deployment of 3 replicas: admitted, pull policy patched.
    Admitted,
    /// A Deployment of 1 replica: denied by min-replicas.
    OneReplica,
    /// dev deletes the Deployment `keep`: denied by protect-delete.
    Delete,
    /// dev execs into the database pod: denied by db-access.
    Exec,
    /// A Deployment of 2 replicas: admitted until the configuration asks for 3.
    TwoReplicas,
    /// A Deployment of 1 replica named `lifted-*`: admitted only while a PolicyException
    /// lifts min-replicas for it.
    Lifted,
}

const OPS: [Op; 6] = [
    Op::Admitted,
    Op::OneReplica,
    Op::Delete,
    Op::Exec,
    Op::TwoReplicas,
    Op::Lifted,
];

/// What came back.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    /// Admitted with the pull policy patched.
    Patched,
    /// Denied by prodguard's validating webhook with the expected message.
    Denied,
    /// The API server itself could not be reached or was not ready.
    ApiDown(String),
    /// Anything else: a webhook call that failed, an object admitted unpatched, a denial
    /// without prodguard's message.
    Failed(String),
}

struct Write {
    op: Op,
    /// When it was sent, from the start of the load.
    sent: Duration,
    answer: Answer,
}

/// Whether `message` is prodguard's denial saying `says`.
fn denied(message: &str, says: &str) -> bool {
    message.contains("admission webhook \"validate.prodguard.io\" denied") && message.contains(says)
}

async fn send(op: Op, i: u64, admin: &kube::Client, dev: &kube::Client) -> Answer {
    let create = |name: String, replicas: i64| {
        let api: Api<Deployment> = Api::namespaced(admin.clone(), NS);
        async move {
            let object: Deployment =
                serde_json::from_value(deployment(&name, replicas, "nginx")).expect("a Deployment");
            api.create(&PostParams::default(), &object)
                .await
                .map(|created| {
                    serde_json::to_value(created)
                        .unwrap_or_default()
                        .pointer("/spec/template/spec/containers/0/imagePullPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
        }
    };
    let (result, says) = match op {
        Op::Admitted => (create(format!("ok-{i}"), 3).await, ""),
        Op::OneReplica => (
            create(format!("one-{i}"), 1).await,
            "[min-replicas] Deployment e2e-rollout/one-",
        ),
        Op::TwoReplicas => (create(format!("two-{i}"), 2).await, "would run 2 replicas"),
        Op::Lifted => (
            create(format!("lifted-{i}"), 1).await,
            "would run 1 replica",
        ),
        Op::Delete => {
            let api: Api<Deployment> = Api::namespaced(dev.clone(), NS);
            (
                api.delete("keep", &DeleteParams::default())
                    .await
                    .map(|_| None),
                "[protect-delete] user \"dev\" may not delete Deployment e2e-rollout/keep",
            )
        }
        Op::Exec => {
            let request = hyper::Request::post(format!(
                "/api/v1/namespaces/{NS}/pods/postgres-0/exec?command=true&stdout=true"
            ))
            .body(Vec::new())
            .expect("a request");
            (
                dev.request_text(request).await.map(|_| None),
                "[db-access] user \"dev\" may not exec into database pod e2e-rollout/postgres-0",
            )
        }
    };
    match result {
        Ok(Some(policy)) if policy == "IfNotPresent" && !matches!(op, Op::OneReplica) => {
            Answer::Patched
        }
        Ok(other) => Answer::Failed(format!("admitted, pull policy {other:?}")),
        Err(kube::Error::Api(status)) if !says.is_empty() && denied(&status.message, says) => {
            Answer::Denied
        }
        Err(kube::Error::Api(status)) if !status.message.contains("webhook") => {
            Answer::ApiDown(format!("{}: {}", status.code, status.message))
        }
        Err(kube::Error::Api(status)) => {
            Answer::Failed(format!("{}: {}", status.code, status.message))
        }
        Err(e) => Answer::ApiDown(e.to_string()),
    }
}

/// The load: [`RATE`] writes a second, each sent on time whatever the others wait for.
struct Load {
    writes: Arc<Mutex<Vec<Write>>>,
    in_flight: Arc<AtomicUsize>,
    running: Arc<AtomicBool>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(env: &Env, dev: kube::Client) -> Load {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let started = Instant::now();
        let admin = env.client.clone();
        let task = {
            let (writes, in_flight, running) = (writes.clone(), in_flight.clone(), running.clone());
            env.runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sent = Vec::new();
                let mut i = 0u64;
                while running.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let op = OPS[(i % OPS.len() as u64) as usize];
                    let (admin, dev) = (admin.clone(), dev.clone());
                    let (writes, in_flight) = (writes.clone(), in_flight.clone());
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    sent.push(tokio::spawn(async move {
                        let at = started.elapsed();
                        let answer = send(op, i, &admin, &dev).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        writes.lock().expect("writes").push(Write {
                            op,
                            sent: at,
                            answer,
                        });
                    }));
                    i += 1;
                }
                for task in sent {
                    let _ = task.await;
                }
            })
        };
        Load {
            writes,
            in_flight,
            running,
            started,
            task,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn stop(self, env: &Env) -> Vec<Write> {
        self.running.store(false, Ordering::SeqCst);
        let _ = env.runtime.block_on(self.task);
        let mut writes = std::mem::take(&mut *self.writes.lock().expect("writes"));
        writes.sort_by_key(|w| w.sent);
        writes
    }
}

/// A prodguard replica: its process, and its place behind the balancer.
struct Replica {
    name: String,
    process: Killed,
    backend: Arc<Backend>,
}

/// The flags of deploy/base that matter here, with shorter intervals.
fn replica_args() -> Vec<String> {
    [
        "--manage-certs",
        "--lease-namespace=prodguard",
        "--cert-ip-addresses=127.0.0.1",
        "--shutdown-delay=5s",
        "--audit-interval=1m",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--lease-duration={}s", LEASE_DURATION.as_secs()),
        format!("--config-reload-interval={}s", RELOAD_INTERVAL.as_secs()),
    ])
    .collect()
}

impl Env {
    /// Starts replica `name` with `policies`, adds it behind `balancer`, and waits until the
    /// balancer's probe finds it ready.
    fn replica(&self, balancer: &Arc<Balancer>, name: &str, policies: &str) -> Replica {
        let (port, metrics) = (super::cluster::free(name), super::cluster::free("metrics"));
        let args = replica_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self
            .cluster
            .start_prodguard(name, port, metrics, policies, &args)
            .unwrap_or_else(|e| panic!("{e}"));
        let process = Killed(Some(child));
        let backend = self.runtime.block_on(async { balancer.add(port) });
        let started = Instant::now();
        while !backend.ready() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} was not ready within 30 s:\n{}",
                self.cluster.log_of(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Replica {
            name: name.to_owned(),
            process,
            backend,
        }
    }

    /// A Lease's holder, its last renewal and when it was acquired, as the API server stores
    /// them.
    fn lease(&self, lease: &str) -> (String, Option<Timestamp>, Option<Timestamp>) {
        let output = self.kubectl(&[
            "get",
            "lease",
            lease,
            "-n",
            "prodguard",
            "-o",
            "jsonpath={.spec.holderIdentity}{\"\\t\"}{.spec.renewTime}{\"\\t\"}{.spec.acquireTime}",
        ]);
        let text = String::from_utf8_lossy(&output.stdout);
        let mut fields = text.split('\t');
        let holder = fields.next().unwrap_or_default().to_owned();
        let mut time = || fields.next().and_then(|t| t.parse::<Timestamp>().ok());
        let renewed = time();
        (holder, renewed, time())
    }

    fn lease_holder(&self, lease: &str) -> String {
        self.lease(lease).0
    }
}

/// A rolling update's step: the pod of `old` is deleted (SIGTERM; the endpoints drop it
/// [`ENDPOINTS_LAG`] later). Returns how long it took to exit.
fn delete_pod(env: &Env, balancer: &Arc<Balancer>, mut old: Replica) -> Duration {
    let child = old.process.0.take().expect("a process");
    let pid = child.id().to_string();
    let deleted = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    {
        let (balancer, backend) = (balancer.clone(), old.backend.clone());
        env.runtime.spawn(async move {
            tokio::time::sleep(ENDPOINTS_LAG).await;
            balancer.remove(&backend);
        });
    }
    let mut child = child;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "{} exited with {status}", old.name);
            return deleted.elapsed();
        }
        if deleted.elapsed() > GRACE {
            let _ = child.kill();
            panic!(
                "{} did not exit within the grace period:\n{}",
                old.name,
                env.cluster.log_of(&old.name)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mark of an event: from when to when it happened, from the start of the load.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Duration,
    to: Duration,
}

impl Window {
    fn holds(&self, at: Duration) -> bool {
        at >= self.from && at <= self.to
    }
}

fn failures<'a>(writes: &'a [Write], window: &Window) -> Vec<&'a Write> {
    writes
        .iter()
        .filter(|w| window.holds(w.sent) && matches!(w.answer, Answer::Failed(_)))
        .collect()
}

fn describe(writes: &[&Write]) -> String {
    writes
        .iter()
        .take(10)
        .map(|w| format!("{:?} at {:?}: {:?}", w.op, w.sent, w.answer))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn rollout_kill_and_apiserver_restart_under_load(env: &mut Env) {
    env.uninstalled();
    env.crds_installed();
    // The webhooks call the balancer, on the port the suite registered.
    let balancer = env
        .runtime
        .block_on(Balancer::start(
            env.cluster.prodguard_port,
            balancer::probe_period(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let _closed = Closed(balancer.clone(), env.cluster.prodguard_port);
    // rbac-hygiene would refuse dev's grants below; the admin exempts dev.
    let policies = default_exempting("dev");
    let a = env.replica(&balancer, "prodguard-a", &policies);
    let b = env.replica(&balancer, "prodguard-b", &policies);
    let armed = Instant::now();
    while env.cluster.validating_failure_policies() != ["Fail", "Ignore"] {
        assert!(
            armed.elapsed() < Duration::from_secs(30),
            "not armed:\n{}",
            env.cluster.log_of("prodguard-a")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    env.namespace(NS);
    running_pod(
        env,
        NS,
        "postgres-0",
        json!({"app.kubernetes.io/name": "postgresql"}),
        "bitnami/postgresql:16",
    );
    assert!(env
        .apply(NS, &deployment("keep", 2, "nginx"))
        .status
        .success());
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "dev"},
         "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "dev"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dev"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]}
    ]});
    let output = env.apply(NS, &rbac);
    assert!(output.status.success(), "{}", err(&output));
    let dev = env
        .runtime
        .block_on(async {
            let kubeconfig = kube::config::Kubeconfig::read_from(&env.cluster.kubeconfig)
                .map_err(|e| e.to_string())?;
            let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            config.auth_info.impersonate = Some("dev".into());
            kube::Client::try_from(config).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("a client for dev: {e}"));

    let load = Load::start(env, dev);
    std::thread::sleep(Duration::from_secs(3));

    // 1. A rolling update: a new replica ready, then an old one's pod deleted; twice.
    let rolling_from = load.now();
    let c = env.replica(&balancer, "prodguard-c", &policies);
    let took_a = delete_pod(env, &balancer, a);
    let d = env.replica(&balancer, "prodguard-d", &policies);
    let took_b = delete_pod(env, &balancer, b);
    let rolling = Window {
        from: rolling_from,
        to: load.now(),
    };
    std::thread::sleep(Duration::from_secs(2));

    // 2. SIGKILL the replica that writes the certificates.
    let writer = env.lease_holder("prodguard-certs");
    let auditor_before = env.lease_holder("prodguard-audit");
    let (mut killed, survivor) = if writer == c.name { (c, d) } else { (d, c) };
    assert_eq!(killed.name, writer, "the writer is one of the two replicas");
    let kill_from = load.now();
    let in_flight = load.in_flight.load(Ordering::SeqCst);
    balancer.remove(&killed.backend);
    let mut child = killed.process.0.take().expect("a process");
    let _ = child.kill();
    let _ = child.wait();
    let killed_at = Instant::now();
    let mut moved = [None, None];
    // For each Lease the killed replica held: its last renewal, and when the survivor took it.
    let mut last_renewal = [None, None];
    let mut taken_at = [None, None];
    while moved.iter().any(Option::is_none) {
        for (i, lease) in ["prodguard-certs", "prodguard-audit"].iter().enumerate() {
            if moved[i].is_some() {
                continue;
            }
            let (holder, renewed, acquired) = env.lease(lease);
            if holder == killed.name {
                last_renewal[i] = renewed;
            } else if holder == survivor.name {
                moved[i] = Some(killed_at.elapsed());
                taken_at[i] = acquired;
            }
        }
        assert!(
            killed_at.elapsed() < LEASE_DURATION * 3,
            "the Leases did not move to {} ({moved:?})",
            survivor.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kubelet restarts the container.
    let e = env.replica(&balancer, "prodguard-e", &policies);
    let kill = Window {
        // A write in flight on the killed replica may have been sent up to the webhooks'
        // timeout before (deploy/base: 5 s), but not during the rolling update, which had none.
        from: kill_from.saturating_sub(WEBHOOK_TIMEOUT).max(rolling.to),
        to: load.now(),
    };
    std::thread::sleep(Duration::from_secs(1));
    let cut = killed.backend.cut.load(Ordering::SeqCst);
    let [certs_moved, audit_moved] = moved.map(|m| m.unwrap_or_default());
    // The promise (`Hold::next_try`): a killed holder is replaced within --lease-duration of
    // its last renewal. Measured between the two times the API server stored, so that how
    // often this test looks does not count.
    let handover: Vec<(&str, Duration)> = ["certificates", "audit"]
        .into_iter()
        .zip(last_renewal.into_iter().zip(taken_at))
        .filter_map(|(what, (renewed, taken))| {
            let (renewed, taken) = (
                renewed?,
                taken.expect("the survivor's Lease has an acquireTime"),
            );
            let gap = taken.duration_since(renewed);
            Some((
                what,
                Duration::try_from(gap).expect("acquired after the last renewal"),
            ))
        })
        .collect();

    // 3. kube-apiserver and etcd restarted under prodguard.
    let pids = [
        survivor.process.0.as_ref().map(std::process::Child::id),
        e.process.0.as_ref().map(std::process::Child::id),
    ];
    let restart_from = load.now();
    let down_for = env
        .cluster
        .restart_control_plane()
        .unwrap_or_else(|e| panic!("{e}"));
    let restart = Window {
        from: restart_from,
        to: load.now() + Duration::from_secs(1),
    };
    let minor = env
        .runtime
        .block_on(env.client.apiserver_version())
        .map(|info| {
            info.minor
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u32>()
                .unwrap_or(u32::MAX)
        })
        .unwrap_or_else(|e| panic!("the restarted API server's version: {e}"));
    // The webhook configurations' watch: a failure policy set to Ignore is set back.
    env.ok(&[
        "patch",
        "validatingwebhookconfiguration",
        "prodguard",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]"#,
    ]);
    let rearmed = Duration::from_secs_f64(env.wait_for(
        Duration::from_secs(30),
        "the failure policy restored after the API server's restart",
        |env| env.cluster.validating_failure_policies() == ["Fail", "Ignore"],
    ));
    // The PolicyExceptions' watch: one made now lifts, and stops lifting once deleted.
    let exception = json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
        "metadata": {"name": "lift"},
        "spec": {"policies": ["min-replicas"], "match": {"kinds": ["Deployment"], "names": ["lifted-*"]},
                 "reason": "a one-replica batch", "expires": super::rfc3339_from_now(600)}});
    // Writes sent while the exception is being created may be lifted: from here on.
    let creating = load.now();
    assert!(env.apply(NS, &exception).status.success());
    let created = load.now();
    let probe = |env: &Env, i: usize| {
        env.kubectl(&[
            "create",
            "deployment",
            &format!("lifted-probe-{i}"),
            "--image=nginx",
            "--replicas=1",
            "-n",
            NS,
        ])
        .status
        .success()
    };
    let mut i = 0;
    env.wait_for(
        Duration::from_secs(30),
        "the exception made after the restart lifts",
        |env| {
            i += 1;
            probe(env, i)
        },
    );
    let lifted_after = load.now() - created;
    // The watch retries every 2 s at most (src/retry.rs), and kubectl's probes take their time.
    assert!(
        lifted_after <= Duration::from_secs(5),
        "the exception made after the restart lifted only {lifted_after:?} after its creation"
    );
    std::thread::sleep(Duration::from_secs(2));
    env.ok(&["delete", "policyexception", "lift", "-n", NS]);
    let deleted = load.now();
    env.wait_for(
        Duration::from_secs(30),
        "the exception stops lifting once deleted",
        |env| {
            i += 1;
            !probe(env, i)
        },
    );
    let stopped_after = load.now() - deleted;
    for (pid, replica) in pids.iter().zip([&survivor, &e]) {
        let now = replica.process.0.as_ref().map(std::process::Child::id);
        assert_eq!(*pid, now, "{} was restarted", replica.name);
    }
    std::thread::sleep(Duration::from_secs(2));

    // 4. The policy file changes: min-replicas 2 -> 3, in every replica's file.
    let changed_from = load.now();
    assert!(policies.contains("    minReplicas: 2"));
    let config = policies.replacen("    minReplicas: 2", "    minReplicas: 3", 1);
    for replica in [&survivor, &e] {
        let path = env
            .cluster
            .dir
            .path()
            .join(format!("{}-config.yaml", replica.name));
        std::fs::write(&path, &config).expect("rewrite the policy file");
    }
    std::thread::sleep(RELOAD_INTERVAL * 2);
    let config_change = Window {
        from: changed_from,
        to: load.now(),
    };
    std::thread::sleep(Duration::from_secs(2));

    let writes = load.stop(env);
    let end = writes.last().map(|w| w.sent).unwrap_or_default();
    let all = Window {
        from: Duration::ZERO,
        to: end,
    };

    // Every answer: prodguard's verdict, or (only while it was down) the API server's absence.
    let outside_restart: Vec<&Write> = writes
        .iter()
        .filter(|w| matches!(w.answer, Answer::ApiDown(_)) && !restart.holds(w.sent))
        .collect();
    assert!(
        outside_restart.is_empty(),
        "the API server failed writes while it was up:\n{}",
        describe(&outside_restart)
    );
    let api_down = writes
        .iter()
        .filter(|w| matches!(w.answer, Answer::ApiDown(_)))
        .count();
    let rolling_failed = failures(&writes, &rolling);
    assert!(
        rolling_failed.is_empty(),
        "writes failed during the rolling update:\n{}",
        describe(&rolling_failed)
    );
    // kube-apiserver before 1.21 admits, for a moment after it starts, before its webhook
    // configurations take effect (kubernetes/kubernetes#95783, fixed in 1.21): a write sent
    // while it was down and answered by it then is admitted as if no webhook existed. That is
    // the API server's, not prodguard's, when the restarted server called no webhook that
    // failed: it logs each such call ("Failed calling webhook"). Counted, and allowed only then.
    let failed_calls = env
        .cluster
        .apiserver_log_now()
        .iter()
        .filter(|line| line.contains("Failed calling webhook"))
        .count();
    let unhooked: Vec<&Write> = failures(&writes, &restart)
        .into_iter()
        .filter(|w| matches!(&w.answer, Answer::Failed(m) if m.starts_with("admitted")))
        .filter(|_| minor < 21 && failed_calls == 0)
        .collect();
    // A kube-apiserver told to stop closes its listener at once but finishes the requests it
    // holds: an exec into the database pod in flight then (sent up to the webhooks' timeout
    // before) reaches db-access, whose pod lookup cannot connect, and is denied because
    // db-access fails closed. Denied either way, by the promise db-access makes; counted.
    let going_away = Window {
        from: restart.from.saturating_sub(WEBHOOK_TIMEOUT),
        to: restart.to,
    };
    let closed_lookups: Vec<&Write> = failures(&writes, &going_away)
        .into_iter()
        .filter(|w| {
            w.op == Op::Exec
                && matches!(&w.answer, Answer::Failed(m) if m.starts_with("403")
                    && m.contains("[db-access] cannot tell whether pod")
                    && m.contains("denied because db-access fails closed"))
        })
        .collect();
    let excused = |w: &&Write| {
        unhooked
            .iter()
            .chain(&closed_lookups)
            .any(|u| std::ptr::eq(*u, *w))
    };
    let all_failed: Vec<&Write> = failures(&writes, &all)
        .into_iter()
        .filter(|w| !excused(w))
        .collect();
    let kill_failed = failures(&writes, &kill);
    assert!(
        kill_failed.len() <= cut,
        "{} writes failed when a replica was killed with {cut} requests in flight on it:\n{}",
        kill_failed.len(),
        describe(&kill_failed)
    );
    assert_eq!(
        all_failed.len(),
        kill_failed.len(),
        "writes failed outside the kill:\n{}",
        describe(&all_failed)
    );
    assert!(
        !handover.is_empty(),
        "the killed replica held neither Lease"
    );
    for (what, gap) in &handover {
        assert!(
            *gap <= LEASE_DURATION + TAKEOVER_MARGIN,
            "the {what} Lease was taken {gap:?} after the killed holder's last renewal; --lease-duration is {LEASE_DURATION:?}"
        );
    }

    // The exception: no write sent before its creation, or after its deletion (and the watch's
    // moment to see it), was lifted.
    let late_lift: Vec<&Write> = writes
        .iter()
        .filter(|w| {
            w.op == Op::Lifted
                && w.answer == Answer::Patched
                && (w.sent < creating || w.sent > deleted + stopped_after)
        })
        .collect();
    assert!(
        late_lift.is_empty(),
        "writes lifted outside the exception's life:\n{}",
        describe(&late_lift)
    );
    // The configuration: 2 replicas admitted before the change, denied once reloaded.
    let mut flipped = None;
    for w in writes.iter().filter(|w| w.op == Op::TwoReplicas) {
        match (&w.answer, w.sent < changed_from) {
            (Answer::Denied, true) => panic!("a 2-replica Deployment was denied before the change"),
            (Answer::Patched, false) => flipped = Some(w.sent - changed_from),
            _ => {}
        }
    }
    let flipped = flipped.unwrap_or_default();
    assert!(
        flipped <= RELOAD_INTERVAL + Duration::from_secs(1),
        "a 2-replica Deployment was admitted {flipped:?} after the change (reload interval {RELOAD_INTERVAL:?})"
    );
    assert!(
        writes
            .iter()
            .filter(|w| w.op == Op::TwoReplicas && w.sent > config_change.to)
            .all(|w| w.answer == Answer::Denied),
        "the new setting does not hold"
    );

    let per_op = |op: Op| writes.iter().filter(|w| w.op == op).count();
    println!(
        "  {} writes in {:.0} s ({:.0}/s; {} admitted, {} denied), {} failed",
        writes.len(),
        end.as_secs_f64(),
        writes.len() as f64 / end.as_secs_f64().max(1.0),
        writes
            .iter()
            .filter(|w| w.answer == Answer::Patched)
            .count(),
        writes.iter().filter(|w| w.answer == Answer::Denied).count(),
        all_failed.len()
    );
    println!(
        "  of each kind: {:?}; the balancer closed {} connections for want of a ready replica, {} were refused by one",
        OPS.map(|op| (op, per_op(op))),
        balancer.no_endpoint.load(Ordering::SeqCst),
        balancer.refused.load(Ordering::SeqCst)
    );
    println!(
        "  per replica a to e (connections, most open at once, cut mid-request, ended before answering): {:?}",
        balancer.stats()
    );
    println!(
        "  1. rolling update: {:.1} s, 0 failed; old replicas exited {:.1} s and {:.1} s after SIGTERM",
        (rolling.to - rolling.from).as_secs_f64(),
        took_a.as_secs_f64(),
        took_b.as_secs_f64()
    );
    println!(
        "  2. SIGKILL of {}: {} failed, {cut} requests in flight on it ({in_flight} writes in flight in all); \
         Leases on {} after {:.1} s (certificates) and {:.1} s (audit{}); taken {} after the last renewal",
        killed.name,
        kill_failed.len(),
        survivor.name,
        certs_moved.as_secs_f64(),
        audit_moved.as_secs_f64(),
        if auditor_before == killed.name { ", moved" } else { ", already there" },
        handover
            .iter()
            .map(|(what, gap)| format!("{:.2} s ({what})", gap.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    println!(
        "  3. API server restart: {:.1} s from SIGTERM to ready, {api_down} writes found it down, 0 failed by prodguard; \
         failure policy restored {:.1} s after a change, an exception lifted {:.1} s after its creation \
         and stopped {:.2} s after its deletion{}",
        down_for.as_secs_f64(),
        rearmed.as_secs_f64(),
        lifted_after.as_secs_f64(),
        stopped_after.as_secs_f64(),
        [
            (!unhooked.is_empty()).then(|| format!(
                "; {} writes admitted by kube-apiserver 1.{minor} before its webhook configurations \
                 took effect (kubernetes/kubernetes#95783, fixed in 1.21; it called no webhook that failed)",
                unhooked.len()
            )),
            (!closed_lookups.is_empty()).then(|| format!(
                "; {} execs in flight as it stopped denied by db-access failing closed (its pod lookup could not connect)",
                closed_lookups.len()
            )),
        ]
        .into_iter()
        .flatten()
        .collect::<String>()
    );
    println!(
        "  4. configuration change: 0 failed; min-replicas 3 in force {:.1} s after the file changed",
        flipped.as_secs_f64()
    );

    // Tidy: the writes' objects go; then the suite's single prodguard with certificate files.
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), NS);
    let _ = env
        .runtime
        .block_on(api.delete_collection(&DeleteParams::default(), &ListParams::default()));
    drop(survivor);
    drop(e);
    drop(_closed);
    env.reinstalled_with_files();
}

/// The balancer stops listening when dropped, and the port is free again for the next
/// scenario's prodguard.
struct Closed(Arc<Balancer>, u16);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.close();
        let started = Instant::now();
        while std::net::TcpListener::bind(("127.0.0.1", self.1)).is_err()
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
