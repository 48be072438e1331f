//! What the engine reports of a request ([`Report`], built from its findings), and where it
//! hands it ([`Reporter`]). The implementations that publish, log or keep reports are the
//! `report` edge's.

use super::decide::{Action, Reported};
use crate::unit::Request;

/// The object a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// What prodguard did on one request: every finding of one webhook call, the user, the object.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `PolicyViolation` or `PolicyMutation`.
    pub reason: &'static str,
    /// The strongest action taken: Denied over Audited, Mutated over Audited.
    pub action: Action,
    pub user: String,
    pub operation: String,
    pub regarding: ObjectRef,
    pub findings: Vec<Reported>,
}

/// Events carry at most 1 kB of note.
pub const NOTE_MAX_BYTES: usize = 1024;

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

impl Report {
    /// The reports of a request: one of what was denied, patched or warned about
    /// (`PolicyViolation` or `PolicyMutation`), and one of what PolicyExceptions lifted
    /// (`PolicyException`); none when nothing is to be reported.
    pub fn all(request: &Request<'_>, items: &[Reported]) -> Vec<Report> {
        if items.iter().all(|i| i.action != Action::Excepted) {
            return Report::new(request, items).into_iter().collect();
        }
        let (excepted, judged): (Vec<Reported>, Vec<Reported>) = items
            .iter()
            .cloned()
            .partition(|i| i.action == Action::Excepted);
        let mut reports: Vec<Report> = Report::new(request, &judged).into_iter().collect();
        if let Some(mut report) = Report::new(request, &excepted) {
            report.reason = "PolicyException";
            report.action = Action::Excepted;
            reports.push(report);
        }
        reports
    }

    /// The report of a request's findings, or `None` when nothing is to be reported.
    pub fn new(request: &Request<'_>, items: &[Reported]) -> Option<Report> {
        let first = items.first()?;
        let has = |action| items.iter().any(|i| i.action == action);
        let action = if has(Action::Denied) {
            Action::Denied
        } else if has(Action::Mutated) {
            Action::Mutated
        } else {
            Action::Audited
        };
        // A subresource request (pods/exec, deployments/scale) is about the parent object.
        let regarding = match (
            request.sub_resource,
            crate::unit::parent_kind(request.resource),
        ) {
            (Some(_), Some(kind)) => ObjectRef {
                api_version: api_version(request.resource_group, request.resource_version),
                kind: kind.to_owned(),
                namespace: request.namespace.to_owned(),
                name: request.name.to_owned(),
                uid: None,
            },
            _ => ObjectRef {
                api_version: api_version(request.group, request.version),
                kind: request.kind.to_owned(),
                namespace: request.namespace.to_owned(),
                name: request.object_name().to_owned(),
                // Only an object that exists already has a uid worth naming: the API server
                // gives a new object a uid before admission, also when it is then denied, and
                // repeats of a denied CREATE must fold into one event series.
                uid: request
                    .old_object
                    .and_then(|o| o.metadata.uid.as_deref().map(str::to_owned)),
            },
        };
        Some(Report {
            reason: if first.violation {
                "PolicyViolation"
            } else {
                "PolicyMutation"
            },
            action,
            user: request.username.to_owned(),
            operation: request.operation_name().to_owned(),
            regarding,
            findings: items.to_vec(),
        })
    }

    /// The note of the Event: each policy and action, the operation and the user; at most
    /// [`NOTE_MAX_BYTES`].
    pub fn note(&self) -> String {
        let findings: Vec<String> = self
            .findings
            .iter()
            .map(|f| match &f.exception {
                Some(by) => format!(
                    "[{}] {} by {}: {}",
                    f.policy,
                    f.action.as_str(),
                    by.describe(),
                    f.message
                ),
                None => format!("[{}] {}: {}", f.policy, f.action.as_str(), f.message),
            })
            .collect();
        let mut note = format!(
            "{} by {:?}: {}",
            self.operation,
            self.user,
            findings.join("; ")
        );
        if note.len() > NOTE_MAX_BYTES {
            let mut end = NOTE_MAX_BYTES - 3;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        note
    }

    /// The policy ids, in order.
    pub fn policies(&self) -> Vec<&'static str> {
        self.findings.iter().map(|f| f.policy).collect()
    }
}

