//! Real reviews published by other projects (tests/fixtures/corpus, see PROVENANCE.md),
//! sent through TLS to both webhooks, with the verdict each must get.

mod common;

use std::path::Path;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Allowed, with this many patch operations.
    Allow(usize),
    /// Denied, with a message containing this.
    Deny(&'static str),
    /// Not answerable as a v1 review: 400 with an error containing this.
    BadRequest(&'static str),
}

use Expect::*;

const V1BETA1: Expect = BadRequest("got apiVersion \"admission.k8s.io/v1beta1\"");

/// (file, /mutate, /validate) under the default policy set.
const TABLE: &[(&str, Expect, Expect)] = &[
    ("kube-rs-kube/kube-core/src/admission.rs.WEBHOOK_BODY.extracted.json", Allow(1), Allow(0)),
    ("stackrox-stackrox/sensor/admission-control/service/testdata/review_requests/latest_tag_admission_review_v1.json", Allow(1), Allow(0)),
    ("stackrox-stackrox/sensor/admission-control/service/testdata/review_requests/latest_tag_admission_review_v1beta1.json", V1BETA1, V1BETA1),
    ("stackrox-stackrox/sensor/admission-control/service/testdata/review_requests/pod_exec_event_review.json", V1BETA1, V1BETA1),
    // exec and port-forward by members of system:masters: admins pass without a lookup.
    ("spreadshirt-kube-request-access/kube-request-access.go.admissionReviewExample.extracted.json", Allow(0), Allow(0)),
    ("shilazi-disallow-portforward-policy/test_data/pod_portforward.json", Allow(0), Allow(0)),
    // 51 replicas: image-pull-policy and node-spread.
    ("kubewarden-policies/policies/cel-policy/test_data/deployment_gt_max_replicas.json", Allow(2), Allow(0)),
    // replicas: 0 is a deliberate scale-down.
    ("kubewarden-policies/policies/echo/test_data/create_accept.json", Allow(1), Allow(0)),
    // DELETE of a Deployment by a member of system:masters.
    ("kubewarden-policies/policies/echo/test_data/delete_accept.json", Allow(0), Allow(0)),
    ("kubewarden-policies/policies/echo/test_data/update_accept.json", Allow(1), Allow(0)),
    // No imagePullPolicy in any of the three lists: three `add` operations.
    ("kubewarden-policies/policies/env-variable-secrets-scanner-policy/test_data/pod_creation_with_secrets_init_and_ephemeral_containers.json", Allow(3), Allow(0)),
    ("kubewarden-policies/policies/image-cve-policy/test_data/deployment.json", Allow(1), Deny("[min-replicas] Deployment default/nginx would run 1 replica")),
    ("kubewarden-policies/policies/pod-privileged-policy/test_data/privileged_ephemeral_container.json", Allow(1), Allow(0)),
    // No spec.replicas means 1.
    ("kubewarden-policies/policies/pod-privileged-policy/test_data/statefulset_with_privileged_container.json", Allow(1), Deny("would run 1 replica")),
    ("kubewarden-policies/policies/pod-runtime-class-policy/test_data/PodDeleteRequest.json", Allow(0), Allow(0)),
    ("kubewarden-policies/policies/trusted-repos-policy/test_data/pod_creation_implicit_latest.json", Allow(1), Allow(0)),
    ("kubewarden-policies/policies/user-group-psp-policy/test_data/cronjob_with_no_securitycontext.json", Allow(0), Allow(0)),
    ("kubewarden-policies/policies/user-group-psp-policy/test_data/daemonset_with_no_securitycontext.json", Allow(0), Allow(0)),
    ("kubewarden-policies/policies/user-group-psp-policy/test_data/deployment_with_no_securitycontext.json", Allow(1), Allow(0)),
    ("kubewarden-policies/policies/user-group-psp-policy/test_data/job_with_no_securitycontext.json", Allow(0), Allow(0)),
    ("kubewarden-policies/policies/user-group-psp-policy/test_data/replicaset_with_no_securitycontext.json", Allow(2), Allow(0)),
    ("kubewarden-policies/policies/user-group-psp-policy/test_data/statefulset_with_no_securitycontext.json", Allow(1), Allow(0)),
    ("kubewarden-policies/policies/verify-image-signatures/test_data/replicationcontroller_creation_unsigned.json", Allow(1), Allow(0)),
    ("kubewarden-policy-server/tests/data/pod_with_privileged_containers.json", Allow(0), Allow(0)),
];

fn load(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/corpus")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    if value.get("request").is_some() {
        value
    } else {
        // Kubewarden fixtures are bare AdmissionRequests.
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": value})
    }
}

