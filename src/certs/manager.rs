//! `serve --manage-certs` and the webhooks' guard: what each replica does with the Secret that
//! holds prodguard's certificates and with its two webhook configurations.
//!
//! - **Every replica** follows the Secret through a watch (not the mounted file, which the
//!   kubelet refreshes a minute or more late) and serves its certificate as soon as it is
//!   valid; a broken one is logged and the certificate in use stays.
//! - **The writer**, the replica holding the Lease `prodguard-certs`, applies
//!   [`decisions::decide`] to the Secret (issue, renew, rotate the CA, replace what is corrupt
//!   or foreign) and keeps the CA bundle of every webhook of both configurations equal to
//!   what the Secret says, restoring it within seconds when something empties or changes it.
//! - **Readiness**: a replica is ready once the certificate it serves is trusted by the bundle
//!   of every webhook of both configurations.
//! - **Arming** (with or without `--manage-certs`): deploy/ ships the webhooks that must fail
//!   closed as `failurePolicy: Ignore`, named in the annotation [`ARM_ANNOTATION`]; once the
//!   certificate served is trusted by their bundle, prodguard sets them to `Fail`. So an
//!   install never blocks the cluster's writes before prodguard can answer them.
//!
//! Nothing here ever creates a webhook configuration: deleting deploy/ leaves none behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::decisions::{self, Decision, Found, Wanted};
use crate::audit::lease::{self, LeaseSettings};
use crate::report::metrics::{CertificateLabels, Metrics};
use crate::server::expiry::ExpiryWatch;
use crate::server::tls::{self, CertSlot};

/// The annotation of a webhook configuration that lists (comma-separated) the webhooks that
/// prodguard sets to `failurePolicy: Fail` once it serves a certificate they trust.
pub const ARM_ANNOTATION: &str = "prodguard.io/fail-closed-when-ready";
/// The Secret's annotation naming the replica that wrote it last.
pub const WRITTEN_BY: &str = "prodguard.io/written-by";
/// The writer's Lease.
pub const LEASE_NAME: &str = "prodguard-certs";

/// What the certificate writer manages (`--manage-certs`).
#[derive(Debug, Clone)]
pub struct Writing {
    pub secret: String,
    pub lease: LeaseSettings,
    pub wanted: Wanted,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// prodguard's namespace (the Secret's and the Lease's).
    pub namespace: String,
    /// The name of both webhook configurations.
    pub webhooks: String,
    /// With `--manage-certs`.
    pub writing: Option<Writing>,
}

/// What a replica shares with the server.
pub struct Shared {
    pub slot: Arc<CertSlot>,
    /// What is served with `--manage-certs` (with files, `ReloadingCert` keeps its own).
    pub expiry: Option<Arc<ExpiryWatch>>,
    /// Told whether both webhooks' CA bundles trust the certificate served (it sets
    /// `AppState::certificate_ready`), when readiness waits for the bundle.
    pub on_trust: Option<Arc<dyn Fn(bool) + Send + Sync>>,
    pub metrics: Arc<Metrics>,
    /// Notified when the server shuts down: the writer hands its Lease back (so that another
    /// replica writes at once rather than after `--lease-duration`), then notifies `stopped`.
    pub shutdown: Arc<tokio::sync::Notify>,
    pub stopped: Arc<tokio::sync::Notify>,
}

/// What a watch saw: the object as it is now (`None`: absent). The watches are of
/// `DynamicObject`s, so that the watcher is compiled once rather than once per kind.
enum Update {
    Secret(Option<DynamicObject>),
    Mutating(Option<DynamicObject>),
    Validating(Option<DynamicObject>),
}

/// The typed object of a watch's `DynamicObject` (`None` when absent, or, logged, when it does
/// not read as its kind).
fn typed<K: kube::Resource + serde::de::DeserializeOwned>(
    object: Option<DynamicObject>,
    what: &str,
) -> Option<K> {
    match object?.try_parse::<K>() {
        Ok(object) => Some(object),
        Err(e) => {
            tracing::error!("the watched {what} does not read as one: {e}");
            None
        }
    }
}

