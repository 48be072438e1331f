//! The one typed view of an object that every policy reads: serde-derived structs holding
//! exactly the fields policies read, their strings borrowed from the input where it needs no
//! unescaping (`Cow`), everything else skipped by the parser without being built.
//!
//! The webhook decodes a review's objects into it straight from the body, `check` decodes
//! manifests into it and the background audit decodes listed objects into it, all through
//! [`ObjectSeed`]: so the three cannot read an object differently. Which fields are read
//! depends on the kind ([`Shape`]): a Deployment's `spec` is a workload spec, a Service's is
//! not read at all. A field that a policy needs and the view lacks does not compile.
//!
//! A field read here with the wrong JSON type is a [`ShapeError`] naming its path
//! (`Deployment field spec.template.spec.containers must be a list`). What one object builds
//! is counted against [`MAX_KEPT_BYTES`], so that a hostile object (100,000 containers)
//! costs a bounded multiple of nothing rather than of its size.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The most memory that decoding one object may build, by the estimate of `keep`. A real
/// object builds a few kilobytes (a ClusterRole of 300 rules, about 300 KiB); the bound keeps a
/// hostile one (100,000 containers, millions of labels) from costing many times its JSON.
pub const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;

thread_local! {
    /// Bytes kept so far of the object being decoded (decoding is synchronous, so one object's
    /// count never mixes with another's on the same thread).
    static KEPT: Cell<usize> = const { Cell::new(0) };
    /// Bytes kept since [`take_kept`] was last called, all objects together.
    static KEPT_TOTAL: Cell<usize> = const { Cell::new(0) };
}

/// Counts `bytes` more of the object being decoded, or fails once it exceeds
/// [`MAX_KEPT_BYTES`].
fn keep<E: serde::de::Error>(bytes: usize) -> Result<(), E> {
    KEPT_TOTAL.with(|total| total.set(total.get().saturating_add(bytes)));
    KEPT.with(|kept| {
        let n = kept.get().saturating_add(bytes);
        kept.set(n);
        if n > MAX_KEPT_BYTES {
            Err(E::custom(format_args!(
                "{TOO_LARGE} {} MiB in the fields prodguard reads (containers, rules, labels...); prodguard judges no object that large",
                MAX_KEPT_BYTES >> 20
            )))
        } else {
            Ok(())
        }
    })
}

const TOO_LARGE: &str = "the object builds more than";

/// The estimated bytes decoding has built on this thread since the last call (both objects of
/// a review, and any attempt that failed), and starts counting again.
pub fn take_kept() -> usize {
    KEPT_TOTAL.with(|total| total.replace(0))
}

/// Which fields of an object of a kind policies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `spec` is a pod spec.
    Pod,
    /// `spec.replicas`, `spec.selector` and `spec.template` (Deployment, StatefulSet,
    /// DaemonSet, ReplicaSet, Job).
    Workload,
    /// The same with a plain label map as selector.
    ReplicationController,
    /// `spec.jobTemplate.spec.template`.
    CronJob,
    /// `template`.
    PodTemplate,
    /// `ephemeralContainers` (what Kubernetes 1.20-1.22 send on pods/ephemeralcontainers).
    EphemeralContainers,
    /// `spec.minReplicas` and `spec.scaleTargetRef`.
    HorizontalPodAutoscaler,
    /// `spec.replicas`.
    Scale,
    /// `rules`.
    Role,
    /// `roleRef` and `subjects`.
    Binding,
    /// A prodguard `PolicyException`'s `spec` (a kind of the same name in another group is
    /// read the same way; whoever acts on it checks the group).
    PolicyException,
    /// `spec.ingressClassName`.
    Ingress,
    /// A Traefik `IngressRoute`'s entry points and each route's middlewares.
    IngressRoute,
    /// A Traefik `Middleware`'s `spec.buffering`.
    Middleware,
    /// A Service's `spec.selector`.
    Service,
    /// Metadata only.
    #[default]
    Other,
}

impl Shape {
    pub fn of(kind: &str) -> Shape {
        match kind {
            "Pod" => Shape::Pod,
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Shape::Workload,
            "ReplicationController" => Shape::ReplicationController,
            "CronJob" => Shape::CronJob,
            "PodTemplate" => Shape::PodTemplate,
            "EphemeralContainers" => Shape::EphemeralContainers,
            "HorizontalPodAutoscaler" => Shape::HorizontalPodAutoscaler,
            "Scale" => Shape::Scale,
            "Role" | "ClusterRole" => Shape::Role,
            "RoleBinding" | "ClusterRoleBinding" => Shape::Binding,
            "PolicyException" => Shape::PolicyException,
            "Ingress" => Shape::Ingress,
            "IngressRoute" => Shape::IngressRoute,
            "Middleware" => Shape::Middleware,
            "Service" => Shape::Service,
            _ => Shape::Other,
        }
    }

