//! `prodguard check`: evaluates manifests offline, as the API server would on CREATE: the
//! mutating policies patch the object, then the validating policies judge the patched object.
//!
//! Exit status: 0 when nothing would be denied, 1 when something would be denied, 2 for bad
//! input or configuration (a file that does not parse is reported by name; the rest is still
//! checked).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::{load_config, EXIT_BAD_INPUT};
use crate::cli::{CheckArgs, OutputFormat};
use std::collections::BTreeMap;

use crate::cluster::Snapshot;
use crate::engine::offline::{evaluate_object, ObjectFinding};
use crate::engine::{Action, Engine};
use crate::policies::Config;
use crate::report::NoReporter;
use crate::unit::NoLookup;

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct CheckOutput {
    pub results: Vec<CheckResult>,
    pub summary: Summary,
    /// Inputs that could not be read or parsed, by file.
    pub errors: Vec<InputError>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// The file the object came from; null for objects read from a cluster (`audit`).
    pub file: Option<String>,
    #[serde(flatten)]
    pub finding: ObjectFinding,
}

/// Counts of resources: read, and with at least one result of each action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Summary {
    pub resources: usize,
    pub denied: usize,
    pub patched: usize,
    pub warned: usize,
    /// Resources with a finding lifted by a PolicyException.
    pub excepted: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputError {
    pub file: String,
    pub message: String,
}

impl CheckOutput {
    pub fn new() -> CheckOutput {
        CheckOutput::default()
    }

    /// Counts one evaluated object and keeps what was found on it.
    pub fn add(&mut self, file: Option<&str>, findings: Vec<ObjectFinding>) {
        self.summary.resources += 1;
        let has = |action| findings.iter().any(|f| f.finding.action == action);
        self.summary.denied += usize::from(has(Action::Denied));
        self.summary.patched += usize::from(has(Action::Mutated));
        self.summary.warned += usize::from(has(Action::Audited));
        self.summary.excepted += usize::from(has(Action::Excepted));
        self.results
            .extend(findings.into_iter().map(|finding| CheckResult {
                file: file.map(str::to_owned),
                finding,
            }));
    }

    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            EXIT_BAD_INPUT
        } else if self.summary.denied > 0 {
            1
        } else {
            0
        }
    }
}

pub fn run(args: CheckArgs) -> ExitCode {
    let config = match load_config(args.config.as_deref(), args.mode) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let engine = offline_engine(&config);
    let output = check_paths(
        &engine,
        &check_snapshot(&config, args.production),
        &args.files,
        &args.namespace,
    );
    print_output(&output, args.output)
}

/// Prints the results as text or JSON and returns the exit status they call for.
pub fn print_output(output: &CheckOutput, format: OutputFormat) -> ExitCode {
    match format {
        OutputFormat::Json => match serde_json::to_string_pretty(output) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: cannot encode the output: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
        OutputFormat::Text => print!("{}", render_text(output)),
    }
    ExitCode::from(output.exit_code())
}

/// An engine that reads nothing from a cluster and reports nowhere.
pub fn offline_engine(config: &Config) -> Engine {
    Engine::new(
        config,
        Arc::new(NoLookup {
            reason: "check runs offline".into(),
        }),
        Arc::new(NoReporter),
    )
    .with_lookup_failures_as_errors()
    .without_authors()
}

/// What `check` assumes about the cluster before reading its input: the well-known
/// ClusterRoles, and namespaces that the input does not define are production namespaces
/// only with `--production`.
pub fn check_snapshot(config: &Config, production: bool) -> Snapshot {
    Snapshot::for_check(if production {
        config.production_namespaces.match_labels.clone()
    } else {
        BTreeMap::new()
    })
}

/// Checks files, directories (recursively) and `-` (stdin). Namespaces, roles and bindings
/// in the input are known to the policies that read them, wherever they appear.
pub fn check_paths(
    engine: &Engine,
    snapshot: &Snapshot,
    paths: &[PathBuf],
    default_namespace: &str,
) -> CheckOutput {
    let mut output = CheckOutput::new();
    let mut sources = Vec::new();
    for path in paths {
        sources.extend(read_sources(path, &mut output.errors));
    }
    check_sources(
        engine,
        snapshot.clone(),
        &sources,
        default_namespace,
        &mut output,
    );
    output
}

