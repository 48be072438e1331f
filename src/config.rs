//! Plain configuration structs (serde), built directly by tests, loaded from
//! `policies/*.yaml`. Every key is checked at load time: an unknown key or a bad value stops
//! startup with a message that names the file, the key and the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::policies::image_ref::{normalize_registry, ImageRef};

/// The default policy set, embedded in the binary.
pub const DEFAULT_POLICY_SET: &str = include_str!("../policies/openg2p-production.yaml");
/// How the embedded default is named in messages.
pub const DEFAULT_POLICY_SET_NAME: &str = "policies/openg2p-production.yaml (embedded)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GlobalMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Enforce,
    Audit,
    Off,
}

impl<'de> Deserialize<'de> for PolicyMode {
    /// `enforce`, `audit` or `off`; an unquoted `off` is the boolean false in YAML 1.1, and
    /// means off.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Named {
            Enforce,
            Audit,
            Off,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(false) => Ok(PolicyMode::Off),
            Raw::Bool(true) => Err(serde::de::Error::custom(
                "`true` is not a mode; use one of: enforce, audit, off",
            )),
            Raw::Name(name) => {
                let named =
                    Named::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&name))?;
                Ok(match named {
                    Named::Enforce => PolicyMode::Enforce,
                    Named::Audit => PolicyMode::Audit,
                    Named::Off => PolicyMode::Off,
                })
            }
        }
    }
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
            PolicyMode::Off => "off",
        }
    }
}

fn enforce() -> PolicyMode {
    PolicyMode::Enforce
}
fn audit() -> PolicyMode {
    PolicyMode::Audit
}
fn off() -> PolicyMode {
    PolicyMode::Off
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// `audit` runs every policy in audit mode, whatever its own mode.
    #[serde(default)]
    pub mode: GlobalMode,
    #[serde(default)]
    pub admins: Admins,
    /// Namespaces prodguard never acts in (the webhook configurations exclude them too).
    #[serde(default = "default_excluded_namespaces")]
    pub excluded_namespaces: Vec<String>,
    /// The namespaces `opensearch-cluster` and `external-databases` treat as production:
    /// those whose labels match (`{}` matches every namespace).
    #[serde(default = "default_production_namespaces")]
    pub production_namespaces: LabelSelector,
    #[serde(default)]
    pub policies: Policies,
}

/// The label a production namespace carries by default.
pub const PRODUCTION_LABEL: (&str, &str) = ("prodguard.io/environment", "production");

fn default_production_namespaces() -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::from([(
            PRODUCTION_LABEL.0.to_owned(),
            PRODUCTION_LABEL.1.to_owned(),
        )]),
    }
}

fn default_excluded_namespaces() -> Vec<String> {
    vec!["kube-system".to_owned(), "prodguard".to_owned()]
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Admins {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default = "default_admin_groups")]
    pub groups: Vec<String>,
}

fn default_admin_groups() -> Vec<String> {
    vec!["system:masters".to_owned()]
}

impl Default for Admins {
    fn default() -> Self {
        Admins {
            users: Vec::new(),
            groups: default_admin_groups(),
        }
    }
}

impl Admins {
    pub fn is_admin(&self, username: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == username)
            || groups.iter().any(|g| self.groups.iter().any(|a| a == g))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    #[serde(rename = "image-pull-policy", default)]
    pub image_pull_policy: ImagePullPolicyConfig,
    #[serde(rename = "airgap-registry", default)]
    pub airgap_registry: AirgapRegistryConfig,
    #[serde(rename = "registry-mirror", default)]
    pub registry_mirror: RegistryMirrorConfig,
    #[serde(rename = "db-access", default)]
    pub db_access: DbAccessConfig,
    #[serde(rename = "min-replicas", default)]
    pub min_replicas: MinReplicasConfig,
    #[serde(rename = "protect-delete", default)]
    pub protect_delete: ProtectDeleteConfig,
    #[serde(rename = "rbac-hygiene", default)]
    pub rbac_hygiene: RbacHygieneConfig,
    #[serde(rename = "ingress-body-size", default)]
    pub ingress_body_size: IngressBodySizeConfig,
    #[serde(rename = "opensearch-cluster", default)]
    pub opensearch_cluster: OpensearchClusterConfig,
    #[serde(rename = "external-databases", default)]
    pub external_databases: ExternalDatabasesConfig,
    #[serde(rename = "node-spread", default)]
    pub node_spread: NodeSpreadConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RbacHygieneConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
    /// Users and service accounts (`system:serviceaccount:<namespace>:<name>`), with `*`
    /// wildcards, that may be granted the guarded permissions besides the admins.
    #[serde(default = "default_rbac_exempt_users")]
    pub exempt_users: Vec<String>,
    /// Groups, with `*` wildcards, that may be granted them.
    #[serde(default = "default_rbac_exempt_groups")]
    pub exempt_groups: Vec<String>,
}

