//! The webhook through TLS, as kube-apiserver calls it: every behaviour a user sees.

mod common;

use common::*;
use hyper::{Method, StatusCode};
use prodguard::engine::Action;
use serde_json::{json, Value};

#[tokio::test]
async fn create_of_every_pod_bearing_kind_is_patched_in_every_container_list() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"http/1.1"[..]));
    for (object, spec_path) in pod_bearing_objects("nginx", 2) {
        let kind = object["kind"].as_str().unwrap().to_string();
        let response = client
            .review("mutate", &Review::create(object.clone()).json())
            .await;
        assert_eq!(response["allowed"], true, "{kind}");
        let patched = apply_patch(&response, &object);
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            let pointer = format!("{spec_path}/{list}/0/imagePullPolicy");
            assert_eq!(
                patched.pointer(&pointer),
                Some(&json!("IfNotPresent")),
                "{kind} {pointer}"
            );
        }
        // The init container already had IfNotPresent: two operations, not three.
        let patch = decode_patch(&response).unwrap();
        assert_eq!(patch.0.len(), 2, "{kind}: {patch:?}");
        // A patch alone is counted, not reported (no Event per patched write by default).
        assert!(reports(&server).is_empty(), "{kind}");

        // And the validating webhook admits it (2 replicas, not air-gapped).
        let response = client
            .review("validate", &Review::create(object).json())
            .await;
        assert_eq!(response["allowed"], true, "{kind}: {response}");
    }
}

/// With `--patch-events` a patched write is reported (an Event of reason PolicyMutation); without
/// it only what is denied or warned about is, and a request both patched and warned about is
/// reported for its warning alone.
#[tokio::test]
async fn patches_are_reported_only_when_asked_for() {
    let object = || pod_bearing_objects("nginx", 2).remove(1).0;
    let server = start_reporting_patches().await;
    let mut client = Client::connect(&server).await;
    let response = client
        .review("mutate", &Review::create(object()).json())
        .await;
    assert!(decode_patch(&response).is_some(), "{response}");
    let reported = reports(&server);
    assert_eq!(reported.len(), 1);
    assert_eq!(
        (
            reported[0].policies(),
            reported[0].action,
            reported[0].reason
        ),
        (vec!["image-pull-policy"], Action::Mutated, "PolicyMutation")
    );
    assert_eq!(reported[0].regarding.name, "web");
    // Without: the patch is still made, and nothing is reported.
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let response = client
        .review("mutate", &Review::create(object()).json())
        .await;
    assert!(decode_patch(&response).is_some(), "{response}");
    assert!(reports(&server).is_empty());
    // A denial is reported either way.
    let mut single = object();
    single["spec"]["replicas"] = json!(1);
    let response = client
        .review("validate", &Review::create(single).json())
        .await;
    assert_eq!(response["allowed"], false, "{response}");
    let reported = reports(&server);
    assert_eq!(
        (reported.len(), reported[0].action, reported[0].reason),
        (1, Action::Denied, "PolicyViolation")
    );
}

#[tokio::test]
async fn nothing_to_change_gives_no_patch() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "nginx", "imagePullPolicy": "IfNotPresent"}]}});
    let response = client.review("mutate", &Review::create(pod).json()).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(reports(&server).is_empty());
}

#[tokio::test]
async fn workloads_below_min_replicas_are_denied_and_zero_is_allowed() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    for (object, _) in pod_bearing_objects("nginx", 1) {
        let kind = object["kind"].as_str().unwrap().to_string();
        let response = client
            .review("validate", &Review::create(object).json())
            .await;
        let denied = matches!(kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet");
        assert_eq!(response["allowed"], !denied, "{kind}: {response}");
        if denied {
            assert_eq!(response["status"]["code"], 403);
            assert_eq!(
                message(&response),
                format!("[min-replicas] {kind} openg2p/web would run 1 replica; high availability needs at least 2 (set spec.replicas to 2 or more, or to 0 to scale down deliberately; a real singleton needs an exemption in the min-replicas policy, which an admin adds)")
            );
            let reports = reports(&server);
            assert_eq!(reports.len(), 1);
            assert_eq!(
                (reports[0].policies(), reports[0].action, reports[0].reason),
                (vec!["min-replicas"], Action::Denied, "PolicyViolation")
            );
            assert_eq!(reports[0].user, "alice");
        }
    }
    for (object, _) in pod_bearing_objects("nginx", 0) {
        let response = client
            .review("validate", &Review::create(object).json())
            .await;
        assert_eq!(response["allowed"], true);
    }
    // The OpenG2P PostgreSQL primary is exempt in the default policy set.
    let pg = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "social-registry-postgresql", "namespace": "openg2p"}, "spec": {"replicas": 1}});
    let response = client.review("validate", &Review::create(pg).json()).await;
    assert_eq!(response["allowed"], true, "{response}");
}