/// One input: its name in messages and its text.
pub struct Source {
    pub name: String,
    pub text: String,
    pub json: bool,
}

fn read_sources(path: &Path, errors: &mut Vec<InputError>) -> Vec<Source> {
    let name = path.display().to_string();
    if name == "-" {
        let mut text = String::new();
        return match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => vec![Source {
                json: text.trim_start().starts_with(['{', '[']),
                name,
                text,
            }],
            Err(e) => {
                errors.push(InputError {
                    file: name,
                    message: format!("cannot read standard input: {e}"),
                });
                Vec::new()
            }
        };
    }
    if path.is_dir() {
        let mut sources = Vec::new();
        for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
            match entry {
                Ok(entry) if entry.file_type().is_file() && is_manifest_file(entry.path()) => {
                    sources.extend(read_file(entry.path(), errors));
                }
                Ok(_) => {}
                Err(e) => errors.push(InputError {
                    file: e
                        .path()
                        .map_or_else(|| name.clone(), |p| p.display().to_string()),
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        return sources;
    }
    read_file(path, errors).into_iter().collect()
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn read_file(path: &Path, errors: &mut Vec<InputError>) -> Option<Source> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Some(Source {
            json: path.extension().is_some_and(|e| e == "json"),
            name,
            text,
        }),
        Err(e) => {
            errors.push(InputError {
                file: name,
                message: format!("cannot read: {e}"),
            });
            None
        }
    }
}

/// The documents of a source: a JSON stream, or multi-document YAML.
fn parse_documents(source: &Source) -> Result<Vec<Value>, String> {
    if source.json {
        serde_json::Deserializer::from_str(&source.text)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not valid JSON: {e}"))
    } else {
        serde_saphyr::from_multiple::<Value>(&source.text).map_err(|e| {
            let hint = if source.text.contains("{{") {
                " (this looks like a Helm template: render it with `helm template` first)"
            } else {
                ""
            };
            format!("not valid YAML{hint}: {e}")
        })
    }
}

/// Appends `value`, or the items of a `List`, to `objects`.
fn flatten(value: Value, objects: &mut Vec<Value>) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        objects.push(value);
        return;
    }
    if let Some(Value::Array(items)) = value.get("items") {
        for item in items {
            flatten(item.clone(), objects);
        }
    }
}

fn check_sources(
    engine: &Engine,
    mut snapshot: Snapshot,
    sources: &[Source],
    default_namespace: &str,
    output: &mut CheckOutput,
) {
    let mut inputs = Vec::new();
    let mut exceptions = Vec::new();
    for source in sources {
        let documents = match parse_documents(source) {
            Ok(documents) => documents,
            Err(message) => {
                output.errors.push(InputError {
                    file: source.name.clone(),
                    message,
                });
                continue;
            }
        };
        let mut objects = Vec::new();
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            flatten(document, &mut objects);
        }
        for object in &objects {
            snapshot.learn(object, default_namespace);
            if let Some(exception) = input_exception(object, default_namespace) {
                exceptions.push(exception);
            }
        }
        inputs.push((source, objects));
    }
    // The input's PolicyExceptions apply as they would in the cluster (an invalid one is
    // refused below, as the webhook would refuse it).
    engine
        .exceptions()
        .0
        .replace(crate::exceptions::ExceptionSet::new(exceptions));
    for (source, objects) in inputs {
        for (index, object) in objects.into_iter().enumerate() {
            match evaluate_object(engine, &snapshot, object, default_namespace) {
                Ok(findings) => output.add(Some(&source.name), findings),
                Err(message) => output.errors.push(InputError {
                    file: source.name.clone(),
                    message: format!("object {}: {message}", index + 1),
                }),
            }
        }
    }
}

/// A prodguard PolicyException of the input, when it is one and valid.
fn input_exception(
    object: &Value,
    default_namespace: &str,
) -> Option<crate::exceptions::Exception> {
    use crate::exceptions::{GROUP, KIND};
    let api_version = object.get("apiVersion").and_then(Value::as_str)?;
    if object.get("kind").and_then(Value::as_str) != Some(KIND)
        || api_version.split_once('/').map(|(group, _)| group) != Some(GROUP)
    {
        return None;
    }
    crate::exceptions::Exception::from_text(&object.to_string(), default_namespace).ok()
}

