//! `prodguard serve`: the webhook server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{load_config, EXIT_BAD_INPUT};
use crate::audit::background::{self, AuditSettings};
use crate::audit::lease::{LeaseSettings, LEASE_NAME};
use crate::certs::{self, pki};
use crate::cli::{MetricsAuth as MetricsAuthArg, ServeArgs};
use crate::cluster::KubeLookup;
use crate::config::GlobalMode;
use crate::engine::Engine;
use crate::http::{app, metrics_app, AppState};
use crate::policies::Config;
use crate::report::events::{self, EventSink, EventStats};
use crate::report::metrics::Metrics;
use crate::report::{LogReporter, NoReporter, Reporter};
use crate::server::{self, tls};
use crate::unit::{ClusterLookup, NoLookup};

pub fn run(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// A duration flag: `10m`, `30s`, `1h 30m`; `off` (or `0`) is `None`.
fn parse_interval(flag: &str, value: &str) -> Result<Option<Duration>, String> {
    if matches!(value.trim(), "off" | "0" | "") {
        return Ok(None);
    }
    humantime::parse_duration(value.trim())
        .map(Some)
        .map_err(|e| {
            format!("{flag} {value:?} is not a duration ({e}); use for example 10m or 30s, or off")
        })
}

/// A duration flag that must be longer than zero (`off` and `0s` are refused).
fn positive(flag: &str, value: &str) -> Result<Duration, String> {
    parse_interval(flag, value)?
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{flag} must be longer than 0"))
}

/// `serve`'s flags that are checked before anything starts: a bad one stops it with a message
/// that names the flag.
struct Flags {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    audit_interval: Option<Duration>,
    lease_duration: Duration,
    tls_reload_interval: Option<Duration>,
    config_reload_interval: Option<Duration>,
    limits: server::Limits,
    bodies: crate::http::BodyLimits,
    shutdown_delay: Duration,
}

impl Flags {
    fn parse(args: &ServeArgs) -> Result<Flags, String> {
        let addr: SocketAddr = args.addr.parse().map_err(|e| {
            format!(
                "--addr {:?} is not an address ({e}); use host:port such as 0.0.0.0:8443",
                args.addr
            )
        })?;
        let metrics_addr: Option<SocketAddr> = match args.metrics_addr.trim() {
            "off" | "" => None,
            other => Some(other.parse().map_err(|e| {
                format!("--metrics-addr {other:?} is not an address ({e}); use host:port such as 0.0.0.0:9090, or off")
            })?),
        };
        if args.report_max_results == 0 {
            return Err("--report-max-results must be at least 1".into());
        }
        if args.audit_max_results == 0 {
            return Err("--audit-max-results must be at least 1".into());
        }
        if args.audit_events_per_scan == 0 {
            return Err(
                "--audit-events-per-scan must be at least 1 (new findings would wait for ever)"
                    .into(),
            );
        }
        if args.audit_page_size < crate::audit::MIN_PAGE_OBJECTS {
            return Err(format!(
                "--audit-page-size must be at least {}",
                crate::audit::MIN_PAGE_OBJECTS
            ));
        }
        let limits = server::Limits {
            handshake_timeout: positive("--handshake-timeout", &args.handshake_timeout)?,
            header_read_timeout: positive("--header-read-timeout", &args.header_read_timeout)?,
            max_connections: args.max_connections,
            first_request_timeout: positive(
                "--first-request-timeout",
                &args.first_request_timeout,
            )?,
            write_timeout: positive("--write-timeout", &args.write_timeout)?,
            max_connections_per_peer: args.max_connections_per_peer,
            max_handshakes: args.max_handshakes,
        };
        for (flag, value) in [
            ("--max-connections", limits.max_connections),
            (
                "--max-connections-per-peer",
                limits.max_connections_per_peer,
            ),
            ("--max-handshakes", limits.max_handshakes),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        let bodies = crate::http::BodyLimits {
            read_timeout: positive("--body-read-timeout", &args.body_read_timeout)?,
            in_flight_bytes: args.max_bytes_in_flight,
            ..crate::http::BodyLimits::default()
        };
        if bodies.in_flight_bytes < crate::http::MIN_BYTES_IN_FLIGHT {
            return Err(format!(
                "--max-bytes-in-flight must be at least {} (the largest review body and what its objects may build)",
                crate::http::MIN_BYTES_IN_FLIGHT
            ));
        }
        if args.manage_certs && args.tls_cert.is_some() {
            return Err(
                "--manage-certs and --tls-cert exclude each other: prodguard either manages its certificates in a Secret or serves the files given (then --manage-certs=false)".into(),
            );
        }
        Ok(Flags {
            addr,
            metrics_addr,
            audit_interval: parse_interval("--audit-interval", &args.audit_interval)?,
            lease_duration: positive("--lease-duration", &args.lease_duration)?,
            tls_reload_interval: parse_interval(
                "--tls-reload-interval",
                &args.tls_reload_interval,
            )?,
            config_reload_interval: parse_interval(
                "--config-reload-interval",
                &args.config_reload_interval,
            )?,
            limits,
            bodies,
            shutdown_delay: parse_interval("--shutdown-delay", &args.shutdown_delay)?
                .unwrap_or(Duration::ZERO),
        })
    }
}

/// Who this replica is: its pod (from the downward API) and the name it reports under.
struct Instance {
    pod_namespace: Option<String>,
    pod_name: Option<String>,
    /// The pod's name, or `prodguard-<pid>` outside a pod.
    name: String,
}

impl Instance {
    fn from_env() -> Instance {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        let pod_name = var("POD_NAME");
        Instance {
            pod_namespace: var("POD_NAMESPACE"),
            name: pod_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", events::CONTROLLER, std::process::id())),
            pod_name,
        }
    }

    /// The namespace of the replica's Leases and Events: `--lease-namespace`, else its pod's.
    fn namespace<'a>(&'a self, args: &'a ServeArgs) -> Option<&'a str> {
        args.lease_namespace
            .as_deref()
            .or(self.pod_namespace.as_deref())
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = load_config(args.config.as_deref(), args.mode).map_err(|e| e.to_string())?;
    let flags = Flags::parse(&args)?;
    let metrics = Arc::new(Metrics::new());
    // SIGHUP re-reads the configuration and the certificate files now; it never stops the
    // process (its default action would).
    let reload = Arc::new(tokio::sync::Notify::new());
    watch_hangup(
        reload.clone(),
        args.config.is_some() || args.tls_cert.is_some() || args.client_ca.is_some(),
    )
    .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    let instance = Instance::from_env();
    let writing = if args.manage_certs {
        Some(writing_settings(&args, &instance, flags.lease_duration)?)
    } else {
        None
    };
    let client_ca = client_certificates(&args, &metrics, &reload, flags.tls_reload_interval)?;
    let served = served_certificate(
        &args,
        writing.as_ref(),
        &metrics,
        &reload,
        flags.tls_reload_interval,
    )?;
    let tls_config = tls::server_config(
        served.resolver.clone(),
        client_ca
            .as_ref()
            .map(|c| c.ca.clone() as Arc<dyn rustls::server::danger::ClientCertVerifier>),
    )
    .map_err(|e| e.to_string())?;
    let (kube_config, clients) = connect().await;
    let (client, watches) = clients.unzip();
    if writing.is_some() && client.is_none() {
        return Err(
            "--manage-certs needs the cluster (an in-cluster config or a kubeconfig): it keeps the certificates in a Secret".into(),
        );
    }
    let (cluster, reporter) = cluster_and_reporter(client.as_ref(), &instance, &metrics);
    // PolicyExceptions, kept from a watch: none apply until its first list is complete.
    let exceptions = crate::exceptions::Exceptions::unsynced();
    if let Some(watches) = &watches {
        crate::exceptions::watch::spawn(
            watches.clone(),
            exceptions.clone(),
            config.max_exception_duration,
            metrics.exceptions.clone(),
        );
    }
    let engine = Engine::new(&config, cluster.clone(), reporter.clone())
        .with_exceptions(exceptions.clone())
        .with_patch_reports(args.patch_events);
    for (id, webhook, mode) in engine.active_policies() {
        tracing::info!(
            policy = id,
            webhook = webhook.as_str(),
            mode = mode.as_str(),
            "policy active"
        );
    }
    let state = AppState::with_limits(engine, metrics.clone(), flags.bodies);
    let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
    match (&client, instance.namespace(&args)) {
        (Some(client), Some(namespace)) => {
            crate::floor_writer::spawn(
                client.clone(),
                crate::floor_writer::WriterSettings {
                    lease: LeaseSettings {
                        namespace: namespace.to_owned(),
                        name: crate::floor_writer::LEASE_NAME.to_owned(),
                        identity: instance.name.clone(),
                        duration: flags.lease_duration,
                    },
                    mode: args.cel_floor,
                    every: positive("--cel-floor-interval", &args.cel_floor_interval)?,
                    pod: instance
                        .pod_namespace
                        .clone()
                        .zip(instance.pod_name.clone()),
                },
                config_rx,
                exceptions.clone(),
                metrics.floor.clone(),
            );
            tracing::info!(cel_floor = ?args.cel_floor, lease = %format!("{namespace}/{}", crate::floor_writer::LEASE_NAME), "CEL floor writer on");
        }
        (Some(_), None) => tracing::warn!(
            "the CEL floor is not written: it needs prodguard's namespace for its Lease (POD_NAMESPACE or --lease-namespace)"
        ),
        (None, _) => {}
    }
    if let Some(client_ca) = client_ca {
        let _ = state.clients.set(server::clients::ClientPolicy {
            subjects: client_ca.subjects,
            refusals: metrics.client_refusals.clone(),
        });
    }
    let guard = match client.as_ref().zip(watches.as_ref()) {
        Some(clients) => {
            start_certificate_manager(&args, clients, &instance, &state, &served, writing)
        }
        None => None,
    };
    if let Some(path) = args.config.clone() {
        tokio::spawn(reload_config(
            ConfigFile {
                path,
                mode: args.mode,
                interval: flags.config_reload_interval,
                wake: reload.clone(),
            },
            state.clone(),
            cluster.clone(),
            reporter.clone(),
            config_tx,
        ));
    }
    let listener = tokio::net::TcpListener::bind(flags.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", flags.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(metrics_addr) = flags.metrics_addr {
        start_metrics(
            &args,
            metrics_addr,
            &flags,
            client.as_ref(),
            &metrics,
            &served,
            stopped,
        )
        .await?;
    }
    match (kube_config, flags.audit_interval) {
        (Some(kube_config), Some(interval)) => start_audit(
            &args,
            &flags,
            &config,
            kube_config,
            interval,
            &instance,
            &state,
        )?,
        (None, Some(_)) => tracing::warn!("no cluster to audit: the background audit is off"),
        (_, None) => tracing::info!("background audit off"),
    }
    tracing::info!(
        "prodguard listening on https://{local} (POST /mutate, POST /validate, GET /healthz, GET /readyz)"
    );
    let shutdown_state = state.clone();
    let shutdown_delay = flags.shutdown_delay;
    server::serve_with(listener, tls_config, app(state), flags.limits, async move {
        shutdown_signal().await;
        shut_down(&shutdown_state, shutdown_delay, guard).await;
        let _ = stop.send(true);
        tracing::info!("no new connections; draining the open ones");
    })
    .await;
    Ok(())
}

/// The API server's client certificate (`--client-ca`, `--client-subjects`): the CA, watched
/// for changes, and the names it must carry.
fn client_certificates(
    args: &ServeArgs,
    metrics: &Metrics,
    reload: &Arc<tokio::sync::Notify>,
    interval: Option<Duration>,
) -> Result<Option<ClientCertificates>, String> {
    let Some(path) = &args.client_ca else {
        return Ok(None);
    };
    let subjects: Vec<String> = args
        .client_subjects
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if subjects.is_empty() {
        return Err("--client-subjects is empty: with --client-ca, name the API server's client certificate (its common name or a subject alternative name)".into());
    }
    let ca = server::clients::ReloadingClientCa::load(
        path,
        metrics.tls_reloads.clone(),
        metrics.tls_reload_failures.clone(),
        metrics.client_refusals.clone(),
    )
    .map_err(|e| format!("--client-ca: {e}"))?;
    tokio::spawn(ca.clone().watch(interval, reload.clone()));
    tracing::info!(
        client_ca = %path.display(),
        subjects = ?subjects,
        "reviews are answered only for a client certificate of this CA with one of these names"
    );
    Ok(Some(ClientCertificates { ca, subjects }))
}

/// The CA the API server's client certificate must chain to, and the names it must carry.
struct ClientCertificates {
    ca: Arc<server::clients::ReloadingClientCa>,
    subjects: Vec<String>,
}

/// The certificate served, by the TLS mode: files (`--tls-cert`, reloaded), the Secret
/// (`--manage-certs`), or self-signed for localhost.
struct Served {
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    /// The slot the certificate manager swaps and arms the webhooks on (files and Secret).
    slot: Option<Arc<tls::CertSlot>>,
    /// With `--manage-certs`: what watches the Secret's certificate's expiry.
    managed_expiry: Option<Arc<server::expiry::ExpiryWatch>>,
    /// With `--tls-cert`: the files.
    files: Option<Arc<tls::ReloadingCert>>,
}

fn served_certificate(
    args: &ServeArgs,
    writing: Option<&(String, certs::manager::Writing)>,
    metrics: &Metrics,
    reload: &Arc<tokio::sync::Notify>,
    interval: Option<Duration>,
) -> Result<Served, String> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = tls::ReloadingCert::load(
            cert,
            key,
            metrics.tls_reloads.clone(),
            metrics.tls_reload_failures.clone(),
            server::expiry::ExpiryWatch::new(
                metrics.certificate_expiry.clone(),
                format!("--tls-cert {}", cert.display()),
            ),
        )
        .map_err(|e| e.to_string())?;
        tokio::spawn(files.clone().watch(interval, reload.clone()));
        return Ok(Served {
            resolver: files.slot.clone(),
            slot: Some(files.slot.clone()),
            managed_expiry: None,
            files: Some(files),
        });
    }
    if let Some((namespace, writing)) = writing {
        // Until the Secret is read: a certificate no bundle trusts (not ready).
        let names: Vec<String> = writing
            .wanted
            .dns_names
            .iter()
            .cloned()
            .chain(writing.wanted.ip_addresses.iter().map(|ip| ip.to_string()))
            .collect();
        let pki = pki::generate("prodguard temporary CA", &names)
            .map_err(|e| format!("cannot generate a temporary certificate: {e}"))?;
        let slot = tls::CertSlot::new(generated(&pki)?);
        let margin = writing
            .wanted
            .renew_before
            .unwrap_or(writing.wanted.validity / 3);
        let expiry = Arc::new(
            server::expiry::ExpiryWatch::new(
                metrics.certificate_expiry.clone(),
                format!("the Secret {namespace}/{}", writing.secret),
            )
            .managed(margin / 2),
        );
        return Ok(Served {
            resolver: slot.clone(),
            slot: Some(slot),
            managed_expiry: Some(expiry),
            files: None,
        });
    }
    Ok(Served {
        resolver: self_signed(
            args.ca_out.clone(),
            &server::expiry::ExpiryWatch::new(
                metrics.certificate_expiry.clone(),
                "the self-signed certificate".to_owned(),
            ),
        )?,
        slot: None,
        managed_expiry: None,
        files: None,
    })
}

/// The cluster's clients (one for the watches, [`crate::retry::watch_client`]), from the pod's
/// service account or a kubeconfig; without one, prodguard still serves (and says what it
/// cannot do).
async fn connect() -> (Option<kube::Config>, Option<(kube::Client, kube::Client)>) {
    let inferred = kube::Config::infer()
        .await
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
            let watches = crate::retry::watch_client(&config).map_err(|e| e.to_string())?;
            Ok((config, (client, watches)))
        });
    match inferred {
        Ok((config, clients)) => (Some(config), Some(clients)),
        Err(e) => {
            tracing::warn!(
                "no in-cluster config or kubeconfig ({e}): the policies that read the cluster give their \
                 verdict on what they cannot check (db-access denies exec/attach/port-forward by \
                 non-admins, rbac-hygiene denies guarded grants, production-namespace policies report), \
                 policy reports are logged instead of published as Events, and the background audit \
                 does not run"
            );
            (None, None)
        }
    }
}

