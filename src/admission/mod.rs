//! Decodes an AdmissionReview into a request, and encodes a verdict as the review the API
//! server expects. kube-rs' `kube::core::admission` types are used as they are; the objects
//! in them are decoded partially (see [`partial`]).

pub mod partial;

use base64::Engine as _;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, META_API_VERSION_V1, META_KIND};
use kube::core::{Resource, TypeMeta};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::engine::{Decision, Verdict};

/// A body that cannot be answered with a review: the HTTP layer answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAReview {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not an AdmissionReview: expected apiVersion {META_API_VERSION_V1:?} and kind {META_KIND:?}, got apiVersion {api_version:?} and kind {kind:?}")]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has no uid, so no answer can be matched to it: {0}")]
    NoUid(String),
}

/// A decoded request, its objects decoded partially.
pub type ReviewRequest = AdmissionRequest<partial::ReviewObject>;

/// What a body decodes into.
#[derive(Debug)]
pub enum Decoded {
    Request(Box<ReviewRequest>),
    /// A review whose request does not decode: answered (denied) with its uid.
    Malformed {
        uid: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UidOnly {
    uid: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<T: Resource> {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest<T>>,
}

/// The request of a body decoded with `Named` lists skipped, as a [`ReviewRequest`].
fn from_lean(r: AdmissionRequest<partial::LeanReviewObject>) -> ReviewRequest {
    AdmissionRequest {
        types: r.types,
        uid: r.uid,
        kind: r.kind,
        resource: r.resource,
        sub_resource: r.sub_resource,
        request_kind: r.request_kind,
        request_resource: r.request_resource,
        request_sub_resource: r.request_sub_resource,
        name: r.name,
        namespace: r.namespace,
        operation: r.operation,
        user_info: r.user_info,
        object: r.object.map(|o| o.0),
        old_object: r.old_object.map(|o| o.0),
        dry_run: r.dry_run,
        options: r.options,
    }
}

/// A well-formed v1 review with a uid, in one pass; `None` for anything else.
fn decode_fast(body: &[u8]) -> Option<ReviewRequest> {
    let Review {
        api_version,
        kind,
        request,
    } = if partial::may_name_entries(body) {
        serde_json::from_slice::<Review<partial::ReviewObject>>(body).ok()?
    } else {
        let lean = serde_json::from_slice::<Review<partial::LeanReviewObject>>(body).ok()?;
        Review {
            api_version: lean.api_version,
            kind: lean.kind,
            request: lean.request.map(from_lean),
        }
    };
    let mut request = request?;
    if api_version != META_API_VERSION_V1 || kind != META_KIND || request.uid.is_empty() {
        return None;
    }
    request.types = v1_types();
    Some(request)
}

fn v1_types() -> TypeMeta {
    TypeMeta {
        api_version: META_API_VERSION_V1.to_owned(),
        kind: META_KIND.to_owned(),
    }
}

/// Decodes a body. A review whose request does not decode is still answered, with its uid.
pub fn decode(body: &[u8]) -> Result<Decoded, NotAReview> {
    // One pass for a well-formed review; the slower path below explains what is wrong.
    if let Some(request) = decode_fast(body) {
        return Ok(Decoded::Request(Box::new(request)));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| NotAReview::NotJson(e.to_string()))?;
    if envelope.api_version != META_API_VERSION_V1 || envelope.kind != META_KIND {
        return Err(NotAReview::WrongType {
            api_version: envelope.api_version,
            kind: envelope.kind,
        });
    }
    let raw = envelope.request.ok_or(NotAReview::NoRequest)?;
    if raw.get() == "null" {
        return Err(NotAReview::NoRequest);
    }
    match serde_json::from_str::<ReviewRequest>(raw.get()) {
        Ok(mut request) => {
            if request.uid.is_empty() {
                return Err(NotAReview::NoUid("request.uid is empty".into()));
            }
            request.types = v1_types();
            Ok(Decoded::Request(Box::new(request)))
        }
        Err(e) => match serde_json::from_str::<UidOnly>(raw.get()) {
            Ok(UidOnly { uid }) if !uid.is_empty() => Ok(Decoded::Malformed {
                uid,
                message: format!("prodguard cannot read this admission request: {e}"),
            }),
            _ => Err(NotAReview::NoUid(e.to_string())),
        },
    }
}

/// What the load benchmark's no-op server does with a review: read the uid, answer allowed.
/// The floor prodguard's own work is measured against (`loadbench` serves it, `benches/micro.rs`
/// times it).
pub fn noop_answer(body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Uid {
        uid: String,
    }
    #[derive(Deserialize)]
    struct UidReview {
        request: Uid,
    }
    let review: UidReview = serde_json::from_slice(body)?;
    Ok(
        serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review.request.uid, "allowed": true}})
        .to_string()
        .into_bytes(),
    )
}

/// The response for a decoded request.
pub fn respond<T: Resource>(request: &AdmissionRequest<T>, verdict: &Verdict) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    match verdict {
        Verdict::Decided(decision) => apply_decision(response, decision),
        Verdict::Malformed(message) => deny(response, message, 400, "BadRequest"),
    }
}

/// The response for a review whose request did not decode.
pub fn respond_malformed(uid: &str, message: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid.to_owned();
    response.result.code = 400;
    response
}

fn deny(
    mut response: AdmissionResponse,
    message: &str,
    code: u16,
    reason: &str,
) -> AdmissionResponse {
    response = response.deny(message);
    response.result.code = code;
    response.result.reason = reason.to_owned();
    response
}