    /// Where the kind keeps its pod spec, from the object root; `None` for kinds without one.
    pub fn pod_spec_path(self) -> Option<&'static [&'static str]> {
        Some(match self {
            Shape::Pod => &["spec"],
            Shape::Workload | Shape::ReplicationController => &["spec", "template", "spec"],
            Shape::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            Shape::PodTemplate => &["template", "spec"],
            Shape::EphemeralContainers => &[],
            _ => return None,
        })
    }
}

/// One object, as policies read it.
#[derive(Debug, Clone, Default)]
pub struct Object<'a> {
    /// Which fields were read: by the kind the object was decoded as.
    pub shape: Shape,
    pub api_version: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub metadata: Meta<'a>,
    pub spec: Spec<'a>,
    /// A PodTemplate's template.
    pub template: Option<Template<'a>>,
    /// The containers of an `EphemeralContainers` object (Kubernetes 1.20-1.22).
    pub ephemeral_containers: Option<Containers<'a>>,
    pub rules: Option<Vec<PolicyRule>>,
    pub role_ref: Option<RoleRef>,
    pub subjects: Option<Vec<Subject>>,
}

/// The spec, by the kind's [`Shape`].
#[derive(Debug, Clone, Default)]
pub enum Spec<'a> {
    #[default]
    None,
    Pod(PodSpec<'a>),
    Workload(WorkloadSpec<'a>),
    ReplicationController(ControllerSpec<'a>),
    CronJob(CronJobSpec<'a>),
    HorizontalPodAutoscaler(AutoscalerSpec<'a>),
    Scale(ScaleSpec),
    PolicyException(ExceptionSpec<'a>),
    Ingress(IngressSpec<'a>),
    IngressRoute(IngressRouteSpec<'a>),
    Middleware(MiddlewareSpec),
    Service(ServiceSpec<'a>),
}

/// The metadata policies read. `managedFields` is skipped unparsed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub uid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub labels: Option<ObjectLabels<'a>>,
    /// Present when the object has annotations; holds those policies read.
    #[serde(borrow, default)]
    pub annotations: Option<Annotations<'a>>,
    #[serde(borrow, default, deserialize_with = "counted_list")]
    pub owner_references: Option<Vec<OwnerRef<'a>>>,
}

/// An object's labels, borrowed from the input, each counted against [`MAX_KEPT_BYTES`].
#[derive(Debug, Clone, Default)]
pub struct ObjectLabels<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl crate::config::Labels for ObjectLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        value_of(&self.0, key)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ObjectLabels<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let every = |_: &str| true;
        deserializer
            .deserialize_map(PairsVisitor(every, PhantomData))
            .map(ObjectLabels)
    }
}

/// The value of `key` in a list of pairs.
fn value_of<'s>(pairs: &'s [(Cow<'_, str>, Cow<'_, str>)], key: &str) -> Option<&'s str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_ref())
}

/// A map of strings read into pairs borrowed from the input: the entries whose key `wanted`
/// accepts, each counted against [`MAX_KEPT_BYTES`]; the others skipped unparsed.
struct PairsVisitor<'a>(fn(&str) -> bool, PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PairsVisitor<'a> {
    type Value = Vec<(Cow<'a, str>, Cow<'a, str>)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::new();
        while let Some(Text(key)) = map.next_key()? {
            if !(self.0)(&key) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let Text(value) = map.next_value()?;
            // Two strings, and their text when unescaped.
            keep(std::mem::size_of::<(Cow<str>, Cow<str>)>() + key.len() + value.len())?;
            pairs.push((key, value));
        }
        Ok(pairs)
    }
}

/// The annotations policies read.
pub const READ_ANNOTATIONS: &[&str] = &[
    "nginx.ingress.kubernetes.io/proxy-body-size",
    "prodguard.io/database",
    "kubernetes.io/ingress.class",
    "traefik.ingress.kubernetes.io/router.middlewares",
    "traefik.ingress.kubernetes.io/router.entrypoints",
];

/// The annotations of an object that policies read ([`READ_ANNOTATIONS`]); the others
/// (`kubectl.kubernetes.io/last-applied-configuration`, a copy of the whole object) are
/// skipped without being kept.
#[derive(Debug, Clone, Default)]
pub struct Annotations<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl Annotations<'_> {
    /// The value of annotation `key` (one of [`READ_ANNOTATIONS`]).
    pub fn get(&self, key: &str) -> Option<&str> {
        debug_assert!(READ_ANNOTATIONS.contains(&key), "{key} is not read");
        value_of(&self.0, key)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Annotations<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let read = |key: &str| READ_ANNOTATIONS.contains(&key);
        deserializer
            .deserialize_map(PairsVisitor(read, PhantomData))
            .map(Annotations)
    }
}

/// An owner reference: who owns the object, and whether it is its controller.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OwnerRef<'a> {
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub uid: Cow<'a, str>,
    #[serde(default)]
    pub controller: Option<bool>,
}

