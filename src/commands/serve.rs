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
use crate::cli::{MetricsAuth as MetricsAuthArg, ServeArgs};
use crate::cluster::{ClusterLookup, KubeLookup, NoLookup};
use crate::config::{Config, GlobalMode};
use crate::engine::Engine;
use crate::http::{app, metrics_app, AppState};
use crate::report::events::{self, EventSink, EventStats};
use crate::report::metrics::Metrics;
use crate::report::{LogReporter, NoReporter, Reporter};
use crate::server::{self, pki, tls};

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

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = load_config(args.config.as_deref(), args.mode).map_err(|e| e.to_string())?;
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
    let audit_interval = parse_interval("--audit-interval", &args.audit_interval)?;
    let lease_duration = positive("--lease-duration", &args.lease_duration)?;
    if args.report_max_results == 0 {
        return Err("--report-max-results must be at least 1".into());
    }
    if args.audit_max_results == 0 {
        return Err("--audit-max-results must be at least 1".into());
    }
    if args.audit_events_per_scan == 0 {
        return Err(
            "--audit-events-per-scan must be at least 1 (new findings would wait for ever)".into(),
        );
    }
    if args.audit_page_size < crate::audit::MIN_PAGE_OBJECTS {
        return Err(format!(
            "--audit-page-size must be at least {}",
            crate::audit::MIN_PAGE_OBJECTS
        ));
    }
    let tls_reload_interval = parse_interval("--tls-reload-interval", &args.tls_reload_interval)?;
    let limits = server::Limits {
        handshake_timeout: positive("--handshake-timeout", &args.handshake_timeout)?,
        header_read_timeout: positive("--header-read-timeout", &args.header_read_timeout)?,
        max_connections: args.max_connections,
        first_request_timeout: positive("--first-request-timeout", &args.first_request_timeout)?,
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
    let shutdown_delay =
        parse_interval("--shutdown-delay", &args.shutdown_delay)?.unwrap_or(Duration::ZERO);
    let metrics = Arc::new(Metrics::new());
    // SIGHUP re-reads the configuration and the certificate files now; it never stops the
    // process (its default action would).
    let reload = Arc::new(tokio::sync::Notify::new());
    watch_hangup(
        reload.clone(),
        args.config.is_some() || args.tls_cert.is_some() || args.client_ca.is_some(),
    )
    .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    let pod_namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty());
    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}-{}", events::CONTROLLER, std::process::id()));
    if args.manage_certs && args.tls_cert.is_some() {
        return Err(
            "--manage-certs and --tls-cert exclude each other: prodguard either manages its certificates in a Secret or serves the files given (then --manage-certs=false)".into(),
        );
    }
    let writing = if args.manage_certs {
        Some(writing_settings(
            &args,
            pod_namespace.as_deref(),
            &instance,
            lease_duration,
        )?)
    } else {
        None
    };
    // The API server's client certificate (--client-ca, --client-subjects).
    let client_ca = match &args.client_ca {
        None => None,
        Some(path) => {
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
            tokio::spawn(ca.clone().watch(tls_reload_interval, reload.clone()));
            tracing::info!(
                client_ca = %path.display(),
                subjects = ?subjects,
                "reviews are answered only for a client certificate of this CA with one of these names"
            );
            Some((ca, subjects))
        }
    };
    let client_verifier = client_ca
        .as_ref()
        .map(|(ca, _)| ca.clone() as Arc<dyn rustls::server::danger::ClientCertVerifier>);
    // The served certificate, and (with --manage-certs) what watches its expiry.
    let mut files = None;
    let (resolver, served, managed_expiry) = match (&args.tls_cert, &args.tls_key, &writing) {
        (Some(cert), Some(key), _) => {
            let reloading = tls::ReloadingCert::load(
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
            tokio::spawn(reloading.clone().watch(tls_reload_interval, reload.clone()));
            files = Some(reloading.clone());
            let resolver: Arc<dyn rustls::server::ResolvesServerCert> = reloading.slot.clone();
            (resolver, Some(reloading.slot.clone()), None)
        }
        (_, _, Some((namespace, writing))) => {
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
            let resolver: Arc<dyn rustls::server::ResolvesServerCert> = slot.clone();
            (resolver, Some(slot), Some(expiry))
        }
        _ => (
            self_signed(
                args.ca_out.clone(),
                &server::expiry::ExpiryWatch::new(
                    metrics.certificate_expiry.clone(),
                    "the self-signed certificate".to_owned(),
                ),
            )?,
            None,
            None,
        ),
    };
    let tls_config =
        tls::server_config(resolver.clone(), client_verifier).map_err(|e| e.to_string())?;
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
            Ok((config, client))
        });
    let (kube_config, client) = match kube_config {
        Ok((config, client)) => (Some(config), Some(client)),
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
    };
    if writing.is_some() && client.is_none() {
        return Err(
            "--manage-certs needs the cluster (an in-cluster config or a kubeconfig): it keeps the certificates in a Secret".into(),
        );
    }
    let (pods, reporter): (Arc<dyn ClusterLookup>, Arc<dyn Reporter>) = match &client {
        Some(client) => (
            Arc::new(KubeLookup::new(client.clone())),
            EventSink::start(
                client.clone(),
                events::CONTROLLER,
                instance.clone(),
                EventStats::from_metrics(&metrics),
            ),
        ),
        None => (
            Arc::new(NoLookup {
                reason: "no in-cluster config or kubeconfig".into(),
            }),
            Arc::new(LogReporter),
        ),
    };
    // PolicyExceptions, kept from a watch: none apply until its first list is complete.
    let exceptions = crate::exceptions::Exceptions::unsynced();
    if let Some(client) = &client {
        crate::exceptions::watch::spawn(
            client.clone(),
            exceptions.clone(),
            config.max_exception_duration,
            metrics.exceptions.clone(),
        );
    }
    let engine =
        Engine::new(&config, pods.clone(), reporter.clone()).with_exceptions(exceptions.clone());
    for (id, webhook, mode) in engine.active_policies() {
        tracing::info!(
            policy = id,
            webhook = webhook.as_str(),
            mode = mode.as_str(),
            "policy active"
        );
    }
    let state = AppState::with_limits(engine, metrics.clone(), bodies);
    if let Some((_, subjects)) = client_ca {
        let _ = state.clients.set(server::clients::ClientPolicy {
            subjects,
            refusals: metrics.client_refusals.clone(),
        });
    }
    if let (Some(client), Some(files)) = (&client, &files) {
        // The replica's namespace: POD_NAMESPACE (or --lease-namespace).
        let namespace = args.lease_namespace.as_deref().or(pod_namespace.as_deref());
        files
            .expiry
            .on_warning(expiry_events(client.clone(), &instance, namespace));
    }
    // The certificate guard's shutdown: told when SIGTERM comes, waited for (briefly) before the
    // listener closes.
    let guard_shutdown = Arc::new(tokio::sync::Notify::new());
    let guard_stopped = Arc::new(tokio::sync::Notify::new());
    let mut guard_running = false;
    if let (Some(client), Some(slot)) = (&client, served) {
        guard_running = true;
        if let Some(expiry) = &managed_expiry {
            // The pod lives in prodguard's namespace (where the Secret is).
            expiry.on_warning(expiry_events(
                client.clone(),
                &instance,
                writing.as_ref().map(|(namespace, _)| namespace.as_str()),
            ));
        }
        let ready = {
            let state = state.clone();
            Arc::new(move |ready: bool| {
                if state.certificate_ready.swap(ready, Ordering::Relaxed) != ready {
                    if ready {
                        tracing::info!(
                            "ready: the certificate served is in the webhooks' CA bundle"
                        );
                    } else {
                        tracing::info!("not ready: the certificate served is not (yet) in the webhooks' CA bundle");
                    }
                }
            }) as Arc<dyn Fn(bool) + Send + Sync>
        };
        let (namespace, writing) = match writing {
            Some((namespace, writing)) => (namespace, Some(writing)),
            None => (pod_namespace.clone().unwrap_or_default(), None),
        };
        server::manager::spawn(
            client.clone(),
            server::manager::Settings {
                namespace,
                webhooks: args.webhook_configuration.clone(),
                writing,
            },
            server::manager::Shared {
                slot,
                ready: managed_expiry.is_some().then_some(ready),
                expiry: managed_expiry,
                metrics: metrics.clone(),
                shutdown: guard_shutdown.clone(),
                stopped: guard_stopped.clone(),
            },
        );
    }
    let config_reload_interval =
        parse_interval("--config-reload-interval", &args.config_reload_interval)?;
    if let Some(path) = args.config.clone() {
        tokio::spawn(reload_config(
            path,
            args.mode,
            config_reload_interval,
            reload.clone(),
            state.clone(),
            pods.clone(),
            reporter.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(metrics_addr) = metrics_addr {
        let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .map_err(|e| format!("cannot listen on {metrics_addr} for metrics: {e}"))?;
        let metrics_local = metrics_listener.local_addr().map_err(|e| e.to_string())?;
        let mut stopped = stopped.clone();
        let stop_metrics = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        // The same timeouts as the admission listener; fewer connections.
        let metrics_limits = server::Limits {
            max_connections: limits.max_connections.min(64),
            max_connections_per_peer: limits.max_connections_per_peer.min(64),
            ..limits
        };
        match (args.metrics_auth, &client) {
            (MetricsAuthArg::None, _) => {
                tracing::info!("metrics on http://{metrics_local}/metrics");
                tokio::spawn(server::serve_plain(
                    metrics_listener,
                    metrics_app(metrics.clone(), None),
                    metrics_limits,
                    stop_metrics,
                ));
            }
            (MetricsAuthArg::Kubernetes, Some(client)) => {
                tracing::info!("metrics on https://{metrics_local}/metrics, to a token allowed to get /metrics");
                let auth = Arc::new(crate::http::metrics_auth::MetricsAuth::new(
                    Arc::new(crate::cluster::KubeTokenReviews {
                        client: client.clone(),
                    }),
                    metrics.client_refusals.clone(),
                ));
                let config =
                    tls::server_config(resolver.clone(), None).map_err(|e| e.to_string())?;
                tokio::spawn(server::serve_with(
                    metrics_listener,
                    config,
                    metrics_app(metrics.clone(), Some(auth)),
                    metrics_limits,
                    stop_metrics,
                ));
            }
            (MetricsAuthArg::Kubernetes, None) => {
                return Err("--metrics-auth=kubernetes needs the cluster (an in-cluster config or a kubeconfig) for its TokenReviews and SubjectAccessReviews".into());
            }
        }
    }
    match (kube_config, audit_interval) {
        (Some(kube_config), Some(interval)) => {
            let namespace = args
                .lease_namespace
                .clone()
                .or_else(|| pod_namespace.clone())
                .unwrap_or_else(|| "default".to_owned());
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
                .with_exceptions(exceptions.clone()),
            );
            let pod = pod_namespace.zip(std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()));
            background::spawn(
                kube_config,
                background::Shared {
                    metrics: metrics.clone(),
                    running: state.ready.clone(),
                },
                audit_engine,
                AuditSettings {
                    interval,
                    lease: LeaseSettings {
                        namespace,
                        name: LEASE_NAME.to_owned(),
                        identity: instance,
                        duration: lease_duration,
                    },
                    max_results: args.report_max_results,
                    max_results_total: args.audit_max_results,
                    page: crate::audit::PageBudget {
                        objects: args.audit_page_size,
                        ..crate::audit::PageBudget::default()
                    },
                    events_per_scan: args.audit_events_per_scan,
                    event_gap: background::EVENT_GAP,
                    pod,
                    admission_memory: crate::http::admission_memory(bodies.in_flight_bytes),
                    report_api: args.report_api,
                },
            )?;
        }
        (None, Some(_)) => tracing::warn!("no cluster to audit: the background audit is off"),
        (_, None) => tracing::info!("background audit off"),
    }
    tracing::info!(
        "prodguard listening on https://{local} (POST /mutate, POST /validate, GET /healthz, GET /readyz)"
    );
    let shutdown_state = state.clone();
    server::serve_with(listener, tls_config, app(state), limits, async move {
        shutdown_signal().await;
        // Endpoints still route to this pod until every node has seen it leave: keep
        // accepting for the delay, with /readyz failing, then stop accepting and drain.
        shutdown_state.ready.store(false, Ordering::Relaxed);
        tracing::info!(
            delay = %humantime::format_duration(shutdown_delay),
            "shutting down: /readyz fails; still accepting for the delay, then draining"
        );
        // Meanwhile the certificate writer hands its Lease back (at most 2 s are waited for).
        let handed_back = async {
            if guard_running {
                guard_shutdown.notify_one();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), guard_stopped.notified()).await;
            }
        };
        tokio::join!(tokio::time::sleep(shutdown_delay), handed_back);
        let _ = stop.send(true);
        tracing::info!("no new connections; draining the open ones");
    })
    .await;
    Ok(())
}

/// Re-reads the configuration file every `interval` (never, when `None`) and whenever
/// `wake` is notified (SIGHUP). A changed file that loads replaces the policies in force; one
/// that does not is refused, logged and counted once, and the previous configuration stays in
/// force.
async fn reload_config(
    path: PathBuf,
    mode: Option<crate::cli::ModeArg>,
    interval: Option<Duration>,
    wake: Arc<tokio::sync::Notify>,
    state: Arc<AppState>,
    pods: Arc<dyn ClusterLookup>,
    reporter: Arc<dyn Reporter>,
) {
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
                let exceptions = state.engine().exceptions().0.clone();
                state.replace_engine(
                    Engine::new(&config, pods.clone(), reporter.clone())
                        .with_exceptions(exceptions),
                );
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
    pod_namespace: Option<&str>,
    instance: &str,
    lease_duration: Duration,
) -> Result<(String, server::manager::Writing), String> {
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| pod_namespace.map(str::to_owned))
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
        server::manager::Writing {
            secret: args.cert_secret.clone(),
            lease: LeaseSettings {
                namespace,
                name: server::manager::LEASE_NAME.to_owned(),
                identity: instance.to_owned(),
                duration: lease_duration,
            },
            wanted: server::managed::Wanted {
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
