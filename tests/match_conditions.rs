//! The `matchConditions` of `deploy/base/webhooks.yaml`, evaluated with a CEL interpreter
//! (cel-rust): the test API server (Kubernetes 1.20) predates them and calls prodguard for every
//! matching request, so this is where they are tested. Each request is an AdmissionRequest as
//! the API server sends it: the pod a ReplicaSet controller creates (captured from a cluster,
//! `tests/fixtures/bench/pod-create.json`), and the requests the end-to-end suite sends as its
//! admin (`e2e-admin`, group `system:masters`) or as a person (`--as=dev`).
//!
//! The API server calls a webhook when every condition is true, skips it when one is false, and
//! when one fails to evaluate it rejects the request (failurePolicy Fail): so an error is a
//! failure here, whatever the request.

use serde_json::{json, Value};

/// (webhook name, [(condition name, expression)])
fn conditions() -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string("deploy/base/webhooks.yaml").unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut out = Vec::new();
    for configuration in &documents {
        for webhook in configuration["webhooks"].as_array().unwrap() {
            let conditions = webhook["matchConditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_owned(),
                        c["expression"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            out.push((webhook["name"].as_str().unwrap().to_owned(), conditions));
        }
    }
    out
}

/// Whether the API server would call `webhook` for `request`; panics on an evaluation error.
fn calls(webhook: &str, request: &Value) -> bool {
    let all = conditions();
    let (_, conditions) = all
        .iter()
        .find(|(name, _)| name == webhook)
        .unwrap_or_else(|| panic!("no webhook {webhook}"));
    let mut context = cel::Context::default();
    context.add_variable("request", request.clone()).unwrap();
    context
        .add_variable("object", request["object"].clone())
        .unwrap();
    context
        .add_variable("oldObject", request["oldObject"].clone())
        .unwrap();
    let mut called = true;
    for (name, expression) in conditions {
        let program = cel::Program::compile(expression)
            .unwrap_or_else(|e| panic!("{webhook} condition {name} does not compile: {e:?}"));
        match program.execute(&context) {
            Ok(cel::Value::Bool(value)) => called &= value,
            other => panic!(
                "{webhook} condition {name} gives {other:?} on {}",
                request["operation"]
            ),
        }
    }
    called
}

const MUTATE: &str = "mutate.prodguard.io";
const VALIDATE: &str = "validate.prodguard.io";

/// An AdmissionRequest as the API server builds it (fields it leaves empty are absent).
fn request(operation: &str, resource: &str, user: &str, groups: &[&str]) -> Value {
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": resource},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": resource},
        "name": "web-0",
        "namespace": "e2e-db",
        "operation": operation,
        "userInfo": {"username": user, "groups": groups},
        "object": null,
        "oldObject": null,
        "dryRun": false,
    })
}

fn pod(owner_controller: Option<bool>, image: &str, init_image: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "e2e-db", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": image}]}
    });
    if let Some(controller) = owner_controller {
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "web-7d9f8b6c5", "uid": "9e8d7c6b", "controller": controller}]);
    }
    if let Some(init) = init_image {
        pod["spec"]["initContainers"] = json!([{"name": "init", "image": init}]);
    }
    pod
}

const CONTROLLER: &str = "system:serviceaccount:kube-system:replicaset-controller";
const CONTROLLER_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
    "system:authenticated",
];

#[test]
fn a_workload_controllers_pod_skips_both_webhooks() {
    // Captured from a cluster: the ReplicaSet controller creating a Deployment's pod.
    let captured: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/bench/pod-create.json").unwrap(),
    )
    .unwrap();
    let captured = &captured["request"];
    assert_eq!(captured["userInfo"]["username"], CONTROLLER);
    assert!(!calls(MUTATE, captured));
    assert!(!calls(VALIDATE, captured));
    for user in [
        "system:serviceaccount:kube-system:statefulset-controller",
        "system:serviceaccount:kube-system:daemon-set-controller",
        "system:serviceaccount:kube-system:job-controller",
        "system:serviceaccount:kube-system:replication-controller",
        "system:kube-controller-manager",
    ] {
        let mut r = request("CREATE", "pods", user, CONTROLLER_GROUPS);
        r["object"] = pod(Some(true), "nginx:1.25", None);
        assert!(!calls(MUTATE, &r) && !calls(VALIDATE, &r), "{user}");
    }
}

