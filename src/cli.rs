//! The command line (clap derive). Every flag has an environment variable; no logic here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "prodguard",
    version,
    about = "Kubernetes admission webhook that enforces the OpenG2P production deployment guide"
)]
pub struct Cli {
    /// Log filter: a level (`info`, `debug`) or `target=level` pairs (`prodguard=debug,info`).
    #[arg(long, env = "PRODGUARD_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "PRODGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

// Parsed once at startup: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook server (POST /mutate, POST /validate, GET /healthz, GET /readyz).
    Serve(ServeArgs),
    /// Evaluate manifests offline: print violations and the patches that would apply.
    Check(CheckArgs),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(CertsArgs),
    /// Evaluate what the cluster of the current kubeconfig holds now, once.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Policy configuration file; the embedded default by default.
    #[arg(long, env = "PRODGUARD_AUDIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// `audit` reports every violation as a warning.
    #[arg(long, env = "PRODGUARD_AUDIT_MODE", value_enum)]
    pub mode: Option<ModeArg>,
    /// Output format (the schema of `check`).
    #[arg(short = 'o', long, env = "PRODGUARD_AUDIT_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PRODGUARD_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: String,
    /// Policy configuration file; the embedded policies/openg2p-production.yaml by default.
    #[arg(long, env = "PRODGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// `audit` runs every policy in audit mode, whatever the configuration says.
    #[arg(long, env = "PRODGUARD_MODE", value_enum)]
    pub mode: Option<ModeArg>,
    /// Serving certificate (PEM). Without it and --tls-key, a self-signed one is generated.
    #[arg(long, env = "PRODGUARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(long, env = "PRODGUARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Answer reviews (POST /mutate, /validate) only for a client certificate signed by this
    /// CA (PEM) and named in --client-subjects: the API server's, from its admission
    /// configuration's kubeconfig. Re-read like --tls-cert. /healthz and /readyz need none
    /// (the kubelet's probes present none). Without it, no client certificate is asked for.
    #[arg(long, env = "PRODGUARD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: the names allowed to call /mutate and /validate (comma-separated),
    /// each matched exactly against the client certificate's common name and its DNS and URI
    /// subject alternative names.
    #[arg(
        long,
        env = "PRODGUARD_CLIENT_SUBJECTS",
        value_delimiter = ',',
        default_value = "kube-apiserver"
    )]
    pub client_subjects: Vec<String>,
    /// Where to write the CA bundle of a generated certificate.
    #[arg(long, env = "PRODGUARD_CA_OUT")]
    pub ca_out: Option<PathBuf>,
    /// Issue, renew and rotate the certificates in the Secret --cert-secret (one replica, the
    /// holder of the Lease prodguard-certs, writes), serve them as they change, and keep the CA
    /// bundle of both webhook configurations. Not with --tls-cert.
    #[arg(
        long,
        env = "PRODGUARD_MANAGE_CERTS",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub manage_certs: bool,
    /// The Secret of --manage-certs, in prodguard's namespace (POD_NAMESPACE or --lease-namespace).
    #[arg(long, env = "PRODGUARD_CERT_SECRET", default_value = "prodguard-tls")]
    pub cert_secret: String,
    /// The name of the mutating and of the validating webhook configuration: their CA bundle
    /// is kept with --manage-certs, and the webhooks their annotation
    /// prodguard.io/fail-closed-when-ready names are set to fail closed once the certificate
    /// served is in the bundle.
    #[arg(
        long,
        env = "PRODGUARD_WEBHOOK_CONFIGURATION",
        default_value = "prodguard"
    )]
    pub webhook_configuration: String,
    /// The Service the API server calls: the serving certificate is for its DNS names unless
    /// --cert-dns-names says.
    #[arg(long, env = "PRODGUARD_CERT_SERVICE", default_value = "prodguard")]
    pub cert_service: String,
    /// The DNS names of the serving certificate (comma-separated); the Service's by default
    /// (prodguard, prodguard.NS, prodguard.NS.svc, prodguard.NS.svc.cluster.local).
    #[arg(long, env = "PRODGUARD_CERT_DNS_NAMES", value_delimiter = ',')]
    pub cert_dns_names: Vec<String>,
    /// IP addresses the serving certificate is also for (comma-separated; for tests and
    /// webhooks registered by URL).
    #[arg(long, env = "PRODGUARD_CERT_IP_ADDRESSES", value_delimiter = ',')]
    pub cert_ip_addresses: Vec<String>,
    /// How long a serving certificate issued by --manage-certs is valid.
    #[arg(long, env = "PRODGUARD_CERT_VALIDITY", default_value = "365d")]
    pub cert_validity: String,
    /// How long before its end a serving certificate is renewed; a third of its validity by
    /// default.
    #[arg(long, env = "PRODGUARD_CERT_RENEW_BEFORE")]
    pub cert_renew_before: Option<String>,
    /// How long a CA issued by --manage-certs is valid; three times --cert-validity by default.
    /// It is rotated when a third of it is left.
    #[arg(long, env = "PRODGUARD_CA_VALIDITY")]
    pub ca_validity: Option<String>,
    /// How long each step of a CA rotation waits before the next (the API server and every
    /// replica see a change within seconds).
    #[arg(long, env = "PRODGUARD_CA_OVERLAP", default_value = "2m")]
    pub ca_overlap: String,
    /// Address of the Prometheus metrics (`GET /metrics`); `off` disables them.
    #[arg(long, env = "PRODGUARD_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: String,
    /// Who may read the metrics: `none` serves them over plain HTTP to anyone; `kubernetes`
    /// serves them over TLS (the serving certificate) to a bearer token that a TokenReview
    /// authenticates and a SubjectAccessReview allows to `get` the non-resource URL
    /// `/metrics` (as controller-runtime does; Prometheus sends its service account's token).
    #[arg(long, env = "PRODGUARD_METRICS_AUTH", value_enum, default_value_t = MetricsAuth::None)]
    pub metrics_auth: MetricsAuth,
    /// How often the background audit scans the cluster (`10m`, `30s`); `off` disables it.
    #[arg(long, env = "PRODGUARD_AUDIT_INTERVAL", default_value = "10m")]
    pub audit_interval: String,
    /// Namespace of the audit Lease; the pod's own namespace (POD_NAMESPACE) by default.
    #[arg(long, env = "PRODGUARD_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the audit Lease is held without renewal before another replica takes it.
    #[arg(long, env = "PRODGUARD_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: String,
    /// Connections served at once. At the limit the connection that has idled longest is
    /// closed to make room; when none idles, new ones wait until one ends.
    #[arg(long, env = "PRODGUARD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections one peer address may hold (kube-apiserver keeps up to 25 idle per host). At
    /// the cap the peer's longest-idle connection makes room; when none idles, the new
    /// connection is refused. Behind a proxy that hides the API servers' addresses
    /// (konnectivity), all of them count as one peer.
    #[arg(
        long,
        env = "PRODGUARD_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 512
    )]
    pub max_connections_per_peer: usize,
    /// TLS handshakes in progress at once; at the limit the oldest is dropped, so that a flood
    /// of unfinished handshakes cannot delay a real client's.
    #[arg(long, env = "PRODGUARD_MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,
    /// How long a review's body has to arrive after its headers; a body trickled more slowly
    /// is refused with 408.
    #[arg(long, env = "PRODGUARD_BODY_READ_TIMEOUT", default_value = "10s")]
    pub body_read_timeout: String,
    /// Memory the reviews in flight may hold together: each body, and twice the estimate of
    /// what decoding built from it. A review that does not fit waits for room within
    /// --body-read-timeout, then gets 503. At least 35,717,120 bytes: the largest body and
    /// what its objects may build.
    #[arg(long, env = "PRODGUARD_MAX_BYTES_IN_FLIGHT", default_value_t = crate::http::DEFAULT_BYTES_IN_FLIGHT)]
    pub max_bytes_in_flight: usize,
    /// How long a write to a client may make no progress (a client that does not read its
    /// answers) before its connection is closed.
    #[arg(long, env = "PRODGUARD_WRITE_TIMEOUT", default_value = "10s")]
    pub write_timeout: String,
    /// How long a client has to finish its TLS handshake.
    #[arg(long, env = "PRODGUARD_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: String,
    /// How long a new connection has, after its TLS handshake, to send its first request; one
    /// that sends nothing is closed (kube-apiserver sends at once). Only a connection that has
    /// completed a request may then idle for --header-read-timeout.
    #[arg(long, env = "PRODGUARD_FIRST_REQUEST_TIMEOUT", default_value = "5s")]
    pub first_request_timeout: String,
    /// How long a client has to send a request's headers, and how long a keep-alive connection
    /// (HTTP/1.1 or HTTP/2) may idle between requests (keep it above the API server's 90 s
    /// idle-connection timeout).
    #[arg(long, env = "PRODGUARD_HEADER_READ_TIMEOUT", default_value = "100s")]
    pub header_read_timeout: String,
    /// How often --config is re-read; a changed file that is valid replaces the policies in
    /// force, an invalid one is refused and the previous configuration stays. `off` disables it.
    #[arg(long, env = "PRODGUARD_CONFIG_RELOAD_INTERVAL", default_value = "10s")]
    pub config_reload_interval: String,
    /// After SIGTERM, how long to keep accepting connections with /readyz failing, so that
    /// endpoints stop routing to the pod before it stops listening; open connections then
    /// have 20 s to finish. SIGHUP never stops prodguard: it re-reads --config and the
    /// certificate files.
    #[arg(long, env = "PRODGUARD_SHUTDOWN_DELAY", default_value = "5s")]
    pub shutdown_delay: String,
    /// How often the certificate files are re-read for a rotated certificate.
    #[arg(long, env = "PRODGUARD_TLS_RELOAD_INTERVAL", default_value = "10s")]
    pub tls_reload_interval: String,
    /// Publish an Event (reason PolicyMutation) for each write prodguard patches. Off by
    /// default, as Kyverno's `generateSuccessEvents`: a patch is counted in the metrics and shown
    /// in the audit's reports, and no write waits behind an Event of its own; denials, warnings
    /// and PolicyExceptions keep their Events.
    #[arg(
        long,
        env = "PRODGUARD_PATCH_EVENTS",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub patch_events: bool,
    /// The CEL floor (docs/floor.md): `auto` has the replica holding the Lease `prodguard-floor`
    /// write each policy's floor as ValidatingAdmissionPolicies (Kubernetes 1.30+) and
    /// MutatingAdmissionPolicies (1.36+), whichever the API server serves; `off` writes none
    /// and deletes what an earlier run wrote.
    #[arg(long, env = "PRODGUARD_CEL_FLOOR", value_enum, default_value_t = crate::floor_writer::CelFloor::Auto)]
    pub cel_floor: crate::floor_writer::CelFloor,
    /// How often the CEL floor is reconciled (a configuration change, and the end of an
    /// exception it embeds, reconcile at once).
    #[arg(long, env = "PRODGUARD_CEL_FLOOR_INTERVAL", default_value = "30s")]
    pub cel_floor_interval: String,
    /// The API the background audit writes its reports in: wg-policy's PolicyReports
    /// (`wgpolicyk8s`), OpenReports' Reports (`openreports`) or both.
    #[arg(long, env = "PRODGUARD_REPORT_API", value_enum, default_value_t = crate::audit::reports::ReportApi::Wgpolicyk8s)]
    pub report_api: crate::audit::reports::ReportApi,
    /// The most results a PolicyReport holds; the rest are counted in an annotation.
    #[arg(long, env = "PRODGUARD_REPORT_MAX_RESULTS", default_value_t = 1000)]
    pub report_max_results: usize,
    /// The most results all PolicyReports hold together (it bounds the audit's memory on a
    /// cluster of many namespaces); the rest are counted. Lowered to fit a memory limit.
    #[arg(long, env = "PRODGUARD_AUDIT_MAX_RESULTS", default_value_t = 10_000)]
    pub audit_max_results: usize,
    /// The most objects the background audit asks for in one list call. Pages are also kept
    /// under 4 MiB of JSON (less under a tight memory limit), from the size of the objects
    /// listed so far.
    #[arg(long, env = "PRODGUARD_AUDIT_PAGE_SIZE", default_value_t = 500)]
    pub audit_page_size: u32,
    /// The most Events one background audit scan publishes, paced; the Events of further
    /// new findings are published by later scans.
    #[arg(long, env = "PRODGUARD_AUDIT_EVENTS_PER_SCAN", default_value_t = 100)]
    pub audit_events_per_scan: usize,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Manifest file, directory (searched recursively for .yaml, .yml and .json) or - for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        env = "PRODGUARD_CHECK_FILENAME",
        required = true,
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,
    /// Policy configuration file; the embedded default by default.
    #[arg(long, env = "PRODGUARD_CHECK_CONFIG")]
    pub config: Option<PathBuf>,
    /// `audit` reports every violation as a warning.
    #[arg(long, env = "PRODGUARD_CHECK_MODE", value_enum)]
    pub mode: Option<ModeArg>,
    /// Namespace for objects that name none (as `kubectl apply -n`).
    #[arg(
        short = 'n',
        long,
        env = "PRODGUARD_CHECK_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Treat namespaces that no Namespace object in the input defines as production
    /// namespaces (for opensearch-cluster and external-databases).
    #[arg(long, env = "PRODGUARD_CHECK_PRODUCTION")]
    pub production: bool,
    /// Output format.
    #[arg(short = 'o', long, env = "PRODGUARD_CHECK_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Name of the webhook Service.
    #[arg(long, env = "PRODGUARD_CERTS_SERVICE", default_value = "prodguard")]
    pub service: String,
    /// Namespace of the webhook Service.
    #[arg(long, env = "PRODGUARD_CERTS_NAMESPACE", default_value = "prodguard")]
    pub namespace: String,
    /// Directory to write ca.crt, tls.crt and tls.key to.
    #[arg(long, env = "PRODGUARD_CERTS_OUT_DIR", default_value = "certs")]
    pub out_dir: PathBuf,
    /// Replace certificates already in the directory.
    #[arg(long, env = "PRODGUARD_CERTS_FORCE")]
    pub force: bool,
    /// Another DNS name or IP address for the serving certificate (repeatable).
    #[arg(long = "san", env = "PRODGUARD_CERTS_SAN", value_delimiter = ',')]
    pub extra_names: Vec<String>,
    /// Patch the CA bundle into the webhook configurations of the cluster in the current
    /// kubeconfig (or in-cluster configuration). Reuses the certificates in --out-dir when
    /// they exist.
    #[arg(long, env = "PRODGUARD_CERTS_INJECT")]
    pub inject: bool,
    /// With --inject: inject this CA bundle (PEM) instead of --out-dir/ca.crt.
    #[arg(long, env = "PRODGUARD_CERTS_CA_FILE", requires = "inject")]
    pub ca_file: Option<PathBuf>,
    /// With --inject: the name of the mutating and validating webhook configurations.
    #[arg(
        long,
        env = "PRODGUARD_CERTS_WEBHOOK_NAME",
        default_value = "prodguard"
    )]
    pub webhook_name: String,
}