fn apply_decision(mut response: AdmissionResponse, decision: &Decision) -> AdmissionResponse {
    if !decision.warnings.is_empty() {
        response.warnings = Some(decision.warnings.clone());
    }
    response.audit_annotations = decision
        .audit_annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !decision.allowed {
        return deny(response, &decision.deny_message(), 403, "Forbidden");
    }
    if decision.patch.is_empty() {
        return response;
    }
    match response
        .clone()
        .with_patch(json_patch::Patch(decision.patch.clone()))
    {
        Ok(patched) => patched,
        // Serialising a patch of JSON values cannot fail; if it ever did, deny rather than
        // admit an object the policies wanted changed.
        Err(e) => deny(
            response,
            &format!("prodguard could not encode its patch: {e}"),
            500,
            "InternalError",
        ),
    }
}

/// The review as the API server reads it. kube-rs serialises `response.patch` (a Go
/// `[]byte`) as an array of numbers (kube-rs/kube#1781); the API documents it as base64, so
/// the wire form is written here from kube's response.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

/// Encodes a response as the review body.
pub fn encode(response: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    let patch = response
        .patch
        .as_ref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let review = WireReview {
        api_version: META_API_VERSION_V1,
        kind: META_KIND,
        response: WireResponse {
            uid: &response.uid,
            allowed: response.allowed,
            status: &response.result,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &response.audit_annotations,
            warnings: response.warnings.as_ref(),
        },
    };
    serde_json::to_vec(&review)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(request: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})).unwrap()
    }

    #[test]
    fn env_is_read_only_when_the_body_can_name_a_variable_a_policy_reads() {
        let with_env = |env: serde_json::Value| {
            let mut request = pod_request();
            request["object"]["spec"]["containers"] =
                json!([{"name": "c", "image": "opensearchproject/opensearch", "env": env}]);
            request
        };
        let env_of = |body: Vec<u8>| {
            let Ok(Decoded::Request(request)) = decode(&body) else {
                panic!("decodes")
            };
            request.object.unwrap().0.data["spec"]["containers"][0]
                .get("env")
                .cloned()
        };
        let single = json!([{"name": "A", "value": "1"}, {"name": "discovery.type", "value": "single-node"}]);
        assert_eq!(
            env_of(review(with_env(single))),
            Some(json!([{"name": "discovery.type", "value": "single-node"}]))
        );
        assert_eq!(
            env_of(review(with_env(json!([{"name": "A", "value": "1"}])))),
            None
        );
        // A \u escape could spell the name: the variables are read.
        let escaped = String::from_utf8(review(with_env(json!([{"name": "A", "value": "1"}]))))
            .unwrap()
            .replace("\"A\"", "\"discovery\\u002etype\"");
        assert_eq!(
            env_of(escaped.into_bytes()),
            Some(json!([{"name": "discovery.type", "value": "1"}]))
        );
    }

    #[test]
    fn the_noop_answer_allows_the_reviews_uid() {
        let answer: serde_json::Value =
            serde_json::from_slice(&noop_answer(&review(pod_request())).unwrap()).unwrap();
        assert_eq!(answer["response"], json!({"uid": "u-1", "allowed": true}));
        assert!(noop_answer(b"{}").is_err());
    }

    fn pod_request() -> serde_json::Value {
        json!({
            "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default", "operation": "CREATE", "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}},
            "oldObject": null
        })
    }

    #[test]
    fn decodes_a_review() {
        let Decoded::Request(req) = decode(&review(pod_request())).unwrap() else {
            panic!()
        };
        assert_eq!(req.uid, "u-1");
        assert_eq!(req.types.api_version, "admission.k8s.io/v1");
    }

    #[test]
    fn rejects_what_is_not_a_review() {
        assert!(matches!(decode(b"not json"), Err(NotAReview::NotJson(_))));
        assert!(matches!(decode(b"{}"), Err(NotAReview::WrongType { .. })));
        let v1beta1 = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": pod_request()})).unwrap();
        let err = decode(&v1beta1).unwrap_err();
        assert!(
            err.to_string()
                .contains("got apiVersion \"admission.k8s.io/v1beta1\""),
            "{err}"
        );
        let no_request = serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
        )
        .unwrap();
        assert_eq!(decode(&no_request).unwrap_err(), NotAReview::NoRequest);
        let mut no_uid = pod_request();
        no_uid.as_object_mut().unwrap().remove("uid");
        assert!(matches!(decode(&review(no_uid)), Err(NotAReview::NoUid(_))));
        let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            decode(nested.as_bytes()),
            Err(NotAReview::NotJson(_))
        ));
    }

    #[test]
    fn the_patch_is_base64_on_the_wire() {
        let Decoded::Request(req) = decode(&review(pod_request())).unwrap() else {
            panic!()
        };
        let decision = crate::engine::Decision {
            allowed: true,
            patch: vec![json_patch::PatchOperation::Add(json_patch::AddOperation {
                path: json_patch::jsonptr::PointerBuf::from_tokens(["metadata", "labels"]),
                value: json!({}),
            })],
            ..Default::default()
        };
        let body = encode(respond(&req, &Verdict::Decided(decision))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            json!([{"op": "add", "path": "/metadata/labels", "value": {}}])
        );
        assert!(v["response"].get("warnings").is_none());
    }

    #[test]
    fn a_malformed_request_with_a_uid_is_answered() {
        let mut bad = pod_request();
        bad["object"]["metadata"] = json!("not an object");
        let Decoded::Malformed { uid, message } = decode(&review(bad)).unwrap() else {
            panic!()
        };
        assert_eq!(uid, "u-1");
        let body = encode(respond_malformed(&uid, &message)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    }
}