/// Why a call to the API failed, naming the permission when it was refused.
/// `resource` is `secrets/NAME` or `leases/NAME`, `place` `in namespace NS` (or empty).
pub fn explain(e: &kube::Error, verb: &str, resource: &str, place: &str) -> String {
    let target = if place.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource} {place}")
    };
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "forbidden: prodguard's service account needs the permission to {verb} {target} \
             (deploy/base/rbac.yaml grants it): {}",
            status.message
        ),
        e => format!("cannot {verb} {target}: {e}"),
    }
}

/// Follows one named object through a watch, sending what it is after each change (`None`
/// once deleted or while absent). Errors are logged with the permission they lack, at most
/// once a minute, and the watch retries with backoff.
fn follow(
    api: Api<DynamicObject>,
    name: String,
    what: String,
    tx: mpsc::Sender<Update>,
    wrap: fn(Option<DynamicObject>) -> Update,
) {
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = crate::retry::watch(api, config);
        let mut listed: Option<DynamicObject> = None;
        let mut last_error: Option<Instant> = None;
        while let Some(event) = stream.next().await {
            let update = match event {
                Ok(watcher::Event::Init) => {
                    listed = None;
                    continue;
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listed = Some(object);
                    continue;
                }
                Ok(watcher::Event::InitDone) => listed.take(),
                Ok(watcher::Event::Apply(object)) => Some(object),
                Ok(watcher::Event::Delete(_)) => None,
                Err(e) => {
                    if last_error.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        last_error = Some(Instant::now());
                        let text = match &e {
                            watcher::Error::InitialListFailed(e)
                            | watcher::Error::WatchStartFailed(e)
                            | watcher::Error::WatchFailed(e) => {
                                explain(e, "list and watch", &what, "")
                            }
                            other => format!("cannot watch {what}: {other}"),
                        };
                        tracing::warn!("{text}; retrying");
                    }
                    continue;
                }
            };
            if tx.send(wrap(update)).await.is_err() {
                return;
            }
        }
    });
}

/// One webhook of a configuration, as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Webhook {
    name: String,
    bundle: Vec<u8>,
    failure_policy: String,
}

/// A [`Config`] of either kind of webhook configuration (their webhooks are distinct types
/// with the same fields).
macro_rules! config_of {
    ($configuration:expr) => {
        Config::of(
            &$configuration.metadata,
            $configuration.webhooks.iter().flatten().map(|w| {
                (
                    w.name.clone(),
                    w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
                    w.failure_policy.clone(),
                )
            }),
        )
    };
}

/// One webhook configuration as the guard sees it; its webhooks in their order (patches
/// address them by index, checked by name, so that nothing is reordered).
#[derive(Debug, Default, Clone)]
struct Config {
    exists: bool,
    webhooks: Vec<Webhook>,
    to_arm: Vec<String>,
}

impl Config {
    fn of(
        meta: &ObjectMeta,
        webhooks: impl Iterator<Item = (String, Option<Vec<u8>>, Option<String>)>,
    ) -> Config {
        Config {
            exists: true,
            webhooks: webhooks
                .map(|(name, bundle, policy)| Webhook {
                    name,
                    bundle: bundle.unwrap_or_default(),
                    // The API's default.
                    failure_policy: policy.unwrap_or_else(|| "Fail".to_owned()),
                })
                .collect(),
            to_arm: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ARM_ANNOTATION))
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn mutating(c: &MutatingWebhookConfiguration) -> Config {
        config_of!(c)
    }

    fn validating(c: &ValidatingWebhookConfiguration) -> Config {
        config_of!(c)
    }

