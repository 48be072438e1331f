//! `ingress-body-size` (mutating and validating): the production guide sets 50 MiB as the
//! general request-body limit. Which setting holds it depends on the controller that serves an
//! Ingress, told by its class (`spec.ingressClassName`, or the legacy annotation
//! `kubernetes.io/ingress.class`, else `defaultClass`):
//!
//! - **ingress-nginx**, and **Traefik's Kubernetes Ingress NGINX provider** (which reads
//!   `nginx.ingress.kubernetes.io/proxy-body-size` since Traefik 3.7; both serve IngressClasses of
//!   controller `k8s.io/ingress-nginx`): the annotation. One that names none gets the configured
//!   default; a value that is not an nginx size, is `0` (no limit) or is above the maximum is
//!   denied.
//! - **Traefik** (its own Ingress provider, and its `IngressRoute`s, `traefik.io/v1alpha1`):
//!   Traefik reads no nginx annotation, and its body limit is the `buffering` middleware's
//!   `maxRequestBodyBytes`, whose default 0 means no limit. So an Ingress of a Traefik class must
//!   name, in `traefik.ingress.kubernetes.io/router.middlewares`, and every route of an
//!   IngressRoute in its `middlewares`, a `Middleware` whose limit is above 0 and at most the
//!   maximum (read through the lookups); a missing or unreadable one is a violation. A
//!   `Middleware` whose buffering limit is 0 or above the maximum is denied. Routes that only use
//!   entry points with an entry-point-wide limit (`traefikLimitedEntryPoints`) need none.
//! - **A class prodguard does not know**: an advisory (a warning in every mode), never a silent
//!   pass.
//!
//! Both halves share the policy id and mode. On UPDATE the validating half judges only a
//! changed nginx value or Middleware limit; a Traefik route is judged on every write, since what
//! it names may have changed.

use super::floor::{
    cel_string, cel_strings, describe_object, Action, Apply, Check, Floor, OBJECT_NAME,
};
use super::resources::{self, Match};
use super::Config;
use super::PolicyModule;
use crate::config::PolicyMode;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::parse_nginx_size;
use crate::unit::{EvalError, Finding, Lookups, Operation, Policy, Request, Webhook};
use crate::view::{Object, Spec};

pub const ID: &str = "ingress-body-size";

#[derive(Debug, Clone, PartialEq, Deserialize)]
/// Every key may be left out: `Default` gives it (serde reads the defaults from there).
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub mode: PolicyMode,
    /// Set on an nginx Ingress that names no `proxy-body-size` (an nginx size: `50m`).
    pub default: String,
    /// The largest body allowed (an nginx size), for both controllers.
    pub maximum: String,
    /// IngressClasses served by ingress-nginx or by Traefik's Kubernetes Ingress NGINX provider.
    pub nginx_classes: Vec<String>,
    /// IngressClasses served by Traefik's own Kubernetes Ingress provider.
    pub traefik_classes: Vec<String>,
    /// The class of an Ingress that names none: the cluster's default IngressClass.
    pub default_class: String,
    /// Traefik entry points that carry an entry-point-wide buffering middleware within the
    /// maximum (`*`: all of them); a route that uses only these needs no middleware of its own.
    pub traefik_limited_entry_points: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PolicyMode::Enforce,
            default: default_body_size(),
            maximum: default_body_size(),
            nginx_classes: vec!["nginx".to_owned()],
            traefik_classes: vec!["traefik".to_owned()],
            default_class: "nginx".to_owned(),
            traefik_limited_entry_points: Vec::new(),
        }
    }
}

fn default_body_size() -> String {
    "50m".to_owned()
}

