//! The CEL floor's writer (`floor_writer::reconcile`) against a fake API server on 127.0.0.1.
//!
//! The test API server (1.20) serves no admission-policy kind, so the writer's own logic
//! (what it writes, what it leaves, what it deletes, what it reads from discovery) is shown
//! here against a small in-process server that serves the four resources as the API server
//! lays them out, stores what is applied, and logs every request. The e2e scenario
//! `cel_floor_outlives_prodguard` runs the writer against a real 1.30+ server when the suite is
//! given one (docs/testing.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prodguard::exceptions::ExceptionSet;
use prodguard::floor::{objects, parts, Served};
use prodguard::floor_writer::{reconcile, served, CelFloor};
use prodguard::policies::Config;
use prodguard::report::metrics::FloorMetrics;
use serde_json::{json, Value};

const GROUP: &str = "/apis/admissionregistration.k8s.io/v1";
const KINDS: [&str; 4] = [
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
    "mutatingadmissionpolicies",
    "mutatingadmissionpolicybindings",
];

#[derive(Default)]
struct Cluster {
    /// What discovery lists of the four (1.30 to 1.35 serve only the validating two).
    served: Vec<&'static str>,
    /// plural -> name -> object.
    stored: BTreeMap<String, BTreeMap<String, Value>>,
    /// "METHOD plural/name" of every request to the four resources.
    log: Vec<String>,
    /// Applies of these names answer 403.
    refuse: Vec<String>,
    /// The webhook configuration `prodguard`, when installed.
    owner_uid: Option<String>,
}

type Shared = Arc<Mutex<Cluster>>;

fn status(code: StatusCode, message: &str) -> Response {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::FORBIDDEN => "Forbidden",
        _ => "BadRequest",
    };
    (
        code,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

fn ok(value: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn list_kind(plural: &str) -> &'static str {
    match plural {
        "validatingadmissionpolicies" => "ValidatingAdmissionPolicyList",
        "validatingadmissionpolicybindings" => "ValidatingAdmissionPolicyBindingList",
        "mutatingadmissionpolicies" => "MutatingAdmissionPolicyList",
        _ => "MutatingAdmissionPolicyBindingList",
    }
}

/// Whether `labels` satisfy a selector of `key=value` and bare `key` terms.
fn selected(labels: &Value, selector: &str) -> bool {
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k] == v,
        None => labels.get(term).is_some(),
    })
}

async fn handle(State(cluster): State<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    let mut cluster = cluster.lock().unwrap();
    let path = uri.path();
    if path == GROUP {
        let resources: Vec<Value> = cluster
            .served
            .iter()
            .map(|plural| json!({"name": plural, "namespaced": false, "kind": "X", "verbs": ["get", "list", "patch", "delete"], "singularName": ""}))
            .collect();
        return ok(json!({"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": "admissionregistration.k8s.io/v1", "resources": resources}));
    }
    if path == format!("{GROUP}/validatingwebhookconfigurations/prodguard") {
        return match &cluster.owner_uid {
            Some(uid) => ok(
                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                       "metadata": {"name": "prodguard", "uid": uid}, "webhooks": []}),
            ),
            None => status(StatusCode::NOT_FOUND, "not found"),
        };
    }
    let Some(rest) = path.strip_prefix(&format!("{GROUP}/")) else {
        return status(StatusCode::NOT_FOUND, "no such path");
    };
    let (plural, name) = rest.split_once('/').unwrap_or((rest, ""));
    if !cluster.served.contains(&plural) {
        return status(
            StatusCode::NOT_FOUND,
            "the server could not find the requested resource",
        );
    }
    cluster.log.push(format!("{method} {plural}/{name}"));
    let kind = cluster.stored.entry(plural.to_owned()).or_default();
    match (method, name) {
        (Method::GET, "") => {
            let query = uri.query().unwrap_or_default();
            let selector = query
                .split('&')
                .find_map(|p| p.strip_prefix("labelSelector="))
                .map(|s| {
                    s.replace("%3D", "=")
                        .replace("%2C", ",")
                        .replace("%2F", "/")
                })
                .unwrap_or_default();
            let items: Vec<Value> = kind
                .values()
                .filter(|o| selector.is_empty() || selected(&o["metadata"]["labels"], &selector))
                .cloned()
                .collect();
            ok(
                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": list_kind(plural),
                      "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        (Method::GET, name) => match kind.get(name) {
            Some(object) => ok(object.clone()),
            None => status(StatusCode::NOT_FOUND, "not found"),
        },
        (Method::PATCH, name) => {
            if cluster.refuse.iter().any(|r| r == name) {
                return status(StatusCode::FORBIDDEN, "refused by the test");
            }
            let query = uri.query().unwrap_or_default();
            assert!(
                query.contains("fieldManager=prodguard-floor") && query.contains("force=true"),
                "{query}"
            );
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "not JSON");
            };
            // What the server adds: a uid, and a status.
            object["metadata"]["uid"] = json!(format!("uid-{name}"));
            object["status"] = json!({});
            let kind = cluster.stored.entry(plural.to_owned()).or_default();
            kind.insert(name.to_owned(), object.clone());
            ok(object)
        }
        (Method::DELETE, name) => match kind.remove(name) {
            Some(_) => ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
            None => status(StatusCode::NOT_FOUND, "not found"),
        },
        _ => status(StatusCode::BAD_REQUEST, "unexpected"),
    }
}

