//! One verdict: the CEL floor (the admission policies prodguard writes into the API server,
//! docs/floor.md) and the webhook's Rust must agree.
//!
//! Every object of `examples/`, `tests/fixtures/differential` and the reviews of
//! `tests/fixtures/corpus` is sent as the API server would send it: a CREATE by a person, an
//! unchanged UPDATE, an UPDATE to one replica, its scale subresource set to 1 and to 3, and a
//! DELETE by a person, an admin and a controller; under five policy sets (the default, an
//! air-gapped one with exemptions, the global audit rollout, an audited and an off policy, and
//! one with exceptions in force).
//! The generated CEL is evaluated by a CEL interpreter (cel-rust, with the strings extension and
//! RE2-like `matches`, as the API server enables them), because the test API server (1.20)
//! predates ValidatingAdmissionPolicy (1.30) and MutatingAdmissionPolicy (1.36).
//!
//! - Where the floor acts, it refuses exactly what the webhook refuses for that policy, with the
//!   same message (airgap-registry's floor names the images, not the registry each resolved to).
//!   What the floor cannot judge (a malformed object, a PolicyException's content) it lets
//!   through: the floor is never stricter than the webhook.
//! - The apply configurations of image-pull-policy, merged as server-side apply merges them,
//!   give the object the webhook's patch gives it.
//! - The objects are checked against the `admissionregistration.k8s.io/v1` types of
//!   k8s-openapi (Kubernetes 1.37's, which hold 1.36's MutatingAdmissionPolicy unchanged).

mod common;

use common::{files_under, root};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use prodguard::admission::{decode, Decoded};
use prodguard::engine::{Engine, Verdict};
use prodguard::exceptions::{Exception, ExceptionSet, Exceptions};
use prodguard::floor::{objects, parts, BoundPart, FloorObject, Served};
use prodguard::policies::floor::{Action, Syntax};
use prodguard::policies::Config;
use prodguard::report::NoReporter;
use prodguard::unit::{NoLookup, Webhook};
use serde_json::{json, Value};

const SOURCES: &[&str] = &["examples/openg2p", "tests/fixtures/differential"];
const REVIEWS: &str = "tests/fixtures/corpus";