/// `ingress-body-size`: its settings, what it matches, its two policies (the default set on
/// mutate, the limits checked on validate).
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
                    "0 turns the limit off; give a size such as `50m`".into(),
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
        for (key, list) in [
            ("nginxClasses", &settings.nginx_classes),
            ("traefikClasses", &settings.traefik_classes),
            (
                "traefikLimitedEntryPoints",
                &settings.traefik_limited_entry_points,
            ),
        ] {
            if list.iter().any(|c| c.trim().is_empty()) {
                return Err((key.to_owned(), "an entry is empty".into()));
            }
        }
        if let Some(both) = settings
            .nginx_classes
            .iter()
            .find(|c| settings.traefik_classes.contains(c))
        {
            return Err((
                "traefikClasses".into(),
                format!("{both:?} is in nginxClasses too; one controller serves a class"),
            ));
        }
        Ok(())
    }

    fn matches(_: &Settings) -> Vec<Match> {
        vec![
            Match::new(
                Webhook::Mutate,
                &["CREATE", "UPDATE"],
                &[resources::INGRESSES],
            ),
            Match::new(
                Webhook::Validate,
                &["CREATE", "UPDATE"],
                &[
                    resources::INGRESSES,
                    resources::INGRESS_ROUTES,
                    resources::MIDDLEWARES,
                ],
            ),
        ]
    }

    fn build(settings: &Settings, _: &Config) -> Vec<Box<dyn Policy>> {
        vec![
            Box::new(IngressBodySizeDefault::new(settings)),
            Box::new(IngressBodySizeLimit::new(settings)),
        ]
    }

    /// The nginx half: the annotation within the maximum (refused), and the default set on an
    /// Ingress that names none (an apply configuration). Traefik's Middlewares need a lookup;
    /// an unknown class is an advisory, which CEL does not give.
    fn floor(settings: &Settings, _: &Config) -> Vec<Floor> {
        if settings.nginx_classes.is_empty() {
            return Vec::new();
        }
        let annotations = "object.metadata.annotations";
        let key = cel_string(ANNOTATION);
        let class = format!(
            "has(object.spec.ingressClassName) ? object.spec.ingressClassName : \
             (has({annotations}) && {class_key} in {annotations} ? \
             {annotations}[{class_key}] : {default})",
            class_key = cel_string(CLASS_ANNOTATION),
            default = cel_string(&settings.default_class)
        );
        let nginx = (
            "an-nginx-ingress",
            format!("({class}) in {}", cel_strings(&settings.nginx_classes)),
        );
        let named = format!("has({annotations}) && {key} in {annotations}");
        let maximum = parse_nginx_size(&settings.maximum).unwrap_or(0);
        let limit = Floor {
            part: "",
            operations: &["CREATE", "UPDATE"],
            resources: vec![resources::INGRESSES],
            variables: vec![
                ("name", OBJECT_NAME.to_owned()),
                ("value", format!("{annotations}[{key}]")),
                ("size", "variables.value.trim()".to_owned()),
                // As `parse_nginx_size`: digits, then an optional unit.
                ("valid", "variables.size.matches('^[0-9]+[kKmMgG]?$')".to_owned()),
                (
                    "digits",
                    "variables.valid && variables.size.matches('[kKmMgG]$') ? \
                     variables.size.substring(0, size(variables.size) - 1) : variables.size"
                        .to_owned(),
                ),
                (
                    "scale",
                    "variables.size.lowerAscii().endsWith('g') ? 1073741824 : \
                     (variables.size.lowerAscii().endsWith('m') ? 1048576 : \
                     (variables.size.lowerAscii().endsWith('k') ? 1024 : 1))"
                        .to_owned(),
                ),
                // Bytes, below 2^57 so that CEL's int cannot overflow; a longer number is
                // above any maximum (up to 1e17 bytes) and is refused as such.
                (
                    "bytes",
                    format!(
                        "!variables.valid ? -1 : (size(variables.digits) > \
                         (variables.scale == 1073741824 ? 8 : (variables.scale == 1048576 ? 11 : \
                         (variables.scale == 1024 ? 14 : 17))) ? {huge} : \
                         int(variables.digits) * variables.scale)",
                        huge = maximum.saturating_add(1)
                    ),
                ),
            ],
            conditions: vec![nginx.clone(), ("names-a-body-size", named.clone())],
            action: Action::Validate(vec![Check {
                expression: format!(
                    "(request.operation == 'UPDATE' && oldObject != null && \
                     has(oldObject.metadata.annotations) && {key} in oldObject.metadata.annotations \
                     && oldObject.metadata.annotations[{key}] == variables.value) || \
                     (variables.valid && variables.bytes != 0 && variables.bytes <= {maximum})"
                ),
                message: format!(
                    "{} + ' sets ' + {key} + ': \"' + variables.value + '\": ' + \
                     (!variables.valid ? '\"' + variables.size + '\" is not an nginx size; write a \
                     number with an optional unit k, m or g, such as `50m`' : (variables.bytes == 0 \
                     ? {zero} : variables.value + {above})) + {tail}",
                    describe_object("variables.name"),
                    zero = cel_string(&format!(
                        "0 turns nginx's request-body limit off; the most allowed is {}",
                        settings.maximum
                    )),
                    above = cel_string(&format!(
                        " is above the most allowed, {}",
                        settings.maximum
                    )),
                    tail = cel_string(
                        " (the production guide's general limit is 50 MiB; an admin raises \
                         policies.ingress-body-size.maximum when uploads need more)"
                    ),
                ),
            }]),
        };
        let default = Floor {
            part: "default",
            operations: &["CREATE", "UPDATE"],
            resources: vec![resources::INGRESSES],
            variables: Vec::new(),
            conditions: vec![nginx, ("names-no-body-size", format!("!({named})"))],
            action: Action::Mutate(vec![Apply::Object(vec![(
                "metadata",
                Apply::Object(vec![(
                    "annotations",
                    Apply::Value(format!("{{{key}: {}}}", cel_string(&settings.default))),
                )]),
            )])]),
        };
        vec![limit, default]
    }
}

