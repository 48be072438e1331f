//! Decodes an AdmissionReview into a request, and encodes a verdict as the review the API
//! server expects. The request is decoded into [`ReviewRequest`], which keeps only what
//! policies and answers read, its strings borrowed from the body; the objects in it are
//! decoded into the typed view ([`crate::view`]) in the same pass, by the request's kind. The
//! answer is written once, straight from the verdict.

use base64::Engine as _;
use std::borrow::Cow;
use std::fmt;

use kube::core::admission::{Operation, META_API_VERSION_V1, META_KIND};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::engine::Verdict;
use crate::unit::Request;
use crate::view::{Object, ObjectSeed, ShapeError, Text};

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

/// What prodguard reads of an admission request (`admission.k8s.io/v1`), strings borrowed
/// from the body. The fields kube-rs' `AdmissionRequest` requires are required here too;
/// `requestKind`, `requestResource`, `options` and the user's `uid` and `extra` are skipped,
/// since no policy reads them.
#[derive(Debug)]
pub struct ReviewRequest<'a> {
    pub uid: Cow<'a, str>,
    pub kind: Kind<'a>,
    pub resource: ResourceName<'a>,
    pub sub_resource: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    pub namespace: Option<Cow<'a, str>>,
    pub operation: Operation,
    pub user_info: UserInfo<'a>,
    pub object: Option<Object<'a>>,
    pub old_object: Option<Object<'a>>,
    pub dry_run: bool,
    /// Why an object does not have its kind's shape: the request is answered, denied, with
    /// this (unless prodguard stays out of its namespace).
    pub shape_error: Option<ShapeError>,
}

const NO_GROUPS: &[Cow<str>] = &[];

impl ReviewRequest<'_> {
    /// The request as policies see it, borrowed from this one.
    pub fn as_request(&self) -> Request<'_> {
        let request = self;
        Request {
            uid: &request.uid,
            operation: request.operation.clone(),
            group: &request.kind.group,
            version: &request.kind.version,
            kind: &request.kind.kind,
            resource: &request.resource.resource,
            resource_group: &request.resource.group,
            resource_version: &request.resource.version,
            sub_resource: request.sub_resource.as_deref().filter(|s| !s.is_empty()),
            namespace: request.namespace.as_deref().unwrap_or(""),
            name: &request.name,
            username: request.user_info.username.as_deref().unwrap_or(""),
            groups: request.user_info.groups.as_deref().unwrap_or(NO_GROUPS),
            object: request.object.as_ref(),
            old_object: request.old_object.as_ref(),
            dry_run: request.dry_run,
            shape_error: request.shape_error.as_ref(),
        }
    }
}

/// The kind of the object: `{group, version, kind}`.
#[derive(Debug, Deserialize)]
pub struct Kind<'a> {
    #[serde(borrow)]
    pub group: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
}

/// The resource requested: `{group, version, resource}`.
#[derive(Debug, Deserialize)]
pub struct ResourceName<'a> {
    #[serde(borrow)]
    pub group: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub resource: Cow<'a, str>,
}

/// Who made the request.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    #[serde(borrow, default)]
    pub username: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_strings")]
    pub groups: Option<Vec<Cow<'a, str>>>,
}

/// A list of strings, each borrowed from the body when it needs no unescaping.
fn borrowed_strings<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Cow<'a, str>>>, D::Error> {
    let strings = Option::<Vec<Text<'de>>>::deserialize(deserializer)?;
    Ok(strings.map(|s| s.into_iter().map(|b| b.0).collect()))
}

/// What a body decodes into.
#[derive(Debug)]
pub enum Decoded<'a> {
    Request(Box<ReviewRequest<'a>>),
    /// A review whose request does not decode: answered (denied) with its uid.
    Malformed {
        uid: String,
        message: String,
    },
}

/// How the request's objects are decoded: into the view in the same pass (`Typed`), or kept
/// as JSON text to be explained (`Raw`, the slow path of a request that did not decode).
trait Objects<'de>: Sized {
    type Object;
    fn decode<A: MapAccess<'de>>(
        map: &mut A,
        kind: Option<&Kind<'de>>,
    ) -> Result<Pending<'de, Self::Object>, A::Error>;
}

/// An object field: decoded, or (before the request's kind was seen) kept as text.
enum Pending<'de, O> {
    Absent,
    Done(Option<O>),
    Later(Option<&'de RawValue>),
}