/// A pod spec: its containers, and how its pods are spread.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Containers<'a>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Containers<'a>>,
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Containers<'a>>,
    #[serde(borrow, default)]
    pub affinity: Option<Affinity<'a>>,
    #[serde(borrow, default, deserialize_with = "counted_list")]
    pub topology_spread_constraints: Option<Vec<Topology<'a>>>,
    /// Only what a volume claims (db-access: a pod beside a database's storage).
    #[serde(borrow, default, deserialize_with = "counted_list")]
    pub volumes: Option<Vec<Volume<'a>>>,
}

/// A pod's volume: its name, and the PersistentVolumeClaim it mounts, if it does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub persistent_volume_claim: Option<ClaimSource<'a>>,
}

/// `persistentVolumeClaim` of a volume.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSource<'a> {
    #[serde(borrow, default)]
    pub claim_name: Cow<'a, str>,
}

/// A list of containers, each counted against [`MAX_KEPT_BYTES`].
#[derive(Debug, Clone, Default)]
pub struct Containers<'a>(pub Vec<Container<'a>>);

/// What the policies may build from one container besides its view: a patch operation with
/// its pointer and value, and its part of the finding's message (measured: a Pod of 40,000
/// patched containers peaks at about 1 KB per container, the answer included).
const BUILT_PER_CONTAINER: usize = 640;

impl<'de: 'a, 'a> Deserialize<'de> for Containers<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_seq(CountedSeq(PhantomData))
            .map(Containers)
    }
}

impl Weight for Container<'_> {
    fn weight(&self) -> usize {
        BUILT_PER_CONTAINER
    }
}

/// One container: what policies read of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub image: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub image_pull_policy: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub env: Option<Env<'a>>,
}

/// The environment variables policies read.
pub const READ_VARIABLES: &[&str] = &["discovery.type"];

/// The entries of a container's `env` that policies read ([`READ_VARIABLES`]); the others,
/// often dozens, are skipped without being kept.
#[derive(Debug, Clone, Default)]
pub struct Env<'a>(pub Vec<EnvVar<'a>>);

/// A `{name, value}` entry of `env`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnvVar<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub value: Option<Cow<'a, str>>,
}

thread_local! {
    /// Whether `env` lists are read on this thread (see [`skipping_env_unless_named`]).
    static ENV_READ: Cell<bool> = const { Cell::new(true) };
}

/// Runs `decode` with every container's `env` skipped whole, unparsed, when `text` cannot name
/// a variable policies read: it holds none of [`READ_VARIABLES`] verbatim and no `\u` escape
/// that could spell one (the API server writes names verbatim). A review of 58 variables
/// decodes 4 us faster; the scan costs well under one.
pub fn skipping_env_unless_named<T>(text: &[u8], decode: impl FnOnce() -> T) -> T {
    let may_name = memchr::memmem::find(text, b"\\u").is_some()
        || READ_VARIABLES
            .iter()
            .any(|name| memchr::memmem::find(text, name.as_bytes()).is_some());
    if may_name {
        return decode();
    }
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            ENV_READ.with(|read| read.set(true));
        }
    }
    ENV_READ.with(|read| read.set(false));
    let _restore = Restore;
    decode()
}

impl<'de: 'a, 'a> Deserialize<'de> for Env<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !ENV_READ.with(Cell::get) {
            deserializer.deserialize_ignored_any(IgnoredAny)?;
            return Ok(Env(Vec::new()));
        }
        struct EnvVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EnvVisitor<'a> {
            type Value = Env<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Env<'a>, A::Error> {
                let mut kept = Vec::new();
                while let Some(var) = seq.next_element::<EnvVar<'a>>()? {
                    if READ_VARIABLES.contains(&var.name.as_ref()) {
                        keep(std::mem::size_of::<EnvVar>())?;
                        kept.push(var);
                    }
                }
                Ok(Env(kept))
            }
        }
        deserializer.deserialize_seq(EnvVisitor(PhantomData))
    }
}

impl Env<'_> {
    /// The value of variable `name` (one of [`READ_VARIABLES`]).
    pub fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(READ_VARIABLES.contains(&name), "{name} is not read");
        self.0
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.as_deref())
    }
}

/// The part of `affinity` that separates pods.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity<'a> {
    #[serde(borrow, default)]
    pub pod_anti_affinity: Option<AntiAffinity<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AntiAffinity<'a> {
    #[serde(
        borrow,
        default,
        rename = "requiredDuringSchedulingIgnoredDuringExecution",
        deserialize_with = "counted_list"
    )]
    pub required: Option<Vec<Topology<'a>>>,
    #[serde(
        borrow,
        default,
        rename = "preferredDuringSchedulingIgnoredDuringExecution",
        deserialize_with = "counted_list"
    )]
    pub preferred: Option<Vec<WeightedTerm<'a>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedTerm<'a> {
    #[serde(borrow, default)]
    pub pod_affinity_term: Option<Topology<'a>>,
}