/// Every object of the sources, Lists flattened, and some the sources lack (HPAs, a
/// PolicyException, a ReplicaSet owned by a Deployment, images of every registry form).
fn objects_to_judge() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut add = |origin: String, value: Value| {
        let mut stack = vec![value];
        while let Some(value) = stack.pop() {
            if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
                stack.extend(value["items"].as_array().into_iter().flatten().cloned());
            } else if value["apiVersion"].is_string() && value["kind"].is_string() {
                out.push((origin.clone(), value));
            }
        }
    };
    for source in SOURCES {
        let mut files = Vec::new();
        files_under(&root().join(source), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
            let name = file.strip_prefix(root()).unwrap().display().to_string();
            for document in documents.into_iter().filter(|d| !d.is_null()) {
                add(name.clone(), document);
            }
        }
    }
    let mut files = Vec::new();
    files_under(&root().join(REVIEWS), &mut files);
    for file in files {
        let review: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let request = if review["request"].is_object() {
            &review["request"]
        } else {
            &review
        };
        for field in ["object", "oldObject"] {
            if request[field].is_object() {
                let name = file.strip_prefix(root()).unwrap().display().to_string();
                add(name, request[field].clone());
            }
        }
    }
    let pod = |name: &str, images: &[&str]| {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image, "imagePullPolicy": "Always"}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "openg2p", "labels": {"app": name}},
               "spec": {"containers": containers, "initContainers": [{"name": "init", "image": images[0]}]}})
    };
    let images = [
        "nginx",
        "nginx:1.25",
        "library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "docker.io/bitnami/postgresql:16",
        "bitnami/postgresql:16",
        "bitnami/x/y",
        "index.docker.io/bitnami/redis",
        "registry-1.docker.io/library/busybox",
        "Docker.IO/bitnami/redis",
        "registry.local:5000/openg2p/app:1",
        "REGISTRY.local:5000/x",
        "registry.local/x",
        "registry.local:5001/x",
        "harbor.example.org/openg2p/app:2",
        "harbor.example.org/openg2p",
        "harbor.example.org/openg2pextra/app",
        "harbor.example.org/other/app",
        "localhost/x",
        "localhost:5000/x",
        "quay.io/prometheus/node-exporter",
        "ghcr.io/openg2p/app:1.0",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "UPPER/case",
        "nginx:",
        "nginx@sha256:short",
        "a..b/c",
        "x:-bad",
    ];
    for (i, image) in images.iter().enumerate() {
        add("images".into(), pod(&format!("image-{i}"), &[image]));
    }
    for (name, min, target) in [
        ("hpa-1", 1, "web"),
        ("hpa-3", 3, "web"),
        ("hpa-db", 1, "db-postgresql"),
    ] {
        add(
            "synthetic".into(),
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": name, "namespace": "openg2p"},
                   "spec": {"minReplicas": min, "maxReplicas": 5,
                            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": if target == "web" {"Deployment"} else {"StatefulSet"}, "name": target}}}),
        );
    }
    for (i, (size, class)) in [
        (Some("50m"), None),
        (Some("0"), None),
        (Some("100m"), None),
        (Some("51M"), None),
        (Some(" 10m "), None),
        (Some("52428800"), None),
        (Some("52428801"), None),
        (Some("1g"), None),
        (Some("abc"), None),
        (Some("10x"), None),
        (Some(""), None),
        (Some("1234567890123456789012"), None),
        (Some("999999999999999g"), None),
        (Some("123456789m"), None),
        (Some("5000000000"), None),
        (None, None),
        (None, Some("traefik")),
        (Some("0"), Some("traefik")),
        (Some("0"), Some("mystery")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": format!("ingress-{i}"), "namespace": "openg2p"},
            "spec": {"rules": [{"host": "x.example.org"}]}});
        if let Some(size) = size {
            ingress["metadata"]["annotations"] =
                json!({"nginx.ingress.kubernetes.io/proxy-body-size": size});
        }
        if let Some(class) = class {
            ingress["spec"]["ingressClassName"] = json!(class);
        }
        add("ingresses".into(), ingress);
    }
    add(
        "synthetic".into(),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": "web-5d8f", "namespace": "openg2p",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    );
    add(
        "synthetic".into(),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "single", "namespace": "team-a", "labels": {"prodguard.io/singleton": "yes"}},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "x", "image": "nginx"}]}}}}),
    );
    // What every floor judges, in namespaces one policy set excludes (team-b) and every set
    // excludes (kube-system).
    for namespace in ["team-b", "kube-system"] {
        add(
            "synthetic".into(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "lone", "namespace": namespace},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "lone"}},
                            "template": {"metadata": {"labels": {"app": "lone"}},
                                         "spec": {"containers": [{"name": "lone", "image": "quay.io/x/lone:1", "imagePullPolicy": "Always"}]}}}}),
        );
        add(
            "synthetic".into(),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "lone", "namespace": namespace},
                   "spec": {"containers": [{"name": "lone", "image": "nginx", "imagePullPolicy": "Always"}]}}),
        );
    }
    add(
        "synthetic".into(),
        json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
               "metadata": {"name": "break-glass", "namespace": "openg2p"},
               "spec": {"policies": ["min-replicas"], "match": {"names": ["web"]},
                        "reason": "incident", "expires": "2099-01-01T00:00:00Z"}}),
    );
    out
}

