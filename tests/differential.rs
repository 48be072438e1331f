//! The webhook and `check` must agree. Every object of `examples/`, of the reviews in
//! `tests/fixtures/corpus` and of `tests/fixtures/differential` (Kubernetes objects from other
//! projects' policy tests and from OpenG2P, see its PROVENANCE.md) is judged both ways, with
//! the default policy set and with the air-gapped one that has a mirror:
//! - by `check` (the library call behind `prodguard check -o json`);
//! - by the webhook through TLS, as the API server calls it: `/mutate` on a CREATE review,
//!   then `/validate` on the object with the mutation's patch applied.
//!
//! They must agree on the patch operations, on whether the object is denied, and on which
//! policies warn. Cluster facts (namespaces, roles) come from the same input on both sides.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine as _;
use common::*;
use prodguard::cluster::Snapshot;
use prodguard::commands::check::{check_paths, check_snapshot, offline_engine};
use prodguard::commands::load_config;
use prodguard::policies::Config;
use serde_json::{json, Value};

/// Where the objects come from.
const SOURCES: &[&str] = &["examples/openg2p", "tests/fixtures/differential"];
/// Reviews whose `request.object` is an object to judge.
const REVIEWS: &str = "tests/fixtures/corpus";

/// Every Kubernetes object of the sources (Lists flattened), with where it came from.
fn objects() -> Vec<(String, Value)> {
    let mut objects = Vec::new();
    let mut add = |origin: String, value: Value| {
        let mut stack = vec![value];
        while let Some(value) = stack.pop() {
            if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
                if let Some(items) = value["items"].as_array() {
                    stack.extend(items.iter().rev().cloned());
                }
            } else if value["apiVersion"].is_string() && value["kind"].is_string() {
                objects.push((origin.clone(), value));
            }
        }
    };
    for source in SOURCES {
        let mut files = Vec::new();
        files_under(&root().join(source), &mut files);
        assert!(!files.is_empty(), "{source} holds no manifest");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let name = file.strip_prefix(root()).unwrap().display().to_string();
            for document in documents.into_iter().filter(|d| !d.is_null()) {
                add(name.clone(), document);
            }
        }
    }
    let mut files = Vec::new();
    files_under(&root().join(REVIEWS), &mut files);
    for file in files {
        // A corpus file that does not parse is a broken fixture, not one to skip.
        let review: Value = serde_json::from_slice(&std::fs::read(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Full reviews and the bare requests of Kubewarden's fixtures.
        let object = if review["request"].is_object() {
            review["request"]["object"].clone()
        } else {
            review["object"].clone()
        };
        if object.is_object() {
            let name = file.strip_prefix(root()).unwrap().display().to_string();
            add(name, object);
        }
    }
    objects
}

/// What one side made of one object.
#[derive(Debug, PartialEq)]
struct Judgement {
    patch: Vec<Value>,
    denied: bool,
    warned: BTreeSet<String>,
}

/// The CREATE review the API server would send for `object`, as `check`'s user.
fn review(uid: usize, object: &Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    let namespace = if prodguard::engine::offline::is_cluster_scoped(kind) {
        ""
    } else {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": prodguard::engine::offline::plural(kind)});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("differential-{uid}"),
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "namespace": namespace,
            "name": object["metadata"]["name"].as_str().unwrap_or_default(),
            "operation": "CREATE",
            "userInfo": {"username": prodguard::engine::offline::OFFLINE_USER},
            "object": object,
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

fn warned(response: &Value) -> impl Iterator<Item = String> + '_ {
    response["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str()?.split_once(": ").map(|(p, _)| p.to_owned()))
}

async fn webhook(client: &mut Client, uid: usize, object: &Value) -> Judgement {
    let mutated = client.review("mutate", &review(uid, object)).await;
    assert_eq!(
        mutated["allowed"], true,
        "the mutating webhook denies nothing: {mutated}"
    );
    let patch: Vec<Value> = match mutated["patch"].as_str() {
        Some(encoded) => serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap(),
        None => Vec::new(),
    };
    let mut patched = object.clone();
    if !patch.is_empty() {
        let operations: json_patch::Patch =
            serde_json::from_value(Value::Array(patch.clone())).unwrap();
        json_patch::patch(&mut patched, &operations).unwrap();
    }
    let validated = client.review("validate", &review(uid, &patched)).await;
    Judgement {
        patch,
        denied: validated["allowed"] == false,
        warned: warned(&mutated).chain(warned(&validated)).collect(),
    }
}

fn checked(
    config: &Config,
    snapshot: &Snapshot,
    object: &Value,
    dir: &Path,
    uid: usize,
) -> Result<Judgement, String> {
    let file = dir.join(format!("{uid:04}.json"));
    std::fs::write(&file, serde_json::to_vec(object).unwrap()).unwrap();
    let output = check_paths(&offline_engine(config), snapshot, &[file], "default");
    if let Some(error) = output.errors.first() {
        return Err(error.message.clone());
    }
    let json = serde_json::to_value(&output).unwrap();
    let results = json["results"].as_array().cloned().unwrap_or_default();
    Ok(Judgement {
        patch: results
            .iter()
            .filter(|r| r["action"] == "patch")
            .flat_map(|r| r["patch"].as_array().cloned().unwrap_or_default())
            .collect(),
        denied: results.iter().any(|r| r["action"] == "deny"),
        warned: results
            .iter()
            .filter(|r| r["action"] == "warn")
            .filter_map(|r| r["policy"].as_str().map(str::to_owned))
            .collect(),
    })
}

/// What both sides know of the cluster: `check`'s assumptions, and every object of the input.
fn snapshot(config: &Config, objects: &[(String, Value)]) -> Snapshot {
    let mut snapshot = check_snapshot(config, false);
    for (_, object) in objects {
        snapshot.learn(object, "default");
    }
    snapshot
}

/// How many objects were compared, and how many of them the webhook patched, denied and
/// warned about.
#[derive(Debug, PartialEq)]
struct Tally {
    objects: usize,
    patched: usize,
    denied: usize,
    warned: usize,
}

async fn agree(config_path: Option<&str>) -> Tally {
    let config = load_config(config_path.map(|p| root().join(p)).as_deref(), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = objects();
    let snapshot = snapshot(&config, &objects);
    let server = start_with(config.clone(), snapshot.clone()).await;
    let mut client = Client::connect(&server).await;
    let mut disagreements = Vec::new();
    let (mut patched, mut denied, mut warned) = (0, 0, 0);
    for (uid, (origin, object)) in objects.iter().enumerate() {
        let by_check = checked(&config, &snapshot, object, dir.path(), uid);
        let by_webhook = webhook(&mut client, uid, object).await;
        let name = format!(
            "{origin}: {} {}",
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default()
        );
        patched += usize::from(!by_webhook.patch.is_empty());
        denied += usize::from(by_webhook.denied);
        warned += usize::from(!by_webhook.warned.is_empty());
        match by_check {
            Ok(judgement) if judgement == by_webhook => {}
            Ok(judgement) => disagreements.push(format!(
                "{name}\n  check:   {judgement:?}\n  webhook: {by_webhook:?}"
            )),
            // check refuses what is not an object; the webhook must then not pass it silently.
            Err(message) => disagreements.push(format!(
                "{name}: check refused it ({message}); webhook: {by_webhook:?}"
            )),
        }
    }
    println!(
        "{}: {} objects, {patched} patched, {denied} denied, {warned} warned",
        config_path.unwrap_or("default policy set"),
        objects.len()
    );
    // Every kind of answer is compared, not only "allowed, unchanged".
    assert!(
        patched > 0 && denied > 0,
        "{patched} patched, {denied} denied"
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} objects judged differently ({}):\n{}",
        disagreements.len(),
        objects.len(),
        config_path.unwrap_or("default policy set"),
        disagreements.join("\n")
    );
    Tally {
        objects: objects.len(),
        patched,
        denied,
        warned,
    }
}

#[tokio::test]
async fn webhook_and_check_agree_on_the_default_policy_set() {
    // Exact: a fixture that stops being read, or an answer that changes, shows here
    // (docs/testing.md gives the same figures).
    assert_eq!(
        agree(None).await,
        Tally {
            objects: 114,
            patched: 87,
            denied: 10,
            warned: 3
        }
    );
}

#[tokio::test]
async fn webhook_and_check_agree_on_an_airgapped_set_with_a_mirror() {
    assert_eq!(
        agree(Some("examples/airgapped-policy.yaml")).await,
        Tally {
            objects: 114,
            patched: 97,
            denied: 27,
            warned: 3
        }
    );
}