/// An affinity term or a spread constraint: the topology it is over.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub topology_key: Option<Cow<'a, str>>,
}

/// A pod template: its pod spec.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Template<'a> {
    /// The pods' labels and annotations (db-access: a StatefulSet of database pods).
    #[serde(borrow, default)]
    pub metadata: Option<Meta<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<PodSpec<'a>>,
}

/// What policies read of a Deployment's, StatefulSet's, DaemonSet's, ReplicaSet's or Job's
/// spec.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WorkloadSpec<'a> {
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    #[serde(borrow, default)]
    pub template: Option<Template<'a>>,
    /// A StatefulSet's claim templates (db-access: the claims of its pods are
    /// `<template>-<statefulset>-<ordinal>`).
    #[serde(
        borrow,
        default,
        rename = "volumeClaimTemplates",
        deserialize_with = "counted_list"
    )]
    pub volume_claim_templates: Option<Vec<ClaimTemplate<'a>>>,
}

/// A StatefulSet's claim template: only its name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClaimTemplate<'a> {
    #[serde(borrow, default)]
    pub metadata: Meta<'a>,
}

/// A ReplicationController's spec: its selector is a plain label map.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ControllerSpec<'a> {
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(borrow, default)]
    pub selector: Option<ObjectLabels<'a>>,
    #[serde(borrow, default)]
    pub template: Option<Template<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobSpec<'a> {
    #[serde(borrow, default)]
    pub job_template: Option<JobTemplate<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobTemplate<'a> {
    #[serde(borrow, default)]
    pub spec: Option<JobSpec<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobSpec<'a> {
    #[serde(borrow, default)]
    pub template: Option<Template<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerSpec<'a> {
    #[serde(default)]
    pub min_replicas: Option<i64>,
    #[serde(borrow, default)]
    pub scale_target_ref: Option<TargetRef<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TargetRef<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub name: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ScaleSpec {
    #[serde(default)]
    pub replicas: Option<i64>,
}

/// What `ingress-body-size` reads of an Ingress's spec: which controller serves it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub ingress_class_name: Option<Cow<'a, str>>,
}

/// A Traefik `IngressRoute`'s entry points and routes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRouteSpec<'a> {
    #[serde(borrow, default)]
    pub entry_points: Option<Strings<'a>>,
    #[serde(borrow, default, deserialize_with = "counted_list")]
    pub routes: Option<Vec<Route<'a>>>,
}

/// One route of an `IngressRoute`: its rule, and the middlewares it names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Route<'a> {
    #[serde(borrow, default, rename = "match", deserialize_with = "opt_str")]
    pub match_: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "counted_list")]
    pub middlewares: Option<Vec<MiddlewareRef<'a>>>,
}

/// A middleware named by a route: its name, and its namespace (the route's when left out).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MiddlewareRef<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub namespace: Option<Cow<'a, str>>,
}

impl Weight for Route<'_> {}
impl Weight for MiddlewareRef<'_> {
    fn weight(&self) -> usize {
        self.name.len() + self.namespace.as_ref().map_or(0, |n| n.len())
    }
}

/// What `db-access` reads of a Service: the labels its selector picks pods by.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSpec<'a> {
    #[serde(borrow, default)]
    pub selector: Option<ObjectLabels<'a>>,
}

/// What `ingress-body-size` reads of a Traefik `Middleware`: its buffering, if any.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MiddlewareSpec {
    #[serde(default)]
    pub buffering: Option<Buffering>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Buffering {
    /// The largest request body accepted, in bytes; 0 or unset: no limit.
    #[serde(default)]
    pub max_request_body_bytes: Option<i64>,
}

/// A `PolicyException`'s spec: which policies it lifts, on what, for whom, why and until when.
/// Read as written; `exceptions::Exception::from_view` judges it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionSpec<'a> {
    #[serde(borrow, default)]
    pub policies: Option<Strings<'a>>,
    #[serde(borrow, default, rename = "match")]
    pub match_: Option<ExceptionMatch<'a>>,
    #[serde(borrow, default)]
    pub subjects: Option<ExceptionSubjects<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub expires: Option<Cow<'a, str>>,
}

/// What a `PolicyException` holds for, in its own namespace.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExceptionMatch<'a> {
    #[serde(borrow, default)]
    pub kinds: Option<Strings<'a>>,
    #[serde(borrow, default)]
    pub names: Option<Strings<'a>>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
}