    /// Whether every webhook's bundle trusts `leaf` (DER).
    fn trusts(&self, leaf: &[u8]) -> bool {
        self.exists
            && !self.webhooks.is_empty()
            && self
                .webhooks
                .iter()
                .all(|w| decisions::trusted_by(leaf, &w.bundle))
    }

    /// A JSON patch that sets `field` (`clientConfig/caBundle`, `failurePolicy`) to `value`
    /// on the webhooks `pick` selects, each guarded by a test of its name; `None` when none
    /// is selected.
    fn patch(
        &self,
        field: &str,
        value: &serde_json::Value,
        pick: impl Fn(&Webhook) -> bool,
    ) -> Option<(Vec<String>, serde_json::Value)> {
        let mut names = Vec::new();
        let mut ops = Vec::new();
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if pick(webhook) {
                names.push(webhook.name.clone());
                ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
                ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/{field}"), "value": value}));
            }
        }
        (!names.is_empty()).then_some((names, serde_json::Value::Array(ops)))
    }
}

struct Guard {
    client: kube::Client,
    settings: Settings,
    shared: Shared,
    secret: Option<Secret>,
    mutating: Config,
    validating: Config,
    /// The Secret bytes last served (tls.crt, tls.key), and the resourceVersion last refused.
    served: Option<(Vec<u8>, Vec<u8>)>,
    refused: Option<String>,
    holder: bool,
    /// Whether each watch has listed once (the writer waits for all three).
    seen: [bool; 3],
    lease_due: Instant,
    /// When the writer next has something to do (a renewal, a rotation step).
    writer_due: Option<Instant>,
    /// The last failure of each kind, for logging once a minute.
    failures: BTreeMap<&'static str, (String, Instant)>,
}

/// Starts the guard (and, with `writing`, the certificate follower and writer), which write
/// through `client` and follow their objects through `watches` ([`crate::retry::watch_client`]).
/// Runs for ever.
pub fn spawn(client: kube::Client, watches: kube::Client, settings: Settings, shared: Shared) {
    let (tx, mut rx) = mpsc::channel(16);
    follow(
        Api::all_with(
            watches.clone(),
            &ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        ),
        settings.webhooks.clone(),
        format!("mutatingwebhookconfigurations/{}", settings.webhooks),
        tx.clone(),
        Update::Mutating,
    );
    follow(
        Api::all_with(
            watches.clone(),
            &ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        ),
        settings.webhooks.clone(),
        format!("validatingwebhookconfigurations/{}", settings.webhooks),
        tx.clone(),
        Update::Validating,
    );
    if let Some(writing) = &settings.writing {
        follow(
            Api::namespaced_with(
                watches.clone(),
                &settings.namespace,
                &ApiResource::erase::<Secret>(&()),
            ),
            writing.secret.clone(),
            format!(
                "secrets/{} in namespace {}",
                writing.secret, settings.namespace
            ),
            tx.clone(),
            Update::Secret,
        );
    }
    drop(tx);
    if let Some(on_trust) = &shared.on_trust {
        on_trust(false);
    }
    let mut guard = Guard {
        client,
        settings,
        shared,
        secret: None,
        mutating: Config::default(),
        validating: Config::default(),
        served: None,
        refused: None,
        holder: false,
        seen: [false; 3],
        lease_due: Instant::now(),
        writer_due: None,
        failures: BTreeMap::new(),
    };
    tokio::spawn(async move {
        let slot = guard.shared.slot.clone();
        loop {
            let wake = guard.next_wake();
            tokio::select! {
                update = rx.recv() => match update {
                    Some(Update::Secret(secret)) => {
                        guard.secret = typed(secret, "Secret");
                        guard.seen[0] = true;
                    }
                    Some(Update::Mutating(c)) => {
                        guard.mutating = typed(c, "MutatingWebhookConfiguration")
                            .as_ref()
                            .map(Config::mutating)
                            .unwrap_or_default();
                        guard.seen[1] = true;
                    }
                    Some(Update::Validating(c)) => {
                        guard.validating = typed(c, "ValidatingWebhookConfiguration")
                            .as_ref()
                            .map(Config::validating)
                            .unwrap_or_default();
                        guard.seen[2] = true;
                    }
                    None => return,
                },
                _ = slot.changed.notified() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = guard.shared.shutdown.notified() => {
                    guard.hand_back().await;
                    guard.shared.stopped.notify_one();
                    return;
                }
            }
            guard.reconcile().await;
        }
    });
}

