//! PolicyExceptions through the webhook over TLS, as kube-apiserver calls it: for each kind of
//! request a policy judges (a workload, CONNECT, DELETE, RBAC) an excepted request passes and
//! a request the exception does not name is still refused; writes of exceptions are judged.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::rbac::v1::PolicyRule;
use prodguard::cluster::Snapshot;
use prodguard::engine::Action;
use prodguard::exceptions::{Exception, ExceptionSet, Exceptions};
use prodguard::policies::Config;
use prodguard::unit::RoleKey;
use serde_json::{json, Value};

fn policy_exception(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
           "metadata": {"name": name, "namespace": "openg2p"}, "spec": spec})
}

fn store(exceptions: &[Value]) -> Arc<Exceptions> {
    let valid: Vec<Exception> = exceptions
        .iter()
        .map(|e| Exception::from_text(&e.to_string(), "openg2p").expect("a valid exception"))
        .collect();
    Exceptions::fixed(ExceptionSet::new(valid))
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "openg2p", "labels": {"app": name}},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec("openg2p/web:1")}}})
}

fn connect(pod: &str, username: &str) -> Value {
    Review::new("CONNECT", "v1", "PodExecOptions", "pods")
        .set("subResource", json!("exec"))
        .set("name", json!(pod))
        .set(
            "object",
            json!({"apiVersion": "v1", "kind": "PodExecOptions", "command": ["psql"]}),
        )
        .user(username, &["system:authenticated"])
        .json()
}

fn delete(kind: &str, name: &str) -> Value {
    Review::new("DELETE", "v1", kind, &format!("{}s", kind.to_lowercase()))
        .set("name", json!(name))
        .set(
            "oldObject",
            json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "openg2p", "labels": {"tier": "config"}}}),
        )
        .user("bob", &["system:authenticated"])
        .json()
}

fn binding(name: &str) -> Value {
    let object = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "openg2p"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
        "subjects": [{"kind": "User", "name": "bob"}]});
    Review::new(
        "CREATE",
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
    )
    .set("name", json!(name))
    .set("object", object)
    .json()
}

fn cluster() -> Snapshot {
    Snapshot {
        pods: vec![
            pod(
                "openg2p",
                "social-registry-postgresql-0",
                json!({"app.kubernetes.io/name": "postgresql"}),
                "bitnami/postgresql:16",
            ),
            pod(
                "openg2p",
                "registry-postgresql-0",
                json!({"app.kubernetes.io/name": "postgresql"}),
                "bitnami/postgresql:16",
            ),
        ],
        roles: vec![(
            RoleKey {
                cluster: false,
                namespace: "openg2p".into(),
                name: "secret-reader".into(),
            },
            vec![PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec!["secrets".into()]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            }],
        )],
        complete: true,
        ..Snapshot::default()
    }
}