fn scale_review(resource: &str, name: &str, replicas: Option<i64>, old: i64) -> Review {
    let scale = |r: Option<i64>| {
        let spec = r.map_or(json!({}), |r| json!({"replicas": r}));
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": name, "namespace": "openg2p"}, "spec": spec, "status": {"replicas": old}})
    };
    // As the API server sends it (and Kubernetes' documentation shows): the kind is
    // autoscaling's Scale, the resource is the workload's, in apps.
    Review::new("UPDATE", "autoscaling/v1", "Scale", resource)
        .set("subResource", json!("scale"))
        .set(
            "resource",
            json!({"group": "apps", "version": "v1", "resource": resource}),
        )
        .set(
            "requestResource",
            json!({"group": "apps", "version": "v1", "resource": resource}),
        )
        .set("requestSubResource", json!("scale"))
        .set("name", json!(name))
        .set("object", scale(replicas))
        .set("oldObject", scale(Some(old)))
}

#[tokio::test]
async fn the_scale_subresource_is_checked() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let cases = [
        ("deployments", "web", Some(1), false),
        ("statefulsets", "web", Some(1), false),
        ("deployments", "web", Some(2), true),
        ("deployments", "web", Some(0), true),
        ("deployments", "web", None, true),
        ("statefulsets", "social-registry-postgresql", Some(1), true),
    ];
    for (resource, name, replicas, allowed) in cases {
        let response = client
            .review(
                "validate",
                &scale_review(resource, name, replicas, 3).json(),
            )
            .await;
        assert_eq!(
            response["allowed"], allowed,
            "{resource} {name} {replicas:?}: {response}"
        );
        if !allowed {
            assert!(
                message(&response).contains(&format!("openg2p/{name} would run 1 replica")),
                "{response}"
            );
        }
    }
    // The mutating webhook leaves Scale alone.
    let response = client
        .review(
            "mutate",
            &scale_review("deployments", "web", Some(1), 3).json(),
        )
        .await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn hpa_min_replicas_is_checked() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    for (api_version, min, allowed) in [
        ("autoscaling/v1", Some(1), false),
        ("autoscaling/v2", None, false),
        ("autoscaling/v2", Some(2), true),
        ("autoscaling/v2beta2", Some(3), true),
    ] {
        let mut spec = json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 5});
        if let Some(min) = min {
            spec["minReplicas"] = json!(min);
        }
        let hpa = json!({"apiVersion": api_version, "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": spec});
        let review = Review::create(hpa).set("resource", json!({"group": "autoscaling", "version": "v2", "resource": "horizontalpodautoscalers"}));
        let response = client.review("validate", &review.json()).await;
        assert_eq!(
            response["allowed"], allowed,
            "{api_version} {min:?}: {response}"
        );
        if !allowed {
            assert!(
                message(&response)
                    .contains("HorizontalPodAutoscaler openg2p/web would run 1 replica"),
                "{response}"
            );
        }
    }
}