async fn fake_api(cluster: Shared) -> kube::Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().fallback(handle).with_state(cluster);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn cluster(served: &[&'static str]) -> Shared {
    Arc::new(Mutex::new(Cluster {
        served: served.to_vec(),
        ..Default::default()
    }))
}

/// The stored objects' names, by resource.
fn stored(cluster: &Shared) -> BTreeMap<String, Vec<String>> {
    cluster
        .lock()
        .unwrap()
        .stored
        .iter()
        .filter(|(_, objects)| !objects.is_empty())
        .map(|(plural, objects)| (plural.clone(), objects.keys().cloned().collect()))
        .collect()
}

fn take_log(cluster: &Shared) -> Vec<String> {
    std::mem::take(&mut cluster.lock().unwrap().log)
}

/// The names `floor` builds for `config`, by resource, on a server that serves `served`.
fn wanted(config: &Config, served: Served) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::<String, Vec<String>>::new();
    for object in objects(
        &parts(config, &ExceptionSet::default(), SystemTime::now()),
        served,
        None,
    ) {
        let plural = match object.kind() {
            "ValidatingAdmissionPolicy" => KINDS[0],
            "ValidatingAdmissionPolicyBinding" => KINDS[1],
            "MutatingAdmissionPolicy" => KINDS[2],
            _ => KINDS[3],
        };
        out.entry(plural.to_owned())
            .or_default()
            .push(object.name().to_owned());
    }
    for names in out.values_mut() {
        names.sort();
    }
    out
}

const BOTH: Served = Served {
    validating: true,
    mutating: true,
};

async fn run(client: &kube::Client, mode: CelFloor, config: &Config) -> (Vec<String>, u64) {
    let metrics = FloorMetrics::default();
    let failures = reconcile(
        client,
        mode,
        config,
        &ExceptionSet::default(),
        SystemTime::now(),
        &metrics,
    )
    .await;
    (failures, metrics.writes.get())
}

