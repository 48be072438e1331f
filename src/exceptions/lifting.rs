//! The lifting stage: after the units have judged a request and before `decide`, each
//! outcome that a PolicyException in force covers is marked as lifted, with the exception that
//! lifts it. Only the store's current set is read (never the API); an unsynced store lifts
//! nothing, and the exceptions' own write rule is never lifted.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{Exceptions, Target, POLICY_ID};
use crate::unit::{Lookups, Request};
use crate::view::Object;

/// The PolicyException a finding was lifted by, as reports name it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExceptedBy {
    pub namespace: String,
    pub name: String,
    pub reason: String,
    pub expires: String,
}

impl ExceptedBy {
    /// `PolicyException openg2p/dba-break-glass (until 2026-12-01T18:00:00Z: incident 42)`.
    pub fn describe(&self) -> String {
        format!(
            "PolicyException {}/{} (until {}: {})",
            self.namespace, self.name, self.expires, self.reason
        )
    }
}

impl Exceptions {
    /// For each of `policies` (each found something on `request`), the exception in force
    /// that lifts it, if any; `max` is how far ahead an exception may end. Empty, without
    /// allocating, when no exception is held (most requests).
    pub async fn lifted(
        &self,
        max: Duration,
        request: &Request<'_>,
        lookups: &Lookups<'_>,
        policies: impl Iterator<Item = &'static str>,
    ) -> Vec<Option<ExceptedBy>> {
        let Some(set) = self.current().filter(|set| !set.is_empty()) else {
            return Vec::new();
        };
        let policies: Vec<&'static str> = policies.collect();
        let mut lifted = vec![None; policies.len()];
        let now = SystemTime::now();
        let target = Target {
            namespace: request.namespace,
            kind: request.target_kind(),
            name: request.object_name(),
            username: request.username,
            groups: request.groups,
        };
        // The object's labels, read once, and only when an exception selects by them.
        let mut labels: Option<Option<BTreeMap<String, String>>> = None;
        for (policy, lifted) in policies.iter().zip(lifted.iter_mut()) {
            if *policy == POLICY_ID {
                continue;
            }
            if labels.is_none() && set.needs_labels(request.namespace, policy, now, max) {
                labels = Some(target_labels(request, lookups).await);
            }
            let known = labels.as_ref().and_then(Option::as_ref);
            if let Some(e) = set.covering(policy, &target, known, now, max) {
                *lifted = Some(ExceptedBy {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    reason: e.reason.clone(),
                    expires: e.expires_text.clone(),
                });
            }
        }
        lifted
    }
}

/// The labels of the object a request is about: the written object's, the deleted one's, or
/// (for a pod's subresource) the pod's, read through the request's lookups.
async fn target_labels(
    request: &Request<'_>,
    lookups: &Lookups<'_>,
) -> Option<BTreeMap<String, String>> {
    let of = |object: &Object<'_>| {
        object.metadata.labels.as_ref().map(|l| {
            l.0.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    if request.sub_resource.is_none() {
        return request
            .object
            .or(request.old_object)
            .map(|o| of(o).unwrap_or_default());
    }
    if request.resource != "pods" || !request.resource_group.is_empty() {
        return None;
    }
    let text = lookups.pod(request.namespace, request.name).await.ok()?;
    let pod = Object::decode("Pod", &text).ok()??;
    Some(of(&pod).unwrap_or_default())
}