/// The policy sets the floor is compared under.
fn configs() -> Vec<(&'static str, Config, Vec<Value>)> {
    let default = Config::embedded_default().unwrap();
    let airgapped = Config::from_yaml(
        r#"
policies:
  airgap-registry:
    airgapped: true
    allowedRegistries: ["registry.local:5000", "harbor.example.org/openg2p/", "docker.io/bitnami/", "localhost"]
  min-replicas:
    minReplicas: 3
    exemptions:
      - {namespace: "openg2p", kind: StatefulSet, name: "*-postgresql"}
      - {namespace: "team-?", selector: {matchLabels: {"prodguard.io/singleton": "yes"}}}
      - {kind: Deployment, name: "db-*"}
  protect-delete:
    kinds: [Deployment, ConfigMap, Secret, Widget]
    exemptUsers: ["system:serviceaccount:kube-system:*", "helm-*"]
"#,
        "airgapped",
    )
    .unwrap();
    let audit = Config::from_yaml(
        "mode: audit\npolicies:\n  airgap-registry:\n    airgapped: true\n    allowedRegistries: [\"docker.io\"]\n",
        "audit",
    )
    .unwrap();
    let with_audit_policy = Config::from_yaml(
        "policies:\n  min-replicas:\n    mode: audit\n  protect-delete:\n    mode: \"off\"\n",
        "audit-policy",
    )
    .unwrap();
    let exceptions = vec![
        exception(
            "web-ha",
            json!({"policies": ["min-replicas", "protect-delete"], "match": {"names": ["web*", "nginx"]}}),
        ),
        exception(
            "by-kind",
            json!({"policies": ["min-replicas"], "match": {"kinds": ["StatefulSet"], "names": ["*"]}}),
        ),
        exception(
            "by-label",
            json!({"policies": ["airgap-registry", "protect-delete"],
            "match": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["image-3", "image-9", "nginx"]}]}}}),
        ),
        exception(
            "for-bob",
            json!({"policies": ["min-replicas"], "match": {"names": ["*"]},
            "subjects": {"users": ["bob"], "serviceAccounts": [{"name": "deployer"}]}}),
        ),
    ];
    let mut excepted_airgap = airgapped.clone();
    excepted_airgap.excluded_namespaces.push("team-b".into());
    vec![
        ("default", default, Vec::new()),
        ("airgapped", airgapped, Vec::new()),
        ("global audit", audit, Vec::new()),
        ("audited policy", with_audit_policy, Vec::new()),
        ("exceptions", excepted_airgap, exceptions),
    ]
}

fn exception(name: &str, mut spec: Value) -> Value {
    spec["reason"] = json!("test");
    spec["expires"] = json!(rfc3339(
        SystemTime::now() + std::time::Duration::from_secs(3600)
    ));
    json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
           "metadata": {"name": name, "namespace": "openg2p"}, "spec": spec})
}

fn rfc3339(at: SystemTime) -> String {
    let seconds = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    k8s_openapi::jiff::Timestamp::from_second(seconds as i64)
        .unwrap()
        .to_string()
}

const PERSON: (&str, &[&str]) = ("dev", &["system:authenticated"]);
const BOB: (&str, &[&str]) = ("bob", &["system:authenticated"]);
const ADMIN: (&str, &[&str]) = ("root", &["system:masters", "system:authenticated"]);
const CONTROLLER: (&str, &[&str]) = (
    "system:serviceaccount:kube-system:generic-garbage-collector",
    &["system:serviceaccounts", "system:authenticated"],
);

fn resource_of(kind: &str) -> Option<(&'static str, &'static str)> {
    prodguard::policies::resources::of_kind(kind).map(|r| (r.group, r.plural))
}

/// An AdmissionRequest with every field the API server's CEL `request` has.
#[allow(clippy::too_many_arguments)]
fn request(
    operation: &str,
    object: &Value,
    sub_resource: &str,
    user: (&str, &[&str]),
    new: Value,
    old: Value,
) -> Option<Value> {
    let kind = object["kind"].as_str()?;
    let api_version = object["apiVersion"].as_str()?;
    let (group, plural) = resource_of(kind)?;
    let version = api_version.split_once('/').map_or(api_version, |(_, v)| v);
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("openg2p");
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let (request_kind, request_group, request_version) = if sub_resource == "scale" {
        ("Scale", "autoscaling", "v1")
    } else {
        (kind, group, version)
    };
    let mut request = json!({
        "uid": "floor-1",
        "kind": {"group": request_group, "version": request_version, "kind": request_kind},
        "resource": {"group": group, "version": version, "resource": plural},
        "subResource": sub_resource,
        "requestKind": {"group": request_group, "version": request_version, "kind": request_kind},
        "requestResource": {"group": group, "version": version, "resource": plural},
        "requestSubResource": sub_resource,
        "name": if operation == "CREATE" { "" } else { name },
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": user.0, "groups": user.1},
        "object": new,
        "oldObject": old,
        "dryRun": false,
    });
    // The API server leaves the empty ones out of CEL's `request` (`omitempty`): reading one
    // is an error there, so it must be here too.
    for field in ["subResource", "requestSubResource", "name", "namespace"] {
        if request[field] == "" {
            request.as_object_mut()?.remove(field);
        }
    }
    Some(request)
}