#[tokio::test]
async fn pod_update_is_not_patched_and_ephemeral_containers_are() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": pod_spec("nginx")});
    let update = Review::new("UPDATE", "v1", "Pod", "pods")
        .set("name", json!("web"))
        .set("object", pod.clone())
        .set("oldObject", pod.clone());
    let response = client.review("mutate", &update.json()).await;
    assert_eq!(response["allowed"], true);
    assert!(
        response.get("patch").is_none(),
        "a Pod UPDATE must not be patched: {response}"
    );

    // kubectl debug: UPDATE of pods/ephemeralcontainers (the object is the Pod on 1.23+).
    let ephemeral = update
        .clone()
        .set("subResource", json!("ephemeralcontainers"));
    let response = client.review("mutate", &ephemeral.json()).await;
    let patched = apply_patch(&response, &pod);
    assert_eq!(
        patched.pointer("/spec/ephemeralContainers/0/imagePullPolicy"),
        Some(&json!("IfNotPresent"))
    );
    assert_eq!(
        patched.pointer("/spec/containers/0/imagePullPolicy"),
        Some(&json!("Always")),
        "only ephemeral containers change"
    );

    // Kubernetes 1.20-1.22 send an EphemeralContainers object instead.
    let old_style = json!({"apiVersion": "v1", "kind": "EphemeralContainers", "metadata": {"name": "web", "namespace": "openg2p"},
        "ephemeralContainers": [{"name": "debug", "image": "busybox", "imagePullPolicy": "Always"}]});
    let review = Review::new("UPDATE", "v1", "EphemeralContainers", "pods")
        .set("subResource", json!("ephemeralcontainers"))
        .set("name", json!("web"))
        .set("object", old_style.clone())
        .set("oldObject", old_style.clone());
    let response = client.review("mutate", &review.json()).await;
    let patched = apply_patch(&response, &old_style);
    assert_eq!(
        patched.pointer("/ephemeralContainers/0/imagePullPolicy"),
        Some(&json!("IfNotPresent"))
    );
}

fn delete_review(kind: &str, resource: &str, username: &str, groups: &[&str]) -> Review {
    let api_version = if matches!(kind, "Deployment" | "StatefulSet") {
        "apps/v1"
    } else {
        "v1"
    };
    Review::new("DELETE", api_version, kind, resource)
        .set("name", json!("keep-me"))
        .set("oldObject", json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "keep-me", "namespace": "openg2p"}}))
        .set("options", json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}))
        .user(username, groups)
}

#[tokio::test]
async fn delete_is_for_admins_and_kubernetes_controllers() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    for (kind, resource) in [
        ("Deployment", "deployments"),
        ("StatefulSet", "statefulsets"),
        ("ConfigMap", "configmaps"),
        ("Secret", "secrets"),
    ] {
        let response = client
            .review(
                "validate",
                &delete_review(kind, resource, "bob", &["system:authenticated"]).json(),
            )
            .await;
        assert_eq!(response["allowed"], false, "{kind} by bob");
        assert_eq!(
            message(&response),
            format!("[protect-delete] user \"bob\" may not delete {kind} openg2p/keep-me: deleting Deployment, StatefulSet, ConfigMap, Secret is for admins only; ask a cluster admin")
        );
        let denied = reports(&server);
        assert_eq!(
            (
                denied[0].action,
                denied[0].regarding.kind.as_str(),
                denied[0].user.as_str()
            ),
            (Action::Denied, kind, "bob")
        );

        let admin = delete_review(
            kind,
            resource,
            "kubernetes-admin",
            &["system:masters", "system:authenticated"],
        );
        assert_eq!(
            client.review("validate", &admin.json()).await["allowed"],
            true,
            "{kind} by admin"
        );
        let gc = delete_review(
            kind,
            resource,
            "system:serviceaccount:kube-system:generic-garbage-collector",
            &["system:serviceaccounts"],
        );
        assert_eq!(
            client.review("validate", &gc.json()).await["allowed"],
            true,
            "{kind} by the garbage collector"
        );
        let other_sa = delete_review(
            kind,
            resource,
            "system:serviceaccount:openg2p:default",
            &["system:serviceaccounts"],
        );
        assert_eq!(
            client.review("validate", &other_sa.json()).await["allowed"],
            false,
            "{kind} by another service account"
        );
        assert_eq!(
            reports(&server).len(),
            1,
            "only the other service account's denial"
        );
    }
    // Pods are not protected.
    let response = client
        .review("validate", &delete_review("Pod", "pods", "bob", &[]).json())
        .await;
    assert_eq!(response["allowed"], true);
}

fn connect_review(sub: &str, pod: &str, username: &str, groups: &[&str]) -> Review {
    let options_kind = match sub {
        "exec" => "PodExecOptions",
        "attach" => "PodAttachOptions",
        _ => "PodPortForwardOptions",
    };
    Review::new("CONNECT", "v1", options_kind, "pods")
        .set("subResource", json!(sub))
        .set("name", json!(pod))
        .set(
            "object",
            json!({"apiVersion": "v1", "kind": options_kind, "stdin": true, "command": ["psql"]}),
        )
        .user(username, groups)
}

