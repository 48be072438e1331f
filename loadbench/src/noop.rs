//! The no-op webhook that prodguard's own work is measured against: read the review's uid,
//! answer allowed. Not part of prodguard.

use serde::Deserialize;

/// The answer to a review: its uid, allowed.
pub fn noop_answer(body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    noop_answer_patching(body, None)
}

/// The answer to a review: its uid, allowed, and `patch` (a JSON Patch, already base64) when
/// given: what a webhook that patches costs the API server, with none of the webhook's work.
pub fn noop_answer_patching(
    body: &[u8],
    patch: Option<&str>,
) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Uid {
        uid: String,
    }
    #[derive(Deserialize)]
    struct UidReview {
        request: Uid,
    }
    let review: UidReview = serde_json::from_slice(body)?;
    let mut response = serde_json::json!({"uid": review.request.uid, "allowed": true});
    if let Some(patch) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = patch.into();
    }
    Ok(
        serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": response})
        .to_string()
        .into_bytes(),
    )
}

/// `--patch`'s text, checked to be a JSON array (of operations), as the answer carries it:
/// base64.
pub fn encode_patch(patch: &str) -> Result<String, String> {
    use base64::Engine as _;
    serde_json::from_str::<Vec<serde_json::Value>>(patch)
        .map_err(|e| format!("--patch: a JSON Patch is an array of operations: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(patch))
}

#[cfg(test)]
mod tests {
    use super::{encode_patch, noop_answer, noop_answer_patching};

    #[test]
    fn the_noop_answer_allows_the_reviews_uid() {
        let review = include_bytes!("../../tests/fixtures/bench/pod-create.json");
        let answer: serde_json::Value =
            serde_json::from_slice(&noop_answer(review).unwrap()).unwrap();
        let uid =
            serde_json::from_slice::<serde_json::Value>(review).unwrap()["request"]["uid"].clone();
        assert_eq!(answer["response"]["uid"], uid);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(noop_answer(b"{}").is_err());
    }

    #[test]
    fn the_patching_noop_answer_carries_the_patch() {
        let review = include_bytes!("../../tests/fixtures/bench/pod-create.json");
        let answer: serde_json::Value =
            serde_json::from_slice(&noop_answer_patching(review, Some("W10=")).unwrap()).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        assert_eq!(answer["response"]["patch"], "W10=");
        let plain: serde_json::Value =
            serde_json::from_slice(&noop_answer(review).unwrap()).unwrap();
        assert!(plain["response"].get("patch").is_none());
    }

    #[test]
    fn a_patch_that_is_not_an_array_is_refused() {
        assert_eq!(encode_patch("[]").unwrap(), "W10=");
        let refused = encode_patch(r#"{"op": "add"}"#).unwrap_err();
        assert!(refused.contains("array of operations"), "{refused}");
        assert!(encode_patch("[").is_err());
    }
}
