//! The global configuration (mode, admins, namespaces, the exceptions' limit) and the loading
//! of a policy set file (`policies/*.yaml`), generic over what its `policies:` key holds: the
//! policy registry (`policies::Policies`) owns those keys and parses them, so this module
//! knows no policy. Every key is checked at load time: an unknown key or a bad value stops
//! startup with a message that names the file, the key and the fix.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

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

/// A policy set file: the global keys, and the policies' settings (`P`, the registry's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config<P> {
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
    /// How far ahead a PolicyException may end (30 days by default).
    #[serde(
        default = "default_max_exception_duration",
        deserialize_with = "duration"
    )]
    pub max_exception_duration: Duration,
    #[serde(default)]
    pub policies: P,
}

/// How far ahead a PolicyException may end unless `maxExceptionDuration` says: 30 days.
pub const DEFAULT_MAX_EXCEPTION_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn default_max_exception_duration() -> Duration {
    DEFAULT_MAX_EXCEPTION_DURATION
}

/// What the `policies:` key of a file holds: its settings, parsed by serde with their
/// defaults, and the checks serde cannot make.
pub trait PolicySettings: DeserializeOwned + Default {
    /// `Err((full dotted key, problem))`, the problem saying how to fix it.
    fn validate(&self) -> Result<(), (String, String)>;
}

/// A duration as humantime writes it: `30d`, `12h`, `1h 30m`.
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    match humantime::parse_duration(&text) {
        Ok(d) if d.is_zero() => Err(serde::de::Error::custom(
            "a zero duration allows no exception at all; give a duration such as `30d` or `12h`",
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(serde::de::Error::custom(format_args!(
            "{text:?} is not a duration ({e}); write one such as `30d`, `12h` or `1h 30m`"
        ))),
    }
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
    pub fn is_admin(&self, username: &str, groups: &[Cow<str>]) -> bool {
        self.users.iter().any(|u| u == username)
            || groups.iter().any(|g| self.groups.iter().any(|a| a == g))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// Whether the labels hold every pair (an empty selector matches everything).
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.label(k).is_some_and(|l| l == v))
    }
}

/// Labels a selector can be matched against: an object's (borrowed, in the view) or a
/// namespace's (read from the cluster).
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<P: Default> Default for Config<P> {
    fn default() -> Self {
        Config {
            mode: GlobalMode::Enforce,
            admins: Admins::default(),
            excluded_namespaces: default_excluded_namespaces(),
            production_namespaces: default_production_namespaces(),
            max_exception_duration: default_max_exception_duration(),
            policies: P::default(),
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

impl<P: PolicySettings> Config<P> {
    /// The embedded default policy set.
    pub fn embedded_default() -> Result<Config<P>, ConfigError> {
        Config::from_yaml(DEFAULT_POLICY_SET, DEFAULT_POLICY_SET_NAME)
    }

    pub fn load(path: &Path) -> Result<Config<P>, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            key: String::new(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Config::from_yaml(&text, &source_name)
    }

    /// Parses and validates a configuration document.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Config<P>, ConfigError> {
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
        let config: Config<P> = serde_path_to_error::deserialize(tree).map_err(|e| {
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

    /// Checks values serde cannot: each policy's own checks.
    fn validate(&self) -> Result<(), (String, String)> {
        self.policies.validate()
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

/// The key serde names in "unknown field `x`, expected ...".
fn unknown_key(message: &str) -> Option<String> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
}

/// The word of `valid` closest to `unknown` (Jaro-Winkler), for "did you mean" hints.
pub fn closest<'v>(unknown: &str, valid: &[&'v str]) -> Option<&'v str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(unknown, v), *v))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, best)| best)
}

/// Rewrites serde's messages into ones that say what to do.
fn explain_serde_error(message: &str) -> String {
    let backticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if let Some(unknown) = unknown_key(message) {
        let valid = &backticked[1.min(backticked.len())..];
        return match closest(&unknown, valid) {
            Some(best) => format!(
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

    /// A file of the registry's policies.
    type Config = super::Config<crate::policies::Policies>;
    use crate::policies::image_ref::{parse_registry_pattern, ImageRef};

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

    /// The embedded set spells every setting out for its readers, and the code's defaults are
    /// what a custom `--config` that leaves a key out gets: the two are one, checked here (a
    /// protect-delete exemption was once in the file and not in the code).
    #[test]
    fn the_embedded_set_is_the_code_s_defaults_spelled_out() {
        let mut policies = Config::embedded_default().unwrap().policies;
        // What the file chooses for OpenG2P beyond the defaults: a mirror and registries to
        // fill in (both inactive until turned on), and the single PostgreSQL of its charts.
        assert!(!policies.registry_mirror.mirrors.is_empty());
        assert!(!policies.airgap_registry.allowed_registries.is_empty());
        assert_eq!(policies.min_replicas.exemptions.len(), 1);
        policies.registry_mirror.mirrors.clear();
        policies.airgap_registry.allowed_registries.clear();
        policies.min_replicas.exemptions.clear();
        // Everything else is the code's default, spelled out.
        assert_eq!(policies, crate::policies::Policies::default());
        let minimal = load("policies:\n  protect-delete:\n    mode: enforce\n").unwrap();
        assert!(minimal
            .policies
            .protect_delete
            .exempt_users
            .contains(&"system:kube-controller-manager".to_owned()));
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