impl Guard {
    fn next_wake(&self) -> Instant {
        // Every 5 s with --manage-certs (expiry warnings are judged then), else every minute.
        let mut wake = Instant::now() + Duration::from_secs(60);
        if self.settings.writing.is_some() {
            wake = Instant::now() + Duration::from_secs(5);
            wake = wake.min(self.lease_due);
            if let Some(due) = self.writer_due.filter(|_| self.holder) {
                wake = wake.min(due);
            }
        }
        wake
    }

    /// Logs `message` as an error and counts it, at most once a minute for one kind unless it
    /// changed.
    fn failed(&mut self, kind: &'static str, message: String) {
        self.shared.metrics.certificate_failures.inc();
        let repeat = self
            .failures
            .get(kind)
            .is_some_and(|(last, at)| *last == message && at.elapsed() < Duration::from_secs(60));
        if !repeat {
            tracing::error!("{message}");
            self.failures.insert(kind, (message, Instant::now()));
        }
    }

    async fn reconcile(&mut self) {
        if self.settings.writing.is_some() {
            self.follow_secret();
            if Instant::now() >= self.lease_due {
                self.hold_lease().await;
            }
            // Only on what the cluster holds: never a Secret created over one not yet listed.
            if self.holder && self.seen.iter().all(|seen| *seen) {
                self.write().await;
            }
        }
        let leaf = self.shared.slot.current().cert.first().map(|c| c.to_vec());
        let trusted = leaf
            .as_ref()
            .is_some_and(|leaf| self.mutating.trusts(leaf) && self.validating.trusts(leaf));
        if let Some(on_trust) = &self.shared.on_trust {
            on_trust(trusted);
        }
        if trusted {
            self.arm().await;
        }
        if let Some(expiry) = &self.shared.expiry {
            expiry.check();
        }
    }

