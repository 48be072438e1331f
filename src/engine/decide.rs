//! Modes are a step after evaluation: a pure function from findings and modes to a verdict.

use std::collections::BTreeMap;

use crate::config::PolicyMode;
use crate::exceptions::lifting::ExceptedBy;
use crate::unit::Finding;

/// What the policies of one webhook found, per policy, with the policy's effective mode.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyOutcome {
    pub policy: &'static str,
    pub mode: PolicyMode,
    pub findings: Vec<Finding>,
    /// The PolicyException that lifts the policy for this request: its findings neither deny
    /// nor patch nor warn, and are reported as excepted.
    pub exception: Option<ExceptedBy>,
}

/// What prodguard did about a finding. Serialised (`check`'s JSON, the PolicyReports) as the
/// verb: `deny`, `warn`, `patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Action {
    // In the order of the verbs, so that findings sort as they did when they were strings.
    #[serde(rename = "deny")]
    Denied,
    #[serde(rename = "patch")]
    Mutated,
    #[serde(rename = "warn")]
    Audited,
    /// Lifted by a PolicyException.
    #[serde(rename = "excepted")]
    Excepted,
}

impl Action {
    /// The Event action and the metric label: `Denied`, `Audited`, `Mutated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Denied => "Denied",
            Action::Audited => "Audited",
            Action::Mutated => "Mutated",
            Action::Excepted => "Excepted",
        }
    }

    /// What `check` and the PolicyReports say: `deny`, `warn`, `patch`, `excepted`.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Denied => "deny",
            Action::Audited => "warn",
            Action::Mutated => "patch",
            Action::Excepted => "excepted",
        }
    }
}

/// One finding and what was done about it: the one type the response, the Events, the
/// metrics, `check`'s output and the audit's PolicyReports are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub policy: &'static str,
    pub action: Action,
    /// Whether the finding was a violation (else a mutation).
    pub violation: bool,
    pub message: String,
    /// The patch of a mutation (applied when Mutated, proposed when Audited).
    pub patch: Vec<json_patch::PatchOperation>,
    /// The exception that lifted it (when Excepted).
    pub exception: Option<ExceptedBy>,
}