/// What the policies read the cluster through, and where reports go: the API (Events), or,
/// without a cluster, nothing to read and the log.
fn cluster_and_reporter(
    client: Option<&kube::Client>,
    instance: &Instance,
    metrics: &Metrics,
) -> (Arc<dyn ClusterLookup>, Arc<dyn Reporter>) {
    match client {
        Some(client) => (
            Arc::new(KubeLookup::new(client.clone())),
            EventSink::start(
                client.clone(),
                events::CONTROLLER,
                instance.name.clone(),
                EventStats::from_metrics(metrics),
            ),
        ),
        None => (
            Arc::new(NoLookup {
                reason: "no in-cluster config or kubeconfig".into(),
            }),
            Arc::new(LogReporter),
        ),
    }
}

/// The certificate manager's shutdown: told when SIGTERM comes, waited for (briefly) before the
/// listener closes, so that the writer hands its Lease back.
struct CertificateGuard {
    shutdown: Arc<tokio::sync::Notify>,
    stopped: Arc<tokio::sync::Notify>,
}

/// Expiry Events for the files' certificate, and (with a slot to serve from) the certificate
/// manager: the Secret with `--manage-certs`, the webhooks' bundles and arming always.
fn start_certificate_manager(
    args: &ServeArgs,
    (client, watches): (&kube::Client, &kube::Client),
    instance: &Instance,
    state: &Arc<AppState>,
    served: &Served,
    writing: Option<(String, certs::manager::Writing)>,
) -> Option<CertificateGuard> {
    if let Some(files) = &served.files {
        files.expiry.on_warning(expiry_events(
            client.clone(),
            &instance.name,
            instance.namespace(args),
        ));
    }
    let slot = served.slot.clone()?;
    if let Some(expiry) = &served.managed_expiry {
        // The pod lives in prodguard's namespace (where the Secret is).
        expiry.on_warning(expiry_events(
            client.clone(),
            &instance.name,
            writing.as_ref().map(|(namespace, _)| namespace.as_str()),
        ));
    }
    // Readiness waits for the bundle only when prodguard writes it.
    let on_trust = served.managed_expiry.is_some().then(|| {
        let state = state.clone();
        Arc::new(move |trusted: bool| {
            if state.certificate_ready.swap(trusted, Ordering::Relaxed) != trusted {
                if trusted {
                    tracing::info!("ready: the certificate served is in the webhooks' CA bundle");
                } else {
                    tracing::info!(
                        "not ready: the certificate served is not (yet) in the webhooks' CA bundle"
                    );
                }
            }
        }) as Arc<dyn Fn(bool) + Send + Sync>
    });
    let (namespace, writing) = match writing {
        Some((namespace, writing)) => (namespace, Some(writing)),
        None => (instance.pod_namespace.clone().unwrap_or_default(), None),
    };
    let guard = CertificateGuard {
        shutdown: Arc::new(tokio::sync::Notify::new()),
        stopped: Arc::new(tokio::sync::Notify::new()),
    };
    certs::manager::spawn(
        client.clone(),
        watches.clone(),
        certs::manager::Settings {
            namespace,
            webhooks: args.webhook_configuration.clone(),
            writing,
        },
        certs::manager::Shared {
            slot,
            on_trust,
            expiry: served.managed_expiry.clone(),
            metrics: state.metrics.clone(),
            shutdown: guard.shutdown.clone(),
            stopped: guard.stopped.clone(),
        },
    );
    Some(guard)
}