struct Typed;
struct Raw;

impl<'de> Objects<'de> for Typed {
    type Object = Object<'de>;
    fn decode<A: MapAccess<'de>>(
        map: &mut A,
        kind: Option<&Kind<'de>>,
    ) -> Result<Pending<'de, Object<'de>>, A::Error> {
        Ok(match kind {
            Some(kind) => Pending::Done(map.next_value_seed(ObjectSeed { kind: &kind.kind })?),
            None => Pending::Later(map.next_value()?),
        })
    }
}

impl<'de> Objects<'de> for Raw {
    type Object = &'de RawValue;
    fn decode<A: MapAccess<'de>>(
        map: &mut A,
        _: Option<&Kind<'de>>,
    ) -> Result<Pending<'de, &'de RawValue>, A::Error> {
        Ok(Pending::Later(map.next_value()?))
    }
}

/// A request with its objects as `O`.
struct RequestOf<'a, O> {
    uid: Cow<'a, str>,
    kind: Kind<'a>,
    resource: ResourceName<'a>,
    sub_resource: Option<Cow<'a, str>>,
    name: Cow<'a, str>,
    namespace: Option<Cow<'a, str>>,
    operation: Operation,
    user_info: UserInfo<'a>,
    object: Pending<'a, O>,
    old_object: Pending<'a, O>,
    dry_run: bool,
}

struct RequestVisitor<M>(std::marker::PhantomData<M>);

impl<'de, M: Objects<'de>> Visitor<'de> for RequestVisitor<M> {
    type Value = RequestOf<'de, M::Object>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an admission request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let (mut uid, mut kind, mut resource, mut operation, mut user_info) =
            (None, None, None, None, None);
        let (mut sub_resource, mut name, mut namespace, mut dry_run) = (None, None, None, None);
        let (mut object, mut old_object) = (Pending::Absent, Pending::Absent);
        while let Some(key) = map.next_key::<Text>()? {
            match key.0.as_ref() {
                "uid" => uid = Some(map.next_value::<Text>()?.0),
                "kind" => kind = Some(map.next_value::<Kind>()?),
                "resource" => resource = Some(map.next_value()?),
                "subResource" => sub_resource = map.next_value::<Option<Text>>()?,
                "name" => name = map.next_value::<Option<Text>>()?,
                "namespace" => namespace = map.next_value::<Option<Text>>()?,
                "operation" => operation = Some(map.next_value()?),
                "userInfo" => user_info = Some(map.next_value()?),
                "object" => object = M::decode(&mut map, kind.as_ref())?,
                "oldObject" => old_object = M::decode(&mut map, kind.as_ref())?,
                "dryRun" => dry_run = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RequestOf {
            uid: uid.ok_or_else(|| A::Error::missing_field("uid"))?,
            kind: kind.ok_or_else(|| A::Error::missing_field("kind"))?,
            resource: resource.ok_or_else(|| A::Error::missing_field("resource"))?,
            sub_resource: sub_resource.map(|s| s.0),
            name: name.map(|n| n.0).unwrap_or_default(),
            namespace: namespace.map(|n| n.0),
            operation: operation.ok_or_else(|| A::Error::missing_field("operation"))?,
            user_info: user_info.ok_or_else(|| A::Error::missing_field("userInfo"))?,
            object,
            old_object,
            dry_run: dry_run.unwrap_or(false),
        })
    }
}

struct RequestSeed<M>(std::marker::PhantomData<M>);

impl<'de, M: Objects<'de>> DeserializeSeed<'de> for RequestSeed<M> {
    type Value = RequestOf<'de, M::Object>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(RequestVisitor::<M>(std::marker::PhantomData))
    }
}

impl<'de, O> RequestOf<'de, O> {
    /// The request, each of its objects decoded by `decode` (given the request's kind); the
    /// first shape error, the object's before the old object's, is kept as the request's.
    fn into_request(
        self,
        mut decode: impl FnMut(&str, Pending<'de, O>) -> Result<Option<Object<'de>>, ShapeError>,
    ) -> ReviewRequest<'de> {
        let mut shape_error = None;
        let mut objects = [self.object, self.old_object].map(|pending| {
            decode(&self.kind.kind, pending).unwrap_or_else(|e| {
                shape_error.get_or_insert(e);
                None
            })
        });
        ReviewRequest {
            object: objects[0].take(),
            old_object: objects[1].take(),
            uid: self.uid,
            kind: self.kind,
            resource: self.resource,
            sub_resource: self.sub_resource,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            user_info: self.user_info,
            dry_run: self.dry_run,
            shape_error,
        }
    }
}