#[tokio::test]
async fn the_writer_writes_what_the_floor_builds_then_only_what_changes() {
    let cluster = cluster(&KINDS);
    cluster.lock().unwrap().owner_uid = Some("owner-uid".into());
    let client = fake_api(cluster.clone()).await;
    assert_eq!(served(&client).await.unwrap(), BOTH);
    let config = Config::embedded_default().unwrap();
    let want = wanted(&config, BOTH);
    let count: usize = want.values().map(Vec::len).sum();
    assert!(count >= 20, "{want:?}");

    let (failures, writes) = run(&client, CelFloor::Auto, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(writes, count as u64);
    assert_eq!(stored(&cluster), want);
    // Owned by the webhook configuration, so that uninstalling deletes them.
    for objects in cluster.lock().unwrap().stored.values() {
        for object in objects.values() {
            assert_eq!(
                object["metadata"]["ownerReferences"][0]["uid"], "owner-uid",
                "{object}"
            );
            assert_eq!(
                object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "prodguard"
            );
        }
    }

    // Nothing changed: one list of each kind, nothing written.
    take_log(&cluster);
    let (failures, writes) = run(&client, CelFloor::Auto, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(writes, 0);
    let mut log = take_log(&cluster);
    log.sort();
    let mut expected: Vec<String> = KINDS.iter().map(|k| format!("GET {k}/")).collect();
    expected.sort();
    assert_eq!(log, expected);

    // One object changed by hand is written back, and only it.
    cluster
        .lock()
        .unwrap()
        .stored
        .get_mut(KINDS[0])
        .unwrap()
        .get_mut("prodguard-protect-delete")
        .unwrap()["spec"]["failurePolicy"] = json!("Ignore");
    let (failures, writes) = run(&client, CelFloor::Auto, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(writes, 1);
    let log = take_log(&cluster);
    assert!(
        log.contains(&format!("PATCH {}/prodguard-protect-delete", KINDS[0])),
        "{log:?}"
    );
    assert_eq!(log.len(), 5, "{log:?}");
}

#[tokio::test]
async fn turning_a_policy_off_or_the_floor_off_deletes_its_objects_in_one_reconcile() {
    let cluster = cluster(&KINDS);
    let client = fake_api(cluster.clone()).await;
    let config = Config::embedded_default().unwrap();
    let (failures, _) = run(&client, CelFloor::Auto, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    // Someone else's policy, not labelled as prodguard's: never touched.
    cluster
        .lock()
        .unwrap()
        .stored
        .entry(KINDS[0].into())
        .or_default()
        .insert(
            "theirs".into(),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": "theirs", "labels": {"app.kubernetes.io/managed-by": "someone"}}}),
        );

    let without = Config::from_yaml(
        "policies:\n  min-replicas:\n    mode: \"off\"\n  image-pull-policy:\n    mode: \"off\"\n",
        "two off",
    )
    .unwrap();
    let before = stored(&cluster);
    let (failures, writes) = run(&client, CelFloor::Auto, &without).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(writes, 0, "the other policies' objects are unchanged");
    let mut expected = wanted(&without, BOTH);
    expected
        .entry(KINDS[0].into())
        .or_default()
        .push("theirs".into());
    expected.get_mut(KINDS[0]).unwrap().sort();
    let after = stored(&cluster);
    assert_eq!(after, expected);
    let gone: Vec<&String> = before
        .values()
        .flatten()
        .filter(|n| !after.values().flatten().any(|a| a == *n))
        .collect();
    assert!(
        gone.iter().any(|n| n.starts_with("prodguard-min-replicas"))
            && gone
                .iter()
                .any(|n| n.starts_with("prodguard-image-pull-policy")),
        "{gone:?}"
    );
    assert!(
        gone.iter().all(|n| n.starts_with("prodguard-min-replicas")
            || n.starts_with("prodguard-image-pull-policy")),
        "{gone:?}"
    );

    // --cel-floor=off: every object of prodguard's goes, theirs stays.
    let (failures, writes) = run(&client, CelFloor::Off, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(writes, 0);
    assert_eq!(
        stored(&cluster),
        BTreeMap::from([(KINDS[0].to_owned(), vec!["theirs".to_owned()])])
    );
}

#[tokio::test]
async fn before_1_36_no_mutating_policy_is_written_or_asked_for() {
    let cluster = cluster(&KINDS[..2]);
    let client = fake_api(cluster.clone()).await;
    let validating_only = Served {
        validating: true,
        mutating: false,
    };
    assert_eq!(served(&client).await.unwrap(), validating_only);
    let config = Config::embedded_default().unwrap();
    let (failures, _) = run(&client, CelFloor::Auto, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(stored(&cluster), wanted(&config, validating_only));
    assert!(stored(&cluster).keys().all(|k| k.starts_with("validating")));
    let log = take_log(&cluster);
    assert!(!log.iter().any(|l| l.contains("mutating")), "{log:?}");

    // Before 1.30: nothing is served, nothing written.
    let none = self::cluster(&[]);
    let client = fake_api(none.clone()).await;
    assert_eq!(served(&client).await.unwrap(), Served::default());
    let (failures, writes) = run(&client, CelFloor::Auto, &config).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(writes, 0);
    assert!(stored(&none).is_empty());
}

#[tokio::test]
async fn a_write_that_fails_is_named_and_the_rest_is_written() {
    let cluster = cluster(&KINDS);
    cluster.lock().unwrap().refuse = vec!["prodguard-protect-delete".into()];
    let client = fake_api(cluster.clone()).await;
    let config = Config::embedded_default().unwrap();
    let (failures, writes) = run(&client, CelFloor::Auto, &config).await;
    assert_eq!(
        failures.len(),
        2,
        "the policy and its binding: {failures:?}"
    );
    for failure in &failures {
        assert!(
            failure.starts_with("the CEL floor cannot write ")
                && failure.contains("prodguard-protect-delete")
                && failure.contains("refused by the test"),
            "{failure}"
        );
    }
    let count: usize = wanted(&config, BOTH).values().map(Vec::len).sum();
    assert_eq!(writes, count as u64 - 2);
}
