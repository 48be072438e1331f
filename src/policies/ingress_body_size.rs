//! `ingress-body-size` (mutating and validating): the production guide sets 50 MiB as the
//! general request-body limit of nginx. An Ingress (`networking.k8s.io`) that does not name
//! `nginx.ingress.kubernetes.io/proxy-body-size` gets the configured default; one whose value
//! is not an nginx size, is `0` (no limit) or is above the configured maximum is denied.
//!
//! Both halves share the policy id and mode. On UPDATE the validating half judges only a
//! changed value.

use crate::config::{Config, PolicyMode};
use super::PolicyModule;
use super::resources::{self, Match};
use serde::Deserialize;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{json, Value};

use crate::config::parse_nginx_size;
use crate::engine::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::Object;

pub const ID: &str = "ingress-body-size";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Set on an Ingress that names no `proxy-body-size` (an nginx size: `50m`).
    pub default: String,
    /// The largest `proxy-body-size` allowed.
    pub maximum: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            default: default_body_size(),
            maximum: default_body_size(),
        }
    }
}

fn default_body_size() -> String {
    "50m".to_owned()
}

/// `ingress-body-size`: its settings, what it matches, its two policies (the default set on
/// mutate, the maximum checked on validate).
pub struct Definition;

impl PolicyModule for Definition {
    const ID: &'static str = ID;
    type Settings = Settings;


    fn validate(settings: &Settings) -> Result<(), (String, String)> {
        for (key, value) in [
            ("default", &settings.default),
            ("maximum", &settings.maximum),
        ] {
            let size = parse_nginx_size(value).map_err(|problem| (key.to_owned(), problem))?;
            if size == 0 {
                return Err((
                    key.to_owned(),
                    "0 turns nginx's limit off; give a size such as `50m`".into(),
                ));
            }
        }
        if parse_nginx_size(&settings.default) > parse_nginx_size(&settings.maximum) {
            return Err((
                "default".into(),
                format!(
                    "{} is above the maximum {}, so every Ingress given the default would be denied",
                    settings.default, settings.maximum
                ),
            ));
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        [Webhook::Mutate, Webhook::Validate]
            .map(|webhook| Match::new(webhook, &["CREATE", "UPDATE"], &[resources::INGRESSES]))
            .to_vec()
    }

    fn build(settings: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![
            Box::new(IngressBodySizeDefault::new(settings)),
            Box::new(IngressBodySizeLimit::new(settings)),
        ]
    }
}
pub const ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

fn applies(request: &Request<'_>) -> bool {
    request.kind == "Ingress"
        && matches!(request.group, "networking.k8s.io" | "extensions")
        && matches!(request.operation, Operation::Create | Operation::Update)
        && request.sub_resource.is_none()
}

fn annotation<'a>(object: &'a Object<'a>) -> Option<&'a str> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
}

/// The mutating half: sets the default on an Ingress that names no body size.
pub struct IngressBodySizeDefault {
    default: String,
}