/// An object of the fast path: decoded in the pass, or (before the kind) decoded now.
fn decode_typed<'de>(
    kind: &str,
    pending: Pending<'de, Object<'de>>,
) -> Result<Option<Object<'de>>, ShapeError> {
    match pending {
        Pending::Absent | Pending::Later(None) => Ok(None),
        Pending::Done(object) => Ok(object),
        Pending::Later(Some(raw)) => Object::decode(kind, raw.get()),
    }
}

/// An object of the slow path, kept as text: decoded on its own.
fn decode_raw<'de>(
    kind: &str,
    pending: Pending<'de, &'de RawValue>,
) -> Result<Option<Object<'de>>, ShapeError> {
    match pending {
        Pending::Later(Some(raw)) | Pending::Done(Some(raw)) => Object::decode(kind, raw.get()),
        _ => Ok(None),
    }
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

/// The review, its request decoded by `M`.
struct Review<'a, O> {
    api_version: Cow<'a, str>,
    kind: Cow<'a, str>,
    request: Option<RequestOf<'a, O>>,
}

impl<'de> Deserialize<'de> for Review<'de, Object<'de>> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReviewVisitor;
        impl<'de> Visitor<'de> for ReviewVisitor {
            type Value = Review<'de, Object<'de>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an AdmissionReview")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut review = Review {
                    api_version: Cow::Borrowed(""),
                    kind: Cow::Borrowed(""),
                    request: None,
                };
                while let Some(key) = map.next_key::<Text>()? {
                    match key.0.as_ref() {
                        "apiVersion" => review.api_version = map.next_value::<Text>()?.0,
                        "kind" => review.kind = map.next_value::<Text>()?.0,
                        "request" => {
                            review.request = map.next_value_seed(OptionalRequest)?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(review)
            }
        }
        deserializer.deserialize_map(ReviewVisitor)
    }
}

struct OptionalRequest;

impl<'de> DeserializeSeed<'de> for OptionalRequest {
    type Value = Option<RequestOf<'de, Object<'de>>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<RequestOf<'de, Object<'de>>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an admission request")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                RequestSeed::<Typed>(std::marker::PhantomData)
                    .deserialize(d)
                    .map(Some)
            }
        }
        deserializer.deserialize_option(V)
    }
}

/// A well-formed v1 review with a uid, in one pass; `None` for anything else.
fn decode_fast(body: &[u8]) -> Option<ReviewRequest<'_>> {
    // As text: the view is decoded from text everywhere (here, `check`, the audit), so its
    // decoding code is in the binary once for text rather than again for bytes; and a string
    // of text needs no UTF-8 check of its own.
    let text = std::str::from_utf8(body).ok()?;
    let review = serde_json::from_str::<Review<Object>>(text).ok()?;
    let request = review.request?;
    if review.api_version != META_API_VERSION_V1
        || review.kind != META_KIND
        || request.uid.is_empty()
    {
        return None;
    }
    let request = request.into_request(decode_typed);
    // A shape error is explained by the slow path.
    request.shape_error.is_none().then_some(request)
}

/// Decodes a body. A review whose request does not decode is still answered, with its uid.
pub fn decode(body: &[u8]) -> Result<Decoded<'_>, NotAReview> {
    crate::view::skipping_env_unless_named(body, || decode_review(body))
}

fn decode_review(body: &[u8]) -> Result<Decoded<'_>, NotAReview> {
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
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match RequestSeed::<Raw>(std::marker::PhantomData).deserialize(&mut de) {
        Ok(request) => {
            if request.uid.is_empty() {
                return Err(NotAReview::NoUid("request.uid is empty".into()));
            }
            let request = request.into_request(decode_raw);
            if let Some(e) = request.shape_error.as_ref().filter(|e| e.is_metadata()) {
                return Ok(Decoded::Malformed {
                    uid: request.uid.into_owned(),
                    message: format!("prodguard cannot read this admission request: {e}"),
                });
            }
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

/// The review answer as the API server reads it, written straight from the verdict: one
/// struct, borrowed from the decision, encoded once. (kube-rs' `AdmissionResponse` would
/// serialise the patch, a Go `[]byte`, as an array of numbers, kube-rs/kube#1781; the API
/// documents it as base64.)
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: AnswerResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: AnswerStatus<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
}

/// The `metav1.Status` of an answer: empty when allowed.
#[derive(Serialize, Default)]
struct AnswerStatus<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl<'a> AnswerStatus<'a> {
    fn refused(code: u16, message: Cow<'a, str>, reason: &'static str) -> AnswerStatus<'a> {
        AnswerStatus {
            status: None,
            code: Some(code),
            message: Some(message),
            reason: Some(reason),
        }
    }
}