fn scale(object: &Value, replicas: i64) -> Value {
    let mut spec = json!({});
    if replicas != 0 {
        spec["replicas"] = json!(replicas);
    }
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"]},
           "spec": spec})
}

/// The requests the floor and the webhook both judge for `object`.
fn requests(object: &Value) -> Vec<Value> {
    let mut object = object.clone();
    if object["metadata"]["namespace"].is_null() {
        object["metadata"]["namespace"] = json!("openg2p");
    }
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    out.extend(request(
        "CREATE",
        &object,
        "",
        PERSON,
        object.clone(),
        Value::Null,
    ));
    out.extend(request(
        "CREATE",
        &object,
        "",
        BOB,
        object.clone(),
        Value::Null,
    ));
    out.extend(request(
        "CREATE",
        &object,
        "",
        ADMIN,
        object.clone(),
        Value::Null,
    ));
    out.extend(request(
        "UPDATE",
        &object,
        "",
        PERSON,
        object.clone(),
        object.clone(),
    ));
    if object["spec"]["replicas"].is_i64() {
        let mut one = object.clone();
        one["spec"]["replicas"] = json!(1);
        let mut four = object.clone();
        four["spec"]["replicas"] = json!(4);
        out.extend(request("UPDATE", &object, "", PERSON, one.clone(), four));
        let mut unset = object.clone();
        unset["spec"].as_object_mut().unwrap().remove("replicas");
        out.extend(request("UPDATE", &object, "", PERSON, unset, one));
    }
    if matches!(kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet") {
        for (to, from) in [(1, 3), (3, 1), (0, 3), (1, 1)] {
            out.extend(request(
                "UPDATE",
                &object,
                "scale",
                PERSON,
                scale(&object, to),
                scale(&object, from),
            ));
        }
    }
    if kind == "Pod" {
        // Adding an ephemeral container (1.36 sends the Pod).
        let mut debug = object.clone();
        debug["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
        out.extend(request(
            "UPDATE",
            &object,
            "ephemeralcontainers",
            PERSON,
            debug,
            object.clone(),
        ));
    }
    for user in [
        PERSON,
        BOB,
        ADMIN,
        CONTROLLER,
        ("helm-ci", &["system:authenticated"][..]),
    ] {
        out.extend(request(
            "DELETE",
            &object,
            "",
            user,
            Value::Null,
            object.clone(),
        ));
    }
    out
}

/// What the webhook decided for one policy: denied (or warned) and with which messages; and
/// the whole patch.
#[derive(Debug, Default)]
struct WebhookSays {
    /// policy id -> its messages, denied or warned.
    found: BTreeMap<String, Vec<String>>,
    /// The policies whose findings deny.
    denied: Vec<String>,
    patch: Vec<Value>,
    malformed: bool,
}

fn webhook(engine: &Engine, webhook: Webhook, request: &Value) -> WebhookSays {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let body = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview", "request": request}))
    .unwrap();
    let Ok(Decoded::Request(decoded)) = decode(&body) else {
        return WebhookSays {
            malformed: true,
            ..Default::default()
        };
    };
    let verdict = runtime.block_on(engine.review(webhook, &decoded.as_request()));
    let decision = match verdict {
        Verdict::Malformed(_) => {
            return WebhookSays {
                malformed: true,
                ..Default::default()
            }
        }
        Verdict::Decided(decision) => decision,
    };
    let mut says = WebhookSays::default();
    for message in &decision.deny_messages {
        let (policy, text) = message[1..].split_once("] ").unwrap();
        says.found
            .entry(policy.to_owned())
            .or_default()
            .push(text.to_owned());
        says.denied.push(policy.to_owned());
    }
    for warning in &decision.warnings {
        let (policy, text) = warning.split_once(": ").unwrap();
        says.found
            .entry(policy.to_owned())
            .or_default()
            .push(text.to_owned());
    }
    says.patch = serde_json::to_value(&decision.patch)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default();
    says
}

fn cel_context(request: &Value) -> cel::Context<'static, 'static> {
    let mut env = cel::Env::stdlib();
    env.add_extension(cel::extensions::strings).unwrap();
    let mut context = cel::Context::with_env(Arc::new(env));
    context.add_variable("request", request.clone()).unwrap();
    context
        .add_variable("object", request["object"].clone())
        .unwrap();
    context
        .add_variable("oldObject", request["oldObject"].clone())
        .unwrap();
    context
}

fn eval(context: &cel::Context<'_, '_>, expression: &str, what: &str) -> cel::Value {
    let program = cel::Program::compile(expression)
        .unwrap_or_else(|e| panic!("{what} does not compile: {e:?}\n{expression}"));
    program.execute(context).unwrap_or_else(|e| {
        panic!("{what} fails to evaluate (failurePolicy would decide): {e:?}\n{expression}")
    })
}

fn as_bool(value: cel::Value, what: &str) -> bool {
    match value {
        cel::Value::Bool(b) => b,
        other => panic!("{what} is not a bool: {other:?}"),
    }
}

fn to_json(value: &cel::Value) -> Value {
    value.json().unwrap_or_else(|e| panic!("not JSON: {e:?}"))
}

/// Whether the part's resource rules and match conditions select `request`.
fn selects(part: &BoundPart, request: &Value) -> bool {
    let operation = request["operation"].as_str().unwrap();
    let resource = request["resource"]["resource"].as_str().unwrap();
    let sub = request["subResource"].as_str().unwrap_or_default();
    let full = if sub.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}/{sub}")
    };
    let group = request["resource"]["group"].as_str().unwrap();
    if !part.floor.operations.contains(&operation)
        || !part
            .floor
            .resources
            .iter()
            .any(|r| r.plural == full && r.group == group)
    {
        return false;
    }
    let context = cel_context(request);
    part.conditions.iter().all(|(name, expression)| {
        as_bool(
            eval(
                &context,
                expression,
                &format!("{} condition {name}", part.name),
            ),
            name,
        )
    })
}