#[test]
fn what_people_and_other_accounts_send_is_still_judged() {
    let cases = [
        // The suite's admin and a person creating a pod (kubectl run, kubectl apply).
        (
            "e2e-admin",
            &["system:masters", "system:authenticated"][..],
            None,
        ),
        ("dev", &["system:authenticated"][..], None),
        // A person who sets a controller owner reference by hand.
        ("dev", &["system:authenticated"][..], Some(true)),
        // A controller's account without a controller reference, and an owner that is not the
        // controller.
        (CONTROLLER, CONTROLLER_GROUPS, None),
        (CONTROLLER, CONTROLLER_GROUPS, Some(false)),
        // Another namespace's account of the same name, and an operator's account.
        (
            "system:serviceaccount:openg2p:replicaset-controller",
            &["system:serviceaccounts"][..],
            Some(true),
        ),
        (
            "system:serviceaccount:cnpg-system:cnpg-manager",
            &["system:serviceaccounts"][..],
            Some(true),
        ),
    ];
    for (user, groups, controller) in cases {
        let mut r = request("CREATE", "pods", user, groups);
        r["object"] = pod(controller, "nginx:1.25", None);
        assert!(calls(MUTATE, &r), "mutate: {user} {controller:?}");
        assert!(calls(VALIDATE, &r), "validate: {user} {controller:?}");
    }
}

#[test]
fn a_pod_update_reaches_the_validating_webhook_only_when_it_changes_an_image() {
    let update = |old: Value, new: Value| {
        let mut r = request("UPDATE", "pods", "dev", &["system:authenticated"]);
        r["object"] = new;
        r["oldObject"] = old;
        r
    };
    // kubectl label: nothing prodguard judges.
    let mut relabelled = pod(None, "nginx:1.25", Some("busybox:1.36"));
    relabelled["metadata"]["labels"]["tier"] = json!("front");
    let labels_only = update(pod(None, "nginx:1.25", Some("busybox:1.36")), relabelled);
    assert!(!calls(VALIDATE, &labels_only));
    // kubectl set image: airgap-registry judges the new image.
    for (old, new) in [
        (
            pod(None, "nginx:1.25", None),
            pod(None, "docker.io/nginx:1.27", None),
        ),
        (
            pod(None, "nginx:1.25", Some("busybox:1.36")),
            pod(None, "nginx:1.25", Some("busybox:1.37")),
        ),
        (
            pod(None, "nginx:1.25", None),
            pod(None, "nginx:1.25", Some("busybox:1.37")),
        ),
    ] {
        assert!(calls(VALIDATE, &update(old, new)));
    }
    // Ephemeral containers are a subresource: judged whatever the images.
    let mut debug = update(pod(None, "nginx:1.25", None), pod(None, "nginx:1.25", None));
    debug["subResource"] = json!("ephemeralcontainers");
    assert!(calls(VALIDATE, &debug));
    assert!(calls(MUTATE, &debug));
}

#[test]
fn every_other_request_prodguard_acts_on_is_still_sent() {
    // DELETE (no object), CONNECT (an options object), a workload, RBAC: the conditions must
    // neither skip them nor fail on their shapes.
    let mut delete = request("DELETE", "configmaps", "dev", &["system:authenticated"]);
    delete["oldObject"] =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}});
    let mut exec = request("CONNECT", "pods", "dev", &["system:authenticated"]);
    exec["subResource"] = json!("exec");
    exec["object"] = json!({"apiVersion": "v1", "kind": "PodExecOptions", "command": ["psql"]});
    let mut deployment = request("CREATE", "deployments", CONTROLLER, CONTROLLER_GROUPS);
    deployment["object"] = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web",
        "ownerReferences": [{"kind": "Thing", "name": "x", "uid": "1", "controller": true}]},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let mut scale = request("UPDATE", "deployments", "dev", &["system:authenticated"]);
    scale["subResource"] = json!("scale");
    scale["object"] =
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 1}});
    scale["oldObject"] =
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 2}});
    for r in [&delete, &exec, &deployment, &scale] {
        assert!(calls(VALIDATE, r), "{}", r["operation"]);
    }
    assert!(calls(MUTATE, &deployment));
    let mut binding = request("CREATE", "rolebindings", "dev", &["system:authenticated"]);
    binding["object"] = json!({"kind": "RoleBinding", "metadata": {"name": "b"}});
    assert!(calls("rbac.validate.prodguard.io", &binding));
}
