//! A cluster's worth of workloads for the audit's memory test and benchmark: Deployments
//! with one container and ten env variables each, spread over namespaces; a third run one
//! replica, half use `nginx`, a quarter pull `Always`. Also the resident memory of a
//! process, from `/proc`.

use std::collections::VecDeque;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

/// The `i`th workload.
pub fn deployment(i: usize) -> Value {
    let name = format!("w{i:05}");
    let image = if i % 2 == 0 {
        "nginx:1.25".to_owned()
    } else {
        format!("registry.local:5000/openg2p/svc-{}:1.{}", i % 50, i % 7)
    };
    let env: Vec<Value> = (0..10)
        .map(|k| json!({"name": format!("SETTING_{k}"), "value": format!("value-{i}-{k}")}))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "app.kubernetes.io/part-of": "bench"}},
        "spec": {
            "replicas": if i % 3 == 0 { 1 } else { 2 },
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": if i % 4 == 0 { "Always" } else { "IfNotPresent" },
                    "env": env,
                    "ports": [{"containerPort": 8080}],
                }]},
            },
        },
    })
}

/// The namespace of the `i`th workload.
pub fn namespace_of(i: usize, namespaces: usize) -> String {
    format!("bench-{:02}", i % namespaces)
}

/// Creates `count` workloads (numbered from `from`) over `namespaces` namespaces, with up to
/// 32 requests in flight.
pub async fn fill(
    client: &kube::Client,
    from: usize,
    count: usize,
    namespaces: usize,
) -> Result<(), String> {
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for n in 0..namespaces {
        let name = namespace_of(n, namespaces);
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .map_err(|e| e.to_string())?;
        match ns_api.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(format!("creating namespace {name}: {e}")),
        }
    }
    let mut in_flight = VecDeque::new();
    for i in from..from + count {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace_of(i, namespaces));
        let object: Deployment =
            serde_json::from_value(deployment(i)).map_err(|e| e.to_string())?;
        in_flight.push_back(tokio::spawn(async move {
            api.create(&PostParams::default(), &object)
                .await
                .map(|_| ())
                .map_err(|e| format!("creating workload {i}: {e}"))
        }));
        if in_flight.len() >= 32 {
            if let Some(task) = in_flight.pop_front() {
                task.await.map_err(|e| e.to_string())??;
            }
        }
    }
    for task in in_flight {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