/// The metrics listener: plain HTTP with `--metrics-auth=none`, else HTTPS with the serving
/// certificate and a token check. The admission listener's timeouts, at most 64 connections.
async fn start_metrics(
    args: &ServeArgs,
    addr: SocketAddr,
    flags: &Flags,
    client: Option<&kube::Client>,
    metrics: &Arc<Metrics>,
    served: &Served,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let limits = server::Limits {
        max_connections: flags.limits.max_connections.min(64),
        max_connections_per_peer: flags.limits.max_connections_per_peer.min(64),
        ..flags.limits
    };
    match (args.metrics_auth, client) {
        (MetricsAuthArg::None, _) => {
            tracing::info!("metrics on http://{local}/metrics");
            tokio::spawn(server::serve_plain(
                listener,
                metrics_app(metrics.clone(), None),
                limits,
                stop,
            ));
        }
        (MetricsAuthArg::Kubernetes, Some(client)) => {
            tracing::info!(
                "metrics on https://{local}/metrics, to a token allowed to get /metrics"
            );
            let auth = Arc::new(crate::http::metrics_auth::MetricsAuth::new(
                Arc::new(crate::cluster::KubeTokenReviews {
                    client: client.clone(),
                }),
                metrics.client_refusals.clone(),
            ));
            let config =
                tls::server_config(served.resolver.clone(), None).map_err(|e| e.to_string())?;
            tokio::spawn(server::serve_with(
                listener,
                config,
                metrics_app(metrics.clone(), Some(auth)),
                limits,
                stop,
            ));
        }
        (MetricsAuthArg::Kubernetes, None) => {
            return Err("--metrics-auth=kubernetes needs the cluster (an in-cluster config or a kubeconfig) for its TokenReviews and SubjectAccessReviews".into());
        }
    }
    Ok(())
}