pub const ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-body-size";
/// The legacy way to name an Ingress's class.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The middlewares of the routers Traefik makes from an Ingress.
pub const MIDDLEWARES_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.middlewares";
/// The entry points of those routers.
pub const ENTRY_POINTS_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.entrypoints";
use crate::unit::TRAEFIK_GROUP;

/// Which object of the policy a request writes.
enum Target {
    Ingress,
    IngressRoute,
    Middleware,
}

fn target(request: &Request<'_>) -> Option<Target> {
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.sub_resource.is_some()
    {
        return None;
    }
    match (request.group, request.kind) {
        ("networking.k8s.io" | "extensions", "Ingress") => Some(Target::Ingress),
        (TRAEFIK_GROUP, "IngressRoute") => Some(Target::IngressRoute),
        (TRAEFIK_GROUP, "Middleware") => Some(Target::Middleware),
        _ => None,
    }
}

fn annotation<'a>(object: &'a Object<'a>, key: &str) -> Option<&'a str> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
}

/// Who serves an Ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Controller {
    /// ingress-nginx, or Traefik's Kubernetes Ingress NGINX provider: the annotation.
    Nginx,
    /// Traefik's own provider: a buffering middleware.
    Traefik,
    /// A class prodguard was not told about.
    Unknown,
}

/// How an Ingress's controller is told from its class.
#[derive(Debug, Clone)]
struct Classes {
    nginx: Vec<String>,
    traefik: Vec<String>,
    default: String,
}

impl Classes {
    fn new(settings: &Settings) -> Classes {
        Classes {
            nginx: settings.nginx_classes.clone(),
            traefik: settings.traefik_classes.clone(),
            default: settings.default_class.clone(),
        }
    }

    /// The Ingress's class: `spec.ingressClassName`, the legacy annotation, else the default.
    fn of<'a>(&'a self, object: &'a Object<'a>) -> &'a str {
        let named = match &object.spec {
            Spec::Ingress(spec) => spec.ingress_class_name.as_deref(),
            _ => None,
        };
        named
            .or_else(|| annotation(object, CLASS_ANNOTATION))
            .unwrap_or(&self.default)
    }

    fn controller(&self, class: &str) -> Controller {
        if self.nginx.iter().any(|c| c == class) {
            Controller::Nginx
        } else if self.traefik.iter().any(|c| c == class) {
            Controller::Traefik
        } else {
            Controller::Unknown
        }
    }
}

/// The mutating half: sets the default on an nginx Ingress that names no body size.
pub struct IngressBodySizeDefault {
    default: String,
    classes: Classes,
}

