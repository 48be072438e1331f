//! The webhook rules in `deploy/` are exactly what the policy registry matches: a policy that
//! acts on a request the rules do not send would never see it, and a rule no policy needs
//! only costs the cluster a call.

use std::collections::BTreeSet;

use prodguard::policies::webhook_rules;
use prodguard::policies::Config;
use prodguard::unit::Webhook;
use serde_json::Value;

/// (path, operation, group, version, resource)
type Rule = (String, String, String, String, String);

fn deployed_rules() -> BTreeSet<Rule> {
    let text =
        std::fs::read_to_string("deploy/base/webhooks.yaml").expect("deploy/base/webhooks.yaml");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("valid YAML");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    let mut rules = BTreeSet::new();
    for configuration in &documents {
        for webhook in configuration["webhooks"].as_array().expect("webhooks") {
            let path = webhook["clientConfig"]["service"]["path"]
                .as_str()
                .expect("a service path")
                .to_owned();
            for rule in webhook["rules"].as_array().expect("rules") {
                for operation in strings(&rule["operations"]) {
                    for group in strings(&rule["apiGroups"]) {
                        for version in strings(&rule["apiVersions"]) {
                            for resource in strings(&rule["resources"]) {
                                rules.insert((
                                    path.clone(),
                                    operation.clone(),
                                    group.clone(),
                                    version.clone(),
                                    resource,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    rules
}

fn registry_rules() -> BTreeSet<Rule> {
    let mut rules = BTreeSet::new();
    for (webhook, operation, resource) in webhook_rules(&Config::default().policies) {
        let path = match webhook {
            Webhook::Mutate => "/mutate",
            Webhook::Validate => "/validate",
        };
        for version in resource.versions {
            rules.insert((
                path.to_owned(),
                operation.to_owned(),
                resource.group.to_owned(),
                (*version).to_owned(),
                resource.plural.to_owned(),
            ));
        }
    }
    rules
}

#[test]
fn deploy_rules_are_exactly_what_the_registry_matches() {
    let deployed = deployed_rules();
    let registry = registry_rules();
    let missing: Vec<_> = registry.difference(&deployed).collect();
    let extra: Vec<_> = deployed.difference(&registry).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/base/webhooks.yaml does not send what the policies act on\n  missing from deploy: {missing:#?}\n  in deploy, no policy acts on it: {extra:#?}"
    );
    // Sanity: both webhooks, and every kind of operation, are there.
    for operation in ["CREATE", "UPDATE", "DELETE", "CONNECT"] {
        assert!(registry.iter().any(|r| r.1 == operation), "{operation}");
    }
    assert!(registry.iter().any(|r| r.0 == "/mutate"));
}

/// The validating webhook skips Pod updates that change no image (its `matchConditions`):
/// right only while the policies that read Pod updates read nothing but their images. A policy
/// that starts reading them must revisit that condition in deploy/base/webhooks.yaml.
#[test]
fn only_image_policies_read_pod_updates() {
    let config = Config::embedded_default().unwrap();
    let mut readers: Vec<&str> = config
        .policies
        .matches()
        .into_iter()
        .filter(|(_, m)| {
            m.webhook == Webhook::Validate
                && m.operations.contains(&"UPDATE")
                && m.resources.iter().any(|r| r.plural == "pods")
        })
        .map(|(id, _)| id)
        .collect();
    readers.dedup();
    assert_eq!(
        readers,
        ["airgap-registry"],
        "a policy reads Pod updates: revisit the pod-update-changes-an-image condition"
    );
}
