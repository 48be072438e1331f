//! The policies for the rest of the production guide (rbac-hygiene, ingress-body-size,
//! opensearch-cluster, external-databases, node-spread) through TLS, as kube-apiserver calls
//! them, with the cluster lookups answered from a fixed snapshot.

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use prodguard::cluster::Snapshot;
use prodguard::engine::Action;
use prodguard::policies::Config;
use prodguard::unit::{Binding, RoleKey};
use serde_json::{json, Value};

const BODY_SIZE: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

fn ingress(annotations: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "portal", "namespace": "openg2p", "annotations": annotations},
        "spec": {"rules": [{"host": "portal.example.org"}]}})
}

fn ingress_review(operation: &str, object: Value) -> Review {
    let mut review = Review::new(operation, "networking.k8s.io/v1", "Ingress", "ingresses");
    review.request["name"] = json!("portal");
    review.request["object"] = object;
    review
}

#[tokio::test]
async fn an_ingress_gets_the_general_body_limit_and_no_more() {
    // Patches reported (--patch-events), to see which policy acted.
    let server = start_reporting_patches().await;
    let mut client = Client::connect(&server).await;
    let object = ingress(json!({"kubernetes.io/ingress.class": "nginx"}));
    let response = client
        .review("mutate", &ingress_review("CREATE", object.clone()).json())
        .await;
    assert_eq!(response["allowed"], true, "{response}");
    let patched = apply_patch(&response, &object);
    assert_eq!(
        patched["metadata"]["annotations"],
        json!({"kubernetes.io/ingress.class": "nginx", BODY_SIZE: "50m"})
    );
    let reported = reports(&server);
    assert_eq!(
        (reported[0].policies(), reported[0].action),
        (vec!["ingress-body-size"], Action::Mutated)
    );
    // The patched object passes; a larger size, no limit or a typo do not.
    let response = client
        .review("validate", &ingress_review("CREATE", patched).json())
        .await;
    assert_eq!(response["allowed"], true, "{response}");
    for (value, expected) in [
        ("200m", "Ingress openg2p/portal sets nginx.ingress.kubernetes.io/proxy-body-size: \"200m\": 200m is above the most allowed, 50m"),
        ("0", "0 turns nginx's request-body limit off; the most allowed is 50m"),
        ("50MB", "\"50MB\" is not an nginx size; write a number with an optional unit k, m or g"),
    ] {
        let review = ingress_review("CREATE", ingress(json!({ BODY_SIZE: value })));
        let response = client.review("validate", &review.json()).await;
        assert_eq!(response["allowed"], false, "{value}: {response}");
        assert!(message(&response).contains(expected), "{value}: {response}");
    }
    // An update that leaves an old value alone is not judged again.
    let old = ingress(json!({ BODY_SIZE: "0" }));
    let review = ingress_review("UPDATE", old.clone()).set("oldObject", old);
    let response = client.review("validate", &review.json()).await;
    assert_eq!(response["allowed"], true, "{response}");
}

fn workload(kind: &str, name: &str, replicas: i64, image: &str, pod_spec_extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent"}]});
    for (k, v) in pod_spec_extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "openg2p"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

#[tokio::test]
async fn replicated_workloads_are_spread_over_nodes_unless_they_say_how() {
    // Patches reported (--patch-events), to see which policy acted.
    let server = start_reporting_patches().await;
    let mut client = Client::connect(&server).await;
    let deploy = workload("Deployment", "portal", 3, "nginx:1.25", json!({}));
    let response = client
        .review("mutate", &Review::create(deploy.clone()).json())
        .await;
    let patched = apply_patch(&response, &deploy);
    assert_eq!(
        patched.pointer("/spec/template/spec/topologySpreadConstraints"),
        Some(
            &json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "portal"}}}])
        )
    );
    assert_eq!(
        reports(&server)[0].policies(),
        vec!["node-spread"],
        "only node-spread acts"
    );
    // Applying the patched object again changes nothing: the patch is idempotent.
    let response = client
        .review("mutate", &Review::create(patched).json())
        .await;
    assert!(response.get("patch").is_none(), "{response}");

    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "portal"}}}]}}});
    for object in [
        workload("Deployment", "portal", 3, "nginx:1.25", anti),
        workload("Deployment", "portal", 1, "nginx:1.25", json!({})),
    ] {
        let response = client
            .review("mutate", &Review::create(object).json())
            .await;
        assert!(response.get("patch").is_none(), "{response}");
    }
}

fn production_cluster() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.namespaces.insert(
        "openg2p".into(),
        BTreeMap::from([("prodguard.io/environment".into(), "production".into())]),
    );
    snapshot.namespaces.insert("dev".into(), BTreeMap::new());
    snapshot
}