#[tokio::test]
async fn exec_attach_and_port_forward_into_database_pods_is_for_admins() {
    let pods = vec![
        pod(
            "openg2p",
            "postgres-0",
            json!({"app.kubernetes.io/name": "postgresql"}),
            "docker.io/bitnami/postgresql:16",
        ),
        pod("openg2p", "redis-0", json!({}), "redis:7.2"),
        pod("openg2p", "web-0", json!({"app": "web"}), "openg2p/web:1"),
    ];
    let server = start(config("policies: {}\n"), pods).await;
    let mut client = Client::connect(&server).await;
    for sub in ["exec", "attach", "portforward"] {
        for db in ["postgres-0", "redis-0"] {
            let response = client
                .review(
                    "validate",
                    &connect_review(sub, db, "bob", &["system:authenticated"]).json(),
                )
                .await;
            assert_eq!(response["allowed"], false, "{sub} {db}");
            let msg = message(&response);
            assert!(
                msg.starts_with("[db-access] user \"bob\" may not "),
                "{msg}"
            );
            assert!(msg.contains(&format!("database pod openg2p/{db}")), "{msg}");
            let admin = connect_review(sub, db, "root", &["system:masters"]);
            assert_eq!(
                client.review("validate", &admin.json()).await["allowed"],
                true,
                "{sub} {db} as admin"
            );
        }
        let response = client
            .review("validate", &connect_review(sub, "web-0", "bob", &[]).json())
            .await;
        assert_eq!(response["allowed"], true, "{sub} into a non-database pod");
    }
    let msg = message(
        &client
            .review(
                "validate",
                &connect_review("exec", "redis-0", "bob", &[]).json(),
            )
            .await,
    );
    // Recognised by its image, which the message does not tell (bob may not read the pod).
    assert!(
        msg.contains("may not exec into database pod openg2p/redis-0: ")
            && !msg.contains("redis:7.2"),
        "{msg}"
    );

    // A pod that cannot be read: fail closed, and say so.
    let response = client
        .review(
            "validate",
            &connect_review("exec", "gone-0", "bob", &[]).json(),
        )
        .await;
    assert_eq!(response["allowed"], false);
    let msg = message(&response);
    assert!(
        msg.contains("pod lookup failed (pod openg2p/gone-0 was not found)"),
        "{msg}"
    );
    assert!(msg.contains("fails closed"), "{msg}");
}

#[tokio::test]
async fn global_audit_mode_allows_with_warnings_and_annotations() {
    let mut cfg = prodguard::policies::Config::embedded_default().unwrap();
    cfg.mode = prodguard::config::GlobalMode::Audit;
    let server = start(cfg, vec![]).await;
    let mut client = Client::connect(&server).await;
    let deploy = pod_bearing_objects("nginx", 1).remove(1).0;

    let response = client
        .review("validate", &Review::create(deploy.clone()).json())
        .await;
    assert_eq!(response["allowed"], true, "{response}");
    let shown = warnings(&response);
    assert_eq!(shown.len(), 1);
    assert!(
        shown[0].starts_with("min-replicas: Deployment openg2p/web would run 1 replica"),
        "{shown:?}"
    );
    assert!(response["auditAnnotations"]["prodguard.io/min-replicas"]
        .as_str()
        .unwrap()
        .contains("would run 1 replica"));
    assert_eq!(reports(&server)[0].action, Action::Audited);

    let response = client
        .review("mutate", &Review::create(deploy).json())
        .await;
    assert_eq!(response["allowed"], true);
    assert!(
        response.get("patch").is_none(),
        "audit never patches: {response}"
    );
    let shown = warnings(&response);
    assert!(shown[0].starts_with("image-pull-policy: would patch: set imagePullPolicy: IfNotPresent on containers[0] \"app\" (was Always)"), "{shown:?}");
    assert!(response["auditAnnotations"]["prodguard.io/image-pull-policy"].is_string());
}