fn write(response: AnswerResponse<'_>) -> Result<Vec<u8>, serde_json::Error> {
    // Sized once from what the answer holds (its JSON escapes may still grow it), rather than
    // grown from 128 bytes by doubling and copying.
    let texts = |items: Option<&[String]>| items.map_or(0, |i| i.iter().map(|t| t.len() + 8).sum());
    let capacity = 256
        + response.uid.len()
        + response.patch.as_ref().map_or(0, String::len)
        + response.status.message.as_ref().map_or(0, |m| m.len())
        + texts(response.warnings)
        + response
            .audit_annotations
            .map_or(0, |a| a.iter().map(|(k, v)| k.len() + v.len() + 8).sum());
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(
        &mut out,
        &Answer {
            api_version: META_API_VERSION_V1,
            kind: META_KIND,
            response,
        },
    )?;
    Ok(out)
}

/// The answer to the review `uid` for a verdict: allowed (with the patch, base64, and its
/// type), or denied with the policies' messages (403) or the object's shape error (400);
/// warnings and audit annotations either way.
pub fn encode_verdict(uid: &str, verdict: &Verdict) -> Result<Vec<u8>, serde_json::Error> {
    let decision = match verdict {
        Verdict::Decided(decision) => decision,
        Verdict::Malformed(message) => {
            return write(AnswerResponse {
                uid,
                allowed: false,
                status: AnswerStatus::refused(400, Cow::Borrowed(message), "BadRequest"),
                patch: None,
                patch_type: None,
                audit_annotations: None,
                warnings: None,
            })
        }
    };
    let mut response = AnswerResponse {
        uid,
        allowed: decision.allowed,
        status: AnswerStatus::default(),
        patch: None,
        patch_type: None,
        audit_annotations: Some(&decision.audit_annotations).filter(|a| !a.is_empty()),
        warnings: Some(decision.warnings.as_slice()).filter(|w| !w.is_empty()),
    };
    if !decision.allowed {
        response.status = AnswerStatus::refused(403, decision.deny_message().into(), "Forbidden");
    } else if !decision.patch.is_empty() {
        let mut patch = Vec::with_capacity(128 * decision.patch.len());
        match serde_json::to_writer(&mut patch, &decision.patch) {
            Ok(()) => {
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
                response.patch_type = Some("JSONPatch");
            }
            // Serialising a patch of JSON values cannot fail; if it ever did, deny rather
            // than admit an object the policies wanted changed.
            Err(e) => {
                response.allowed = false;
                response.status = AnswerStatus::refused(
                    500,
                    format!("prodguard could not encode its patch: {e}").into(),
                    "InternalError",
                );
            }
        }
    }
    write(response)
}