/// The background audit, on its own thread, behind its Lease: judges stored objects with every
/// policy's own mode (the global `audit` switch ignored) and publishes the reports.
fn start_audit(
    args: &ServeArgs,
    flags: &Flags,
    config: &Config,
    kube_config: kube::Config,
    interval: Duration,
    instance: &Instance,
    state: &AppState,
) -> Result<(), String> {
    // The admission engine's PolicyExceptions: one watch serves both.
    let exceptions = state.engine().exceptions().0.clone();
    let namespace = instance.namespace(args).unwrap_or("default").to_owned();
    tracing::info!(every = %humantime::format_duration(interval), lease = %format!("{namespace}/{LEASE_NAME}"), "background audit on");
    let audit_engine = Arc::new(
        Engine::new(
            &Config {
                mode: GlobalMode::Enforce,
                ..config.clone()
            },
            Arc::new(NoLookup {
                reason: "the audit evaluates stored objects".into(),
            }),
            Arc::new(NoReporter),
        )
        .with_exceptions(exceptions),
    );
    background::spawn(
        kube_config,
        background::Shared {
            metrics: state.metrics.clone(),
            serving: state.serving.clone(),
        },
        audit_engine,
        AuditSettings {
            interval,
            lease: LeaseSettings {
                namespace,
                name: LEASE_NAME.to_owned(),
                identity: instance.name.clone(),
                duration: flags.lease_duration,
            },
            max_results: args.report_max_results,
            max_results_total: args.audit_max_results,
            page: crate::audit::PageBudget {
                objects: args.audit_page_size,
                ..crate::audit::PageBudget::default()
            },
            events_per_scan: args.audit_events_per_scan,
            event_gap: background::EVENT_GAP,
            pod: instance
                .pod_namespace
                .clone()
                .zip(instance.pod_name.clone()),
            admission_memory: crate::http::admission_memory(flags.bodies.in_flight_bytes),
            report_api: args.report_api,
        },
    )
}