#[tokio::test]
async fn per_policy_modes() {
    let server = start(config("policies:\n  min-replicas:\n    mode: audit\n  image-pull-policy:\n    mode: \"off\"\n"), vec![]).await;
    let mut client = Client::connect(&server).await;
    let deploy = pod_bearing_objects("nginx", 1).remove(1).0;
    let response = client
        .review("validate", &Review::create(deploy.clone()).json())
        .await;
    assert_eq!(response["allowed"], true);
    assert_eq!(warnings(&response).len(), 1);
    let response = client
        .review("mutate", &Review::create(deploy).json())
        .await;
    assert!(
        response.get("patch").is_none() && response.get("warnings").is_none(),
        "off does nothing: {response}"
    );
    // protect-delete stays in enforce.
    let response = client
        .review(
            "validate",
            &delete_review("Secret", "secrets", "bob", &[]).json(),
        )
        .await;
    assert_eq!(response["allowed"], false);
}

#[tokio::test]
async fn dry_run_gets_the_same_verdict_and_no_report() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let deploy = pod_bearing_objects("nginx", 1).remove(1).0;
    let review = Review::create(deploy.clone()).set("dryRun", json!(true));
    let response = client.review("validate", &review.json()).await;
    assert_eq!(response["allowed"], false);
    assert!(message(&response).contains("would run 1 replica"));
    let response = client.review("mutate", &review.json()).await;
    assert!(
        decode_patch(&response).is_some(),
        "dry-run is still patched"
    );
    let response = client
        .review(
            "validate",
            &delete_review("Secret", "secrets", "bob", &[])
                .set("dryRun", json!(true))
                .json(),
        )
        .await;
    assert_eq!(response["allowed"], false);
    assert!(
        reports(&server).is_empty(),
        "dry-run requests never reach the reporter"
    );

    // The same requests without dryRun are reported.
    client
        .review("validate", &Review::create(deploy).json())
        .await;
    assert_eq!(reports(&server).len(), 1);
}

