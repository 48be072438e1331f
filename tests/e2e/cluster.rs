//! A test cluster of its own: etcd and kube-apiserver 1.20.2 on 127.0.0.1 (free ports), a
//! PKI made with rcgen, an admin kubeconfig (system:masters), and prodguard registered with the
//! webhook configurations of deploy/. Everything is stopped by PID when the cluster is
//! dropped, also when a scenario panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use serde_json::Value;

pub const APISERVER_VERSION: &str = "1.20.2";
/// Where scripts/test-deps.sh caches the binary, under the cache directory (keep in step).
pub const APISERVER_BUILD_ID: &str = "kube-apiserver-1.20.2-reflect2-1.0.2";

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub prodguard_port: u16,
    pub metrics_port: u16,
    pub certs_dir: PathBuf,
    /// The CA of the cluster, which signed the API server's webhook client certificate.
    pub ca_file: PathBuf,
    processes: Vec<(String, Child)>,
    /// How etcd and kube-apiserver are started, in that order (to start them again).
    control_plane: Vec<Launch>,
    prodguard: Option<Child>,
}

/// A process of the control plane: its program, arguments and log.
struct Launch {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Result<Child, String> {
        spawn(
            &self.name,
            Command::new(&self.program).args(&self.args),
            &self.log,
        )
    }
}

/// The API server's bearer token of user `e2e-prometheus`.
pub const PROMETHEUS_TOKEN: &str = "e2e-prometheus-token";
/// The API server's bearer token of user `e2e-dev`.
pub const DEV_TOKEN: &str = "e2e-dev-token";

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PRODGUARD_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("prodguard")
}

/// The kube-apiserver binary built by scripts/test-deps.sh.
pub fn apiserver_binary() -> Result<PathBuf, String> {
    let path = match std::env::var("PRODGUARD_KUBE_APISERVER") {
        Ok(path) => PathBuf::from(path),
        Err(_) => cache_dir().join(APISERVER_BUILD_ID).join("kube-apiserver"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "kube-apiserver {APISERVER_VERSION} is not at {}; run scripts/test-deps.sh (it builds and caches it)",
            path.display()
        ))
    }
}

fn which(binary: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!(
            "{binary} is not installed; run scripts/test-deps.sh"
        ))
    }
}

struct Pki {
    ca_pem: String,
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn make_pki(dir: &Path) -> Result<Pki, String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name
        .push(DnType::CommonName, "e2e cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);

    let serving_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
    ])
    .map_err(e)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer).map_err(e)?;

    let admin_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut admin = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "e2e-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer).map_err(e)?;

    // What kube-apiserver presents to webhooks (its admission configuration's kubeconfig).
    let webhook_client_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut webhook_client = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    webhook_client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-webhook-client");
    webhook_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let webhook_client_cert = webhook_client
        .signed_by(&webhook_client_key, &issuer)
        .map_err(e)?;
    write(&dir.join("webhook-client.crt"), &webhook_client_cert.pem())?;
    write(
        &dir.join("webhook-client.key"),
        &webhook_client_key.serialize_pem(),
    )?;

    let sa_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;

    write(&dir.join("ca.crt"), &ca_cert.pem())?;
    write(&dir.join("apiserver.crt"), &serving_cert.pem())?;
    write(&dir.join("apiserver.key"), &serving_key.serialize_pem())?;
    write(&dir.join("admin.crt"), &admin_cert.pem())?;
    write(&dir.join("admin.key"), &admin_key.serialize_pem())?;
    write(&dir.join("sa.key"), &sa_key.serialize_pem())?;
    write(&dir.join("sa.pub"), &sa_key.public_key_pem())?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
    })
}