/// Whose requests a `PolicyException` holds for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionSubjects<'a> {
    #[serde(borrow, default)]
    pub users: Option<Strings<'a>>,
    #[serde(borrow, default)]
    pub groups: Option<Strings<'a>>,
    #[serde(borrow, default, deserialize_with = "counted_list")]
    pub service_accounts: Option<Vec<ServiceAccountRef<'a>>>,
}

/// A service account, by namespace (that of the exception when left out) and name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceAccountRef<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
}

impl Weight for ServiceAccountRef<'_> {
    fn weight(&self) -> usize {
        self.name.len() + self.namespace.as_ref().map_or(0, |n| n.len())
    }
}

/// A list of strings, each counted against [`MAX_KEPT_BYTES`].
#[derive(Debug, Clone, Default)]
pub struct Strings<'a>(pub Vec<Cow<'a, str>>);

impl Weight for Text<'_> {
    fn weight(&self) -> usize {
        self.0.len()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Strings<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_seq(CountedSeq::<Text<'de>>(PhantomData))
            .map(|items| Strings(items.into_iter().map(|t| t.0).collect()))
    }
}

/// An optional string, borrowed from the input when it needs no unescaping (serde borrows a
/// bare `Cow<str>` field, not one inside an `Option`).
fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Option::<Text<'de>>::deserialize(deserializer).map(|o| o.map(|k| k.0))
}

/// A sequence, each element counted against [`MAX_KEPT_BYTES`] by its size and its
/// [`Weight`].
struct CountedSeq<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Weight> Visitor<'de> for CountedSeq<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            keep(std::mem::size_of::<T>() + item.weight())?;
            items.push(item);
        }
        Ok(items)
    }
}

fn counted_list<'de, D: Deserializer<'de>, T: Deserialize<'de> + Weight>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Option::<CountedList<T>>::deserialize(deserializer).map(|o| o.map(|l| l.0))
}

struct CountedList<T>(Vec<T>);

impl<'de, T: Deserialize<'de> + Weight> Deserialize<'de> for CountedList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_seq(CountedSeq(PhantomData))
            .map(CountedList)
    }
}

impl Weight for OwnerRef<'_> {}
impl Weight for Volume<'_> {}
impl Weight for ClaimTemplate<'_> {}
impl Weight for Topology<'_> {}
impl Weight for WeightedTerm<'_> {}

/// What an element of a counted list costs beyond its own size: the text an RBAC rule or
/// subject holds, what policies build from a container; nothing for the others.
pub trait Weight {
    fn weight(&self) -> usize {
        0
    }
}

fn strings_weight(items: &[String]) -> usize {
    items.iter().map(|s| 24 + s.len()).sum()
}

impl Weight for PolicyRule {
    fn weight(&self) -> usize {
        [
            &self.api_groups,
            &self.resources,
            &self.resource_names,
            &self.non_resource_urls,
        ]
        .into_iter()
        .flatten()
        .map(|v| strings_weight(v))
        .sum::<usize>()
            + strings_weight(&self.verbs)
    }
}

impl Weight for Subject {
    fn weight(&self) -> usize {
        self.name.len() + self.kind.len() + self.namespace.as_ref().map_or(0, String::len)
    }
}

/// A string, borrowed from the input when it needs no unescaping (serde borrows a bare
/// `Cow<str>` field of a derived struct, but not a map key, a list item or an `Option`'s).
#[derive(Default)]
pub struct Text<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Decodes an object of kind `kind` (`null` is `None`): the kind decides which fields are
/// read. The object's own `kind` field, when present, is kept as it is.
#[derive(Debug, Clone, Copy)]
pub struct ObjectSeed<'k> {
    pub kind: &'k str,
}

impl<'de, 'k> DeserializeSeed<'de> for ObjectSeed<'k> {
    type Value = Option<Object<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(OptionalObject(self.kind))
    }
}

struct OptionalObject<'k>(&'k str);

impl<'de> Visitor<'de> for OptionalObject<'_> {
    type Value = Option<Object<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        KEPT.with(|kept| kept.set(0));
        deserializer
            .deserialize_map(ObjectVisitor(self.0))
            .map(Some)
    }
}