async fn check(client: &mut Client, file: &str, webhook: &str, review: &Value, expect: Expect) {
    let body = serde_json::to_vec(review).unwrap();
    let (status, body) = client
        .send(Method::POST, &format!("/{webhook}"), body)
        .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let context = format!("{file} /{webhook}: {answer}");
    match expect {
        BadRequest(text) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{context}");
            assert!(
                answer["error"].as_str().unwrap().contains(text),
                "{context}"
            );
        }
        Allow(ops) => {
            assert_eq!(status, StatusCode::OK, "{context}");
            let response = &answer["response"];
            assert_eq!(response["uid"], review["request"]["uid"], "{context}");
            assert_eq!(response["allowed"], true, "{context}");
            let patch = decode_patch(response);
            assert_eq!(patch.as_ref().map_or(0, |p| p.0.len()), ops, "{context}");
            if let Some(object) = review["request"]["object"].as_object() {
                // The patch applies and leaves every container IfNotPresent.
                let patched = apply_patch(response, &Value::Object(object.clone()));
                if webhook == "mutate" {
                    for policy in find_pull_policies(&patched) {
                        assert_eq!(policy, "IfNotPresent", "{context}");
                    }
                }
            }
        }
        Deny(text) => {
            assert_eq!(status, StatusCode::OK, "{context}");
            let response = &answer["response"];
            assert_eq!(response["uid"], review["request"]["uid"], "{context}");
            assert_eq!(response["allowed"], false, "{context}");
            assert!(message(response).contains(text), "{context}");
        }
    }
}

/// Every `imagePullPolicy` under a container list of the object.
fn find_pull_policies(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if matches!(
                    key.as_str(),
                    "containers" | "initContainers" | "ephemeralContainers"
                ) {
                    for container in child.as_array().into_iter().flatten() {
                        found.push(
                            container["imagePullPolicy"]
                                .as_str()
                                .unwrap_or("<unset>")
                                .to_string(),
                        );
                    }
                } else {
                    found.extend(find_pull_policies(child));
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| found.extend(find_pull_policies(i))),
        _ => {}
    }
    found
}

#[tokio::test]
async fn real_reviews_get_the_verdict_they_must() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    for &(file, mutate, validate) in TABLE {
        let review = load(file);
        check(&mut client, file, "mutate", &review, mutate).await;
        check(&mut client, file, "validate", &review, validate).await;
    }
}

#[tokio::test]
async fn real_connect_reviews_by_a_non_admin_into_a_database_pod_are_denied() {
    let files = [
        ("spreadshirt-kube-request-access/kube-request-access.go.admissionReviewExample.extracted.json", "exec into"),
        ("shilazi-disallow-portforward-policy/test_data/pod_portforward.json", "port-forward to"),
    ];
    for (file, verb) in files {
        let mut review = load(file);
        let namespace = review["request"]["namespace"].as_str().unwrap().to_string();
        let name = review["request"]["name"].as_str().unwrap().to_string();
        review["request"]["userInfo"] =
            json!({"username": "dev", "groups": ["system:authenticated"]});
        let db = pod(
            &namespace,
            &name,
            json!({"app.kubernetes.io/name": "postgresql"}),
            "bitnami/postgresql:16",
        );
        let server = start(config("policies: {}\n"), vec![db]).await;
        let mut client = Client::connect(&server).await;
        let expected = format!("user \"dev\" may not {verb} database pod {namespace}/{name}");
        let response = client.review("validate", &review).await;
        assert_eq!(response["allowed"], false, "{file}");
        assert!(message(&response).contains(&expected), "{file}: {response}");

        // The same pod running a web server is fine.
        let web = pod(&namespace, &name, json!({"app": "nginx"}), "nginx:1.25");
        let server = start(config("policies: {}\n"), vec![web]).await;
        let mut client = Client::connect(&server).await;
        assert_eq!(
            client.review("validate", &review).await["allowed"],
            true,
            "{file}"
        );
    }
}

#[tokio::test]
async fn real_reviews_in_an_airgapped_cluster_name_the_public_registry() {
    let server = start(
        config("policies:\n  airgap-registry:\n    airgapped: true\n    allowedRegistries: [\"registry.local:5000\"]\n"),
        vec![],
    )
    .await;
    let mut client = Client::connect(&server).await;
    let cases = [
        ("kube-rs-kube/kube-core/src/admission.rs.WEBHOOK_BODY.extracted.json", "image \"jmalloc/echo-server\" resolves to registry docker.io"),
        ("kubewarden-policies/policies/user-group-psp-policy/test_data/daemonset_with_no_securitycontext.json", "resolves to registry quay.io"),
        ("kubewarden-policies/policies/user-group-psp-policy/test_data/statefulset_with_no_securitycontext.json", "resolves to registry registry.k8s.io"),
        ("kubewarden-policies/policies/verify-image-signatures/test_data/replicationcontroller_creation_unsigned.json", "resolves to registry ghcr.io"),
    ];
    for (file, expected) in cases {
        let response = client.review("validate", &load(file)).await;
        assert_eq!(response["allowed"], false, "{file}");
        assert!(message(&response).contains(expected), "{file}: {response}");
    }
}