impl IngressBodySizeDefault {
    pub fn new(config: &Settings) -> IngressBodySizeDefault {
        IngressBodySizeDefault {
            default: config.default.clone(),
            classes: Classes::new(config),
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
        if !matches!(target(request), Some(Target::Ingress)) {
            return Ok(Vec::new());
        }
        let object = request.object.ok_or(EvalError::MissingObject)?;
        if annotation(object, ANNOTATION).is_some()
            || self.classes.controller(self.classes.of(object)) != Controller::Nginx
        {
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

/// The validating half: the setting the controller reads must hold a limit within the
/// maximum.
pub struct IngressBodySizeLimit {
    maximum: String,
    maximum_bytes: u64,
    classes: Classes,
    limited_entry_points: Vec<String>,
}

/// What a Middleware does to request bodies.
enum Limit {
    /// Within the maximum.
    Within,
    /// No buffering, 0 (no limit), or above the maximum: why.
    Not(String),
}

impl IngressBodySizeLimit {
    pub fn new(config: &Settings) -> IngressBodySizeLimit {
        IngressBodySizeLimit {
            maximum: config.maximum.clone(),
            // Validated at load; an unusable maximum allows nothing but explicit sizes of 0.
            maximum_bytes: parse_nginx_size(&config.maximum).unwrap_or(0),
            classes: Classes::new(config),
            limited_entry_points: config.traefik_limited_entry_points.clone(),
        }
    }

    /// Why nginx size `value` is refused, or `None`.
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

    /// Why a buffering limit of `bytes` is refused, or `None`.
    fn bytes_problem(&self, bytes: Option<i64>) -> Option<String> {
        match bytes {
            None | Some(i64::MIN..=0) => Some(format!(
                "buffering.maxRequestBodyBytes is {}, which means no limit; the most allowed is {} bytes ({})",
                bytes.unwrap_or(0),
                self.maximum_bytes,
                self.maximum
            )),
            Some(b) if b as u64 > self.maximum_bytes => Some(format!(
                "buffering.maxRequestBodyBytes is {b}, above the most allowed, {} bytes ({})",
                self.maximum_bytes, self.maximum
            )),
            Some(_) => None,
        }
    }

    /// What the Middleware of JSON `text` does to request bodies.
    fn limit_of(&self, what: &str, text: &str) -> Limit {
        let middleware = match Object::decode("Middleware", text) {
            Ok(Some(m)) => m,
            Ok(None) => return Limit::Not(format!("{what} is empty")),
            Err(e) => return Limit::Not(format!("{what} cannot be read: {e}")),
        };
        match &middleware.spec {
            Spec::Middleware(spec) => match &spec.buffering {
                Some(buffering) => match self.bytes_problem(buffering.max_request_body_bytes) {
                    None => Limit::Within,
                    Some(problem) => Limit::Not(format!("{what}: {problem}")),
                },
                None => Limit::Not(format!("{what} is not a buffering middleware")),
            },
            _ => Limit::Not(format!("{what} has no spec")),
        }
    }

    /// Whether routes on these entry points (`None`: every entry point) are limited there.
    fn entry_points_limited<'e>(
        &self,
        entry_points: Option<impl Iterator<Item = &'e str>>,
    ) -> bool {
        if self.limited_entry_points.iter().any(|e| e == "*") {
            return true;
        }
        let Some(entry_points) = entry_points else {
            return false;
        };
        let mut any = false;
        for e in entry_points {
            any = true;
            if !self.limited_entry_points.iter().any(|l| l == e) {
                return false;
            }
        }
        any
    }

    /// Whether one of `candidates` (each a list of (namespace, name) readings of one named
    /// middleware) limits bodies within the maximum; else why not. A read that fails is an
    /// error, unless another middleware already holds the limit.
    async fn one_within(
        &self,
        lookups: &Lookups<'_>,
        candidates: &[Vec<(String, String)>],
    ) -> Result<Result<(), Vec<String>>, String> {
        let mut why = Vec::new();
        let mut failed = None;
        'named: for readings in candidates {
            for (namespace, name) in readings {
                let what = format!("Middleware {namespace}/{name}");
                match lookups.middleware(namespace, name).await {
                    Ok(Some(text)) => {
                        match self.limit_of(&what, &text) {
                            Limit::Within => return Ok(Ok(())),
                            Limit::Not(reason) => why.push(reason),
                        }
                        continue 'named;
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            }
            if let Some((namespace, name)) = readings.first() {
                why.push(format!("Middleware {namespace}/{name} was not found"));
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(Err(why)),
        }
    }

    fn traefik_fix(&self) -> String {
        format!(
            "a Middleware whose buffering.maxRequestBodyBytes is above 0 and at most {} ({})",
            self.maximum_bytes, self.maximum
        )
    }

    async fn ingress(
        &self,
        request: &Request<'_>,
        object: &Object<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let class = self.classes.of(object);
        match self.classes.controller(class) {
            Controller::Nginx => Ok(self.nginx_ingress(request, object)),
            Controller::Traefik => self.traefik_ingress(request, object, class, lookups).await,
            Controller::Unknown => {
                let old_class = request.old_object.map(|old| self.classes.of(old));
                if request.operation == Operation::Update && old_class == Some(class) {
                    return Ok(Vec::new());
                }
                Ok(vec![Finding::Advisory {
                    message: format!(
                        "{} has IngressClass {class:?}, which prodguard does not know, so its \
                         request-body limit is not checked; an admin adds the class to \
                         policies.ingress-body-size.nginxClasses or traefikClasses",
                        request.describe()
                    ),
                }])
            }
        }
    }

    fn nginx_ingress(&self, request: &Request<'_>, object: &Object<'_>) -> Vec<Finding> {
        let Some(value) = annotation(object, ANNOTATION) else {
            return Vec::new();
        };
        if request.operation == Operation::Update
            && request.old_object.and_then(|o| annotation(o, ANNOTATION)) == Some(value)
        {
            return Vec::new();
        }
        self.problem(value)
            .map(|problem| Finding::Violation {
                message: format!(
                    "{} sets {ANNOTATION}: {value:?}: {problem} (the production guide's general \
                     limit is 50 MiB; an admin raises policies.ingress-body-size.maximum when \
                     uploads need more)",
                    request.describe()
                ),
            })
            .into_iter()
            .collect()
    }

    async fn traefik_ingress(
        &self,
        request: &Request<'_>,
        object: &Object<'_>,
        class: &str,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let entry_points = annotation(object, ENTRY_POINTS_ANNOTATION)
            .map(|list| list.split(',').map(str::trim).filter(|e| !e.is_empty()));
        if self.entry_points_limited(entry_points) {
            return Ok(Vec::new());
        }
        let named: Vec<Vec<(String, String)>> = annotation(object, MIDDLEWARES_ANNOTATION)
            .into_iter()
            .flat_map(|list| list.split(','))
            .filter_map(|entry| crd_middleware(entry.trim(), request.namespace))
            .collect();
        let what = format!(
            "{} (IngressClass {class:?}) is served by Traefik, which reads no nginx annotation",
            request.describe()
        );
        let fix = format!(
            "name {} in {MIDDLEWARES_ANNOTATION} as <namespace>-<name>@kubernetescrd",
            self.traefik_fix()
        );
        let why = match self.one_within(lookups, &named).await {
            Ok(Ok(())) => return Ok(Vec::new()),
            Ok(Err(why)) => why,
            Err(e) => return Err(EvalError::Lookup(format!("{what}, and {e}; {fix}"))),
        };
        let why = if why.is_empty() {
            "it names none".to_owned()
        } else {
            why.join("; ")
        };
        Ok(vec![Finding::Violation {
            message: format!("{what}: {why}; {fix}"),
        }])
    }

    async fn ingress_route(
        &self,
        request: &Request<'_>,
        object: &Object<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let Spec::IngressRoute(spec) = &object.spec else {
            return Ok(Vec::new());
        };
        let entry_points = spec
            .entry_points
            .as_ref()
            .map(|e| e.0.iter().map(|e| e.as_ref()));
        if self.entry_points_limited(entry_points) {
            return Ok(Vec::new());
        }
        let mut problems = Vec::new();
        for (index, route) in spec.routes.iter().flatten().enumerate() {
            let named: Vec<Vec<(String, String)>> = route
                .middlewares
                .iter()
                .flatten()
                .filter(|m| !m.name.contains('@'))
                .map(|m| {
                    let namespace = m.namespace.as_deref().unwrap_or(request.namespace);
                    vec![(namespace.to_owned(), m.name.to_string())]
                })
                .collect();
            let rule = route.match_.as_deref().unwrap_or("(no match)");
            match self.one_within(lookups, &named).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) if why.is_empty() => {
                    problems.push(format!("routes[{index}] ({rule}) names no middleware"))
                }
                Ok(Err(why)) => {
                    problems.push(format!("routes[{index}] ({rule}): {}", why.join("; ")))
                }
                Err(e) => {
                    return Err(EvalError::Lookup(format!(
                        "{} cannot be checked: {e}; every route must name {}",
                        request.describe(),
                        self.traefik_fix()
                    )))
                }
            }
        }
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Finding::Violation {
            message: format!(
                "{} has routes without a request-body limit (Traefik's default is none): {}; \
                 every route must name, in its middlewares, {}",
                request.describe(),
                problems.join("; "),
                self.traefik_fix()
            ),
        }])
    }

    fn middleware(&self, request: &Request<'_>, object: &Object<'_>) -> Vec<Finding> {
        let limit = |o: &Object<'_>| match &o.spec {
            Spec::Middleware(spec) => spec.buffering.as_ref().map(|b| b.max_request_body_bytes),
            _ => None,
        };
        let Some(bytes) = limit(object) else {
            return Vec::new();
        };
        if request.operation == Operation::Update
            && request.old_object.map(limit) == Some(Some(bytes))
        {
            return Vec::new();
        }
        self.bytes_problem(bytes)
            .map(|problem| Finding::Violation {
                message: format!(
                    "{}: {problem} (the production guide's general limit is 50 MiB; an admin \
                     raises policies.ingress-body-size.maximum when uploads need more)",
                    request.describe()
                ),
            })
            .into_iter()
            .collect()
    }
}