/// After SIGTERM: `/readyz` fails (and the audit stops) at once, while the listener keeps
/// accepting for `delay` (endpoints still route to this pod until every node has seen it
/// leave); meanwhile the certificate writer hands its Lease back (at most 2 s are waited for).
async fn shut_down(state: &AppState, delay: Duration, guard: Option<CertificateGuard>) {
    state.serving.store(false, Ordering::Relaxed);
    tracing::info!(
        delay = %humantime::format_duration(delay),
        "shutting down: /readyz fails; still accepting for the delay, then draining"
    );
    let handed_back = async {
        if let Some(guard) = guard {
            guard.shutdown.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(2), guard.stopped.notified()).await;
        }
    };
    tokio::join!(tokio::time::sleep(delay), handed_back);
}

/// The configuration file and when it is read again.
struct ConfigFile {
    path: PathBuf,
    mode: Option<crate::cli::ModeArg>,
    interval: Option<Duration>,
    wake: Arc<tokio::sync::Notify>,
}

/// Re-reads the configuration file every `interval` (never, when `None`) and whenever
/// `wake` is notified (SIGHUP). A changed file that loads replaces the policies in force (and
/// is handed to the CEL floor's writer); one that does not is refused, logged and counted
/// once, and the previous configuration stays in force.
async fn reload_config(
    file: ConfigFile,
    state: Arc<AppState>,
    cluster: Arc<dyn ClusterLookup>,
    reporter: Arc<dyn Reporter>,
    floor_config: tokio::sync::watch::Sender<Arc<Config>>,
) {
    let ConfigFile {
        path,
        mode,
        interval,
        wake,
    } = file;
    let mut seen = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = tls::sleep_or_never(interval) => {}
            _ = wake.notified() => {}
        }
        let Ok(bytes) = std::fs::read(&path) else {
            // Mid-swap (a ConfigMap's ..data) the file can be missing for a moment.
            continue;
        };
        if seen.as_ref() == Some(&bytes) {
            continue;
        }
        seen = Some(bytes);
        match load_config(Some(&path), mode) {
            Ok(config) => {
                let current = state.engine();
                state.replace_engine(
                    Engine::new(&config, cluster.clone(), reporter.clone())
                        .with_exceptions(current.exceptions().0.clone())
                        .with_patch_reports(current.reports_patches()),
                );
                // The CEL floor's writer reconciles at once.
                floor_config.send_replace(Arc::new(config));
                state.metrics.config_reloads.inc();
                tracing::info!(config = %path.display(), "policy configuration reloaded");
            }
            Err(e) => {
                state.metrics.config_reload_failures.inc();
                tracing::error!("{e}; the previous policy configuration stays in force");
            }
        }
    }
}