#[tokio::test]
async fn airgapped_clusters_take_images_from_allowed_registries_only() {
    let server = start(config("policies:\n  airgap-registry:\n    airgapped: true\n    allowedRegistries: [\"registry.local:5000\", \"harbor.example.org/openg2p/\"]\n"), vec![]).await;
    let mut client = Client::connect(&server).await;
    let pod = |image: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "openg2p"}, "spec": {"containers": [{"name": "app", "image": image}]}});
    let response = client
        .review("validate", &Review::create(pod("nginx")).json())
        .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        message(&response),
        "[airgap-registry] the cluster is air-gapped and images must come from an allowed registry (registry.local:5000, harbor.example.org/openg2p/): containers[0] \"app\": image \"nginx\" resolves to registry docker.io"
    );
    for ok in [
        "registry.local:5000/openg2p/app:1",
        "harbor.example.org/openg2p/app",
    ] {
        assert_eq!(
            client
                .review("validate", &Review::create(pod(ok)).json())
                .await["allowed"],
            true,
            "{ok}"
        );
    }
    for bad in [
        "ghcr.io.evil.com/openg2p/app",
        "harbor.example.org/openg2p-evil/app",
        "registry.local:5000.evil.com/x",
    ] {
        assert_eq!(
            client
                .review("validate", &Review::create(pod(bad)).json())
                .await["allowed"],
            false,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_mirrored_image_then_passes_the_airgap_check() {
    let server = start(
        config("policies:\n  airgap-registry:\n    airgapped: true\n    allowedRegistries: [\"registry.local:5000\"]\n  registry-mirror:\n    mode: enforce\n    mirrors: {\"docker.io\": \"registry.local:5000/dockerhub\"}\n"),
        vec![],
    )
    .await;
    let mut client = Client::connect(&server).await;
    let deploy = pod_bearing_objects("redis:7.2", 2).remove(1).0;
    let response = client
        .review("mutate", &Review::create(deploy.clone()).json())
        .await;
    let patched = apply_patch(&response, &deploy);
    assert_eq!(
        patched.pointer("/spec/template/spec/containers/0/image"),
        Some(&json!("registry.local:5000/dockerhub/library/redis:7.2"))
    );
    assert_eq!(
        patched.pointer("/spec/template/spec/containers/0/imagePullPolicy"),
        Some(&json!("IfNotPresent"))
    );
    assert_eq!(
        patched.pointer("/spec/template/spec/initContainers/0/image"),
        Some(&json!("registry.local:5000/dockerhub/library/busybox:1.36"))
    );
    // The API server sends the mutated object to the validating webhook.
    let response = client
        .review("validate", &Review::create(patched).json())
        .await;
    assert_eq!(response["allowed"], true, "{response}");
    let response = client
        .review("validate", &Review::create(deploy).json())
        .await;
    assert_eq!(response["allowed"], false, "unmirrored it is denied");
}

#[tokio::test]
async fn malformed_bodies_get_clear_errors_and_the_server_keeps_serving() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"not json".to_vec(), StatusCode::BAD_REQUEST, "the body is not JSON"),
        (b"{\"kind\": \"Pod\"}".to_vec(), StatusCode::BAD_REQUEST, "expected apiVersion \"admission.k8s.io/v1\""),
        (serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}})).unwrap(), StatusCode::BAD_REQUEST, "got apiVersion \"admission.k8s.io/v1beta1\""),
        (serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap(), StatusCode::BAD_REQUEST, "has no request"),
        (serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}})).unwrap(), StatusCode::BAD_REQUEST, "no uid"),
        (format!("{{\"x\": {}{}}}", "[".repeat(5000), "]".repeat(5000)).into_bytes(), StatusCode::BAD_REQUEST, "expected apiVersion"),
        (vec![b' '; prodguard::http::MAX_BODY_BYTES + 1], StatusCode::PAYLOAD_TOO_LARGE, "larger than 18939904 bytes"),
    ];
    for (body, status, expected) in cases {
        for webhook in ["/mutate", "/validate"] {
            let (got, body) = client.send(Method::POST, webhook, body.clone()).await;
            assert_eq!(got, status, "{expected}");
            if got == StatusCode::PAYLOAD_TOO_LARGE {
                // Refused from its Content-Length, the body was never read: the server closes
                // the connection after answering, as HTTP/1.1 requires.
                client = Client::connect(&server).await;
            }
            let error: Value = serde_json::from_slice(&body).expect("a JSON error");
            assert!(
                error["error"].as_str().unwrap().contains(expected),
                "{error}"
            );
            assert_eq!(error["code"], status.as_u16());
        }
    }
    // A review whose object has the wrong shape is answered, denied, with its uid.
    let bad = Review::create(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"}, "spec": {"template": {"spec": {"containers": {"name": "oops"}}}}})).uid("bad-shape");
    let response = client.review("mutate", &bad.json()).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(message(&response), "prodguard cannot check Deployment openg2p/web: Deployment field spec.template.spec.containers must be a list");
    let bad =
        Review::create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": "not a mapping"}))
            .uid("bad-meta");
    let response = client.review("validate", &bad.json()).await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response).contains("cannot read this admission request"),
        "{response}"
    );

    // Deeply nested JSON in a field a policy reads (a binding's roleRef) is denied at its
    // first level: the typed view expects a role reference there, so nothing recurses.
    let mut deep = Review::create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "c"}}))
        .uid("deep");
    let mut nested = json!(1);
    for _ in 0..200 {
        nested = json!([nested]);
    }
    deep.request["object"]["roleRef"] = nested.clone();
    let response = client.review("validate", &deep.json()).await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response).contains("RoleBinding field roleRef must be a role reference"),
        "{response}"
    );
    // Where a policy reads a typed field (labels are a map of strings), the first wrong
    // type ends the read.
    deep.request["object"]["roleRef"] = json!(null);
    deep.request["object"]["metadata"]["labels"] = nested;
    let response = client.review("validate", &deep.json()).await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response).contains("invalid type: sequence, expected a map"),
        "{response}"
    );
    // In a field no policy reads, even a million levels are skipped without harm.
    let deep = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"deeper","kind":{{"group":"","version":"v1","kind":"ConfigMap"}},"resource":{{"group":"","version":"v1","resource":"configmaps"}},"operation":"CREATE","userInfo":{{"username":"alice"}},"object":{{"kind":"ConfigMap","metadata":{{"name":"c"}},"data":{}1{}}},"oldObject":null}}}}"#,
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    );
    let (status, body) = client
        .send(Method::POST, "/validate", deep.into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["uid"], "deeper");

    let (status, _) = client.send(Method::GET, "/mutate", vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Still serving on a new connection too.
    let mut fresh = Client::connect(&server).await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = fresh.send(Method::GET, path, vec![]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]), "{path}");
    }
}

