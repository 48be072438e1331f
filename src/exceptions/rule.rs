//! The exceptions' write rule, a validating unit like any policy's: a PolicyException may be
//! written only by prodguard's admins, and only when it names known policies, ends, and ends
//! within `maxExceptionDuration`. It runs in every mode (prodguard's own resource is refused
//! even in global `audit`), and no exception lifts it.

use std::time::{Duration, SystemTime};

use super::{judge_write, POLICY_ID};
use crate::config::Admins;
use crate::policies::floor::{
    cel_string, describe_object, is_admin, Action, Check, Floor, OBJECT_NAME,
};
use crate::policies::resources::{Match, POLICY_EXCEPTIONS};
use crate::unit::{EvalError, Finding, Lookups, Policy, Request, Webhook};

/// The write rule, with the admins and the longest exception allowed.
pub struct WriteRule {
    admins: Admins,
    max: Duration,
    /// Whether the author is judged (`check` has none).
    judge_authors: bool,
}

impl WriteRule {
    pub fn new(admins: Admins, max: Duration, judge_authors: bool) -> WriteRule {
        WriteRule {
            admins,
            max,
            judge_authors,
        }
    }

    /// Its floor: only admins write PolicyExceptions (the rest of the rule, what an exception
    /// says and how long it lasts, needs prodguard: the API server has no clock to judge an end
    /// by, and the policy ids are prodguard's).
    pub fn floor(admins: &Admins) -> Floor {
        let message = format!(
            "{} + ': user \"' + request.userInfo.username + '\" may not ' + \
             (request.operation == 'CREATE' ? 'create' : 'change') + {}",
            describe_object("variables.name"),
            cel_string(
                " PolicyExceptions: only prodguard's admins (admins.users, admins.groups) may \
                 lift a policy"
            )
        );
        Floor {
            part: "",
            operations: &["CREATE", "UPDATE"],
            resources: vec![POLICY_EXCEPTIONS],
            variables: vec![("name", OBJECT_NAME.to_owned())],
            conditions: Vec::new(),
            action: Action::Validate(vec![Check {
                expression: is_admin(admins),
                message,
            }]),
        }
    }

    /// What it acts on: the writes of PolicyExceptions.
    pub fn matches() -> Vec<Match> {
        vec![Match::new(
            Webhook::Validate,
            &["CREATE", "UPDATE"],
            &[POLICY_EXCEPTIONS],
        )]
    }
}

#[async_trait::async_trait]
impl Policy for WriteRule {
    fn id(&self) -> &'static str {
        POLICY_ID
    }

    fn webhook(&self) -> Webhook {
        Webhook::Validate
    }

    async fn evaluate(
        &self,
        request: &Request<'_>,
        _: &Lookups<'_>,
    ) -> Result<Vec<Finding>, EvalError> {
        Ok(judge_write(
            request,
            &self.admins,
            self.max,
            SystemTime::now(),
            self.judge_authors,
        )
        .into_iter()
        .map(|message| Finding::Violation { message })
        .collect())
    }
}
