//! `protect-delete` (validating, DELETE): only admins delete Deployments, StatefulSets,
//! ConfigMaps and Secrets (the kinds are configurable). Kubernetes' own controllers
//! (`system:serviceaccount:kube-system:*`) and configured service accounts are exempt.

use super::floor::{
    any_of, cel_string, describe_object, glob_matches, is_admin, Action, Check, Floor, OBJECT_NAME,
};
use super::resources::{self, Match};
use super::Config;
use super::PolicyModule;
use crate::config::PolicyMode;
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::config::Admins;
use crate::unit::{EvalError, Finding, Lookups, Policy, Request, Webhook};

pub const ID: &str = "protect-delete";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    pub kinds: Vec<String>,
    /// Usernames (with `*` wildcards) that may delete: controllers, CI deployers, Helm.
    pub exempt_users: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            kinds: default_protected_kinds(),
            exempt_users: default_exempt_users(),
        }
    }
}

fn default_protected_kinds() -> Vec<String> {
    ["Deployment", "StatefulSet", "ConfigMap", "Secret"]
        .map(String::from)
        .to_vec()
}

/// Kubernetes' own controllers (the garbage collector, the namespace controller) keep working:
/// their service accounts, and the controller manager when it runs without per-controller
/// credentials.
fn default_exempt_users() -> Vec<String> {
    vec![
        "system:serviceaccount:kube-system:*".to_owned(),
        "system:kube-controller-manager".to_owned(),
    ]
}

/// `protect-delete`: its settings, what it matches, its policy.
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;

    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        for (i, kind) in settings.kinds.iter().enumerate() {
            if kind.is_empty() || !kind.starts_with(|c: char| c.is_ascii_uppercase()) {
                return Err((
                    format!("kinds[{i}]"),
                    format!("{kind:?} is not a kind; kinds are written as in manifests, such as `Secret`"),
                ));
            }
        }
        Ok(())
    }

    /// DELETE of the protected kinds: by their resource when prodguard knows it; a kind of
    /// another API (a custom resource) by its kind in any group, and it needs its own rule in
    /// the webhook configuration.
    fn matches(settings: &Settings) -> Vec<Match> {
        let kinds: Vec<_> = settings
            .kinds
            .iter()
            .map(|kind| resources::of_kind(kind).unwrap_or_else(|| resources::of_any_group(kind)))
            .collect();
        vec![Match::new(Webhook::Validate, &["DELETE"], &kinds)]
    }

    fn build(settings: &Settings, config: &Config) -> Vec<Box<dyn Policy>> {
        vec![Box::new(ProtectDelete::new(settings, &config.admins))]
    }

    /// DELETE of the protected kinds whose API prodguard knows (a custom resource's kind has no
    /// rule in the webhook configuration either) by anyone but admins and the exempt users.
    fn floor(settings: &Settings, config: &Config) -> Vec<Floor> {
        let known: Vec<_> = settings
            .kinds
            .iter()
            .filter_map(|kind| resources::of_kind(kind))
            .collect();
        if known.is_empty() {
            return Vec::new();
        }
        let mut allowed = vec![is_admin(&config.admins)];
        allowed.extend(
            settings
                .exempt_users
                .iter()
                .map(|u| glob_matches("request.userInfo.username", u)),
        );
        let message = format!(
            "'user \"' + request.userInfo.username + '\" may not delete ' + {} + {}",
            describe_object("variables.name"),
            cel_string(&format!(
                ": deleting {} is for admins only; ask a cluster admin",
                settings.kinds.join(", ")
            ))
        );
        vec![Floor {
            part: "",
            operations: &["DELETE"],
            resources: known,
            variables: vec![("name", OBJECT_NAME.to_owned())],
            conditions: Vec::new(),
            action: Action::Validate(vec![Check {
                expression: any_of(&allowed),
                message,
            }]),
        }]
    }
}

pub struct ProtectDelete {
    kinds: Vec<String>,
    exempt_users: Vec<WildMatch>,
    admins: Admins,
}