fn exceptions_in_force() -> Vec<Value> {
    let until = rfc3339_from_now(3600);
    vec![
        policy_exception(
            "migration",
            json!({"policies": ["min-replicas"], "match": {"kinds": ["Deployment"], "names": ["migrate-*"]},
                   "reason": "one-off data migration", "expires": until}),
        ),
        policy_exception(
            "dba-break-glass",
            json!({"policies": ["db-access"],
                   "match": {"kinds": ["Pod"], "names": ["social-registry-postgresql-0"]},
                   "subjects": {"users": ["dba1"]},
                   "reason": "incident 42: vacuum the registry", "expires": until}),
        ),
        policy_exception(
            "dba2-all-postgres",
            json!({"policies": ["db-access"],
                   "match": {"selector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["postgresql"]}]}},
                   "subjects": {"users": ["dba2"]},
                   "reason": "on call this week", "expires": until}),
        ),
        policy_exception(
            "config-cleanup",
            json!({"policies": ["protect-delete"], "match": {"selector": {"matchLabels": {"tier": "config"}}, "names": ["old-*"]},
                   "reason": "retiring the v1 settings", "expires": until}),
        ),
        policy_exception(
            "auditor-access",
            json!({"policies": ["rbac-hygiene"], "match": {"kinds": ["RoleBinding"], "names": ["auditor"]},
                   "reason": "the yearly external audit", "expires": until}),
        ),
    ]
}

async fn server_with(exceptions: Arc<Exceptions>) -> TestServer {
    start_with_exceptions(Config::embedded_default().unwrap(), cluster(), exceptions).await
}

#[tokio::test]
async fn excepted_requests_pass_and_the_others_are_still_refused() {
    let server = server_with(store(&exceptions_in_force())).await;
    let mut client = Client::connect(&server).await;
    // (webhook, excepted review, its policy, the exception, a review it does not name)
    let cases = [
        (
            Review::create(deployment("migrate-users", 1)).json(),
            "min-replicas",
            "migration",
            Review::create(deployment("web", 1)).json(),
        ),
        (
            connect("social-registry-postgresql-0", "dba1"),
            "db-access",
            "dba-break-glass",
            connect("social-registry-postgresql-0", "dev"),
        ),
        (
            delete("ConfigMap", "old-settings"),
            "protect-delete",
            "config-cleanup",
            delete("ConfigMap", "settings"),
        ),
        (
            binding("auditor"),
            "rbac-hygiene",
            "auditor-access",
            binding("reader"),
        ),
    ];
    for (excepted, policy, exception, other) in cases {
        let response = client.review("validate", &excepted).await;
        assert_eq!(response["allowed"], true, "{policy}: {response}");
        assert!(
            warnings(&response).is_empty(),
            "an exception lifts the warnings too: {response}"
        );
        let reports = reports(&server);
        let report = reports
            .iter()
            .find(|r| r.reason == "PolicyException")
            .unwrap_or_else(|| panic!("{policy}: a PolicyException report in {reports:?}"));
        assert_eq!(report.action, Action::Excepted);
        let note = report.note();
        assert!(
            note.contains(&format!(
                "[{policy}] Excepted by PolicyException openg2p/{exception} (until "
            )),
            "{note}"
        );
        assert_eq!(report.operation, excepted["request"]["operation"]);
        assert_eq!(report.user, excepted["request"]["userInfo"]["username"]);

        let response = client.review("validate", &other).await;
        assert_eq!(response["allowed"], false, "{policy}: {response}");
        assert!(
            message(&response).starts_with(&format!("[{policy}] ")),
            "{response}"
        );
        assert!(reports_of(&server, "PolicyException").is_empty());
    }
    // The break-glass is for dba1 on that pod only.
    let response = client
        .review("validate", &connect("registry-postgresql-0", "dba1"))
        .await;
    assert_eq!(response["allowed"], false, "another database pod");
    // A selector matches a pod's labels, read for the CONNECT.
    let response = client
        .review("validate", &connect("registry-postgresql-0", "dba2"))
        .await;
    assert_eq!(
        response["allowed"], true,
        "selected by the pod's labels: {response}"
    );
    let response = client
        .review("validate", &connect("registry-postgresql-0", "dba3"))
        .await;
    assert_eq!(response["allowed"], false, "{response}");
    reports(&server);
    // A CONNECT's Event is about the pod.
    client
        .review("validate", &connect("social-registry-postgresql-0", "dba1"))
        .await;
    let report = reports_of(&server, "PolicyException").remove(0);
    assert_eq!(
        (
            report.regarding.kind.as_str(),
            report.regarding.name.as_str()
        ),
        ("Pod", "social-registry-postgresql-0")
    );
    let metrics = server.state.metrics.encode();
    for (policy, count) in [
        ("min-replicas", 1),
        ("db-access", 3),
        ("protect-delete", 1),
        ("rbac-hygiene", 1),
    ] {
        let line = format!("prodguard_exceptions_applied_total{{policy=\"{policy}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

fn reports_of(server: &TestServer, reason: &str) -> Vec<prodguard::report::Report> {
    reports(server)
        .into_iter()
        .filter(|r| r.reason == reason)
        .collect()
}

#[tokio::test]
async fn an_exception_ends_the_second_it_expires_and_none_apply_before_the_store_is_synced() {
    let mut expiring = exceptions_in_force();
    expiring[1]["spec"]["expires"] = json!(rfc3339_from_now(2));
    let server = server_with(store(&expiring)).await;
    let mut client = Client::connect(&server).await;
    let review = connect("social-registry-postgresql-0", "dba1");
    assert_eq!(client.review("validate", &review).await["allowed"], true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = client.review("validate", &review).await;
    assert_eq!(response["allowed"], false, "expired: {response}");

    let server = server_with(Exceptions::unsynced()).await;
    let mut client = Client::connect(&server).await;
    let response = client.review("validate", &review).await;
    assert_eq!(
        response["allowed"], false,
        "no exceptions until synced: {response}"
    );
}

fn exception_write(operation: &str, user: &str, groups: &[&str], spec: Value) -> Value {
    let object = policy_exception("break-glass", spec);
    Review::new(
        operation,
        "prodguard.io/v1alpha1",
        "PolicyException",
        "policyexceptions",
    )
    .set("name", json!("break-glass"))
    .set("object", object.clone())
    .set(
        "oldObject",
        if operation == "UPDATE" {
            object
        } else {
            Value::Null
        },
    )
    .user(user, groups)
    .json()
}

#[tokio::test]
async fn only_admins_write_exceptions_and_only_bounded_ones() {
    let valid = json!({"policies": ["db-access"], "match": {"names": ["social-registry-postgresql-0"]},
                       "subjects": {"users": ["dba1"]}, "reason": "incident 42", "expires": rfc3339_from_now(3600)});
    let admin = ("kubernetes-admin", &["system:masters"][..]);
    let cases = [
        (admin, valid.clone(), None),
        (
            ("bob", &["system:authenticated"][..]),
            valid.clone(),
            Some("user \"bob\" may not create PolicyExceptions: only prodguard's admins"),
        ),
        (
            admin,
            json!({"policies": ["db-acess"], "match": {"names": ["x"]}, "reason": "r", "expires": rfc3339_from_now(60)}),
            Some(
                "spec.policies names \"db-acess\", which is no policy; did you mean \"db-access\"?",
            ),
        ),
        (
            admin,
            json!({"policies": ["db-access"], "match": {"names": ["x"]}, "reason": "r"}),
            Some("spec.expires is required: an exception without an end is not accepted"),
        ),
        (
            admin,
            json!({"policies": ["db-access"], "match": {"names": ["x"]}, "reason": "r", "expires": rfc3339_from_now(-1)}),
            Some("is already past: the exception would be expired on arrival"),
        ),
        (
            admin,
            json!({"policies": ["db-access"], "match": {"names": ["x"]}, "reason": "r", "expires": rfc3339_from_now(31 * 86400)}),
            Some("is more than 30days ahead (maxExceptionDuration)"),
        ),
    ];
    // Writes of exceptions are refused in the global audit mode too: they are prodguard's own.
    for yaml in [
        "policies: {}\n",
        "mode: audit\npolicies: {}\n",
        "maxExceptionDuration: 40d\npolicies: {}\n",
    ] {
        let server = start_with_exceptions(config(yaml), Snapshot::default(), store(&[])).await;
        let mut client = Client::connect(&server).await;
        for ((user, groups), spec, refusal) in &cases {
            for operation in ["CREATE", "UPDATE"] {
                let response = client
                    .review(
                        "validate",
                        &exception_write(operation, user, groups, spec.clone()),
                    )
                    .await;
                let refusal = match refusal {
                    Some(r) if r.contains("30days") && yaml.contains("40d") => None,
                    Some(r) if operation == "UPDATE" => {
                        Some(r.replace("may not create", "may not change"))
                    }
                    r => r.map(str::to_owned),
                };
                match refusal {
                    None => assert_eq!(
                        response["allowed"], true,
                        "{yaml}{operation} {spec}: {response}"
                    ),
                    Some(refusal) => {
                        assert_eq!(
                            response["allowed"], false,
                            "{yaml}{operation} {spec}: {response}"
                        );
                        let msg = message(&response);
                        assert!(
                            msg.starts_with(
                                "[policy-exception] PolicyException openg2p/break-glass: "
                            ),
                            "{msg}"
                        );
                        assert!(msg.contains(&refusal), "{refusal} in {msg}");
                    }
                }
            }
        }
        // Deleting one only makes prodguard stricter: not judged.
        let delete = Review::new(
            "DELETE",
            "prodguard.io/v1alpha1",
            "PolicyException",
            "policyexceptions",
        )
        .set("name", json!("break-glass"))
        .user("bob", &[])
        .json();
        assert_eq!(client.review("validate", &delete).await["allowed"], true);
    }
}

/// `kubectl debug` into a pod: an UPDATE of `pods/ephemeralcontainers`, the object the Pod
/// (Kubernetes 1.23 and later) with one ephemeral container more than before.
fn debug(pod_name: &str, username: &str) -> Value {
    let pod = |ephemeral: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": "openg2p", "labels": {"app.kubernetes.io/name": "postgresql"}},
            "spec": {"containers": [{"name": "postgresql", "image": "bitnami/postgresql:16"}],
                     "ephemeralContainers": ephemeral}})
    };
    Review::new("UPDATE", "v1", "Pod", "pods")
        .set("subResource", json!("ephemeralcontainers"))
        .set("name", json!(pod_name))
        .set("oldObject", pod(json!([])))
        .set(
            "object",
            pod(json!([{"name": "debugger-x7", "image": "busybox", "command": ["sh"]}])),
        )
        .user(username, &["system:authenticated"])
        .json()
}

/// The API server's proxy (CONNECT `<resource>/proxy`) to `name`, by `username`.
fn proxy_review(resource: &str, name: &str, username: &str) -> Value {
    let kind = if resource == "pods" {
        "PodProxyOptions"
    } else {
        "ServiceProxyOptions"
    };
    Review::new("CONNECT", "v1", kind, resource)
        .set("subResource", json!("proxy"))
        .set("name", json!(name))
        .set(
            "object",
            json!({"apiVersion": "v1", "kind": kind, "path": "/"}),
        )
        .user(username, &["system:authenticated"])
        .json()
}

#[tokio::test]
async fn ephemeral_containers_and_the_proxy_into_a_database_pod_are_doors_break_glass_opens() {
    let server = server_with(store(&exceptions_in_force())).await;
    let mut client = Client::connect(&server).await;
    // A non-admin: refused, the pod and the way in named.
    let response = client
        .review("validate", &debug("social-registry-postgresql-0", "dev"))
        .await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[db-access] user \"dev\" may not add ephemeral containers to database pod openg2p/social-registry-postgresql-0 (ephemeral container \"debugger-x7\"): "
    ), "{response}");
    assert!(
        message(&response).contains("PolicyException (break-glass)"),
        "{response}"
    );
    // The break-glass user on that pod: let in, and the use reported (the Event).
    let response = client
        .review("validate", &debug("social-registry-postgresql-0", "dba1"))
        .await;
    assert_eq!(response["allowed"], true, "{response}");
    let reported = reports(&server);
    let last = reported.last().expect("a report of the excepted request");
    assert_eq!(last.action, Action::Excepted, "{last:?}");
    // On another pod the exception does not reach.
    let response = client
        .review("validate", &debug("registry-postgresql-0", "dba1"))
        .await;
    assert_eq!(response["allowed"], false, "{response}");

    // The API server's proxy to a database pod, read through the lookups as exec is.
    let proxy = |username: &str| proxy_review("pods", "social-registry-postgresql-0", username);
    let response = client.review("validate", &proxy("dev")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[db-access] user \"dev\" may not proxy through the API server to database pod openg2p/social-registry-postgresql-0: "
    ), "{response}");
    let response = client.review("validate", &proxy("dba1")).await;
    assert_eq!(response["allowed"], true, "{response}");
}