/// What `--manage-certs` writes: prodguard's namespace and the writer's settings.
fn writing_settings(
    args: &ServeArgs,
    instance: &Instance,
    lease_duration: Duration,
) -> Result<(String, certs::manager::Writing), String> {
    let namespace = instance
        .namespace(args)
        .map(str::to_owned)
        .ok_or(
            "--manage-certs needs prodguard's namespace, for its Secret and Lease: set POD_NAMESPACE (deploy/ does) or --lease-namespace",
        )?;
    let mut dns_names: Vec<String> = args
        .cert_dns_names
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if dns_names.is_empty() {
        dns_names = pki::service_names(&args.cert_service, &namespace);
    }
    let ip_addresses = args
        .cert_ip_addresses
        .iter()
        .map(|ip| {
            ip.trim()
                .parse()
                .map_err(|e| format!("--cert-ip-addresses {ip:?} is not an IP address ({e})"))
        })
        .collect::<Result<Vec<std::net::IpAddr>, String>>()?;
    let validity = positive("--cert-validity", &args.cert_validity)?;
    let ca_validity = match &args.ca_validity {
        Some(value) => positive("--ca-validity", value)?,
        None => validity.saturating_mul(3),
    };
    if ca_validity < validity {
        return Err(format!(
            "--ca-validity ({}) must be at least --cert-validity ({}): a serving certificate cannot outlive its CA",
            args.ca_validity.as_deref().unwrap_or_default(),
            args.cert_validity
        ));
    }
    let renew_before = match &args.cert_renew_before {
        Some(value) => {
            let margin = positive("--cert-renew-before", value)?;
            if margin >= validity {
                return Err(format!(
                    "--cert-renew-before ({value}) must be shorter than --cert-validity ({}): each new certificate would be renewed at once",
                    args.cert_validity
                ));
            }
            Some(margin)
        }
        None => None,
    };
    let overlap = positive("--ca-overlap", &args.ca_overlap)?;
    Ok((
        namespace.clone(),
        certs::manager::Writing {
            secret: args.cert_secret.clone(),
            lease: LeaseSettings {
                namespace,
                name: certs::manager::LEASE_NAME.to_owned(),
                identity: instance.name.clone(),
                duration: lease_duration,
            },
            wanted: certs::decisions::Wanted {
                dns_names,
                ip_addresses,
                renew_before,
                validity,
                ca_validity,
                overlap,
            },
        },
    ))
}

