//! The no-op webhook that prodguard's own work is measured against: read the review's uid,
//! answer allowed. Not part of prodguard.

use serde::Deserialize;

/// The answer to a review: its uid, allowed.
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

#[cfg(test)]
mod tests {
    use super::noop_answer;

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
}