#[tokio::test]
async fn a_pod_mounting_a_database_s_claim_is_refused_and_break_glass_opens_it() {
    let mut cluster = cluster();
    let with_claim = |name: &str, labels: Value, image: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "openg2p", "labels": labels},
            "spec": {"containers": [{"name": "main", "image": image}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-social-registry-postgresql-0"}}]}})
    };
    cluster.pods.push(
        with_claim(
            "social-registry-postgresql-0",
            json!({"app.kubernetes.io/name": "postgresql"}),
            "bitnami/postgresql:16",
        )
        .to_string(),
    );
    let until = rfc3339_from_now(3600);
    let exception = policy_exception(
        "restore-drill",
        json!({"policies": ["db-access"], "match": {"kinds": ["Pod"], "names": ["restore"]},
               "subjects": {"users": ["dba1"]}, "reason": "restore drill", "expires": until}),
    );
    let server = start_with_exceptions(
        Config::embedded_default().unwrap(),
        cluster,
        store(&[exception]),
    )
    .await;
    let mut client = Client::connect(&server).await;
    let create = |name: &str, user: &str| {
        Review::create(with_claim(name, json!({"run": name}), "busybox:1.36"))
            .set("namespace", json!("openg2p"))
            .set("name", json!(name))
            .user(user, &["system:authenticated"])
            .json()
    };
    let response = client.review("validate", &create("restore", "dev")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[db-access] user \"dev\" may not create pod openg2p/restore mounting PersistentVolumeClaim data-social-registry-postgresql-0, which a database's pods mount:"
    ), "{response}");
    let response = client.review("validate", &create("restore", "dba1")).await;
    assert_eq!(response["allowed"], true, "{response}");
    let response = client.review("validate", &create("other", "dba1")).await;
    assert_eq!(response["allowed"], false, "{response}");
}