struct ObjectVisitor<'k>(&'k str);

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Object<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
        let shape = Shape::of(self.0);
        let mut object = Object {
            shape,
            ..Object::default()
        };
        while let Some(Text(key)) = map.next_key()? {
            match (key.as_ref(), shape) {
                ("apiVersion", _) => {
                    object.api_version = map.next_value::<Option<Text>>()?.unwrap_or_default().0
                }
                ("kind", _) => {
                    object.kind = map.next_value::<Option<Text>>()?.unwrap_or_default().0
                }
                ("metadata", _) => {
                    object.metadata = map.next_value::<Option<_>>()?.unwrap_or_default()
                }
                ("spec", Shape::Pod) => object.spec = spec(&mut map, Spec::Pod)?,
                ("spec", Shape::Workload) => object.spec = spec(&mut map, Spec::Workload)?,
                ("spec", Shape::ReplicationController) => {
                    object.spec = spec(&mut map, Spec::ReplicationController)?
                }
                ("spec", Shape::CronJob) => object.spec = spec(&mut map, Spec::CronJob)?,
                ("spec", Shape::HorizontalPodAutoscaler) => {
                    object.spec = spec(&mut map, Spec::HorizontalPodAutoscaler)?
                }
                ("spec", Shape::Scale) => object.spec = spec(&mut map, Spec::Scale)?,
                ("spec", Shape::PolicyException) => {
                    object.spec = spec(&mut map, Spec::PolicyException)?
                }
                ("spec", Shape::Ingress) => object.spec = spec(&mut map, Spec::Ingress)?,
                ("spec", Shape::IngressRoute) => object.spec = spec(&mut map, Spec::IngressRoute)?,
                ("spec", Shape::Middleware) => object.spec = spec(&mut map, Spec::Middleware)?,
                ("spec", Shape::Service) => object.spec = spec(&mut map, Spec::Service)?,
                ("template", Shape::PodTemplate) => object.template = map.next_value()?,
                ("ephemeralContainers", Shape::EphemeralContainers) => {
                    object.ephemeral_containers = map.next_value()?
                }
                ("rules", Shape::Role) => {
                    object.rules = map.next_value::<Option<CountedList<_>>>()?.map(|l| l.0)
                }
                ("roleRef", Shape::Binding) => object.role_ref = map.next_value()?,
                ("subjects", Shape::Binding) => {
                    object.subjects = map.next_value::<Option<CountedList<_>>>()?.map(|l| l.0)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if object.kind.is_empty() {
            // List items carry no kind.
            object.kind = Cow::Owned(self.0.to_owned());
        }
        Ok(object)
    }
}

/// The spec of a shape: `null` is none.
fn spec<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    wrap: fn(T) -> Spec<'de>,
) -> Result<Spec<'de>, A::Error> {
    Ok(map
        .next_value::<Option<T>>()?
        .map(wrap)
        .unwrap_or(Spec::None))
}

/// An object that does not have the shape its kind requires, or that is too large to judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShapeError {
    message: String,
    in_metadata: bool,
}

impl ShapeError {
    pub fn field(kind: &str, path: &str, expected: &str) -> ShapeError {
        ShapeError::new(format!("{kind} field {path} must be {expected}"))
    }

    fn new(message: String) -> ShapeError {
        ShapeError {
            message,
            in_metadata: false,
        }
    }

    /// Whether the error is in the object's metadata, which makes a review's whole request
    /// unreadable rather than one object unjudgeable.
    pub fn is_metadata(&self) -> bool {
        self.in_metadata
    }

    fn from_path(kind: &str, error: serde_path_to_error::Error<serde_json::Error>) -> ShapeError {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let text = inner.to_string();
        if path == "metadata" || path.starts_with("metadata.") {
            return ShapeError {
                message: format!("{path}: {text}"),
                in_metadata: true,
            };
        }
        // serde_json appends the position, which means nothing to the reader of an object.
        let text = match text.rfind(" at line ") {
            Some(at) => &text[..at],
            None => text.as_str(),
        };
        if text.starts_with(TOO_LARGE) || inner.is_syntax() || inner.is_eof() {
            return ShapeError::new(text.to_owned());
        }
        let Some((_, expected)) = text.rsplit_once(", expected ") else {
            return ShapeError::new(format!("{kind} field {path}: {text}"));
        };
        let expected = match (path.as_str(), expected) {
            ("roleRef", _) => "a role reference",
            ("subjects", _) => "a list of subjects",
            ("rules", _) => "a list of rules",
            (_, "a sequence") => "a list",
            (_, "a string" | "a borrowed string") => "a string",
            (_, "i64" | "i32" | "u64" | "u32" | "an integer") => "an integer",
            (_, "a boolean") => "a boolean",
            (_, e) if e.starts_with("struct ") || e == "a map" || e == "an object" => "an object",
            (_, e) => e,
        };
        ShapeError::field(kind, &path, expected)
    }
}