fn default_rbac_exempt_users() -> Vec<String> {
    [
        "system:serviceaccount:kube-system:*",
        "system:kube-controller-manager",
        "system:kube-scheduler",
    ]
    .map(String::from)
    .to_vec()
}

fn default_rbac_exempt_groups() -> Vec<String> {
    vec!["system:nodes".to_owned()]
}

impl Default for RbacHygieneConfig {
    fn default() -> Self {
        RbacHygieneConfig {
            mode: enforce(),
            exempt_users: default_rbac_exempt_users(),
            exempt_groups: default_rbac_exempt_groups(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressBodySizeConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
    /// Set on an Ingress that names no `proxy-body-size` (an nginx size: `50m`).
    #[serde(default = "default_body_size")]
    pub default: String,
    /// The largest `proxy-body-size` allowed.
    #[serde(default = "default_body_size")]
    pub maximum: String,
}

fn default_body_size() -> String {
    "50m".to_owned()
}

impl Default for IngressBodySizeConfig {
    fn default() -> Self {
        IngressBodySizeConfig {
            mode: enforce(),
            default: default_body_size(),
            maximum: default_body_size(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpensearchClusterConfig {
    #[serde(default = "audit")]
    pub mode: PolicyMode,
    /// Image repositories that are OpenSearch nodes.
    #[serde(default = "default_opensearch_images")]
    pub images: Vec<String>,
    /// The fewest replicas an OpenSearch workload of a production namespace should run.
    #[serde(default = "default_min_nodes")]
    pub min_nodes: i64,
}

fn default_opensearch_images() -> Vec<String> {
    vec![
        "opensearchproject/opensearch".to_owned(),
        "bitnami/opensearch".to_owned(),
    ]
}

fn default_min_nodes() -> i64 {
    3
}

impl Default for OpensearchClusterConfig {
    fn default() -> Self {
        OpensearchClusterConfig {
            mode: audit(),
            images: default_opensearch_images(),
            min_nodes: default_min_nodes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalDatabasesConfig {
    #[serde(default = "audit")]
    pub mode: PolicyMode,
    /// Image repositories of the stores the guide runs outside the cluster.
    #[serde(default = "default_external_images")]
    pub images: Vec<String>,
}

fn default_external_images() -> Vec<String> {
    [
        "postgres",
        "bitnami/postgresql",
        "minio/minio",
        "bitnami/minio",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for ExternalDatabasesConfig {
    fn default() -> Self {
        ExternalDatabasesConfig {
            mode: audit(),
            images: default_external_images(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpreadConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
}

impl Default for NodeSpreadConfig {
    fn default() -> Self {
        NodeSpreadConfig { mode: enforce() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagePullPolicyConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
}

impl Default for ImagePullPolicyConfig {
    fn default() -> Self {
        ImagePullPolicyConfig { mode: enforce() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AirgapRegistryConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
    /// The policy acts only when true.
    #[serde(default)]
    pub airgapped: bool,
    /// `host[:port]`, optionally with a path prefix (`harbor.example.org/openg2p/`).
    #[serde(default)]
    pub allowed_registries: Vec<String>,
}

impl Default for AirgapRegistryConfig {
    fn default() -> Self {
        AirgapRegistryConfig {
            mode: enforce(),
            airgapped: false,
            allowed_registries: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryMirrorConfig {
    #[serde(default = "off")]
    pub mode: PolicyMode,
    /// Public registry (`docker.io`) -> mirror prefix (`registry.local:5000/dockerhub`).
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
}

impl Default for RegistryMirrorConfig {
    fn default() -> Self {
        RegistryMirrorConfig {
            mode: off(),
            mirrors: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DbAccessConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
    /// Label values that name a database.
    #[serde(default = "default_databases")]
    pub databases: Vec<String>,
    /// Image repositories that are databases.
    #[serde(default = "default_db_images")]
    pub images: Vec<String>,
}

fn default_databases() -> Vec<String> {
    [
        "postgresql",
        "postgres",
        "mysql",
        "mariadb",
        "mongodb",
        "redis",
    ]
    .map(String::from)
    .to_vec()
}

fn default_db_images() -> Vec<String> {
    [
        "postgres",
        "bitnami/postgresql",
        "mysql",
        "mariadb",
        "mongo",
        "bitnami/mongodb",
        "redis",
        "bitnami/redis",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for DbAccessConfig {
    fn default() -> Self {
        DbAccessConfig {
            mode: enforce(),
            databases: default_databases(),
            images: default_db_images(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MinReplicasConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
    #[serde(default = "default_min_replicas")]
    pub min_replicas: i64,
    #[serde(default)]
    pub exemptions: Vec<Exemption>,
}

fn default_min_replicas() -> i64 {
    2
}

impl Default for MinReplicasConfig {
    fn default() -> Self {
        MinReplicasConfig {
            mode: enforce(),
            min_replicas: default_min_replicas(),
            exemptions: Vec::new(),
        }
    }
}

/// A workload that may run below `minReplicas`. Every field given must match; `namespace`
/// and `name` take `*` and `?` wildcards.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemption {
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// Whether the labels hold every pair (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

impl Exemption {
    /// Whether this exemption covers the workload. `labels` is `None` when the request does
    /// not carry the workload's labels (a Scale request): a selector then does not match.
    pub fn matches(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let glob = |pattern: &Option<String>, value: &str| {
            pattern
                .as_ref()
                .is_none_or(|p| WildMatch::new(p).matches(value))
        };
        glob(&self.namespace, namespace)
            && self.kind.as_ref().is_none_or(|k| k == kind)
            && glob(&self.name, name)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| labels.is_some_and(|labels| s.matches(labels)))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtectDeleteConfig {
    #[serde(default = "enforce")]
    pub mode: PolicyMode,
    #[serde(default = "default_protected_kinds")]
    pub kinds: Vec<String>,
    /// Usernames (with `*` wildcards) that may delete: controllers, CI deployers, Helm.
    #[serde(default = "default_exempt_users")]
    pub exempt_users: Vec<String>,
}

fn default_protected_kinds() -> Vec<String> {
    ["Deployment", "StatefulSet", "ConfigMap", "Secret"]
        .map(String::from)
        .to_vec()
}

fn default_exempt_users() -> Vec<String> {
    vec!["system:serviceaccount:kube-system:*".to_owned()]
}

impl Default for ProtectDeleteConfig {
    fn default() -> Self {
        ProtectDeleteConfig {
            mode: enforce(),
            kinds: default_protected_kinds(),
            exempt_users: default_exempt_users(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: GlobalMode::Enforce,
            admins: Admins::default(),
            excluded_namespaces: default_excluded_namespaces(),
            production_namespaces: default_production_namespaces(),
            policies: Policies::default(),
        }
    }
}

/// A configuration that cannot be used, with where and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    /// Dotted key path (`policies.min-replicas.minReplicas`); empty for the whole document.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration {}: {}", self.source_name, self.problem)
        } else {
            write!(
                f,
                "configuration {}: key `{}`: {}",
                self.source_name, self.key, self.problem
            )
        }
    }
}

impl Config {
    /// The embedded default policy set.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_yaml(DEFAULT_POLICY_SET, DEFAULT_POLICY_SET_NAME)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            key: String::new(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Config::from_yaml(&text, &source_name)
    }

    /// Parses and validates a configuration document.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let error = |key: String, problem: String| ConfigError {
            source_name: source_name.to_owned(),
            key,
            problem,
        };
        let tree: serde_json::Value = serde_saphyr::from_str(text)
            .map_err(|e| error(String::new(), format!("not valid YAML: {e}")))?;
        if tree.is_null() {
            return Err(error(
                String::new(),
                "the document is empty; give at least `policies:`".into(),
            ));
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let problem = explain_serde_error(&e.inner().to_string());
            // The path ends at the unknown key itself; the root is ".".
            let key = if path == "." { String::new() } else { path };
            error(key, problem)
        })?;
        config
            .validate()
            .map_err(|(key, problem)| error(key, problem))?;
        Ok(config)
    }

    /// Checks values serde cannot: registries, patterns, numbers.
    fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.policies;
        for (i, entry) in p.airgap_registry.allowed_registries.iter().enumerate() {
            parse_registry_pattern(entry).map_err(|problem| {
                (
                    format!("policies.airgap-registry.allowedRegistries[{i}]"),
                    problem,
                )
            })?;
        }
        if p.airgap_registry.airgapped
            && p.airgap_registry.mode != PolicyMode::Off
            && p.airgap_registry.allowed_registries.is_empty()
        {
            return Err((
                "policies.airgap-registry.allowedRegistries".into(),
                "airgapped is true but no registry is allowed, so every image would be denied; \
                 list your private registry (for example `registry.local:5000`)"
                    .into(),
            ));
        }
        for (from, to) in &p.registry_mirror.mirrors {
            let key = format!("policies.registry-mirror.mirrors.{from}");
            normalize_registry(from).map_err(|e| {
                (
                    key.clone(),
                    format!("{e}; a mirror key is a public registry such as `docker.io`"),
                )
            })?;
            parse_registry_pattern(to).map_err(|problem| (key.clone(), problem))?;
        }
        if p.registry_mirror.mode != PolicyMode::Off && p.registry_mirror.mirrors.is_empty() {
            return Err((
                "policies.registry-mirror.mirrors".into(),
                "the policy is on but maps no registry; add for example \
                 `docker.io: registry.local:5000/dockerhub` or set mode: \"off\""
                    .into(),
            ));
        }
        for (i, image) in p.db_access.images.iter().enumerate() {
            ImageRef::parse(image).map_err(|e| {
                (
                    format!("policies.db-access.images[{i}]"),
                    format!("{e}; give a repository such as `postgres` or `bitnami/postgresql`"),
                )
            })?;
        }
        for (i, db) in p.db_access.databases.iter().enumerate() {
            if db.trim().is_empty() {
                return Err((
                    format!("policies.db-access.databases[{i}]"),
                    "is empty; give a label value such as `postgresql`".into(),
                ));
            }
        }
        if p.min_replicas.min_replicas < 1 {
            return Err((
                "policies.min-replicas.minReplicas".into(),
                format!(
                    "is {}; it must be at least 1 (2 for high availability)",
                    p.min_replicas.min_replicas
                ),
            ));
        }
        for (i, ex) in p.min_replicas.exemptions.iter().enumerate() {
            let key = format!("policies.min-replicas.exemptions[{i}]");
            if ex.namespace.is_none()
                && ex.kind.is_none()
                && ex.name.is_none()
                && ex.selector.is_none()
            {
                return Err((
                    key,
                    "has no namespace, kind, name or selector, so it would exempt every workload; \
                     narrow it down"
                        .into(),
                ));
            }
            if let Some(kind) = &ex.kind {
                const KINDS: [&str; 4] = [
                    "Deployment",
                    "StatefulSet",
                    "ReplicaSet",
                    "HorizontalPodAutoscaler",
                ];
                if !KINDS.contains(&kind.as_str()) {
                    return Err((
                        format!("{key}.kind"),
                        format!(
                            "{kind:?} is not a kind min-replicas checks; use one of {}",
                            KINDS.join(", ")
                        ),
                    ));
                }
            }
        }
        for (key, value) in [
            ("default", &p.ingress_body_size.default),
            ("maximum", &p.ingress_body_size.maximum),
        ] {
            let key = format!("policies.ingress-body-size.{key}");
            let size = parse_nginx_size(value).map_err(|problem| (key.clone(), problem))?;
            if size == 0 {
                return Err((
                    key,
                    "0 turns nginx's limit off; give a size such as `50m`".into(),
                ));
            }
        }
        if parse_nginx_size(&p.ingress_body_size.default)
            > parse_nginx_size(&p.ingress_body_size.maximum)
        {
            return Err((
                "policies.ingress-body-size.default".into(),
                format!(
                    "{} is above the maximum {}, so every Ingress given the default would be denied",
                    p.ingress_body_size.default, p.ingress_body_size.maximum
                ),
            ));
        }
        for (policy, images) in [
            ("opensearch-cluster", &p.opensearch_cluster.images),
            ("external-databases", &p.external_databases.images),
        ] {
            for (i, image) in images.iter().enumerate() {
                ImageRef::parse(image).map_err(|e| {
                    (
                        format!("policies.{policy}.images[{i}]"),
                        format!("{e}; give a repository such as `bitnami/postgresql`"),
                    )
                })?;
            }
        }
        if p.opensearch_cluster.min_nodes < 1 {
            return Err((
                "policies.opensearch-cluster.minNodes".into(),
                format!(
                    "is {}; it must be at least 1 (3 for a cluster)",
                    p.opensearch_cluster.min_nodes
                ),
            ));
        }
        for (i, kind) in p.protect_delete.kinds.iter().enumerate() {
            if kind.is_empty() || !kind.starts_with(|c: char| c.is_ascii_uppercase()) {
                return Err((
                    format!("policies.protect-delete.kinds[{i}]"),
                    format!("{kind:?} is not a kind; kinds are written as in manifests, such as `Secret`"),
                ));
            }
        }
        Ok(())
    }
}

/// The bytes an nginx size names: a number, optionally followed by `k`, `m` or `g` (either
/// case), as `client_max_body_size` and ingress-nginx's `proxy-body-size` take it.
pub fn parse_nginx_size(text: &str) -> Result<u64, String> {
    let explain = || {
        format!(
            "{text:?} is not an nginx size; write a number with an optional unit k, m or g, such \
             as `50m`"
        )
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c.to_ascii_lowercase())),
        _ => (text, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(explain());
    }
    let number: u64 = digits.parse().map_err(|_| explain())?;
    let scale: u64 = match unit {
        None => 1,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some(_) => return Err(explain()),
    };
    number.checked_mul(scale).ok_or_else(explain)
}

/// An allowed-registry or mirror entry: `host[:port]` with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPattern {
    pub registry: String,
    /// Path prefix without slashes at the ends; empty for the whole registry.
    pub path_prefix: String,
}

impl RegistryPattern {
    pub fn matches(&self, image: &ImageRef) -> bool {
        image.registry_is(&self.registry)
            && (self.path_prefix.is_empty()
                || image.path == self.path_prefix
                || image
                    .path
                    .strip_prefix(&self.path_prefix)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path_prefix.is_empty() {
            f.write_str(&self.registry)
        } else {
            write!(f, "{}/{}/", self.registry, self.path_prefix)
        }
    }
}

pub fn parse_registry_pattern(entry: &str) -> Result<RegistryPattern, String> {
    let trimmed = entry.trim_end_matches('/');
    let (registry, prefix) = match trimmed.split_once('/') {
        Some((registry, prefix)) => (registry, prefix),
        None => (trimmed, ""),
    };
    let hint = "write host[:port] with an optional path, such as `registry.local:5000` or \
                `harbor.example.org/openg2p/`";
    if registry.contains("://") || entry.contains("://") {
        return Err(format!("{entry:?} has a URL scheme; {hint}"));
    }
    let registry = normalize_registry(registry).map_err(|e| format!("{e}; {hint}"))?;
    if !prefix.is_empty() {
        // Validate the path by parsing a reference under it.
        ImageRef::parse(&format!("{registry}/{prefix}/x"))
            .map_err(|e| format!("path {prefix:?} is not valid: {e}; {hint}"))?;
    }
    Ok(RegistryPattern {
        registry,
        path_prefix: prefix.to_owned(),
    })
}

/// The key serde names in "unknown field `x`, expected ...".
fn unknown_key(message: &str) -> Option<String> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
}

/// Rewrites serde's messages into ones that say what to do.
fn explain_serde_error(message: &str) -> String {
    let backticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if let Some(unknown) = unknown_key(message) {
        let valid = &backticked[1.min(backticked.len())..];
        let closest = valid
            .iter()
            .map(|v| (strsim::jaro_winkler(&unknown, v), *v))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        return match closest {
            Some((_, best)) => format!(
                "unknown key; did you mean `{best}`? (valid keys here: {})",
                valid.join(", ")
            ),
            None => "unknown key; no keys are allowed here".to_owned(),
        };
    }
    if message.starts_with("unknown variant") {
        let valid = &backticked[1.min(backticked.len())..];
        return format!(
            "{:?} is not allowed; use one of: {}",
            backticked.first().copied().unwrap_or_default(),
            valid.join(", ")
        );
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, "test.yaml")
    }

    #[test]
    fn the_embedded_default_loads() {
        let config = Config::embedded_default().unwrap();
        assert_eq!(config.mode, GlobalMode::Enforce);
        assert_eq!(config.policies.registry_mirror.mode, PolicyMode::Off);
        assert_eq!(config.policies.min_replicas.min_replicas, 2);
        assert!(!config.policies.airgap_registry.airgapped);
        assert_eq!(config.admins.groups, vec!["system:masters".to_string()]);
    }

    #[test]
    fn the_product_example_loads() {
        let config = load(
            r#"
mode: enforce
admins:
  users: []
  groups: ["system:masters"]
excludedNamespaces: [kube-system, prodguard]
policies:
  image-pull-policy:
    mode: enforce
  airgap-registry:
    mode: enforce
    airgapped: false
    allowedRegistries: ["registry.local:5000", "harbor.example.org/openg2p/"]
  registry-mirror:
    mode: "off"
    mirrors: {"docker.io": "registry.local:5000/dockerhub"}
  db-access:
    mode: enforce
    databases: [postgresql, postgres, mysql, mariadb, mongodb, redis]
    images: [postgres, bitnami/postgresql, mysql, mariadb, mongo, bitnami/mongodb, redis, bitnami/redis]
  min-replicas:
    mode: enforce
    minReplicas: 2
    exemptions:
      - {namespace: "openg2p", kind: StatefulSet, name: "*-postgresql"}
  protect-delete:
    mode: enforce
    kinds: [Deployment, StatefulSet, ConfigMap, Secret]
    exemptUsers: ["system:serviceaccount:kube-system:*"]
"#,
        )
        .unwrap();
        assert_eq!(config.policies.min_replicas.exemptions.len(), 1);
        assert_eq!(config.policies.airgap_registry.allowed_registries.len(), 2);
    }

    #[test]
    fn an_unknown_key_names_file_key_and_closest_valid_key() {
        let err = load("policies:\n  min-replicas:\n    minReplica: 3\n").unwrap_err();
        let text = err.to_string();
        assert_eq!(err.key, "policies.min-replicas.minReplica");
        assert!(
            text.starts_with("configuration test.yaml: key `policies.min-replicas.minReplica`"),
            "{text}"
        );
        assert!(text.contains("did you mean `minReplicas`?"), "{text}");
        assert_eq!(
            Config::default().excluded_namespaces,
            vec!["kube-system".to_string(), "prodguard".to_string()]
        );

        let err = load("polices: {}\n").unwrap_err();
        assert_eq!(err.key, "polices");
        assert!(
            err.to_string().contains("did you mean `policies`?"),
            "{err}"
        );

        let err = load("policies:\n  db-acess: {}\n").unwrap_err();
        assert!(
            err.to_string().contains("did you mean `db-access`?"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_the_fix() {
        let err = load("policies:\n  db-access:\n    mode: enforced\n").unwrap_err();
        assert_eq!(err.key, "policies.db-access.mode");
        assert!(
            err.to_string().contains("use one of: enforce, audit, off"),
            "{err}"
        );

        let err = load("mode: off\n").unwrap_err();
        assert_eq!(err.key, "mode");

        let err = load("policies:\n  db-access:\n    mode: true\n").unwrap_err();
        assert!(
            err.to_string().contains("use one of: enforce, audit, off"),
            "{err}"
        );

        let err = load("policies:\n  min-replicas:\n    minReplicas: 0\n").unwrap_err();
        assert_eq!(err.key, "policies.min-replicas.minReplicas");

        let err = load("policies:\n  min-replicas:\n    minReplicas: two\n").unwrap_err();
        assert_eq!(err.key, "policies.min-replicas.minReplicas");

        let err = load(
            "policies:\n  airgap-registry:\n    allowedRegistries: [\"https://registry.local\"]\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "policies.airgap-registry.allowedRegistries[0]");
        assert!(err.to_string().contains("URL scheme"), "{err}");

        let err = load("policies:\n  airgap-registry:\n    airgapped: true\n").unwrap_err();
        assert_eq!(err.key, "policies.airgap-registry.allowedRegistries");

        let err = load("policies:\n  registry-mirror:\n    mode: enforce\n").unwrap_err();
        assert_eq!(err.key, "policies.registry-mirror.mirrors");

        let err = load("policies:\n  min-replicas:\n    exemptions: [{}]\n").unwrap_err();
        assert_eq!(err.key, "policies.min-replicas.exemptions[0]");

        let err = load("policies:\n  min-replicas:\n    exemptions: [{kind: Pod}]\n").unwrap_err();
        assert_eq!(err.key, "policies.min-replicas.exemptions[0].kind");

        let err = load("policies:\n  db-access:\n    images: [Postgres]\n").unwrap_err();
        assert_eq!(err.key, "policies.db-access.images[0]");

        let err = load("policies: [\n").unwrap_err();
        assert!(err.to_string().contains("not valid YAML"), "{err}");

        let err = load("").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn an_unquoted_off_means_off() {
        let config = load("policies:\n  db-access:\n    mode: off\n").unwrap();
        assert_eq!(config.policies.db_access.mode, PolicyMode::Off);
    }

    #[test]
    fn registry_patterns_match_whole_components() {
        let pattern = parse_registry_pattern("harbor.example.org/openg2p/").unwrap();
        let image = |s| ImageRef::parse(s).unwrap();
        assert!(pattern.matches(&image("harbor.example.org/openg2p/app:1")));
        assert!(!pattern.matches(&image("harbor.example.org/openg2p-evil/app")));
        assert!(!pattern.matches(&image("harbor.example.org/app")));
        let pattern = parse_registry_pattern("ghcr.io").unwrap();
        assert!(pattern.matches(&image("ghcr.io/x/y")));
        assert!(!pattern.matches(&image("ghcr.io.evil.com/x/y")));
        let hub = parse_registry_pattern("index.docker.io").unwrap();
        assert!(hub.matches(&image("nginx")));
    }

    #[test]
    fn exemptions_match_every_given_field() {
        let ex = Exemption {
            namespace: Some("openg2p".into()),
            kind: Some("StatefulSet".into()),
            name: Some("*-postgresql".into()),
            selector: None,
        };
        assert!(ex.matches("openg2p", "StatefulSet", "social-registry-postgresql", None));
        assert!(!ex.matches("other", "StatefulSet", "x-postgresql", None));
        assert!(!ex.matches("openg2p", "Deployment", "x-postgresql", None));
        assert!(!ex.matches("openg2p", "StatefulSet", "postgresql-x", None));
        let by_label = Exemption {
            selector: Some(LabelSelector {
                match_labels: [("prodguard.io/singleton".to_string(), "true".to_string())].into(),
            }),
            ..Default::default()
        };
        let labels: BTreeMap<String, String> =
            [("prodguard.io/singleton".to_string(), "true".to_string())].into();
        assert!(by_label.matches("a", "Deployment", "b", Some(&labels)));
        assert!(!by_label.matches("a", "Deployment", "b", Some(&BTreeMap::new())));
        assert!(!by_label.matches("a", "Deployment", "b", None));
    }

    #[test]
    fn admins_by_user_or_group() {
        let admins = Admins {
            users: vec!["alice".into()],
            groups: vec!["system:masters".into()],
        };
        assert!(admins.is_admin("alice", &[]));
        assert!(admins.is_admin("bob", &["system:masters".into()]));
        assert!(!admins.is_admin("bob", &["system:authenticated".into()]));
    }
}