/// The part's variables, evaluated in order, bound as `variables`.
fn with_variables(part: &BoundPart, request: &Value) -> cel::Context<'static, 'static> {
    // Kept as CEL values (a round trip through JSON would turn ints into uints).
    let mut values: std::collections::HashMap<String, cel::Value> = Default::default();
    for (name, expression) in &part.floor.variables {
        let mut context = cel_context(request);
        context.add_variable_from_value("variables", values.clone());
        let value = eval(
            &context,
            expression,
            &format!("{} variable {name}", part.name),
        );
        values.insert((*name).to_owned(), value);
    }
    let mut context = cel_context(request);
    context.add_variable_from_value("variables", values);
    context
}

/// The floor's refusals of `request`: (policy, message, actions).
fn floor_refusals(
    parts: &[BoundPart],
    request: &Value,
) -> Vec<(String, String, Vec<&'static str>)> {
    let mut out = Vec::new();
    for part in parts.iter().filter(|p| selects(p, request)) {
        let Action::Validate(checks) = &part.floor.action else {
            continue;
        };
        let context = with_variables(part, request);
        for check in checks {
            let what = format!("{} validation", part.name);
            if !as_bool(eval(&context, &check.expression, &what), &what) {
                let message = match eval(&context, &check.message, &format!("{what} message")) {
                    cel::Value::String(s) => s.to_string(),
                    other => panic!("{what}: the message is {other:?}"),
                };
                out.push((part.policy.to_owned(), message, part.actions.clone()));
            }
        }
    }
    out
}