/// Receives reports. Implementations queue and return at once: reporting never delays or
/// fails an admission response.
pub trait Reporter: Send + Sync {
    fn report(&self, report: Report);
    /// Whether reports go anywhere now; when not, the engine does not build them.
    fn wants_reports(&self) -> bool {
        true
    }
}

/// Reports nowhere (for `check`, which prints instead).
pub struct NoReporter;

impl Reporter for NoReporter {
    fn report(&self, _report: Report) {}
    fn wants_reports(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{object, request};
    use crate::unit::Operation;
    use serde_json::json;

    fn item(policy: &'static str, action: Action, violation: bool) -> Reported {
        Reported {
            policy,
            action,
            violation,
            message: format!("{policy} message"),
            patch: vec![],
            exception: None,
        }
    }

    #[test]
    fn one_report_per_request_with_the_strongest_action() {
        let obj = object(json!({"kind": "Deployment", "metadata": {"name": "web", "uid": "u-1"}}));
        let mut req = request(Operation::Update, "Deployment", "deployments", Some(&obj));
        req.old_object = Some(&obj);
        req.group = "apps";
        let report = Report::new(
            &req,
            &[
                item("airgap-registry", Action::Audited, true),
                item("min-replicas", Action::Denied, true),
            ],
        )
        .unwrap();
        assert_eq!(
            (report.reason, report.action),
            ("PolicyViolation", Action::Denied)
        );
        assert_eq!(
            report.regarding,
            ObjectRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: "openg2p".into(),
                name: "web".into(),
                uid: Some("u-1".into())
            }
        );
        assert_eq!(
            report.note(),
            "UPDATE by \"alice\": [airgap-registry] Audited: airgap-registry message; [min-replicas] Denied: min-replicas message"
        );
        assert!(Report::new(&req, &[]).is_none());
        let mutation =
            Report::new(&req, &[item("image-pull-policy", Action::Mutated, false)]).unwrap();
        assert_eq!(
            (mutation.reason, mutation.action),
            ("PolicyMutation", Action::Mutated)
        );
    }

    #[test]
    fn a_new_object_is_named_without_its_uid() {
        let obj = object(
            json!({"kind": "Deployment", "metadata": {"name": "web", "uid": "assigned-before-admission"}}),
        );
        let req = request(Operation::Create, "Deployment", "deployments", Some(&obj));
        let report = Report::new(&req, &[item("min-replicas", Action::Denied, true)]).unwrap();
        assert_eq!(report.regarding.uid, None);
        assert_eq!(report.regarding.name, "web");
    }

    #[test]
    fn subresource_requests_are_about_the_parent() {
        let mut req = request(Operation::Connect, "PodExecOptions", "pods", None);
        req.sub_resource = Some("exec");
        req.name = "db-0";
        let report = Report::new(&req, &[item("db-access", Action::Denied, true)]).unwrap();
        assert_eq!(
            (
                report.regarding.kind.as_str(),
                report.regarding.api_version.as_str()
            ),
            ("Pod", "v1")
        );
        let mut scale = request(Operation::Update, "Scale", "deployments", None);
        scale.group = "autoscaling";
        scale.resource_group = "apps";
        scale.sub_resource = Some("scale");
        scale.name = "web";
        let report = Report::new(&scale, &[item("min-replicas", Action::Denied, true)]).unwrap();
        assert_eq!(
            (
                report.regarding.kind.as_str(),
                report.regarding.api_version.as_str()
            ),
            ("Deployment", "apps/v1")
        );
    }

    #[test]
    fn the_note_is_bounded() {
        let req = request(Operation::Create, "Pod", "pods", None);
        let mut long = item("airgap-registry", Action::Denied, true);
        long.message = "é".repeat(2000);
        let note = Report::new(&req, &[long]).unwrap().note();
        assert!(note.len() <= NOTE_MAX_BYTES);
        assert!(note.ends_with("..."));
    }
}