/// The answer to a review whose request did not decode (it has a uid, the rest is unreadable).
pub fn encode_malformed(uid: &str, message: &str) -> Result<Vec<u8>, serde_json::Error> {
    write(AnswerResponse {
        uid,
        allowed: false,
        status: AnswerStatus {
            status: Some("Failure"),
            ..AnswerStatus::refused(400, Cow::Borrowed(message), "InvalidRequest")
        },
        patch: None,
        patch_type: None,
        audit_annotations: None,
        warnings: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Decision;
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
            let object = request.object.expect("an object");
            let containers = crate::policies::pod_spec::containers(
                &object,
                &[crate::policies::pod_spec::ContainerList::Containers],
            );
            containers[0]
                .env
                .filter(|env| !env.0.is_empty())
                .map(|env| {
                    let vars: Vec<_> = env
                        .0
                        .iter()
                        .map(|v| json!({"name": v.name, "value": v.value}))
                        .collect();
                    json!(vars)
                })
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
        let body = review(pod_request());
        let Decoded::Request(req) = decode(&body).unwrap() else {
            panic!()
        };
        assert_eq!(req.uid, "u-1");
        assert_eq!(req.kind.kind, "Pod");
        assert_eq!(req.resource.resource, "pods");
        assert_eq!(req.namespace.as_deref(), Some("default"));
        assert_eq!(req.user_info.username.as_deref(), Some("alice"));
        assert_eq!(req.operation, Operation::Create);
        assert!(!req.dry_run);
        // Strings without escapes are borrowed from the body.
        assert!(matches!(req.uid, Cow::Borrowed(_)));
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
        let body = review(pod_request());
        let Decoded::Request(req) = decode(&body).unwrap() else {
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
        let answer = encode_verdict(&req.uid, &Verdict::Decided(decision)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
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
    fn objects_are_read_by_the_requests_kind_wherever_it_comes() {
        // The API server writes the kind first; another client may not.
        let body = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-2", "object": {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 1}},
            "oldObject": null, "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "operation": "CREATE", "userInfo": {"username": "alice"}}}"#;
        let Decoded::Request(req) = decode(body).unwrap() else {
            panic!()
        };
        let object = req.object.as_ref().expect("an object");
        assert_eq!(object.replicas(), Some(1));
        assert_eq!(object.name(), Some("web"));
        assert!(req.old_object.is_none() && req.shape_error.is_none());
        // A shape error in the object is kept for the engine, with the request.
        let mut bad = pod_request();
        bad["object"]["spec"]["containers"] = json!({});
        let body = review(bad);
        let Decoded::Request(req) = decode(&body).unwrap() else {
            panic!()
        };
        assert_eq!(
            req.shape_error.unwrap().to_string(),
            "Pod field spec.containers must be a list"
        );
    }

    #[test]
    fn a_malformed_request_with_a_uid_is_answered() {
        let mut bad = pod_request();
        bad["object"]["metadata"] = json!("not an object");
        let Decoded::Malformed { uid, message } = decode(&review(bad)).unwrap() else {
            panic!()
        };
        assert_eq!(uid, "u-1");
        let body = encode_malformed(&uid, &message).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    }

    #[test]
    fn answers_byte_for_byte() {
        let mut d = Decision {
            allowed: true,
            ..Decision::default()
        };
        let text = |uid: &str, verdict: &Verdict| {
            String::from_utf8(encode_verdict(uid, verdict).unwrap()).unwrap()
        };
        let head = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":"#;
        assert_eq!(
            text("u1", &Verdict::Decided(d.clone())),
            format!(r#"{head}{{"uid":"u1","allowed":true,"status":{{}}}}}}"#)
        );
        d.warnings = vec!["p: w".into()];
        d.audit_annotations
            .insert("prodguard.io/p".into(), "w".into());
        d.patch = serde_json::from_value(json!([{"op": "add", "path": "/a", "value": 1}])).unwrap();
        assert_eq!(
            text("u2", &Verdict::Decided(d.clone())),
            format!(
                r#"{head}{{"uid":"u2","allowed":true,"status":{{}},"patch":"W3sib3AiOiJhZGQiLCJwYXRoIjoiL2EiLCJ2YWx1ZSI6MX1d","patchType":"JSONPatch","auditAnnotations":{{"prodguard.io/p":"w"}},"warnings":["p: w"]}}}}"#
            )
        );
        d.allowed = false;
        d.deny_messages = vec!["[p] no".into(), "[q] never".into()];
        assert_eq!(
            text("u3", &Verdict::Decided(d)),
            format!(
                r#"{head}{{"uid":"u3","allowed":false,"status":{{"code":403,"message":"[p] no; [q] never","reason":"Forbidden"}},"auditAnnotations":{{"prodguard.io/p":"w"}},"warnings":["p: w"]}}}}"#
            )
        );
        assert_eq!(
            String::from_utf8(encode_malformed("u4", "bad shape").unwrap()).unwrap(),
            format!(
                r#"{head}{{"uid":"u4","allowed":false,"status":{{"status":"Failure","code":400,"message":"bad shape","reason":"InvalidRequest"}}}}}}"#
            )
        );
        assert_eq!(
            text("u5", &Verdict::Malformed("bad object".into())),
            format!(
                r#"{head}{{"uid":"u5","allowed":false,"status":{{"code":400,"message":"bad object","reason":"BadRequest"}}}}}}"#
            )
        );
    }
}