/// Sends expiry warnings as Warning Events regarding this pod (when it knows its name and
/// namespace; the log line is written either way).
fn expiry_events(
    client: kube::Client,
    instance: &str,
    namespace: Option<&str>,
) -> server::expiry::WarningHook {
    let pod = namespace.map(|ns| k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(instance.to_owned()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    });
    let recorder = kube::runtime::events::Recorder::new(
        client,
        kube::runtime::events::Reporter {
            controller: events::CONTROLLER.to_owned(),
            instance: Some(instance.to_owned()),
        },
    );
    Box::new(move |message: String| {
        let Some(pod) = pod.clone() else {
            return;
        };
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "CertificateExpiresSoon".to_owned(),
                note: Some(message.chars().take(1000).collect()),
                action: "ServeCertificate".to_owned(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &pod).await {
                tracing::warn!("cannot publish the certificate expiry Event: {e}");
            }
        });
    })
}

/// The serving certificate and key of a generated PKI, ready to serve.
fn generated(pki: &pki::Pki) -> Result<rustls::sign::CertifiedKey, String> {
    tls::certified_key(
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
        "generated certificate",
        "generated key",
    )
    .map_err(|e| e.to_string())
}

/// A certificate for localhost and 127.0.0.1, with its CA bundle written where it says.
fn self_signed(
    ca_out: Option<PathBuf>,
    expiry: &server::expiry::ExpiryWatch,
) -> Result<Arc<dyn rustls::server::ResolvesServerCert>, String> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pki = pki::generate("prodguard self-signed CA", &names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    let ca_path = ca_out.unwrap_or_else(|| std::env::temp_dir().join("prodguard-ca.crt"));
    super::certs::write_file(&ca_path, &pki.ca_cert_pem, false)?;
    tracing::info!(
        ca_bundle = %ca_path.display(),
        "no --tls-cert given: serving a self-signed certificate for localhost and 127.0.0.1; \
         its CA bundle is in {} (try: curl --cacert {} https://localhost:PORT/healthz)",
        ca_path.display(),
        ca_path.display()
    );
    let certified = generated(&pki)?;
    let mut chain = certified.cert.clone();
    chain.extend(
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            pki.ca_cert_pem.as_bytes(),
        )
        .filter_map(Result::ok),
    );
    expiry.serving(&chain);
    Ok(Arc::new(rustls::sign::SingleCertAndKey::from(certified)))
}

/// On SIGHUP, wakes the reloads of the configuration and the certificate files.
fn watch_hangup(reload: Arc<tokio::sync::Notify>, anything: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if anything {
                    tracing::info!(
                        "SIGHUP: re-reading the configuration, certificate and client CA files"
                    );
                    reload.notify_waiters();
                } else {
                    tracing::info!(
                        "SIGHUP: nothing to re-read (no --config, --tls-cert or --client-ca)"
                    );
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reload, anything);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