impl<'a> Object<'a> {
    /// Decodes an object of kind `kind` from JSON text, its strings borrowed from `text`.
    pub fn decode(kind: &str, text: &'a str) -> Result<Option<Object<'a>>, ShapeError> {
        let mut de = serde_json::Deserializer::from_str(text);
        match (ObjectSeed { kind }).deserialize(&mut de) {
            Ok(object) => Ok(object),
            Err(_) => Err(Self::explain(kind, || {
                serde_json::Deserializer::from_str(text)
            })),
        }
    }

    /// Why `text` does not decode: decoded again, this time tracking the path.
    fn explain<'de, R: serde_json::de::Read<'de>>(
        kind: &str,
        deserializer: impl FnOnce() -> serde_json::Deserializer<R>,
    ) -> ShapeError {
        let mut de = deserializer();
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
        match (ObjectSeed { kind }).deserialize(tracked) {
            Ok(_) => ShapeError::new(format!(
                "{kind}: the object does not decode the same way twice"
            )),
            Err(e) => ShapeError::from_path(kind, serde_path_to_error::Error::new(track.path(), e)),
        }
    }

    /// The pod spec of a pod-bearing object, with where it is from the root.
    pub fn pod_spec(&self) -> Option<&PodSpec<'a>> {
        fn template<'s, 'a>(t: &'s Option<Template<'a>>) -> Option<&'s PodSpec<'a>> {
            t.as_ref().and_then(|t| t.spec.as_ref())
        }
        match &self.spec {
            Spec::Pod(spec) => Some(spec),
            Spec::Workload(w) => template(&w.template),
            Spec::ReplicationController(c) => template(&c.template),
            Spec::CronJob(c) => c
                .job_template
                .as_ref()
                .and_then(|j| j.spec.as_ref())
                .and_then(|j| template(&j.template)),
            _ => self.template.as_ref().and_then(|t| t.spec.as_ref()),
        }
    }

    /// `spec.replicas` of a workload or a Scale, if set.
    pub fn replicas(&self) -> Option<i64> {
        match &self.spec {
            Spec::Workload(w) => w.replicas,
            Spec::ReplicationController(c) => c.replicas,
            Spec::Scale(s) => s.replicas,
            _ => None,
        }
    }

    /// Whether a controller of kind `kind` owns the object (a Deployment's ReplicaSet).
    pub fn controlled_by(&self, kind: &str) -> bool {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.kind == kind && r.controller == Some(true))
    }

    /// The owner reference that marks the object's controller, if any.
    pub fn controller(&self) -> Option<&OwnerRef<'a>> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
    }

    pub fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }
}

/// An owned object of kind `kind`, decoded from JSON text (tests). prodguard itself decodes
/// only from text (`Object::decode`), so that the view's decoding code is in the binary once,
/// and once more tracking the path to explain an error.
#[cfg(test)]
pub fn decode_owned(kind: &str, text: &[u8]) -> Result<Object<'static>, ShapeError> {
    let mut de = serde_json::Deserializer::from_reader(text);
    match (ObjectSeed { kind }).deserialize(&mut de) {
        Ok(object) => Ok(object.unwrap_or_default()),
        Err(e) => Err(match std::str::from_utf8(text) {
            Ok(text) => Object::explain(kind, || serde_json::Deserializer::from_str(text)),
            Err(_) => ShapeError::new(e.to_string()),
        }),
    }
}