    /// Serves the Secret's certificate once it is valid and new.
    fn follow_secret(&mut self) {
        let Some(secret) = &self.secret else {
            return;
        };
        let data = secret_data(secret);
        let (Some(cert), Some(key)) = (data.get(decisions::TLS_CERT), data.get(decisions::TLS_KEY))
        else {
            return;
        };
        if self
            .served
            .as_ref()
            .is_some_and(|(c, k)| c == cert && k == key)
        {
            return;
        }
        let version = secret.metadata.resource_version.clone();
        let name = format!(
            "the Secret {}/{}",
            self.settings.namespace,
            secret.metadata.name.as_deref().unwrap_or_default()
        );
        match tls::certified_key(
            cert,
            key,
            &format!("{name} tls.crt"),
            &format!("{name} tls.key"),
        ) {
            Ok(certified) => {
                // A certificate the webhooks do not trust yet does not replace one they trust
                // (the writer sets the bundle first; the watches may arrive in either order).
                let trusted =
                    |leaf: &[u8]| self.mutating.trusts(leaf) && self.validating.trusts(leaf);
                let current = self.shared.slot.current();
                let new_leaf = certified
                    .cert
                    .first()
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                if current.cert.first().is_some_and(|c| trusted(c)) && !trusted(&new_leaf) {
                    tracing::debug!(
                        "{name}: waiting until the webhooks' CA bundle trusts its certificate"
                    );
                    return;
                }
                let mut chain = certified.cert.clone();
                if let Some(ca) = data.get(decisions::CA_CERT) {
                    chain.extend(
                        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca)
                            .filter_map(Result::ok),
                    );
                }
                if let Some(expiry) = &self.shared.expiry {
                    expiry.serving(&chain);
                }
                self.shared.slot.set(certified);
                self.served = Some((cert.clone(), key.clone()));
                tracing::info!("serving the certificate of {name}");
            }
            Err(e) => {
                if self.refused != version {
                    self.refused = version;
                    tracing::error!(
                        "{name} holds no usable certificate ({e}); the certificate in use stays (the writer replaces it)"
                    );
                }
            }
        }
    }

    /// Releases the writer's Lease if this replica holds it.
    async fn hand_back(&mut self) {
        let Some(writing) = self.settings.writing.as_ref().filter(|_| self.holder) else {
            return;
        };
        self.holder = false;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        lease::release(&api, &writing.lease).await;
        tracing::info!("shutting down: the certificate writer's Lease is handed back");
    }

    async fn hold_lease(&mut self) {
        let Some(writing) = &self.settings.writing else {
            return;
        };
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let duration = writing.lease.duration;
        self.lease_due = Instant::now() + duration / 3;
        match lease::try_hold(&api, &writing.lease).await {
            Ok(hold) => {
                self.lease_due = Instant::now() + hold.next_try(duration / 3);
                let holder = hold.held();
                if holder != self.holder {
                    tracing::info!(
                        lease = %format!("{}/{}", self.settings.namespace, writing.lease.name),
                        "{}",
                        if holder {
                            "this replica now writes the certificates"
                        } else {
                            "another replica writes the certificates"
                        }
                    );
                }
                self.holder = holder;
            }
            Err(e) => {
                self.holder = false;
                let place = format!("in namespace {}", self.settings.namespace);
                let lease = format!("leases/{}", writing.lease.name);
                let message = explain(&e, "get, create and update", &lease, &place);
                self.failed("lease", message);
            }
        }
    }

    /// The writer's round: the Secret first, then the bundles.
    async fn write(&mut self) {
        let Some(writing) = self.settings.writing.clone() else {
            return;
        };
        let now = now_seconds();
        let data = self.secret.as_ref().map(secret_data);
        let step_since = self
            .secret
            .as_ref()
            .and_then(|s| {
                s.metadata
                    .annotations
                    .as_ref()?
                    .get(decisions::STEP_SINCE)
                    .cloned()
            })
            .and_then(|at| at.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|at| at.as_second());
        let found = data.as_ref().map(|data| Found { data, step_since });
        let decision = decisions::decide(found, &writing.wanted, now);
        let place = format!("in namespace {}", self.settings.namespace);
        if let Decision::Keep { next_at } = decision {
            // Looked at again at least daily, whatever the certificates say.
            let wait = u64::try_from(next_at.saturating_sub(now))
                .unwrap_or(0)
                .min(86_400);
            self.writer_due = Some(Instant::now() + Duration::from_secs(wait));
        } else {
            // Retried in five seconds when anything below fails.
            self.writer_due = Some(Instant::now() + Duration::from_secs(5));
            // What signed the certificate served now stays trusted through a replacement
            // (only that: a writer that keeps failing must not grow the bundle).
            let served = self.shared.slot.current();
            let trusted = match (served.cert.first(), self.validating.webhooks.first()) {
                (Some(leaf), Some(webhook)) => Some(decisions::signers(leaf, &webhook.bundle)),
                _ => None,
            };
            let (new_data, new_since) = match decisions::apply(
                &decision,
                found,
                &writing.wanted,
                trusted.as_deref(),
                now,
            ) {
                Ok(made) => made,
                Err(e) => return self.failed("issue", e),
            };
            // A serving certificate the API server does not trust yet (a replaced Secret):
            // its CA goes into the bundles first.
            let leaf = new_data
                .get(decisions::TLS_CERT)
                .and_then(|pem| {
                    <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(pem).ok()
                })
                .map(|der| der.to_vec())
                .unwrap_or_default();
            if !(self.mutating.trusts(&leaf) && self.validating.trusts(&leaf))
                && self.set_bundles(&decisions::bundle(&new_data)).await
            {
                // The API server's informer sees the new bundle within a moment.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            match self.store(&writing, new_data, new_since).await {
                Ok(secret) => {
                    let labels = |certificate| CertificateLabels { certificate };
                    let renewals = &self.shared.metrics.certificate_renewals;
                    match &decision {
                        Decision::Replace(why)
                        | Decision::IssueServing(why)
                        | Decision::AddCa(why) => {
                            tracing::info!(secret = %writing.secret, "{}: {why}", step_name(&decision))
                        }
                        other => tracing::info!(secret = %writing.secret, "{}", step_name(other)),
                    }
                    if matches!(
                        decision,
                        Decision::Replace(_) | Decision::IssueServing(_) | Decision::SwitchCa
                    ) {
                        renewals.get_or_create(&labels("serving")).inc();
                    }
                    if matches!(decision, Decision::Replace(_) | Decision::SwitchCa) {
                        renewals.get_or_create(&labels("ca")).inc();
                    }
                    self.secret = Some(secret);
                    self.follow_secret();
                    // The next step (or nothing) is decided on the next round, now.
                    self.writer_due = Some(Instant::now());
                }
                // Someone else wrote first (or our view was behind): the watch brings the
                // Secret as it is, and the next round decides on it.
                Err(e) if matches!(&e, kube::Error::Api(status) if status.code == 409) => {
                    tracing::debug!("the Secret changed while being written: {e}");
                    return;
                }
                Err(e) => {
                    let resource = format!("secrets/{}", writing.secret);
                    let verb = if self.secret.is_some() {
                        "update"
                    } else {
                        "create"
                    };
                    let message = explain(&e, verb, &resource, &place);
                    return self
                        .failed("store", format!("{message}; the certificate in use stays"));
                }
            }
        }
        // Here the Secret is usable: kept as it was, or just written.
        if let Some(data) = self.secret.as_ref().map(secret_data) {
            let wanted = decisions::bundle(&data);
            let same = |c: &Config| c.exists && c.webhooks.iter().all(|w| w.bundle == wanted);
            if !same(&self.mutating) || !same(&self.validating) {
                self.set_bundles(&wanted).await;
            }
        }
    }

    /// Creates or replaces the Secret (a compare-and-swap on the version read).
    async fn store(
        &self,
        writing: &Writing,
        data: BTreeMap<String, Vec<u8>>,
        step_since: Option<i64>,
    ) -> Result<Secret, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let mut annotations =
            BTreeMap::from([(WRITTEN_BY.to_owned(), writing.lease.identity.clone())]);
        if let Some(at) =
            step_since.and_then(|at| k8s_openapi::jiff::Timestamp::from_second(at).ok())
        {
            annotations.insert(decisions::STEP_SINCE.to_owned(), at.to_string());
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(writing.secret.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_owned(), "prodguard".to_owned()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "prodguard".to_owned(),
                    ),
                ])),
                annotations: Some(annotations),
                resource_version: self
                    .secret
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            ..Secret::default()
        };
        if self.secret.is_some() {
            api.replace(&writing.secret, &PostParams::default(), &secret)
                .await
        } else {
            api.create(&PostParams::default(), &secret).await
        }
    }

    /// Sets every webhook's CA bundle in both configurations; whether any was patched.
    async fn set_bundles(&mut self, bundle: &[u8]) -> bool {
        let mut patched = false;
        let value = serde_json::to_value(ByteString(bundle.to_vec())).unwrap_or_default();
        for kind in [Kind::Mutating, Kind::Validating] {
            let Some((names, patch)) =
                self.config(kind)
                    .patch("clientConfig/caBundle", &value, |w| w.bundle != bundle)
            else {
                continue;
            };
            match self.patch_config(kind, patch).await {
                Ok(()) => {
                    patched = true;
                    self.shared.metrics.webhooks_repaired.inc();
                    // Until the watch says so: not patched twice.
                    for webhook in &mut self.config_mut(kind).webhooks {
                        webhook.bundle = bundle.to_vec();
                    }
                    tracing::info!(
                        "set the CA bundle of {} ({}) to the Secret's CAs",
                        self.resource(kind),
                        names.join(", ")
                    );
                }
                Err(e) => {
                    let message = explain(&e, "patch", &self.resource(kind), "");
                    self.failed("bundle", message)
                }
            }
        }
        patched
    }

    /// Sets the webhooks named in [`ARM_ANNOTATION`] to fail closed.
    async fn arm(&mut self) {
        let value = serde_json::Value::from("Fail");
        for kind in [Kind::Mutating, Kind::Validating] {
            let config = self.config(kind);
            let Some((names, patch)) = config.patch("failurePolicy", &value, |w| {
                w.failure_policy != "Fail" && config.to_arm.contains(&w.name)
            }) else {
                continue;
            };
            match self.patch_config(kind, patch).await {
                Ok(()) => {
                    self.shared.metrics.webhooks_repaired.inc();
                    for webhook in &mut self.config_mut(kind).webhooks {
                        if names.contains(&webhook.name) {
                            webhook.failure_policy = "Fail".to_owned();
                        }
                    }
                    tracing::info!(
                        "the certificate served is trusted: {} of {} now fail closed",
                        names.join(", "),
                        self.resource(kind)
                    );
                }
                Err(e) => {
                    let message = explain(&e, "patch", &self.resource(kind), "");
                    self.failed("arm", message)
                }
            }
        }
    }

    fn config(&self, kind: Kind) -> &Config {
        match kind {
            Kind::Mutating => &self.mutating,
            Kind::Validating => &self.validating,
        }
    }

    fn config_mut(&mut self, kind: Kind) -> &mut Config {
        match kind {
            Kind::Mutating => &mut self.mutating,
            Kind::Validating => &mut self.validating,
        }
    }

    fn resource(&self, kind: Kind) -> String {
        let plural = match kind {
            Kind::Mutating => "mutatingwebhookconfigurations",
            Kind::Validating => "validatingwebhookconfigurations",
        };
        format!("{plural}/{}", self.settings.webhooks)
    }

    async fn patch_config(&self, kind: Kind, patch: serde_json::Value) -> Result<(), kube::Error> {
        let params = PatchParams::default();
        let name = &self.settings.webhooks;
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
        match kind {
            Kind::Mutating => Api::<MutatingWebhookConfiguration>::all(self.client.clone())
                .patch(name, &params, &Patch::<()>::Json(patch))
                .await
                .map(drop),
            Kind::Validating => Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
                .patch(name, &params, &Patch::<()>::Json(patch))
                .await
                .map(drop),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Mutating,
    Validating,
}

fn step_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Keep { .. } => "kept",
        Decision::Replace(_) => "issued a new CA and serving certificate",
        Decision::IssueServing(_) => "issued a new serving certificate",
        Decision::AddCa(_) => "CA rotation, step 1 of 3: added the next CA to the bundle",
        Decision::SwitchCa => {
            "CA rotation, step 2 of 3: the next CA signs the serving certificate; the previous one stays trusted"
        }
        Decision::DropPreviousCa => "CA rotation, step 3 of 3: dropped the previous CA",
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

fn now_seconds() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::pki;
    use serde_json::json;

    fn validating(bundle: &[u8], annotation: Option<&str>) -> ValidatingWebhookConfiguration {
        let hook = |name: &str, policy: Option<&str>| {
            json!({
                "name": name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": policy,
                "clientConfig": {"url": "https://127.0.0.1/validate", "caBundle": ByteString(bundle.to_vec())},
            })
        };
        serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {
                "name": "prodguard",
                "annotations": annotation.map(|a| json!({ARM_ANNOTATION: a})),
            },
            "webhooks": [
                hook("validate.prodguard.io", Some("Ignore")),
                hook("rbac.validate.prodguard.io", Some("Ignore")),
                hook("other.example.io", None),
            ],
        }))
        .unwrap()
    }

    #[test]
    fn a_configuration_trusts_a_certificate_when_every_webhook_does() {
        let names = ["127.0.0.1".to_owned()];
        let ours = pki::generate("ours", &names).unwrap();
        let theirs = pki::generate("theirs", &names).unwrap();
        let leaf = rustls::pki_types::pem::PemObject::from_pem_slice(ours.cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        let config = Config::validating(&validating(ours.ca_cert_pem.as_bytes(), None));
        assert!(config.trusts(&leaf));
        assert!(
            !Config::validating(&validating(theirs.ca_cert_pem.as_bytes(), None)).trusts(&leaf)
        );
        // Both CAs in the bundle (a rotation): trusted.
        let both = format!("{}{}", theirs.ca_cert_pem, ours.ca_cert_pem);
        assert!(Config::validating(&validating(both.as_bytes(), None)).trusts(&leaf));
        // One webhook without a bundle is enough to fail; so is a missing configuration.
        let mut one_empty = Config::validating(&validating(ours.ca_cert_pem.as_bytes(), None));
        one_empty.webhooks[1].bundle.clear();
        assert!(!one_empty.trusts(&leaf));
        assert!(!Config::default().trusts(&leaf));
    }

    #[test]
    fn patches_address_webhooks_by_index_behind_a_test_of_their_name() {
        let config = Config::validating(&validating(
            b"",
            Some(" validate.prodguard.io , missing.example.io,"),
        ));
        assert_eq!(
            config.to_arm,
            ["validate.prodguard.io", "missing.example.io"]
        );
        // The API's default failure policy is Fail.
        assert_eq!(config.webhooks[2].failure_policy, "Fail");
        let (names, patch) = config
            .patch("failurePolicy", &json!("Fail"), |w| {
                w.failure_policy != "Fail" && config.to_arm.contains(&w.name)
            })
            .unwrap();
        assert_eq!(names, ["validate.prodguard.io"]);
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "validate.prodguard.io"},
                {"op": "add", "path": "/webhooks/0/failurePolicy", "value": "Fail"},
            ])
        );
        let (names, patch) = config
            .patch("clientConfig/caBundle", &json!("Q0E="), |w| {
                w.bundle.is_empty()
            })
            .unwrap();
        assert_eq!(names.len(), 3);
        assert_eq!(patch[4]["path"], "/webhooks/2/name");
        assert_eq!(patch[5]["path"], "/webhooks/2/clientConfig/caBundle");
        // Nothing to change: no patch.
        assert!(config
            .patch("failurePolicy", &json!("Fail"), |_| false)
            .is_none());
        // Without the annotation nothing is armed.
        assert!(Config::validating(&validating(b"", None)).to_arm.is_empty());
    }

    #[test]
    fn a_refused_call_names_the_permission() {
        let forbidden = kube::Error::Api(
            kube::core::Status::failure("secrets \"prodguard-tls\" is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        );
        assert_eq!(
            explain(
                &forbidden,
                "update",
                "secrets/prodguard-tls",
                "in namespace prodguard"
            ),
            "forbidden: prodguard's service account needs the permission to update \
             secrets/prodguard-tls in namespace prodguard (deploy/base/rbac.yaml grants it): \
             secrets \"prodguard-tls\" is forbidden"
        );
        let other = kube::Error::Api(
            kube::core::Status::failure("etcd is gone", "InternalError")
                .with_code(500)
                .boxed(),
        );
        assert!(explain(
            &other,
            "patch",
            "validatingwebhookconfigurations/prodguard",
            ""
        )
        .starts_with("cannot patch validatingwebhookconfigurations/prodguard: "));
    }
}