/// `--metrics-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuth {
    None,
    Kubernetes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag's environment variable follows one rule, and no two commands read the same
    /// variable: `serve`'s and the global flags are `PRODGUARD_<FLAG>`, the other commands'
    /// `PRODGUARD_<COMMAND>_<FLAG>` (so that a variable set for one never changes another, as
    /// `PRODGUARD_NAMESPACE` once changed `check -n` for `certs --namespace`).
    #[test]
    fn environment_variables_follow_one_rule_and_are_never_shared() {
        let cli = Cli::command();
        let mut seen: std::collections::BTreeMap<String, String> = Default::default();
        let mut check = |owner: &str, arg: &clap::Arg, prefix: &str| {
            let Some(long) = arg.get_long() else { return };
            if matches!(long, "help" | "version") {
                return;
            }
            let env = arg
                .get_env()
                .and_then(|e| e.to_str())
                .unwrap_or_else(|| panic!("{owner} --{long} has no environment variable"));
            let expected = format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"));
            assert_eq!(env, expected, "{owner} --{long}");
            if let Some(other) = seen.insert(env.to_owned(), format!("{owner} --{long}")) {
                panic!("{env} is read by {other} and by {owner} --{long}");
            }
        };
        for arg in cli.get_arguments() {
            check("prodguard", arg, "PRODGUARD_");
        }
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            let prefix = match name {
                "serve" => "PRODGUARD_".to_owned(),
                other => format!("PRODGUARD_{}_", other.to_ascii_uppercase()),
            };
            for arg in sub.get_arguments().filter(|a| !a.is_global_set()) {
                check(name, arg, &prefix);
            }
        }
        assert!(seen.contains_key("PRODGUARD_CHECK_NAMESPACE"));
        assert!(seen.contains_key("PRODGUARD_CERTS_NAMESPACE"));
    }
}