#[tokio::test]
async fn production_namespaces_are_told_about_opensearch_and_databases() {
    let server = start_with(Config::embedded_default().unwrap(), production_cluster()).await;
    let mut client = Client::connect(&server).await;
    let postgres = workload(
        "StatefulSet",
        "registry-postgresql",
        2,
        "bitnami/postgresql:16",
        json!({}),
    );
    let search = workload(
        "StatefulSet",
        "opensearch",
        2,
        "opensearchproject/opensearch:2.11.1",
        json!({}),
    );
    for (object, policy, expected) in [
        (&postgres, "external-databases", "external-databases: StatefulSet openg2p/registry-postgresql runs PostgreSQL (containers[0] \"main\", image bitnami/postgresql:16) inside the cluster in production namespace openg2p"),
        (&search, "opensearch-cluster", "opensearch-cluster: StatefulSet openg2p/opensearch does not run OpenSearch as a cluster (it runs 2 replicas of opensearchproject/opensearch:2.11.1, fewer than the 3 nodes of a cluster)"),
    ] {
        let response = client
            .review("validate", &Review::create(object.clone()).json())
            .await;
        assert_eq!(response["allowed"], true, "audit by default: {response}");
        let shown = warnings(&response);
        assert!(shown.len() == 1 && shown[0].starts_with(expected), "{shown:?}");
        let reported = reports(&server);
        assert_eq!((reported[0].policies(), reported[0].action), (vec![policy], Action::Audited));

        // The same workload in a namespace that is not production: nothing.
        let review = Review::create(object.clone()).set("namespace", json!("dev"));
        let response = client.review("validate", &review.json()).await;
        assert!(response.get("warnings").is_none(), "{response}");
    }
    // In enforce mode, an unknown namespace cannot be judged and is refused.
    let enforce = config("policies:\n  external-databases:\n    mode: enforce\n");
    let server = start_with(enforce, production_cluster()).await;
    let mut client = Client::connect(&server).await;
    let review = Review::create(postgres.clone()).set("namespace", json!("unknown"));
    let response = client.review("validate", &review.json()).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        message(&response),
        "[external-databases] cannot tell whether namespace unknown is a production namespace: namespace unknown was not found"
    );
    let response = client
        .review("validate", &Review::create(postgres).json())
        .await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response).contains("separate machines"),
        "{response}"
    );
}

fn rule(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

fn rbac_cluster() -> Snapshot {
    let reader = RoleKey {
        cluster: false,
        namespace: "openg2p".into(),
        name: "secret-reader".into(),
    };
    let support = RoleKey {
        cluster: true,
        namespace: String::new(),
        name: "support".into(),
    };
    Snapshot {
        roles: vec![
            (reader, vec![rule(&["secrets"], &["get", "list"])]),
            (support.clone(), vec![rule(&["pods", "pods/log"], &["get"])]),
        ],
        bindings: vec![Binding {
            kind: "ClusterRoleBinding",
            namespace: String::new(),
            name: "support-team".into(),
            role: support,
            subjects: vec![Subject {
                kind: "Group".into(),
                name: "support".into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                namespace: None,
            }],
        }],
        complete: true,
        ..Snapshot::default()
    }
}

fn rbac_review(operation: &str, object: Value) -> Review {
    let kind = object["kind"].as_str().unwrap().to_string();
    let resource = format!("{}s", kind.to_lowercase());
    let mut review = Review::new(operation, "rbac.authorization.k8s.io/v1", &kind, &resource);
    review.request["name"] = object["metadata"]["name"].clone();
    if kind.starts_with("Cluster") {
        review.request["namespace"] = json!("");
    }
    review.request["object"] = object;
    review
}

#[tokio::test]
async fn grants_of_secrets_exec_and_deletion_are_for_admins() {
    let server = start_with(Config::embedded_default().unwrap(), rbac_cluster()).await;
    let mut client = Client::connect(&server).await;
    let binding = |subjects: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "read-secrets", "namespace": "openg2p"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
            "subjects": subjects})
    };
    let response = client
        .review(
            "validate",
            &rbac_review("CREATE", binding(json!([{"kind": "User", "name": "bob"}]))).json(),
        )
        .await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[rbac-hygiene] RoleBinding openg2p/read-secrets grants Role openg2p/secret-reader to User bob in namespace openg2p, and Role openg2p/secret-reader holds permissions on secrets that only admins may hold"
    ), "{response}");
    // Admins and Kubernetes' own service accounts may hold it.
    let trusted = binding(json!([{"kind": "Group", "name": "system:masters"},
        {"kind": "ServiceAccount", "name": "generic-garbage-collector", "namespace": "kube-system"}]));
    let response = client
        .review("validate", &rbac_review("CREATE", trusted).json())
        .await;
    assert_eq!(response["allowed"], true, "{response}");

    // A bound ClusterRole may not start granting exec.
    let role = |rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "support"}, "rules": rules})
    };
    let old =
        role(json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}]));
    let new = role(
        json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
    );
    let review = rbac_review("UPDATE", new).set("oldObject", old.clone());
    let response = client.review("validate", &review.json()).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[rbac-hygiene] ClusterRole support would allow create on pods/exec to 1 subject bound to it that is neither an admin nor exempt"
    ), "{response}");
    let review = rbac_review("UPDATE", old.clone()).set("oldObject", old);
    let response = client.review("validate", &review.json()).await;
    assert_eq!(response["allowed"], true, "{response}");
}