#[tokio::test]
async fn a_database_service_s_proxy_and_a_stateful_set_s_claim_are_doors_too() {
    let mut cluster = cluster();
    cluster.services.push(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "registry-db", "namespace": "openg2p"},
               "spec": {"selector": {"app.kubernetes.io/name": "postgresql"}}})
        .to_string(),
    );
    cluster.statefulsets.push(
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "archive-postgresql", "namespace": "openg2p"},
               "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app.kubernetes.io/name": "postgresql"}},
                        "spec": {"containers": [{"name": "postgresql", "image": "bitnami/postgresql:16"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}})
        .to_string(),
    );
    let until = rfc3339_from_now(3600);
    let exception = policy_exception(
        "proxy-drill",
        json!({"policies": ["db-access"], "match": {"kinds": ["Service"], "names": ["registry-db"]},
               "subjects": {"users": ["dba1"]}, "reason": "metrics drill", "expires": until}),
    );
    let server = start_with_exceptions(
        Config::embedded_default().unwrap(),
        cluster,
        store(&[exception]),
    )
    .await;
    let mut client = Client::connect(&server).await;
    let proxy = |user: &str| proxy_review("services", "registry-db:5432", user);
    let response = client.review("validate", &proxy("dev")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[db-access] user \"dev\" may not proxy through the API server to Service openg2p/registry-db, which leads to database pods:"
    ), "{response}");
    let response = client.review("validate", &proxy("dba1")).await;
    assert_eq!(response["allowed"], true, "{response}");

    let peek = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "peek", "namespace": "openg2p"},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-archive-postgresql-0"}}]}});
    let review = Review::create(peek)
        .set("namespace", json!("openg2p"))
        .set("name", json!("peek"))
        .user("dev", &["system:authenticated"])
        .json();
    let response = client.review("validate", &review).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).starts_with(
        "[db-access] user \"dev\" may not create pod openg2p/peek mounting PersistentVolumeClaim data-archive-postgresql-0, which a database's pods mount:"
    ), "{response}");
}
