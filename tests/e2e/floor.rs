//! The CEL floor on the API server itself (docs/floor.md): with prodguard stopped and its
//! webhooks set to `Ignore`, what each policy's floor holds is still refused (or patched) by the
//! API server, with prodguard's message; exceptions and excluded namespaces still pass.
//!
//! ValidatingAdmissionPolicy is served from Kubernetes 1.30, MutatingAdmissionPolicy (v1) from
//! 1.36. The suite's default API server (1.20, scripts/test-deps.sh) serves neither: the
//! scenario then says so on its own line, `SKIPPED`, and counts in the suite's skipped total;
//! give `PRODGUARD_KUBE_APISERVER` a newer binary to run it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{default_with, err, Env};

/// Whether the API server serves `plural` in admissionregistration.k8s.io/v1.
fn serves(env: &Env, plural: &str) -> bool {
    env.runtime
        .block_on(
            env.client
                .list_api_group_resources("admissionregistration.k8s.io/v1"),
        )
        .map(|list| list.resources.iter().any(|r| r.name == plural))
        .unwrap_or(false)
}

/// Waits until `kubectl get <what>` lists `expected` (a name, or text in its JSON).
fn wait_for(env: &Env, what: &[&str], expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let output = env.kubectl(&[&["get", "-o", "json"][..], what].concat());
        if String::from_utf8_lossy(&output.stdout).contains(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{expected} did not appear in {what:?} within 40 s:\n{}",
            env.cluster.prodguard_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The scenario: skipped, visibly, on a server without ValidatingAdmissionPolicy.
pub fn cel_floor_outlives_prodguard(env: &mut Env) {
    if let Err(reason) = run(env) {
        super::skipped(reason);
    }
}

fn run(env: &mut Env) -> Result<(), String> {
    if !serves(env, "validatingadmissionpolicies") {
        return Err(
            "this kube-apiserver serves no ValidatingAdmissionPolicy (Kubernetes 1.30+); run the \
             suite with PRODGUARD_KUBE_APISERVER set to a 1.30+ binary (1.36+ for the mutating half)"
                .into(),
        );
    }
    let mutating = serves(env, "mutatingadmissionpolicies");
    env.crds_installed();
    let ns = "e2e-floor";
    env.namespace(ns);
    if !env
        .kubectl(&["get", "namespace", "prodguard"])
        .status
        .success()
    {
        env.namespace("prodguard");
    }
    // An admin's exception for one Deployment, in force before the floor is written.
    let exception = json!({"apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
        "metadata": {"name": "single-web"},
        "spec": {"policies": ["min-replicas"], "match": {"names": ["excepted"]}, "reason": "e2e",
                 "expires": super::rfc3339_from_now(3600)}});
    let output = env.apply(ns, &exception);
    assert!(output.status.success(), "{}", err(&output));
    let config = default_with("    airgapped: false", "    airgapped: true");
    env.serve(
        &config,
        &["--lease-namespace=prodguard", "--cel-floor-interval=2s"],
    );
    wait_for(
        env,
        &["validatingadmissionpolicybindings"],
        "prodguard-min-replicas",
    );
    wait_for(
        env,
        &["validatingadmissionpolicies", "prodguard-min-replicas"],
        "no-policy-exception",
    );
    if mutating {
        wait_for(
            env,
            &["mutatingadmissionpolicybindings"],
            "prodguard-image-pull-policy-pods",
        );
    }
    env.ok(&[
        "create",
        "deployment",
        "kept",
        "--image=registry.local:5000/web:1",
        "--replicas=2",
        "-n",
        ns,
    ]);

    // prodguard down, both webhooks failing open.
    env.cluster.stop_prodguard();
    for configuration in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        env.ok(&[
            "patch", configuration, "prodguard", "--type=json",
            "-p=[{\"op\": \"replace\", \"path\": \"/webhooks/0/failurePolicy\", \"value\": \"Ignore\"}]",
        ]);
    }
    let refused = |env: &Env, args: &[&str], expected: &str| {
        let stderr = env.fails(args);
        assert!(
            stderr.contains("ValidatingAdmissionPolicy") && stderr.contains(expected),
            "not refused by the floor with {expected:?}: {stderr}"
        );
    };
    refused(
        env,
        &[
            "create",
            "deployment",
            "single",
            "--image=registry.local:5000/web:1",
            "--replicas=1",
            "-n",
            ns,
            "--as=dev",
        ],
        &format!("Deployment {ns}/single would run 1 replica; high availability needs at least 2"),
    );
    refused(
        env,
        &["run", "public", "--image=nginx:1.25", "-n", ns, "--as=dev"],
        "the cluster is air-gapped and images must come from an allowed registry",
    );
    refused(
        env,
        &["delete", "deployment", "kept", "-n", ns, "--as=dev"],
        &format!("user \"dev\" may not delete Deployment {ns}/kept"),
    );
    // The exception and the excluded namespaces pass.
    env.ok(&[
        "create",
        "deployment",
        "excepted",
        "--image=registry.local:5000/web:1",
        "--replicas=1",
        "-n",
        ns,
    ]);
    env.ok(&[
        "create",
        "deployment",
        "single",
        "--image=nginx",
        "--replicas=1",
        "-n",
        "prodguard",
    ]);
    if mutating {
        env.ok(&[
            "run",
            "pulled",
            "--image=registry.local:5000/web:latest",
            "--image-pull-policy=Always",
            "-n",
            ns,
        ]);
        let pod = env.get_json(&["pod", "pulled", "-n", ns]);
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent",
            "{pod}"
        );
    }
    // Off removes the floor within one reconcile.
    env.serve(
        &config,
        &[
            "--lease-namespace=prodguard",
            "--cel-floor=off",
            "--cel-floor-interval=2s",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = env.ok(&[
            "get",
            "validatingadmissionpolicies",
            "-l",
            "app.kubernetes.io/managed-by=prodguard",
            "-o",
            "name",
        ]);
        if left.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the floor was not removed: {left}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    env.ok(&["delete", "deployment", "single", "-n", "prodguard"]);
    Ok(())
}