/// As `check -o json` shows a finding: its policy, action and message, the patch of an
/// applied mutation, and the exception that lifted an excepted one.
impl serde::Serialize for Reported {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let patched = self.action == Action::Mutated;
        let entries = 3 + usize::from(patched) + usize::from(self.exception.is_some());
        let mut map = serializer.serialize_map(Some(entries))?;
        map.serialize_entry("policy", self.policy)?;
        map.serialize_entry("action", &self.action)?;
        map.serialize_entry("message", &self.message)?;
        if patched {
            map.serialize_entry("patch", &self.patch)?;
        }
        if let Some(exception) = &self.exception {
            map.serialize_entry("exception", exception)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// `[policy] message` for every enforced violation.
    pub deny_messages: Vec<String>,
    /// `policy: message` for every audited finding.
    pub warnings: Vec<String>,
    /// `prodguard.io/<policy>` -> messages.
    pub audit_annotations: BTreeMap<String, String>,
    /// Every enforced mutation's operations, in policy order.
    pub patch: Vec<json_patch::PatchOperation>,
    pub reports: Vec<Reported>,
}

impl Decision {
    /// The message the API server shows when the request is denied.
    pub fn deny_message(&self) -> String {
        self.deny_messages.join("; ")
    }
}

/// Enforce: violations deny, mutations patch. Audit: allowed unchanged, with warnings and
/// audit annotations. Off: nothing (such policies do not run at all).
pub fn decide(outcomes: &[PolicyOutcome]) -> Decision {
    let mut decision = Decision {
        allowed: true,
        ..Decision::default()
    };
    for outcome in outcomes {
        for finding in &outcome.findings {
            let (violation, message, patch) = match finding {
                Finding::Violation { message } | Finding::Advisory { message } => {
                    (true, message, &[][..])
                }
                Finding::Mutation { message, patch } => (false, message, &patch[..]),
            };
            let mode = match finding {
                Finding::Advisory { .. } if outcome.mode == PolicyMode::Enforce => {
                    PolicyMode::Audit
                }
                _ => outcome.mode,
            };
            let action = match (mode, violation) {
                (PolicyMode::Off, _) => continue,
                _ if outcome.exception.is_some() => Action::Excepted,
                (PolicyMode::Enforce, true) => {
                    decision.allowed = false;
                    decision
                        .deny_messages
                        .push(format!("[{}] {message}", outcome.policy));
                    Action::Denied
                }
                (PolicyMode::Enforce, false) => {
                    decision.patch.extend_from_slice(patch);
                    Action::Mutated
                }
                (PolicyMode::Audit, _) => {
                    let shown = if violation {
                        message.clone()
                    } else {
                        format!("would patch: {message}")
                    };
                    decision
                        .warnings
                        .push(format!("{}: {shown}", outcome.policy));
                    decision
                        .audit_annotations
                        .entry(format!("prodguard.io/{}", outcome.policy))
                        .and_modify(|v| {
                            v.push_str("; ");
                            v.push_str(&shown);
                        })
                        .or_insert(shown);
                    Action::Audited
                }
            };
            decision.reports.push(Reported {
                policy: outcome.policy,
                action,
                violation,
                message: message.clone(),
                patch: patch.to_vec(),
                exception: outcome.exception.clone(),
            });
        }
    }
    if !decision.allowed {
        // A denied request is not stored, so nothing it would have been patched with applies.
        decision.patch.clear();
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation};
    use serde_json::json;

    fn violation() -> Finding {
        Finding::Violation {
            message: "bad".into(),
        }
    }

    fn op() -> PatchOperation {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec", "x"]),
            value: json!(1),
        })
    }

    fn mutation() -> Finding {
        Finding::Mutation {
            message: "set x".into(),
            patch: vec![op()],
        }
    }

    fn outcome(mode: PolicyMode, finding: Finding) -> PolicyOutcome {
        PolicyOutcome {
            policy: "p",
            mode,
            findings: vec![finding],
            exception: None,
        }
    }

    #[test]
    fn mode_by_outcome_table() {
        struct Row {
            mode: PolicyMode,
            finding: Finding,
            allowed: bool,
            patched: bool,
            warning: Option<&'static str>,
            action: Option<Action>,
        }
        let rows = [
            Row {
                mode: PolicyMode::Enforce,
                finding: violation(),
                allowed: false,
                patched: false,
                warning: None,
                action: Some(Action::Denied),
            },
            Row {
                mode: PolicyMode::Enforce,
                finding: mutation(),
                allowed: true,
                patched: true,
                warning: None,
                action: Some(Action::Mutated),
            },
            Row {
                mode: PolicyMode::Audit,
                finding: violation(),
                allowed: true,
                patched: false,
                warning: Some("p: bad"),
                action: Some(Action::Audited),
            },
            Row {
                mode: PolicyMode::Audit,
                finding: mutation(),
                allowed: true,
                patched: false,
                warning: Some("p: would patch: set x"),
                action: Some(Action::Audited),
            },
            Row {
                mode: PolicyMode::Off,
                finding: violation(),
                allowed: true,
                patched: false,
                warning: None,
                action: None,
            },
            Row {
                mode: PolicyMode::Off,
                finding: mutation(),
                allowed: true,
                patched: false,
                warning: None,
                action: None,
            },
        ];
        for row in rows {
            let d = decide(&[outcome(row.mode, row.finding.clone())]);
            let context = format!("{:?} x {:?}", row.mode, row.finding);
            assert_eq!(d.allowed, row.allowed, "{context}");
            assert_eq!(!d.patch.is_empty(), row.patched, "{context}");
            assert_eq!(
                d.warnings.first().map(String::as_str),
                row.warning,
                "{context}"
            );
            assert_eq!(d.reports.first().map(|r| r.action), row.action, "{context}");
            if row.warning.is_some() {
                assert!(
                    d.audit_annotations.contains_key("prodguard.io/p"),
                    "{context}"
                );
            } else {
                assert!(d.audit_annotations.is_empty(), "{context}");
            }
            if !row.allowed {
                assert_eq!(d.deny_message(), "[p] bad");
            }
        }
    }

    #[test]
    fn an_advisory_warns_in_every_mode_but_off() {
        let advisory = || Finding::Advisory {
            message: "unknown".into(),
        };
        for mode in [PolicyMode::Enforce, PolicyMode::Audit] {
            let d = decide(&[outcome(mode, advisory())]);
            assert!(d.allowed, "{mode:?}");
            assert_eq!(d.warnings, vec!["p: unknown".to_string()]);
            assert_eq!(d.reports[0].action, Action::Audited);
        }
        assert!(decide(&[outcome(PolicyMode::Off, advisory())])
            .reports
            .is_empty());
    }

    #[test]
    fn no_findings_allow_unchanged() {
        let d = decide(&[]);
        assert!(d.allowed && d.patch.is_empty() && d.warnings.is_empty() && d.reports.is_empty());
    }

    #[test]
    fn a_denial_drops_patches_and_keeps_every_message() {
        let d = decide(&[
            outcome(PolicyMode::Enforce, mutation()),
            PolicyOutcome {
                policy: "q",
                mode: PolicyMode::Enforce,
                findings: vec![violation(), violation()],
                exception: None,
            },
            outcome(PolicyMode::Audit, violation()),
        ]);
        assert!(!d.allowed);
        assert!(d.patch.is_empty());
        assert_eq!(d.deny_message(), "[q] bad; [q] bad");
        assert_eq!(d.warnings, vec!["p: bad".to_string()]);
        assert_eq!(d.reports.len(), 4);
    }

    #[test]
    fn an_excepted_policy_neither_denies_nor_patches_nor_warns() {
        let by = ExceptedBy {
            namespace: "ns".into(),
            name: "x".into(),
            reason: "incident".into(),
            expires: "2026-12-01T18:00:00Z".into(),
        };
        for mode in [PolicyMode::Enforce, PolicyMode::Audit] {
            let d = decide(&[
                PolicyOutcome {
                    exception: Some(by.clone()),
                    ..outcome(mode, violation())
                },
                PolicyOutcome {
                    exception: Some(by.clone()),
                    ..outcome(mode, mutation())
                },
            ]);
            assert!(d.allowed, "{mode:?}");
            assert!(d.patch.is_empty() && d.warnings.is_empty() && d.audit_annotations.is_empty());
            assert_eq!(d.reports.len(), 2);
            assert!(d
                .reports
                .iter()
                .all(|r| r.action == Action::Excepted && r.exception.as_ref() == Some(&by)));
        }
        // An exception of one policy leaves the others as they are.
        let d = decide(&[
            PolicyOutcome {
                exception: Some(by.clone()),
                ..outcome(PolicyMode::Enforce, violation())
            },
            PolicyOutcome {
                policy: "q",
                ..outcome(PolicyMode::Enforce, violation())
            },
        ]);
        assert!(!d.allowed);
        assert_eq!(d.deny_message(), "[q] bad");
        let json = serde_json::to_value(&d.reports[0]).unwrap();
        assert_eq!(json["action"], "excepted");
        assert_eq!(json["exception"]["name"], "x");
    }

    #[test]
    fn audit_annotations_join_messages_of_one_policy() {
        let d = decide(&[PolicyOutcome {
            policy: "p",
            mode: PolicyMode::Audit,
            findings: vec![violation(), mutation()],
            exception: None,
        }]);
        assert_eq!(
            d.audit_annotations
                .get("prodguard.io/p")
                .map(String::as_str),
            Some("bad; would patch: set x")
        );
    }
}