/// `target` with `applied` merged into it as server-side apply merges (lists of named items
/// by name, maps by key).
fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (key, value) in a {
                match t.get_mut(key) {
                    Some(existing) => apply_merge(existing, value),
                    None => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(a)) if a.iter().all(|i| i["name"].is_string()) => {
            for item in a {
                match t.iter_mut().find(|x| x["name"] == item["name"]) {
                    Some(existing) => apply_merge(existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// The object after the floor's mutations.
fn floor_mutated(parts: &[BoundPart], request: &Value) -> Value {
    let mut object = request["object"].clone();
    for part in parts.iter().filter(|p| selects(p, request)) {
        let Action::Mutate(applies) = &part.floor.action else {
            continue;
        };
        for apply in applies {
            let mut now = request.clone();
            now["object"] = object.clone();
            let context = with_variables(part, &now);
            let value = eval(
                &context,
                &apply.render(Syntax::Maps),
                &format!("{} mutation", part.name),
            );
            apply_merge(&mut object, &to_json(&value));
        }
    }
    object
}

/// With `PRODGUARD_FLOOR_CASES` set, the test also writes, for each policy set, the floor's
/// objects and every request with the floor's refusals and mutated object, for Kubernetes' own
/// admission code to judge (tests/k8s-admission, run by scripts/k8s-admission.sh).
fn write_cases(label: &str, parts: &[BoundPart], cases: &[Value]) {
    let Some(root) = std::env::var_os("PRODGUARD_FLOOR_CASES") else {
        return;
    };
    let dir = std::path::Path::new(&root).join(label.replace(' ', "-"));
    std::fs::create_dir_all(&dir).unwrap();
    let all = objects(
        parts,
        Served {
            validating: true,
            mutating: true,
        },
        None,
    );
    let all: Vec<Value> = all.iter().map(|o| o.to_json().unwrap()).collect();
    std::fs::write(
        dir.join("objects.json"),
        serde_json::to_string(&all).unwrap(),
    )
    .unwrap();
    let mut lines = String::new();
    for case in cases {
        lines.push_str(&case.to_string());
        lines.push('\n');
    }
    std::fs::write(dir.join("cases.jsonl"), lines).unwrap();
}

#[test]
fn the_floor_and_the_webhook_give_one_verdict() {
    let objects = objects_to_judge();
    assert!(objects.len() >= 140, "only {} objects", objects.len());
    let mut compared = BTreeMap::<String, (usize, usize)>::new();
    let write = std::env::var_os("PRODGUARD_FLOOR_CASES").is_some();
    for (label, config, exception_texts) in configs() {
        let exceptions: Vec<Exception> = exception_texts
            .iter()
            .map(|e| Exception::from_text(&e.to_string(), "openg2p").unwrap())
            .collect();
        let set = ExceptionSet::new(exceptions.clone());
        let parts = parts(&config, &set, SystemTime::now());
        let mut cases = Vec::new();
        let engine = Engine::new(
            &config,
            Arc::new(NoLookup {
                reason: "the floor's test reads no cluster".into(),
            }),
            Arc::new(NoReporter),
        )
        .with_exceptions(Exceptions::fixed(ExceptionSet::new(exceptions)));
        for (origin, object) in &objects {
            for request in requests(object) {
                let said = webhook(&engine, Webhook::Validate, &request);
                let refused = floor_refusals(&parts, &request);
                if write {
                    let mutated = if request["operation"] == "DELETE" {
                        Value::Null
                    } else {
                        floor_mutated(&parts, &request)
                    };
                    cases.push(json!({"origin": origin, "request": request,
                        "refusals": refused, "mutated": mutated}));
                }
                let what = format!(
                    "[{label}] {origin}: {} {} {}/{} by {}",
                    request["operation"],
                    request["kind"]["kind"],
                    request["resource"]["resource"],
                    request["subResource"],
                    request["userInfo"]["username"]
                );
                // Never stricter than the webhook, and the same message.
                for (policy, message, actions) in &refused {
                    let messages = said.found.get(policy).unwrap_or_else(|| {
                        panic!("{what}: the floor refuses ({policy}: {message}) what the webhook allows: {:?}", said.found)
                    });
                    // A number too long for its unit the floor calls above the maximum, which
                    // the webhook may call no nginx size (past u64); both refuse (docs/floor.md).
                    let huge_size = policy == "ingress-body-size"
                        && message.contains("is above the most allowed")
                        && messages[0].contains("is not an nginx size");
                    if policy == "airgap-registry" {
                        assert!(
                            message.starts_with(messages[0].split(": ").next().unwrap()),
                            "{what}: {message} vs {messages:?}"
                        );
                    } else if !huge_size {
                        assert!(
                            messages.contains(message),
                            "{what}: the floor says {message:?}, the webhook {messages:?}"
                        );
                    }
                    // Enforced where the webhook denies, warned where it warns.
                    let enforced = actions == &["Deny"];
                    assert_eq!(
                        enforced,
                        said.denied.contains(policy),
                        "{what}: {policy} bound with {actions:?}"
                    );
                }
                // Every refusal of a policy with a floor is the floor's too.
                for (policy, messages) in &said.found {
                    let floored = parts
                        .iter()
                        .any(|p| p.policy == policy && selects(p, &request));
                    if !floored {
                        continue;
                    }
                    let entry = compared.entry(policy.clone()).or_default();
                    entry.0 += 1;
                    let floor_has = refused.iter().any(|(p, _, _)| p == policy);
                    // A PolicyException's content (its window, its policies) needs prodguard.
                    let beyond_floor = policy == "policy-exception"
                        && !messages.iter().any(|m| m.contains("may not"));
                    if !floor_has && !beyond_floor {
                        panic!("{what}: the webhook refuses ({policy}: {messages:?}), the floor lets it through");
                    }
                    entry.1 += 1;
                }
                // The apply configurations give the webhook's patch.
                if request["operation"] != "DELETE"
                    && config.policies.image_pull_policy.mode
                        == prodguard::config::PolicyMode::Enforce
                {
                    let mutated = webhook(&engine, Webhook::Mutate, &request);
                    if mutated.malformed {
                        continue;
                    }
                    let floored_patch: Vec<Value> = mutated
                        .patch
                        .iter()
                        .filter(|op| {
                            op["path"].as_str().is_some_and(|p| {
                                p.ends_with("/imagePullPolicy")
                                    || p.starts_with("/metadata/annotations")
                            })
                        })
                        .cloned()
                        .collect();
                    let mut expected = request["object"].clone();
                    if !floored_patch.is_empty() {
                        let patch: json_patch::Patch =
                            serde_json::from_value(Value::Array(floored_patch)).unwrap();
                        json_patch::patch(&mut expected, &patch).unwrap();
                    }
                    if parts.iter().any(|p| {
                        matches!(p.floor.action, Action::Mutate(_)) && selects(p, &request)
                    }) || expected != request["object"]
                    {
                        assert_eq!(floor_mutated(&parts, &request), expected, "{what}: the floor's apply configurations and the webhook's patch differ");
                    }
                }
            }
        }
        write_cases(label, &parts, &cases);
    }
    // Each floor refused something, so the comparison is not empty.
    for policy in [
        "min-replicas",
        "protect-delete",
        "airgap-registry",
        "policy-exception",
    ] {
        let (seen, agreed) = compared.get(policy).copied().unwrap_or_default();
        assert!(
            seen > 0 && seen == agreed,
            "{policy}: {seen} refusals, {agreed} agreed"
        );
    }
    eprintln!("refusals compared: {compared:?}");
}

/// `value` read as a `T` and written again: what the type does not hold is lost.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &Value) -> Value {
    serde_json::to_value(serde_json::from_value::<T>(value.clone()).unwrap()).unwrap()
}

#[test]
fn the_objects_are_admissionregistration_v1() {
    let (_, config, texts) = configs().pop().unwrap();
    let exceptions: Vec<Exception> = texts
        .iter()
        .map(|e| Exception::from_text(&e.to_string(), "openg2p").unwrap())
        .collect();
    let parts = parts(&config, &ExceptionSet::new(exceptions), SystemTime::now());
    let all = objects(
        &parts,
        Served {
            validating: true,
            mutating: true,
        },
        None,
    );
    let mut kinds = BTreeMap::<&str, usize>::new();
    for object in &all {
        let (kind, value) = (object.kind(), object.to_json().unwrap());
        *kinds.entry(kind).or_default() += 1;
        assert_eq!(
            value["apiVersion"], "admissionregistration.k8s.io/v1",
            "{value}"
        );
        assert_eq!(value["kind"], kind);
        let name = value["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("prodguard-") && name.len() <= 253,
            "{name}"
        );
        assert_eq!(
            value["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "prodguard"
        );
        // Read back by the same types: every field is one the v1 schema has.
        let back: Value = match object {
            FloorObject::Validating(_) => round_trip::<ValidatingAdmissionPolicy>(&value),
            FloorObject::ValidatingBinding(_) => {
                round_trip::<ValidatingAdmissionPolicyBinding>(&value)
            }
            FloorObject::Mutating(_) => round_trip::<MutatingAdmissionPolicy>(&value),
            FloorObject::MutatingBinding(_) => round_trip::<MutatingAdmissionPolicyBinding>(&value),
        };
        assert_eq!(back, value);
        // Required by the schema: a binding names its policy; a MAP's mutation its type.
        if kind.ends_with("Binding") {
            assert_eq!(value["spec"]["policyName"], name);
        }
        if kind == "MutatingAdmissionPolicy" {
            for mutation in value["spec"]["mutations"].as_array().unwrap() {
                assert_eq!(mutation["patchType"], "ApplyConfiguration");
                let expression = mutation["applyConfiguration"]["expression"]
                    .as_str()
                    .unwrap();
                assert!(expression.contains("Object{"), "{expression}");
            }
        }
        if kind == "ValidatingAdmissionPolicyBinding" {
            let actions = value["spec"]["validationActions"].as_array().unwrap();
            assert!(
                actions == &[json!("Deny")] || actions == &[json!("Warn"), json!("Audit")],
                "{actions:?}"
            );
        }
    }
    // VAPs: min-replicas (3 parts), protect-delete, airgap-registry (5), ingress-body-size, the
    // write rule; MAPs: image-pull-policy (5), ingress-body-size's default.
    assert_eq!(
        kinds.get("ValidatingAdmissionPolicy"),
        Some(&11),
        "{kinds:?}"
    );
    assert_eq!(kinds.get("MutatingAdmissionPolicy"), Some(&6), "{kinds:?}");
    // Without MutatingAdmissionPolicy (1.30 to 1.35), no MAP is written.
    let validating_only = objects(
        &parts,
        Served {
            validating: true,
            mutating: false,
        },
        None,
    );
    assert!(validating_only.iter().all(|o| !matches!(
        o,
        FloorObject::Mutating(_) | FloorObject::MutatingBinding(_)
    )));
    assert_eq!(validating_only.len(), 22);
    assert!(objects(&parts, Served::default(), None).is_empty());
}

/// The floor leaves the pods of the built-in workload controllers alone, as the webhooks do:
/// the same condition, word for word, so that workloads heal while prodguard is down.
#[test]
fn the_floor_lets_workloads_heal_as_the_webhooks_do() {
    let text = std::fs::read_to_string(root().join("deploy/base/webhooks.yaml")).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let (name, expression) = prodguard::policies::floor::NOT_A_WORKLOAD_CONTROLLERS_POD;
    let mut seen = 0;
    for webhook in documents
        .iter()
        .flat_map(|d| d["webhooks"].as_array().cloned().unwrap_or_default())
    {
        for condition in webhook["matchConditions"].as_array().into_iter().flatten() {
            if condition["name"] == name {
                // YAML folds the webhooks' expression over lines: compared word for word.
                let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
                assert_eq!(
                    words(condition["expression"].as_str().unwrap()),
                    words(expression)
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 2, "both webhooks carry it");
    let config = Config::embedded_default().unwrap();
    let pod_parts: Vec<BoundPart> = parts(
        &config,
        &ExceptionSet::new(Vec::<Exception>::new()),
        SystemTime::now(),
    )
    .into_iter()
    .filter(|p| p.floor.resources.iter().any(|r| r.plural == "pods"))
    .collect();
    assert!(!pod_parts.is_empty());
    for part in &pod_parts {
        assert!(
            part.conditions
                .iter()
                .any(|(n, e)| n == name && e == expression),
            "{}",
            part.name
        );
    }
    // A ReplicaSet's pod, created by its controller, is not the floor's to judge.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-x", "namespace": "openg2p",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let by_controller = request(
        "CREATE",
        &pod,
        "",
        (
            "system:serviceaccount:kube-system:replicaset-controller",
            &["system:serviceaccounts"],
        ),
        pod.clone(),
        Value::Null,
    )
    .unwrap();
    let by_person = request("CREATE", &pod, "", PERSON, pod.clone(), Value::Null).unwrap();
    for part in &pod_parts {
        assert!(!selects(part, &by_controller), "{}", part.name);
        assert!(selects(part, &by_person), "{}", part.name);
    }
}