impl ProtectDelete {
    pub fn new(config: &Settings, admins: &Admins) -> ProtectDelete {
        ProtectDelete {
            kinds: config.kinds.clone(),
            exempt_users: config
                .exempt_users
                .iter()
                .map(|u| WildMatch::new(u))
                .collect(),
            admins: admins.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Policy for ProtectDelete {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Validate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        // The engine runs it only on what its matches name: DELETE of the protected kinds.
        if self.admins.is_admin(request.username, request.groups)
            || self
                .exempt_users
                .iter()
                .any(|u| u.matches(request.username))
        {
            return Ok(Vec::new());
        }
        Ok(vec![Finding::Violation {
            message: format!(
                "user {:?} may not delete {}: deleting {} is for admins only; ask a cluster admin",
                request.username,
                request.describe(),
                self.kinds.join(", ")
            ),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{eval_matched, object, request, Context};
    use crate::unit::Operation;
    use serde_json::json;

    #[test]
    fn who_may_delete_what() {
        let p = ProtectDelete::new(&Settings::default(), &Admins::default());
        let old = object(json!({"kind": "Secret", "metadata": {"name": "db-creds"}}));
        let masters = vec![std::borrow::Cow::from("system:masters")];
        let none: Vec<std::borrow::Cow<str>> = vec![];
        let cases = [
            ("Secret", "bob", &none, true),
            ("ConfigMap", "bob", &none, true),
            ("Deployment", "bob", &none, true),
            ("StatefulSet", "bob", &none, true),
            ("Pod", "bob", &none, false),
            ("Secret", "admin", &masters, false),
            (
                "Secret",
                "system:serviceaccount:kube-system:generic-garbage-collector",
                &none,
                false,
            ),
            (
                "Secret",
                "system:serviceaccount:kube-system:namespace-controller",
                &none,
                false,
            ),
            (
                "Secret",
                "system:serviceaccount:openg2p:deployer",
                &none,
                true,
            ),
            (
                "Secret",
                "system:serviceaccount:kube-systemx:evil",
                &none,
                true,
            ),
        ];
        let matches = Definition::matches(&Settings::default());
        for (kind, user, groups, denied) in cases {
            // As the API server sends it: the kind's resource and group.
            let resource = resources::of_kind(kind).expect("a known kind");
            let mut req = request(Operation::Delete, kind, resource.plural, None);
            req.resource_group = resource.group;
            req.group = resource.group;
            req.old_object = Some(&old);
            req.name = "db-creds";
            req.username = user;
            req.groups = groups;
            let findings = eval_matched(&matches, &p, &req, &Context::default()).unwrap();
            assert_eq!(!findings.is_empty(), denied, "{kind} by {user}");
            if let Some(Finding::Violation { message }) = findings.first() {
                assert!(
                    message.starts_with(&format!(
                        "user \"{user}\" may not delete {kind} openg2p/db-creds"
                    )),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn configured_kinds_and_exempt_users() {
        let config = Settings {
            kinds: vec!["Service".into()],
            exempt_users: vec!["system:serviceaccount:ci:helm".into()],
            ..Default::default()
        };
        let p = ProtectDelete::new(&config, &Admins::default());
        let matches = Definition::matches(&config);
        let eval =
            |req: &Request<'_>| eval_matched(&matches, &p, req, &Context::default()).unwrap();
        let mut req = request(Operation::Delete, "Service", "services", None);
        req.username = "bob";
        assert_eq!(eval(&req).len(), 1);
        req.username = "system:serviceaccount:ci:helm";
        assert!(eval(&req).is_empty());
        req.kind = "Secret";
        req.resource = "secrets";
        req.username = "bob";
        assert!(
            eval(&req).is_empty(),
            "Secret is not among the configured kinds"
        );
        // A custom resource's kind is matched in any group.
        let config = Settings {
            kinds: vec!["Cluster".into()],
            ..Default::default()
        };
        let p = ProtectDelete::new(&config, &Admins::default());
        let matches = Definition::matches(&config);
        let mut req = request(Operation::Delete, "Cluster", "clusters", None);
        req.group = "postgresql.cnpg.io";
        req.resource_group = "postgresql.cnpg.io";
        req.username = "bob";
        assert_eq!(
            eval_matched(&matches, &p, &req, &Context::default())
                .unwrap()
                .len(),
            1
        );
    }
}