fn spawn(name: &str, command: &mut Command, log: &Path) -> Result<Child, String> {
    // Appended to: a process started again (the control plane's restart) keeps its first log.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
    command
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

impl TestCluster {
    pub fn start() -> Result<TestCluster, String> {
        let apiserver = apiserver_binary()?;
        which("etcd")?;
        which("kubectl")?;
        let dir = tempfile::Builder::new()
            .prefix("prodguard-e2e-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let root = dir.path().to_path_buf();
        let pki = make_pki(&root)?;
        let mut cluster = TestCluster {
            kubeconfig: root.join("kubeconfig"),
            certs_dir: root.join("prodguard-certs"),
            prodguard_port: free_port()?,
            metrics_port: free_port()?,
            ca_file: root.join("ca.crt"),
            dir,
            processes: Vec::new(),
            control_plane: Vec::new(),
            prodguard: None,
        };

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd = Launch {
            name: "etcd".into(),
            program: PathBuf::from("etcd"),
            args: vec![
                "--name=e2e".into(),
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"),
            ],
            log: root.join("etcd.log"),
        };
        cluster.processes.push(("etcd".into(), etcd.spawn()?));
        cluster.control_plane.push(etcd);

        let secure_port = free_port()?;
        let file = |name: &str| root.join(name).display().to_string();
        // The API server authenticates to webhooks with a client certificate.
        write(
            &root.join("webhook-kubeconfig"),
            &format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate: {}\n    client-key: {}\n",
                file("webhook-client.crt"),
                file("webhook-client.key")
            ),
        )?;
        let plugin = |name: &str| {
            format!(
                "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
                file("webhook-kubeconfig")
            )
        };
        write(
            &root.join("admission.yaml"),
            &format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
                plugin("ValidatingAdmissionWebhook"),
                plugin("MutatingAdmissionWebhook")
            ),
        )?;
        // Bearer tokens for the metrics reader tests (--metrics-auth=kubernetes).
        write(
            &root.join("tokens.csv"),
            &format!(
                "{PROMETHEUS_TOKEN},e2e-prometheus,uid-prometheus\n{DEV_TOKEN},e2e-dev,uid-dev\n"
            ),
        )?;
        let apiserver = Launch {
            name: "kube-apiserver".into(),
            program: apiserver,
            args: vec![
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={secure_port}"),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={}", file("apiserver.crt")),
                format!("--tls-private-key-file={}", file("apiserver.key")),
                format!("--client-ca-file={}", file("ca.crt")),
                format!("--token-auth-file={}", file("tokens.csv")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", file("sa.pub")),
                format!("--service-account-signing-key-file={}", file("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                // Ephemeral containers are alpha in 1.20 (db-access refuses them into database
                // pods); on by default from 1.23.
                "--feature-gates=EphemeralContainers=true".into(),
                // No controller-manager runs to create service account tokens.
                "--disable-admission-plugins=ServiceAccount".into(),
                "--endpoint-reconciler-type=none".into(),
                format!("--admission-control-config-file={}", file("admission.yaml")),
                format!("--cert-dir={}", file("apiserver-certs")),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
            log: root.join("kube-apiserver.log"),
        };
        cluster
            .processes
            .push(("kube-apiserver".into(), apiserver.spawn()?));
        cluster.control_plane.push(apiserver);

        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{secure_port}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin, namespace: default}}\ncurrent-context: e2e\n",
            ca = file("ca.crt"),
            crt = file("admin.crt"),
            key = file("admin.key"),
        );
        write(&cluster.kubeconfig, &kubeconfig)?;
        let _ = pki.ca_pem;

        cluster.wait_ready()?;
        // The API server creates `default` itself; wait for it and its RBAC bootstrap.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster
            .kubectl(&["get", "namespace", "default"])
            .status
            .success()
            || !cluster
                .kubectl(&["get", "clusterrole", "admin"])
                .status
                .success()
        {
            if Instant::now() > deadline {
                return Err("the default namespace or RBAC bootstrap roles never appeared".into());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(cluster)
    }

    /// Waits until the API server answers `/readyz`; an error when a control plane process
    /// exits or 120 s pass.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = self.kubectl(&["get", "--raw", "/readyz"]);
            if ready.status.success() {
                return Ok(());
            }
            for (i, (name, child)) in self.processes.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = &self.control_plane[i].log;
                    return Err(format!("{name} exited ({status}):\n{}", tail(log)));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver was not ready within 120 s:\n{}\n{}",
                    String::from_utf8_lossy(&ready.stderr),
                    tail(&self.control_plane[1].log)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops kube-apiserver and etcd (SIGTERM, as a node's restart does) and starts them again
    /// on the same ports and data, waiting until the API server is ready. Returns how long it
    /// took, from the SIGTERM to the API server's being ready again.
    pub fn restart_control_plane(&mut self) -> Result<Duration, String> {
        let stopped = Instant::now();
        while let Some((name, child)) = self.processes.pop() {
            stop(&name, child);
        }
        for launch in &self.control_plane {
            let child = launch.spawn()?;
            self.processes.push((launch.name.clone(), child));
        }
        self.wait_ready()?;
        Ok(stopped.elapsed())
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// kubectl with `input` on standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// The prodguard binary with this cluster's kubeconfig.
    pub fn prodguard(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_prodguard"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        for (key, _) in std::env::vars() {
            if key.starts_with("PRODGUARD_") {
                command.env_remove(key);
            }
        }
        command
    }

    /// Registers the webhook configurations shipped in deploy/, with the client config swapped
    /// for this machine's URL, then injects the CA bundle with `prodguard certs --inject`.
    pub fn register_webhooks(&self) -> Result<(), String> {
        self.apply_webhooks()?;
        self.inject_ca_bundle()
    }

    /// Deletes the webhook configurations and applies deploy/'s afresh (no CA bundle, the
    /// validating webhook failing open until prodguard arms it), as `kubectl apply -k` does on
    /// a new cluster.
    pub fn reapply_webhooks(&self) -> Result<(), String> {
        self.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "prodguard",
            "--ignore-not-found",
        ]);
        self.apply_webhooks()
    }

    /// Applies deploy/base's webhook configurations with the client config swapped for this
    /// machine's URL (never their `service:`, which would make the API server dial a ClusterIP).
    fn apply_webhooks(&self) -> Result<(), String> {
        let rendered = self.kubectl(&["kustomize", "deploy/base"]);
        if !rendered.status.success() {
            return Err(format!(
                "kubectl kustomize deploy/base: {}",
                String::from_utf8_lossy(&rendered.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&rendered.stdout);
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("rendered deploy/base: {e}"))?;
        let mut webhooks = Vec::new();
        for mut doc in documents {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            if !kind.ends_with("WebhookConfiguration") {
                continue;
            }
            for webhook in doc["webhooks"].as_array_mut().into_iter().flatten() {
                let path = webhook["clientConfig"]["service"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                webhook["clientConfig"] = serde_json::json!({
                    "url": format!("https://127.0.0.1:{}{path}", self.prodguard_port)
                });
                // Kubernetes 1.20 predates matchConditions (its kubectl refuses the field): the
                // test server calls prodguard for every matching request. Their expressions are
                // evaluated in tests/match_conditions.rs instead.
                if let Some(fields) = webhook.as_object_mut() {
                    fields.remove("matchConditions");
                }
            }
            webhooks.push(doc);
        }
        if webhooks.len() != 2 {
            return Err(format!(
                "deploy/base holds {} webhook configurations, not 2",
                webhooks.len()
            ));
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": webhooks});
        let applied = self.kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
        if !applied.status.success() {
            return Err(format!(
                "registering the webhooks: {}",
                String::from_utf8_lossy(&applied.stderr)
            ));
        }
        Ok(())
    }

    fn inject_ca_bundle(&self) -> Result<(), String> {
        let certs = self
            .prodguard()
            .args([
                "certs",
                "--service",
                "prodguard",
                "--namespace",
                "prodguard",
                "--san",
                "127.0.0.1",
                "--inject",
                "--out-dir",
            ])
            .arg(&self.certs_dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !certs.status.success() {
            return Err(format!(
                "prodguard certs --inject: {}",
                String::from_utf8_lossy(&certs.stderr)
            ));
        }
        Ok(())
    }

    /// (Re)starts prodguard on the registered port with `config` (YAML) and extra arguments.
    /// The background audit is off unless `args` turn it on.
    pub fn serve(&mut self, config: &str, args: &[&str]) -> Result<(), String> {
        self.stop_prodguard();
        let child = self.start_prodguard(
            "prodguard",
            self.prodguard_port,
            self.metrics_port,
            config,
            args,
        )?;
        self.prodguard = Some(child);
        if !args.contains(&"--manage-certs") {
            self.wait_armed()?;
        }
        Ok(())
    }

    /// The failure policy of each webhook of the validating configuration, in order.
    pub fn validating_failure_policies(&self) -> Vec<String> {
        let output = self.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "prodguard",
            "-o",
            "jsonpath={.webhooks[*].failurePolicy}",
        ]);
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until prodguard has set validate.prodguard.io to fail closed (it does once the
    /// certificate it serves is in the bundle), as scenarios that stop prodguard rely on it.
    pub fn wait_armed(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let policies = self.validating_failure_policies();
            if policies.first().map(String::as_str) == Some("Fail") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "prodguard did not arm validate.prodguard.io within 20 s (failure policies {policies:?}):\n{}",
                    self.prodguard_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a prodguard process `name` (its log is `<name>.log`) and waits until it listens.
    pub fn start_prodguard(
        &self,
        name: &str,
        port: u16,
        metrics_port: u16,
        config: &str,
        args: &[&str],
    ) -> Result<Child, String> {
        self.start_prodguard_as(name, port, metrics_port, config, args, &self.kubeconfig)
    }

    /// [`TestCluster::start_prodguard`] with another kubeconfig. With `--manage-certs` in
    /// `args`, no certificate files are given.
    pub fn start_prodguard_as(
        &self,
        name: &str,
        port: u16,
        metrics_port: u16,
        config: &str,
        args: &[&str],
        kubeconfig: &Path,
    ) -> Result<Child, String> {
        let files = !args
            .iter()
            .any(|a| a.starts_with("--manage-certs") || a.starts_with("--tls-cert"));
        let config_path = self.dir.path().join(format!("{name}-config.yaml"));
        write(&config_path, config)?;
        let log = self.dir.path().join(format!("{name}.log"));
        // A fresh log: the wait below reads it for this process's "listening".
        let _ = std::fs::remove_file(&log);
        let mut child = spawn(
            name,
            self.prodguard()
                .arg("serve")
                .arg(format!("--addr=127.0.0.1:{port}"))
                .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
                .args(
                    (!args.iter().any(|a| a.starts_with("--audit-interval")))
                        .then_some("--audit-interval=off"),
                )
                // The e2e suite restarts prodguard often: no drain delay, unless asked.
                .args(
                    (!args.iter().any(|a| a.starts_with("--shutdown-delay")))
                        .then_some("--shutdown-delay=0s"),
                )
                .args(
                    files
                        .then(|| {
                            [
                                format!("--tls-cert={}", self.certs_dir.join("tls.crt").display()),
                                format!("--tls-key={}", self.certs_dir.join("tls.key").display()),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                )
                .env("KUBECONFIG", kubeconfig)
                .arg(format!("--config={}", config_path.display()))
                .arg("--log=info")
                .env("POD_NAME", name)
                .args(args),
            &log,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on https://") {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status}):\n{}", tail(&log)));
            }
            if Instant::now() > deadline {
                stop(name, child);
                return Err(format!("{name} did not start:\n{}", tail(&log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop_prodguard(&mut self) {
        if let Some(child) = self.prodguard.take() {
            stop("prodguard", child);
        }
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, String> {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|e| e.to_string())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        kube::Client::try_from(config).map_err(|e| e.to_string())
    }

    /// The process id of the prodguard started by [`TestCluster::serve`].
    pub fn prodguard_pid(&self) -> Option<u32> {
        self.prodguard.as_ref().map(Child::id)
    }

    pub fn prodguard_log(&self) -> String {
        self.log_of("prodguard")
    }

    /// The log lines of the kube-apiserver running now (klog's header carries the PID; the log
    /// of a restarted one is appended to its predecessor's).
    pub fn apiserver_log_now(&self) -> Vec<String> {
        let Some(pid) = self
            .processes
            .iter()
            .find(|(name, _)| name == "kube-apiserver")
            .map(|(_, child)| child.id().to_string())
        else {
            return Vec::new();
        };
        let text =
            std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        text.lines()
            .filter(|line| line.split_whitespace().nth(2) == Some(pid.as_str()))
            .map(str::to_owned)
            .collect()
    }

    /// The end of the log of the prodguard process `name`.
    pub fn log_of(&self, name: &str) -> String {
        tail(&self.dir.path().join(format!("{name}.log")))
    }
}

/// `GET /metrics` of a prodguard on this machine.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ =
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The value of the metric line that is `series` (name and labels) then a value, or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn free(name: &str) -> u16 {
    free_port().unwrap_or_else(|e| panic!("no free port for {name}: {e}"))
}

/// SIGTERM, then SIGKILL after 10 s.
pub fn stop(name: &str, mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("e2e: {name} did not stop on SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop_prodguard();
        // The API server first, then etcd.
        while let Some((name, child)) = self.processes.pop() {
            stop(&name, child);
        }
        if std::env::var_os("PRODGUARD_E2E_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("e2e: kept {}", kept.keep().display());
        }
    }
}