/// The (namespace, name) readings of a Traefik middleware reference
/// `<namespace>-<name>@kubernetescrd`, the Ingress's own namespace first (both may hold `-`);
/// `None` for a middleware of another provider (`@file`), which prodguard cannot read.
fn crd_middleware(entry: &str, own_namespace: &str) -> Option<Vec<(String, String)>> {
    let reference = entry.strip_suffix("@kubernetescrd")?;
    let mut readings = Vec::new();
    if let Some(name) = reference
        .strip_prefix(own_namespace)
        .and_then(|rest| rest.strip_prefix('-'))
    {
        readings.push((own_namespace.to_owned(), name.to_owned()));
    }
    for (at, _) in reference.match_indices('-') {
        let (namespace, name) = (&reference[..at], &reference[at + 1..]);
        if !namespace.is_empty() && !name.is_empty() && namespace != own_namespace {
            readings.push((namespace.to_owned(), name.to_owned()));
        }
    }
    (!readings.is_empty()).then_some(readings)
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
        lookups: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        let Some(target) = target(request) else {
            return Ok(Vec::new());
        };
        let object = request.object.ok_or(EvalError::MissingObject)?;
        match target {
            Target::Ingress => self.ingress(request, object, lookups).await,
            Target::IngressRoute => self.ingress_route(request, object, lookups).await,
            Target::Middleware => Ok(self.middleware(request, object)),
        }
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

    fn traefik_ingress_doc(class: &str, annotations: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "portal", "namespace": "openg2p", "annotations": annotations},
               "spec": {"ingressClassName": class}})
    }

    fn middleware_doc(namespace: &str, name: &str, bytes: Option<i64>) -> Value {
        let spec = match bytes {
            Some(b) => json!({"buffering": {"maxRequestBodyBytes": b}}),
            None => json!({"headers": {"customRequestHeaders": {"X-A": "b"}}}),
        };
        json!({"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    }

    fn traefik_cluster() -> Context {
        Context {
            middlewares: [
                middleware_doc("openg2p", "body-limit", Some(10 << 20)),
                middleware_doc("openg2p", "no-limit", Some(0)),
                middleware_doc("openg2p", "huge", Some(1 << 30)),
                middleware_doc("openg2p", "headers", None),
                middleware_doc("ingress-shared", "limit", Some(50 << 20)),
            ]
            .iter()
            .map(Value::to_string)
            .collect(),
            ..Context::default()
        }
    }

    fn validate(settings: &Settings, doc: Value, context: &Context) -> Vec<Finding> {
        let obj = object(doc.clone());
        let mut req = ingress_request(Operation::Create, &obj);
        req.group = match doc["apiVersion"].as_str() {
            Some(v) if v.starts_with("traefik.io/") => "traefik.io",
            _ => "networking.k8s.io",
        };
        req.kind = match doc["kind"].as_str() {
            Some("IngressRoute") => "IngressRoute",
            Some("Middleware") => "Middleware",
            _ => "Ingress",
        };
        IngressBodySizeLimit::new(settings)
            .eval(&req, context)
            .unwrap()
    }

    fn message(findings: &[Finding]) -> String {
        match findings {
            [Finding::Violation { message }] => message.clone(),
            [Finding::Advisory { message }] => format!("advisory: {message}"),
            other => panic!("one finding expected: {other:?}"),
        }
    }

    #[test]
    fn a_traefik_ingress_must_name_a_middleware_within_the_maximum() {
        let settings = Settings::default();
        let cluster = traefik_cluster();
        let with = |middlewares: &str| {
            validate(
                &settings,
                traefik_ingress_doc("traefik", json!({MIDDLEWARES_ANNOTATION: middlewares})),
                &cluster,
            )
        };
        for ok in [
            "openg2p-body-limit@kubernetescrd",
            "openg2p-headers@kubernetescrd, openg2p-body-limit@kubernetescrd",
            "ingress-shared-limit@kubernetescrd",
        ] {
            assert!(with(ok).is_empty(), "{ok}: {:?}", with(ok));
        }
        let fix = "name a Middleware whose buffering.maxRequestBodyBytes is above 0 and at most \
                   52428800 (50m) in traefik.ingress.kubernetes.io/router.middlewares as \
                   <namespace>-<name>@kubernetescrd";
        for (annotation, why) in [
            ("openg2p-no-limit@kubernetescrd", "Middleware openg2p/no-limit: buffering.maxRequestBodyBytes is 0, which means no limit"),
            ("openg2p-huge@kubernetescrd", "Middleware openg2p/huge: buffering.maxRequestBodyBytes is 1073741824, above the most allowed, 52428800 bytes (50m)"),
            ("openg2p-headers@kubernetescrd", "Middleware openg2p/headers is not a buffering middleware"),
            ("openg2p-gone@kubernetescrd", "Middleware openg2p/gone was not found"),
            ("body-limit@file", "it names none"),
            ("", "it names none"),
        ] {
            let text = message(&with(annotation));
            assert!(text.starts_with("Ingress openg2p/portal (IngressClass \"traefik\") is served by Traefik, which reads no nginx annotation: "), "{text}");
            assert!(text.contains(why), "{annotation}: {text}");
            assert!(text.ends_with(fix), "{text}");
        }
        // The nginx annotation means nothing to Traefik.
        let text = message(&validate(
            &settings,
            traefik_ingress_doc("traefik", json!({ANNOTATION: "10m"})),
            &cluster,
        ));
        assert!(text.contains("it names none"), "{text}");
    }

    #[test]
    fn the_class_decides_the_controller() {
        let settings = Settings::default();
        let cluster = traefik_cluster();
        // The legacy annotation names the class too.
        let legacy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "portal", "namespace": "openg2p",
                         "annotations": {CLASS_ANNOTATION: "traefik"}}, "spec": {}});
        assert!(message(&validate(&settings, legacy, &cluster)).contains("served by Traefik"));
        // A class prodguard does not know: an advisory, whatever the annotation says.
        let text = message(&validate(
            &settings,
            traefik_ingress_doc("haproxy", json!({ANNOTATION: "0"})),
            &cluster,
        ));
        assert_eq!(text, "advisory: Ingress openg2p/portal has IngressClass \"haproxy\", which prodguard does not know, so its request-body limit is not checked; an admin adds the class to policies.ingress-body-size.nginxClasses or traefikClasses");
        // No class: the default class's controller.
        let traefik_default = Settings {
            default_class: "traefik".into(),
            ..Settings::default()
        };
        let doc = ingress_doc(Some(json!({ANNOTATION: "10m"})));
        assert!(message(&validate(&traefik_default, doc.clone(), &cluster))
            .contains("served by Traefik"));
        assert!(validate(&settings, doc, &cluster).is_empty());
        // Only nginx Ingresses are given the annotation.
        for class in ["traefik", "haproxy"] {
            let doc = traefik_ingress_doc(class, json!({}));
            let obj = object(doc);
            let req = ingress_request(Operation::Create, &obj);
            assert!(
                IngressBodySizeDefault::new(&settings)
                    .eval(&req, &cluster)
                    .unwrap()
                    .is_empty(),
                "{class}"
            );
        }
        let doc = traefik_ingress_doc("nginx", json!({}));
        assert!(mutated(doc).is_some());
    }

    #[test]
    fn entry_points_limited_for_all_routes_need_no_middleware() {
        let cluster = traefik_cluster();
        let limited = |entry_points: &[&str]| Settings {
            traefik_limited_entry_points: entry_points.iter().map(|e| e.to_string()).collect(),
            ..Settings::default()
        };
        let doc = |entry_points: Option<&str>| {
            let annotations = match entry_points {
                Some(e) => json!({ENTRY_POINTS_ANNOTATION: e}),
                None => json!({}),
            };
            traefik_ingress_doc("traefik", annotations)
        };
        assert!(validate(&limited(&["websecure"]), doc(Some("websecure")), &cluster).is_empty());
        assert_eq!(
            validate(
                &limited(&["websecure"]),
                doc(Some("web,websecure")),
                &cluster
            )
            .len(),
            1
        );
        assert_eq!(
            validate(&limited(&["websecure"]), doc(None), &cluster).len(),
            1,
            "every entry point"
        );
        assert!(validate(&limited(&["*"]), doc(None), &cluster).is_empty());
    }

    #[test]
    fn every_route_of_an_ingress_route_needs_a_limit() {
        let settings = Settings::default();
        let cluster = traefik_cluster();
        let route = |routes: Value| {
            json!({"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
                   "metadata": {"name": "portal", "namespace": "openg2p"},
                   "spec": {"entryPoints": ["websecure"], "routes": routes}})
        };
        let good = json!({"match": "Host(`a`)", "middlewares": [{"name": "body-limit"}]});
        let shared = json!({"match": "Host(`b`)", "middlewares": [{"name": "limit", "namespace": "ingress-shared"}]});
        assert!(validate(&settings, route(json!([good, shared])), &cluster).is_empty());
        let bare = json!({"match": "Host(`c`)", "services": [{"name": "c", "port": 80}]});
        let open = json!({"match": "Host(`d`)", "middlewares": [{"name": "no-limit"}]});
        let text = message(&validate(
            &settings,
            route(json!([good, bare, open])),
            &cluster,
        ));
        assert_eq!(
            text,
            "IngressRoute openg2p/portal has routes without a request-body limit (Traefik's default is none): \
             routes[1] (Host(`c`)) names no middleware; routes[2] (Host(`d`)): Middleware openg2p/no-limit: \
             buffering.maxRequestBodyBytes is 0, which means no limit; the most allowed is 52428800 bytes (50m); \
             every route must name, in its middlewares, a Middleware whose buffering.maxRequestBodyBytes is above 0 \
             and at most 52428800 (50m)"
        );
        let limited = Settings {
            traefik_limited_entry_points: vec!["websecure".into()],
            ..Settings::default()
        };
        assert!(validate(&limited, route(json!([bare])), &cluster).is_empty());
    }

    #[test]
    fn a_middleware_without_a_limit_or_above_the_maximum_is_denied() {
        let settings = Settings::default();
        let cluster = Context::default();
        for (bytes, expected) in [
            (Some(50 << 20), None),
            (Some(1), None),
            (
                Some(0),
                Some("buffering.maxRequestBodyBytes is 0, which means no limit"),
            ),
            (
                Some(-1),
                Some("buffering.maxRequestBodyBytes is -1, which means no limit"),
            ),
            (
                Some((50 << 20) + 1),
                Some("above the most allowed, 52428800 bytes (50m)"),
            ),
        ] {
            let findings = validate(&settings, middleware_doc("openg2p", "m", bytes), &cluster);
            match expected {
                None => assert!(findings.is_empty(), "{bytes:?}"),
                Some(text) => {
                    let m = message(&findings);
                    assert!(m.starts_with("Middleware openg2p/m: "), "{m}");
                    assert!(m.contains(text), "{bytes:?}: {m}");
                }
            }
        }
        // No buffering at all: not a body limit, nothing to judge.
        assert!(validate(&settings, middleware_doc("openg2p", "m", None), &cluster).is_empty());
        // Buffering without a limit.
        let unset = json!({"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
            "metadata": {"name": "m", "namespace": "openg2p"}, "spec": {"buffering": {"retryExpression": "IsNetworkError()"}}});
        assert!(
            message(&validate(&settings, unset, &cluster)).contains("is 0, which means no limit")
        );
    }

    #[test]
    fn middleware_references_are_read_both_ways() {
        assert_eq!(
            crd_middleware("openg2p-body-limit@kubernetescrd", "openg2p"),
            Some(vec![
                ("openg2p".into(), "body-limit".into()),
                ("openg2p-body".into(), "limit".into()),
            ])
        );
        assert_eq!(
            crd_middleware("ingress-shared-limit@kubernetescrd", "openg2p"),
            Some(vec![
                ("ingress".into(), "shared-limit".into()),
                ("ingress-shared".into(), "limit".into()),
            ])
        );
        assert_eq!(crd_middleware("limit@file", "openg2p"), None);
        assert_eq!(crd_middleware("nodash@kubernetescrd", "openg2p"), None);
    }

    #[test]
    fn bad_class_settings_are_refused() {
        let both = Settings {
            traefik_classes: vec!["nginx".into()],
            ..Settings::default()
        };
        assert_eq!(
            Definition::validate(&both),
            Err((
                "traefikClasses".into(),
                "\"nginx\" is in nginxClasses too; one controller serves a class".into()
            ))
        );
        let empty = Settings {
            traefik_limited_entry_points: vec![" ".into()],
            ..Settings::default()
        };
        assert!(Definition::validate(&empty).is_err());
    }
}