/// Each escalation class of rbac-hygiene, in a plain and a wildcard form: (its key, the rule,
/// a part of the risk the message names).
const ESCALATIONS: &[(&str, &str, &str, &str, &str)] = &[
    // key, group, resource, verb, risk
    (
        "impersonate",
        "",
        "users",
        "impersonate",
        "act as any user, group or service account, admins included",
    ),
    (
        "escalate",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "escalate",
        "permissions they do not hold",
    ),
    (
        "bind",
        "rbac.authorization.k8s.io",
        "roles",
        "bind",
        "bind any role, cluster-admin included",
    ),
    (
        "deleteNamespaces",
        "",
        "namespaces",
        "delete",
        "the namespace controller that protect-delete exempts",
    ),
    (
        "webhookConfigurations",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "patch",
        "switch off or replace prodguard's webhooks",
    ),
    (
        "nodeProxy",
        "",
        "nodes/proxy",
        "get",
        "through the kubelet, which no admission webhook sees",
    ),
    (
        "approveCertificates",
        "certificates.k8s.io",
        "signers",
        "approve",
        "mint a client certificate for any user or group",
    ),
    (
        "ephemeralContainers",
        "",
        "pods/ephemeralcontainers",
        "update",
        "run code of their choosing inside any pod",
    ),
    (
        "serviceAccountTokens",
        "",
        "serviceaccounts/token",
        "create",
        "every right, of the service accounts",
    ),
    (
        "createPersistentVolumes",
        "",
        "persistentvolumes",
        "create",
        "hostPath",
    ),
];

fn escalation_cluster(group: &str, resource: &str, verb: &str) -> Snapshot {
    let key = |name: &str| RoleKey {
        cluster: true,
        namespace: String::new(),
        name: name.into(),
    };
    let role = |groups: &str, resources: &str, verbs: &str| PolicyRule {
        api_groups: Some(vec![groups.to_string()]),
        resources: Some(vec![resources.to_string()]),
        verbs: vec![verbs.to_string()],
        ..PolicyRule::default()
    };
    Snapshot {
        roles: vec![
            (key("plain"), vec![role(group, resource, verb)]),
            // The wildcard form: every verb of the group's resource (`nodes/*` for a subresource).
            (
                key("wildcard"),
                vec![role(
                    "*",
                    &resource
                        .split_once('/')
                        .map_or(resource.to_string(), |(main, _)| format!("{main}/*")),
                    "*",
                )],
            ),
        ],
        complete: true,
        ..Snapshot::default()
    }
}

fn escalation_binding(role: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("alice-{role}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})
}

#[tokio::test]
async fn every_escalation_class_is_refused_at_the_binding_unless_turned_off() {
    let default_set = include_str!("../policies/openg2p-production.yaml");
    for (key, group, resource, verb, risk) in ESCALATIONS {
        let cluster = escalation_cluster(group, resource, verb);
        let server = start_with(Config::embedded_default().unwrap(), cluster.clone()).await;
        let mut client = Client::connect(&server).await;
        for role in ["plain", "wildcard"] {
            let review = rbac_review("CREATE", escalation_binding(role));
            let response = client.review("validate", &review.json()).await;
            assert_eq!(response["allowed"], false, "{key} {role}: {response}");
            let text = message(&response);
            assert!(
                text.starts_with(&format!("[rbac-hygiene] ClusterRoleBinding alice-{role} grants ClusterRole {role} to User alice cluster-wide, and ClusterRole {role} holds permissions on ")),
                "{key} {role}: {text}"
            );
            assert!(
                text.contains("which would let User alice ") && text.contains(risk),
                "{key} {role}: {text}"
            );
        }
        // Delegated on purpose: `escalations: {<key>: false}` in the policy file.
        let needle = format!("      {key}: true\n");
        assert!(
            default_set.contains(&needle),
            "{key} is not in the default set"
        );
        let off = default_set.replace(&needle, &format!("      {key}: false\n"));
        let config = Config::from_yaml(&off, "off.yaml").unwrap();
        let server = start_with(config, cluster).await;
        let mut client = Client::connect(&server).await;
        let review = rbac_review("CREATE", escalation_binding("plain"));
        let response = client.review("validate", &review.json()).await;
        assert_eq!(response["allowed"], true, "{key} off: {response}");
    }
}