impl IngressBodySizeDefault {
    pub fn new(config: &Settings) -> IngressBodySizeDefault {
        IngressBodySizeDefault {
            default: config.default.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Policy for IngressBodySizeDefault {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Mutate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        if !applies(request) {
            return Ok(Vec::new());
        }
        let object = request.object.ok_or(EvalError::MissingObject)?;
        if annotation(object).is_some() {
            return Ok(Vec::new());
        }
        let operation = match &object.metadata.annotations {
            Some(_) => AddOperation {
                path: PointerBuf::from_tokens(["metadata", "annotations", ANNOTATION]),
                value: Value::String(self.default.clone()),
            },
            None => AddOperation {
                path: PointerBuf::from_tokens(["metadata", "annotations"]),
                value: json!({ ANNOTATION: self.default }),
            },
        };
        Ok(vec![Finding::Mutation {
            message: format!(
                "set {ANNOTATION}: {} on {} (the general request-body limit)",
                self.default,
                request.describe()
            ),
            patch: vec![PatchOperation::Add(operation)],
        }])
    }
}

/// The validating half: the value must be an nginx size within the maximum.
pub struct IngressBodySizeLimit {
    maximum: String,
    maximum_bytes: u64,
}

impl IngressBodySizeLimit {
    pub fn new(config: &Settings) -> IngressBodySizeLimit {
        IngressBodySizeLimit {
            maximum: config.maximum.clone(),
            // Validated at load; an unusable maximum allows nothing but explicit sizes of 0.
            maximum_bytes: parse_nginx_size(&config.maximum).unwrap_or(0),
        }
    }

    /// Why `value` is refused, or `None`.
    fn problem(&self, value: &str) -> Option<String> {
        match parse_nginx_size(value.trim()) {
            Err(problem) => Some(problem),
            Ok(0) => Some(format!(
                "0 turns nginx's request-body limit off; the most allowed is {}",
                self.maximum
            )),
            Ok(bytes) if bytes > self.maximum_bytes => Some(format!(
                "{value} is above the most allowed, {}",
                self.maximum
            )),
            Ok(_) => None,
        }
    }
}

#[async_trait::async_trait]
impl Policy for IngressBodySizeLimit {
    fn id(&self) -> &'static str {
        ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Validate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        if !applies(request) {
            return Ok(Vec::new());
        }
        let object = request.object.ok_or(EvalError::MissingObject)?;
        let Some(value) = annotation(object) else {
            return Ok(Vec::new());
        };
        if request.operation == Operation::Update
            && request.old_object.and_then(annotation) == Some(value)
        {
            return Ok(Vec::new());
        }
        Ok(self
            .problem(value)
            .map(|problem| Finding::Violation {
                message: format!(
                    "{} sets {ANNOTATION}: {value:?}: {problem} (the production guide's general \
                     limit is 50 MiB; an admin raises policies.ingress-body-size.maximum when \
                     uploads need more)",
                    request.describe()
                ),
            })
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{object, patched, request, Context, Eval};

    fn config() -> Settings {
        Settings {
            maximum: "100m".into(),
            ..Settings::default()
        }
    }

    fn ingress_doc(annotations: Option<Value>) -> Value {
        let mut meta = json!({"name": "portal", "namespace": "openg2p"});
        if let Some(a) = annotations {
            meta["annotations"] = a;
        }
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": {}})
    }

    fn ingress(annotations: Option<Value>) -> Object<'static> {
        object(ingress_doc(annotations))
    }

    fn ingress_request<'a>(op: Operation, obj: &'a Object<'static>) -> Request<'a> {
        let mut req = request(op, "Ingress", "ingresses", Some(obj));
        req.group = "networking.k8s.io";
        req
    }

    fn mutated(doc: Value) -> Option<Value> {
        let obj = object(doc.clone());
        let req = ingress_request(Operation::Create, &obj);
        let findings = IngressBodySizeDefault::new(&config())
            .eval(&req, &Context::default())
            .unwrap();
        if findings.is_empty() {
            return None;
        }
        Some(patched(&doc, &findings))
    }

    #[test]
    fn the_default_is_added_with_or_without_annotations() {
        let doc = mutated(ingress_doc(None)).expect("patched");
        assert_eq!(doc["metadata"]["annotations"], json!({ANNOTATION: "50m"}));
        let doc = mutated(ingress_doc(Some(json!({"team": "a"})))).expect("patched");
        assert_eq!(
            doc["metadata"]["annotations"],
            json!({"team": "a", ANNOTATION: "50m"})
        );
        assert_eq!(mutated(ingress_doc(Some(json!({ANNOTATION: "8m"})))), None);
    }

    #[test]
    fn sizes_table() {
        let policy = IngressBodySizeLimit::new(&config());
        let cases = [
            ("50m", None),
            ("100M", None),
            ("1024", None),
            ("100k", None),
            ("101m", Some("101m is above the most allowed, 100m")),
            ("1g", Some("1g is above the most allowed, 100m")),
            ("0", Some("0 turns nginx's request-body limit off")),
            ("50 MiB", Some("\"50 MiB\" is not an nginx size")),
            ("m", Some("\"m\" is not an nginx size")),
            ("-5m", Some("\"-5m\" is not an nginx size")),
            ("", Some("\"\" is not an nginx size")),
            ("99999999999999999999g", Some("is not an nginx size")),
        ];
        for (value, expected) in cases {
            let obj = ingress(Some(json!({ANNOTATION: value})));
            let req = ingress_request(Operation::Create, &obj);
            let findings = policy.eval(&req, &Context::default()).unwrap();
            match (expected, findings.first()) {
                (None, None) => {}
                (Some(text), Some(Finding::Violation { message })) => {
                    assert!(message.contains(text), "{value}: {message}");
                    assert!(
                        message.starts_with("Ingress openg2p/portal sets"),
                        "{message}"
                    );
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unchanged_value_is_not_judged_on_update() {
        let policy = IngressBodySizeLimit::new(&config());
        let old = ingress(Some(json!({ANNOTATION: "0"})));
        let new = ingress(Some(json!({ANNOTATION: "0"})));
        let mut req = ingress_request(Operation::Update, &new);
        req.old_object = Some(&old);
        assert!(policy.eval(&req, &Context::default()).unwrap().is_empty());
        let older = ingress(Some(json!({ANNOTATION: "10m"})));
        req.old_object = Some(&older);
        assert_eq!(policy.eval(&req, &Context::default()).unwrap().len(), 1);
    }

    #[test]
    fn other_kinds_and_groups_are_ignored() {
        let obj = ingress(Some(json!({ANNOTATION: "0"})));
        let mut req = ingress_request(Operation::Create, &obj);
        req.group = "example.com";
        let policy = IngressBodySizeLimit::new(&config());
        assert!(policy.eval(&req, &Context::default()).unwrap().is_empty());
        assert!(IngressBodySizeDefault::new(&config())
            .eval(&req, &Context::default())
            .unwrap()
            .is_empty());
    }
}