/// An owned object, decoded from a JSON value by the kind it names (tests).
#[cfg(test)]
pub fn owned(value: serde_json::Value) -> Result<Object<'static>, ShapeError> {
    let kind = value
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    decode_owned(kind, value.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Decodes `value` as a review's object is decoded (from text, by its kind): the error,
    /// and the bytes kept.
    fn kept_of(value: &Value) -> (Option<String>, usize) {
        let text = serde_json::to_string(value).unwrap();
        let kind = value["kind"].as_str().unwrap_or_default();
        take_kept();
        let result = Object::decode(kind, &text);
        (result.err().map(|e| e.to_string()), take_kept())
    }

    #[test]
    fn what_an_object_builds_is_bounded_whatever_its_shape() {
        let refused = "the object builds more than 4 MiB in the fields prodguard reads";
        // 100,000 containers (2.6 MB of JSON).
        let containers = vec![json!({"name": "c", "image": "a"}); 100_000];
        let (error, kept) = kept_of(&json!({"kind": "Pod", "spec": {"containers": containers}}));
        assert!(error.unwrap().contains(refused));
        // Built twice: the decode, and the one that explains its error (each freed).
        assert!(kept <= 2 * (MAX_KEPT_BYTES + 1024), "{kept}");
        // A million near-empty rules, and a million labels.
        let rules = vec![json!({"verbs": []}); 1_000_000];
        let (error, _) = kept_of(&json!({"kind": "ClusterRole", "rules": rules}));
        assert!(error.unwrap().contains(refused));
        let labels: serde_json::Map<String, Value> =
            (0..1_000_000).map(|i| (i.to_string(), json!(""))).collect();
        let (error, _) = kept_of(&json!({"kind": "Pod", "metadata": {"labels": labels}}));
        assert!(error.unwrap().contains(refused));
        // A real object is far below: a Deployment of 50 containers, a ClusterRole of 300 rules.
        let containers = vec![
            json!({"name": "app", "image": "registry.local/app:1.2.3", "imagePullPolicy": "IfNotPresent"});
            50
        ];
        let (error, kept) = kept_of(
            &json!({"kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": containers}}}}),
        );
        assert_eq!(error, None);
        assert!(kept < 128 * 1024, "{kept}");
        let rules = vec![
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]});
            300
        ];
        let (error, kept) = kept_of(&json!({"kind": "ClusterRole", "rules": rules}));
        assert_eq!(error, None);
        assert!(kept < 1024 * 1024, "{kept}");
    }

    #[test]
    fn reads_what_policies_read_by_kind_and_borrows_its_strings() {
        let text = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "openg2p", "labels": {"app": "web"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                         "managedFields": [{"manager": "helm"}],
                         "ownerReferences": [{"kind": "X", "name": "x", "controller": true}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                         "containers": [{"name": "app", "image": "nginx:1", "imagePullPolicy": "Always",
                                         "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]}],
                         "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                             {"topologyKey": "kubernetes.io/hostname"}]}},
                         "volumes": [{"name": "v", "emptyDir": {}}]}}},
            "status": {"replicas": 3}
        })
        .to_string();
        let object = Object::decode("Deployment", &text).unwrap().unwrap();
        assert_eq!(object.shape, Shape::Workload);
        assert_eq!(object.replicas(), Some(3));
        assert!(object.controller().is_some() && object.controlled_by("X"));
        // Annotations that no policy reads are not kept, but their presence is.
        assert!(object.metadata.annotations.as_ref().unwrap().0.is_empty());
        let spec = object.pod_spec().unwrap();
        let container = &spec.containers.as_ref().unwrap().0[0];
        assert!(matches!(container.image, Some(Cow::Borrowed("nginx:1"))));
        assert!(
            container.env.as_ref().unwrap().0.is_empty(),
            "A is not read"
        );
        let anti = spec.affinity.as_ref().unwrap().pod_anti_affinity.as_ref();
        assert_eq!(
            anti.unwrap().required.as_ref().unwrap()[0]
                .topology_key
                .as_deref(),
            Some("kubernetes.io/hostname")
        );
    }

    #[test]
    fn kinds_no_policy_reads_are_metadata_only_whatever_their_spec() {
        // A custom resource whose spec has fields named like a workload's, of other types.
        let text = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                          "metadata": {"name": "w"},
                          "spec": {"replicas": "many", "template": "x", "containers": 5}})
        .to_string();
        let object = Object::decode("Widget", &text).unwrap().unwrap();
        assert_eq!(object.shape, Shape::Other);
        assert!(matches!(object.spec, Spec::None));
        assert_eq!(object.name(), Some("w"));
        // A list item without kind takes the kind it was decoded as.
        let item = Object::decode("ConfigMap", r#"{"metadata": {"name": "c"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(item.kind, "ConfigMap");
        assert!(Object::decode("Pod", "null").unwrap().is_none());
    }

    #[test]
    fn only_listed_variables_and_annotations_are_kept_even_escaped() {
        let text = r#"{"kind": "Pod", "metadata": {"annotations": {"prodguard.io/data\u0062ase": "true", "other": "x"}},
            "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"},
            {"name": "discovery\u002etype", "value": "single-node"}, {"name": "B", "valueFrom": {"x": {}}}]}]}}"#;
        let object = Object::decode("Pod", text).unwrap().unwrap();
        let annotations = object.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.0.len(), 1);
        assert_eq!(annotations.get("prodguard.io/database"), Some("true"));
        let env = object.pod_spec().unwrap().containers.as_ref().unwrap().0[0]
            .env
            .as_ref()
            .unwrap();
        assert_eq!(env.0.len(), 1);
        assert_eq!(env.get("discovery.type"), Some("single-node"));
    }

    #[test]
    fn shape_errors_name_the_field_and_metadata_errors_say_so() {
        let error =
            |kind: &str, value: Value| Object::decode(kind, &value.to_string()).unwrap_err();
        let e = error(
            "HorizontalPodAutoscaler",
            json!({"spec": {"minReplicas": true}}),
        );
        assert_eq!(
            e.to_string(),
            "HorizontalPodAutoscaler field spec.minReplicas must be an integer"
        );
        assert!(!e.is_metadata());
        let e = error(
            "CronJob",
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"imagePullPolicy": []}]}}}}}}),
        );
        assert_eq!(
            e.to_string(),
            "CronJob field spec.jobTemplate.spec.template.spec.containers[0].imagePullPolicy must be a string"
        );
        let e = error("Pod", json!({"metadata": {"labels": {"a": 1}}}));
        assert!(e.is_metadata(), "{e}");
        assert!(e.to_string().starts_with("metadata.labels"), "{e}");
        let e = error("ClusterRole", json!({"rules": {}}));
        assert_eq!(
            e.to_string(),
            "ClusterRole field rules must be a list of rules"
        );
        // The same owned (lookups, snapshots).
        let value = json!({"kind": "Scale", "spec": {"replicas": "1"}});
        assert_eq!(
            owned(value).unwrap_err().to_string(),
            "Scale field spec.replicas must be an integer"
        );
    }
}