/// The human-readable report.
pub fn render_text(output: &CheckOutput) -> String {
    let mut text = String::new();
    let mut last_object = None;
    for result in &output.results {
        let r = &result.finding;
        let file = result.file.as_deref().unwrap_or("cluster");
        let object = (file, &r.kind, &r.namespace, &r.name);
        if last_object != Some(object) {
            text.push_str(&format!("{file}: {} {}/{}\n", r.kind, r.namespace, r.name));
            last_object = Some(object);
        }
        let f = &r.finding;
        text.push_str(&format!(
            "  {:<5} [{}] {}\n",
            f.action.verb().to_uppercase(),
            f.policy,
            f.message
        ));
        if let Some(by) = &f.exception {
            text.push_str(&format!("        by {}\n", by.describe()));
        }
        if f.action == Action::Mutated {
            let json = serde_json::to_string(&f.patch).unwrap_or_default();
            text.push_str(&format!("        patch: {json}\n"));
        }
    }
    for e in &output.errors {
        text.push_str(&format!("{}: ERROR {}\n", e.file, e.message));
    }
    let s = output.summary;
    text.push_str(&format!(
        "{} resources: {} denied, {} patched, {} warned",
        s.resources, s.denied, s.patched, s.warned
    ));
    if s.excepted > 0 {
        text.push_str(&format!(", {} excepted", s.excepted));
    }
    if !output.errors.is_empty() {
        text.push_str(&format!("; {} input errors", output.errors.len()));
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        offline_engine(&Config::embedded_default().unwrap())
    }

    fn source(text: &str) -> Source {
        Source {
            name: "test.yaml".into(),
            text: text.into(),
            json: false,
        }
    }

    fn run_text(text: &str) -> CheckOutput {
        let mut output = CheckOutput::new();
        check_sources(
            &engine(),
            check_snapshot(&Config::default(), false),
            &[source(text)],
            "default",
            &mut output,
        );
        output
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: openg2p}
spec:
  replicas: 1
  template:
    spec:
      containers:
        - {name: web, image: nginx, imagePullPolicy: Always}
"#;

    #[test]
    fn a_deployment_is_patched_then_denied() {
        let output = run_text(DEPLOYMENT);
        assert_eq!(
            output.summary,
            Summary {
                resources: 1,
                denied: 1,
                patched: 1,
                warned: 0,
                excepted: 0,
            }
        );
        assert_eq!(output.exit_code(), 1);
        let patch = &output.results[0].finding;
        assert_eq!(
            (patch.finding.policy, patch.finding.action.verb()),
            ("image-pull-policy", "patch")
        );
        assert_eq!(
            serde_json::to_value(&patch.finding.patch).unwrap(),
            serde_json::json!([{"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "IfNotPresent"}])
        );
        let deny = &output.results[1].finding;
        assert_eq!(
            (deny.finding.policy, deny.finding.action.verb()),
            ("min-replicas", "deny")
        );
        assert_eq!(
            (
                deny.kind.as_str(),
                deny.namespace.as_str(),
                deny.name.as_str()
            ),
            ("Deployment", "openg2p", "web")
        );
    }

    fn exception_yaml(name: &str, expires: &str) -> String {
        format!(
            "---\napiVersion: prodguard.io/v1alpha1\nkind: PolicyException\nmetadata: {{name: {name}, namespace: openg2p}}\nspec:\n  policies: [min-replicas]\n  match: {{kinds: [Deployment], names: [web]}}\n  reason: single replica until the licence allows two\n  expires: \"{expires}\"\n"
        )
    }

    fn in_an_hour() -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        k8s_openapi::jiff::Timestamp::from_second(now + 3600)
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_exception_in_the_input_applies_as_in_the_cluster() {
        let output = run_text(&format!(
            "{DEPLOYMENT}{}",
            exception_yaml("web-single", &in_an_hour())
        ));
        assert_eq!(output.summary.denied, 0, "{:?}", output.results);
        assert_eq!((output.summary.excepted, output.summary.resources), (1, 2));
        assert_eq!(output.exit_code(), 0);
        let excepted = &output.results[1].finding;
        assert_eq!(
            (excepted.finding.policy, excepted.finding.action),
            ("min-replicas", Action::Excepted)
        );
        let json = serde_json::to_value(&output.results[1]).unwrap();
        assert_eq!(json["action"], "excepted");
        assert_eq!(json["exception"]["name"], "web-single");
        assert_eq!(
            json["exception"]["reason"],
            "single replica until the licence allows two"
        );
        let text = render_text(&output);
        assert!(
            text.contains("  EXCEPTED [min-replicas] Deployment openg2p/web would run 1 replica"),
            "{text}"
        );
        assert!(
            text.contains("        by PolicyException openg2p/web-single (until "),
            "{text}"
        );
        assert!(text.ends_with(", 1 excepted\n"), "{text}");

        // An expired one applies no more, and is refused as the webhook would refuse it.
        let output = run_text(&format!(
            "{DEPLOYMENT}{}",
            exception_yaml("old", "2020-01-01T00:00:00Z")
        ));
        assert_eq!((output.summary.denied, output.summary.excepted), (2, 0));
        let refusal = &output.results[2].finding.finding;
        assert_eq!(refusal.policy, "policy-exception");
        assert!(
            refusal.message.contains("is already past"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn traefik_routes_and_middlewares_in_the_input_are_judged_together() {
        let text = r#"
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: body-limit, namespace: openg2p}
spec: {buffering: {maxRequestBodyBytes: 52428800}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: open, namespace: openg2p}
spec: {buffering: {maxRequestBodyBytes: 0}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: portal
  namespace: openg2p
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: openg2p-body-limit@kubernetescrd}
spec: {ingressClassName: traefik}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: registry, namespace: openg2p}
spec:
  routes:
    - {match: "Host(`a`)", middlewares: [{name: body-limit}]}
    - {match: "Host(`b`)", middlewares: [{name: open}]}
"#;
        let output = run_text(text);
        assert!(output.errors.is_empty(), "{:?}", output.errors);
        let denied: Vec<(&str, &str)> = output
            .results
            .iter()
            .filter(|r| r.finding.finding.action == Action::Denied)
            .map(|r| (r.finding.kind.as_str(), r.finding.name.as_str()))
            .collect();
        assert_eq!(
            denied,
            [("Middleware", "open"), ("IngressRoute", "registry")]
        );
        // A Middleware the input does not hold is an input error, never a pass.
        let output = run_text(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: p\n  namespace: openg2p\n  annotations: {traefik.ingress.kubernetes.io/router.middlewares: openg2p-elsewhere@kubernetescrd}\nspec: {ingressClassName: traefik}\n",
        );
        assert_eq!(output.errors.len(), 1, "{:?}", output.results);
        assert!(
            output.errors[0].message.contains("Middleware openg2p/elsewhere is not among the checked objects; add it to the input"),
            "{}",
            output.errors[0].message
        );
    }

    #[test]
    fn multi_documents_lists_and_empty_documents() {
        let text = format!(
            "---\n# only a comment\n---\n{DEPLOYMENT}\n---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {{name: c}}\n  - apiVersion: v1\n    kind: Service\n    metadata: {{name: s}}\n"
        );
        let output = run_text(&text);
        assert_eq!(output.summary.resources, 3);
        assert!(output.errors.is_empty(), "{:?}", output.errors);
    }

    #[test]
    fn unparsable_input_is_reported_and_the_rest_checked() {
        let output = run_text("replicas: {{ .Values.replicaCount }}\n");
        assert_eq!(output.errors.len(), 1);
        assert!(
            output.errors[0].message.contains("Helm template"),
            "{}",
            output.errors[0].message
        );
        assert_eq!(output.exit_code(), 2);
        let output = run_text("just: values\n");
        assert!(
            output.errors[0].message.contains("has no apiVersion"),
            "{:?}",
            output.errors
        );
    }

    #[test]
    fn the_text_report_lists_actions_and_summary() {
        let text = render_text(&run_text(DEPLOYMENT));
        assert!(
            text.contains("test.yaml: Deployment openg2p/web\n"),
            "{text}"
        );
        assert!(
            text.contains("  PATCH [image-pull-policy] set imagePullPolicy"),
            "{text}"
        );
        assert!(
            text.contains("  DENY  [min-replicas] Deployment openg2p/web would run 1 replica"),
            "{text}"
        );
        assert!(
            text.ends_with("1 resources: 1 denied, 1 patched, 0 warned\n"),
            "{text}"
        );
    }
}