#[tokio::test]
async fn readyz_fails_once_shutting_down() {
    let server = start_default().await;
    server
        .state
        .serving
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let mut client = Client::connect(&server).await;
    let (status, _) = client.send(Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Each answer while shutting down closes its HTTP/1.1 connection (`Connection: close`).
    let mut client = Client::connect(&server).await;
    let (status, _) = client.send(Method::GET, "/healthz", vec![]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn http2_is_offered_by_alpn() {
    let server = start_default().await;
    let deploy = pod_bearing_objects("nginx", 1).remove(1).0;
    let review = Review::create(deploy).json();
    let (alpn, status, body) =
        h2_post(&server, "/validate", serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
}

/// The body limit on Traefik, over TLS: the Middleware a route names is read from the cluster.
#[tokio::test]
async fn traefik_routes_must_name_a_body_limit_and_middlewares_must_hold_one() {
    let middleware = |name: &str, bytes: i64| {
        json!({"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
               "metadata": {"name": name, "namespace": "openg2p"},
               "spec": {"buffering": {"maxRequestBodyBytes": bytes}}})
    };
    let mut cluster = prodguard::cluster::Snapshot {
        complete: true,
        ..Default::default()
    };
    cluster.add_middleware(middleware("body-limit", 10 << 20).to_string());
    let server = start_with(
        prodguard::policies::Config::embedded_default().unwrap(),
        cluster,
    )
    .await;
    let mut client = Client::connect(&server).await;
    let review = |object: Value| {
        let mut review = Review::create(object.clone());
        let (group, version) = object["apiVersion"]
            .as_str()
            .unwrap()
            .split_once('/')
            .unwrap();
        let kind = object["kind"].as_str().unwrap();
        let plural = match kind {
            "Ingress" => "ingresses",
            "IngressRoute" => "ingressroutes",
            _ => "middlewares",
        };
        for key in ["kind", "requestKind"] {
            review.request[key] = json!({"group": group, "version": version, "kind": kind});
        }
        for key in ["resource", "requestResource"] {
            review.request[key] = json!({"group": group, "version": version, "resource": plural});
        }
        review.json()
    };
    let ingress = |annotations: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "portal", "namespace": "openg2p", "annotations": annotations},
               "spec": {"ingressClassName": "traefik"}})
    };
    let named = json!({"traefik.ingress.kubernetes.io/router.middlewares": "openg2p-body-limit@kubernetescrd"});
    let response = client.review("validate", &review(ingress(named))).await;
    assert_eq!(response["allowed"], true, "{response}");
    let response = client.review("mutate", &review(ingress(json!({})))).await;
    assert_eq!(
        response.get("patch"),
        None,
        "no nginx annotation on a Traefik Ingress: {response}"
    );
    let response = client.review("validate", &review(ingress(json!({})))).await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response).starts_with("[ingress-body-size] Ingress openg2p/portal (IngressClass \"traefik\") is served by Traefik, which reads no nginx annotation: it names none; name a Middleware"),
        "{response}"
    );

    let route = |middlewares: Value| {
        json!({"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
               "metadata": {"name": "registry", "namespace": "openg2p"},
               "spec": {"routes": [{"match": "Host(`r`)", "middlewares": middlewares}]}})
    };
    let response = client
        .review("validate", &review(route(json!([{"name": "body-limit"}]))))
        .await;
    assert_eq!(response["allowed"], true, "{response}");
    let response = client
        .review("validate", &review(route(json!([{"name": "missing"}]))))
        .await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response)
            .contains("routes[0] (Host(`r`)): Middleware openg2p/missing was not found"),
        "{response}"
    );

    let response = client
        .review("validate", &review(middleware("open", 0)))
        .await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response).starts_with("[ingress-body-size] Middleware openg2p/open: buffering.maxRequestBodyBytes is 0, which means no limit"),
        "{response}"
    );
    let response = client
        .review("validate", &review(middleware("ok", 50 << 20)))
        .await;
    assert_eq!(response["allowed"], true, "{response}");
}
