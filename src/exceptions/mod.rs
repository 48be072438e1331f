//! PolicyExceptions (`prodguard.io/v1alpha1`, namespaced): an admin lifts named policies for
//! named or selected objects of one namespace, optionally only for some users, for a reason,
//! until a time. One [`Exception`] type is read from the same view the policies read, judged by
//! one set of rules, and matched by one function ([`ExceptionSet::covering`]) in the webhook,
//! the background audit and `check`.
//!
//! Two parts run in the engine: the write rule ([`rule::WriteRule`], a unit like any policy's)
//! refuses writes of exceptions by non-admins and exceptions that are unbounded, already past,
//! too long or name an unknown policy ([`judge_write`]); the lifting stage
//! ([`Exceptions::lifted`], in [`lifting`]) marks what an exception in force lifts, between
//! the units and `decide`. `serve` keeps the
//! cluster's exceptions in memory from a watch ([`watch`]); a request never waits for them, and
//! until the first list is complete prodguard decides as if there were none.

pub mod lifting;
pub mod rule;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use wildmatch::WildMatch;

use crate::config::Admins;
use crate::unit::Request;
use crate::view::{ExceptionSpec, Object, Spec};

use crate::policies::resources::POLICY_EXCEPTIONS;

/// The PolicyException resource (`policies::resources` names every resource prodguard knows).
pub const GROUP: &str = POLICY_EXCEPTIONS.group;
pub const VERSION: &str = POLICY_EXCEPTIONS.versions[0];
pub const KIND: &str = POLICY_EXCEPTIONS.kinds[0];
pub const PLURAL: &str = POLICY_EXCEPTIONS.plural;
/// The id under which refusals of PolicyException writes, and the audit's notes about
/// expired exceptions, are reported.
pub const POLICY_ID: &str = "policy-exception";
/// How far ahead an exception may end unless `maxExceptionDuration` says otherwise.
pub const DEFAULT_MAX_DURATION: Duration = crate::config::DEFAULT_MAX_EXCEPTION_DURATION;
/// How long after its end the background audit still reports an exception.
pub const RECENTLY_EXPIRED: Duration = Duration::from_secs(24 * 3600);
/// The most exceptions the store holds; the rest are ignored (and counted), which can only
/// make prodguard stricter.
pub const MAX_EXCEPTIONS: usize = 2000;

/// A valid PolicyException, as every path applies it.
#[derive(Debug, Clone)]
pub struct Exception {
    pub namespace: String,
    pub name: String,
    /// The policy ids it lifts (each one of the registry's).
    pub policies: Vec<&'static str>,
    /// Kinds it holds for; empty for every kind.
    kinds: Vec<String>,
    /// Object names (with `*` and `?`); empty for every name the selector selects.
    names: Vec<WildMatch>,
    selector: Option<Selector>,
    /// `names` and `selector` as written, for the CEL floor.
    name_patterns: Vec<String>,
    selector_source: Option<LabelSelector>,
    users: Vec<String>,
    groups: Vec<String>,
    /// Service accounts as the API server names their users.
    service_accounts: Vec<String>,
    pub reason: String,
    pub expires: SystemTime,
    /// `expires` as written.
    pub expires_text: String,
}

/// The kind a request is about in CEL (`Request::target_kind`): the parent's for a
/// subresource of a known kind.
fn target_kind_cel() -> String {
    use crate::policies::floor::REQUEST_SUBRESOURCE;
    let pairs: Vec<String> = crate::unit::PARENT_KINDS
        .iter()
        .map(|(plural, kind)| format!("'{plural}': '{kind}'"))
        .collect();
    let map = format!("{{{}}}", pairs.join(", "));
    format!(
        "{REQUEST_SUBRESOURCE} != '' && request.resource.resource in {map} ? \
         {map}[request.resource.resource] : request.kind.kind"
    )
}

/// Whom a request is from and what it is about, as exceptions match it.
pub struct Target<'a> {
    pub namespace: &'a str,
    /// The kind of the object the request is about: `Pod` for `pods/exec`, `Deployment` for
    /// `deployments/scale`.
    pub kind: &'a str,
    pub name: &'a str,
    pub username: &'a str,
    pub groups: &'a [std::borrow::Cow<'a, str>],
}

impl Exception {
    /// Reads an exception from its view (`object` is a `PolicyException` of `namespace`: its
    /// own, or where it is applied when it names none), judging everything but time: every
    /// problem found, each naming its field.
    pub fn from_view(object: &Object<'_>, namespace: &str) -> Result<Exception, Vec<String>> {
        let mut problems = Vec::new();
        let empty = ExceptionSpec::default();
        let spec = match &object.spec {
            Spec::PolicyException(spec) => spec,
            _ => {
                problems.push("spec is required: give policies, match, reason and expires".into());
                &empty
            }
        };
        let policies = policies_of(spec, &mut problems);
        let (kinds, names, selector) = match_of(spec, &mut problems);
        let name_patterns = spec
            .match_
            .as_ref()
            .and_then(|m| m.names.as_ref())
            .map(|l| l.0.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        let selector_source = spec.match_.as_ref().and_then(|m| m.selector.clone());
        let namespace = object.namespace().unwrap_or(namespace).to_owned();
        let (users, groups, service_accounts) = subjects_of(spec, &namespace, &mut problems);
        let reason = spec.reason.as_deref().unwrap_or("").trim().to_owned();
        if reason.is_empty() {
            problems
                .push("spec.reason is required: say why the exception is needed, for whom".into());
        }
        let expires_text = spec.expires.as_deref().unwrap_or("").to_owned();
        let expires = if expires_text.is_empty() {
            problems.push(
                "spec.expires is required: an exception without an end is not accepted; give an \
                 RFC 3339 time such as 2026-12-01T18:00:00Z"
                    .into(),
            );
            SystemTime::UNIX_EPOCH
        } else {
            parse_time(&expires_text).unwrap_or_else(|e| {
                problems.push(e);
                SystemTime::UNIX_EPOCH
            })
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Exception {
            name: object.name().unwrap_or_default().to_owned(),
            namespace,
            policies,
            kinds,
            names,
            selector,
            name_patterns,
            selector_source,
            users,
            groups,
            service_accounts,
            reason,
            expires,
            expires_text,
        })
    }

    /// Reads an exception from a PolicyException's JSON text, through the same view.
    pub fn from_text(text: &str, namespace: &str) -> Result<Exception, Vec<String>> {
        let view = Object::decode(KIND, text)
            .map_err(|e| vec![e.to_string()])?
            .unwrap_or_default();
        Exception::from_view(&view, namespace)
    }

    /// `PolicyException openg2p/dba-break-glass`.
    pub fn describe(&self) -> String {
        format!("{KIND} {}/{}", self.namespace, self.name)
    }

    /// Whether the exception applies at `now`: before its end, and its end no further ahead
    /// than `max` (an exception that reached the cluster without prodguard's check, ending
    /// too far ahead, is not honoured).
    pub fn in_force(&self, now: SystemTime, max: Duration) -> bool {
        now < self.expires && self.expires <= now + max
    }

    /// Why an exception may not be written at `now`: past, or ending more than `max` ahead.
    pub fn window_problem(&self, now: SystemTime, max: Duration) -> Option<String> {
        if self.expires <= now {
            Some(format!(
                "spec.expires {} is already past: the exception would be expired on arrival",
                self.expires_text
            ))
        } else if self.expires > now + max {
            Some(format!(
                "spec.expires {} is more than {} ahead (maxExceptionDuration): an exception must end; \
                 renew it when it runs out",
                self.expires_text,
                humantime::format_duration(max)
            ))
        } else {
            None
        }
    }

    /// Whether the exception names what the request is about (`labels`: the object's, when
    /// they could be read), and the request comes from one of its subjects.
    fn holds_for(&self, target: &Target<'_>, labels: Option<&BTreeMap<String, String>>) -> bool {
        if target.namespace != self.namespace {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == target.kind) {
            return false;
        }
        if !self.names.is_empty() && !self.names.iter().any(|n| n.matches(target.name)) {
            return false;
        }
        if !self.asked_by(target.username, target.groups) {
            return false;
        }
        match &self.selector {
            None => true,
            // Labels that cannot be read select nothing.
            Some(selector) => labels.is_some_and(|labels| selector.matches(labels)),
        }
    }

    /// [`Exception::holds_for`] in CEL, on the request the API server evaluates (its object's
    /// labels are the written or deleted object's; a subresource other than a pod's carries
    /// none, so a selector then selects nothing, as in the webhook).
    pub fn cel_holds(&self) -> String {
        use crate::policies::floor::{
            all_of, any_of, cel_string, cel_strings, glob_matches, OBJECT_NAME, REQUEST_NAMESPACE,
            REQUEST_SUBRESOURCE,
        };
        let mut all = vec![format!(
            "{REQUEST_NAMESPACE} == {}",
            cel_string(&self.namespace)
        )];
        if !self.kinds.is_empty() {
            all.push(format!(
                "({}) in {}",
                target_kind_cel(),
                cel_strings(&self.kinds)
            ));
        }
        if !self.name_patterns.is_empty() {
            let name = format!("({OBJECT_NAME})");
            let any: Vec<String> = self
                .name_patterns
                .iter()
                .map(|p| glob_matches(&name, p))
                .collect();
            all.push(any_of(&any));
        }
        if self.has_subjects() {
            let mut names = self.users.clone();
            names.extend(self.service_accounts.iter().cloned());
            let mut any = Vec::new();
            if !names.is_empty() {
                any.push(format!(
                    "request.userInfo.username in {}",
                    cel_strings(&names)
                ));
            }
            if !self.groups.is_empty() {
                any.push(format!(
                    "has(request.userInfo.groups) && request.userInfo.groups.exists(g, g in {})",
                    cel_strings(&self.groups)
                ));
            }
            all.push(any_of(&any));
        }
        if let Some(selector) = &self.selector_source {
            all.push(format!(
                "({REQUEST_SUBRESOURCE} == '' || request.resource.resource == 'pods') && \
                     (object != null || oldObject != null)"
            ));
            let labels = "(object != null ? (has(object.metadata.labels) ? object.metadata.labels \
                          : {}) : (has(oldObject.metadata.labels) ? oldObject.metadata.labels : {}))";
            for (key, value) in selector.match_labels.iter().flatten() {
                let k = cel_string(key);
                all.push(format!(
                    "{k} in {labels} && {labels}[{k}] == {}",
                    cel_string(value)
                ));
            }
            for e in selector.match_expressions.iter().flatten() {
                let k = cel_string(&e.key);
                let values = cel_strings(e.values.as_deref().unwrap_or(&[]));
                all.push(match e.operator.as_str() {
                    "In" => format!("{k} in {labels} && {labels}[{k}] in {values}"),
                    "NotIn" => format!("!({k} in {labels}) || !({labels}[{k}] in {values})"),
                    "Exists" => format!("{k} in {labels}"),
                    // DoesNotExist; an unknown operator was refused when the exception was read.
                    _ => format!("!({k} in {labels})"),
                });
            }
        }
        all_of(&all)
    }

    fn has_subjects(&self) -> bool {
        !(self.users.is_empty() && self.groups.is_empty() && self.service_accounts.is_empty())
    }

    /// Whether a request by `username` in `groups` is one the exception holds for.
    fn asked_by(&self, username: &str, groups: &[std::borrow::Cow<'_, str>]) -> bool {
        !self.has_subjects()
            || self.users.iter().any(|u| u == username)
            || self.service_accounts.iter().any(|s| s == username)
            || groups.iter().any(|g| self.groups.iter().any(|x| x == g))
    }
}

fn policies_of(spec: &ExceptionSpec<'_>, problems: &mut Vec<String>) -> Vec<&'static str> {
    let ids = crate::policies::IDS;
    let named = spec
        .policies
        .as_ref()
        .map(|p| p.0.as_slice())
        .unwrap_or(&[]);
    if named.is_empty() {
        problems.push(format!(
            "spec.policies must name at least one policy (one of: {})",
            ids.join(", ")
        ));
    }
    let mut policies = Vec::new();
    for name in named {
        match ids.iter().find(|id| **id == name.as_ref()) {
            Some(id) if !policies.contains(id) => policies.push(*id),
            Some(_) => {}
            None => problems.push(match crate::config::closest(name, ids) {
                Some(best) => format!(
                    "spec.policies names {name:?}, which is no policy; did you mean {best:?}? (one of: {})",
                    ids.join(", ")
                ),
                None => format!("spec.policies names {name:?}, which is no policy"),
            }),
        }
    }
    policies
}

type MatchParts = (Vec<String>, Vec<WildMatch>, Option<Selector>);

fn match_of(spec: &ExceptionSpec<'_>, problems: &mut Vec<String>) -> MatchParts {
    let Some(m) = &spec.match_ else {
        problems.push(
            "spec.match is required: name the objects (match.names) or select them \
             (match.selector); an exception holds in its own namespace only"
                .into(),
        );
        return (Vec::new(), Vec::new(), None);
    };
    let strings =
        |list: &Option<crate::view::Strings<'_>>, field: &str, problems: &mut Vec<String>| {
            let items: Vec<String> = list
                .as_ref()
                .map(|l| l.0.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            if items.iter().any(|s| s.trim().is_empty()) {
                problems.push(format!("spec.match.{field} has an empty entry"));
            }
            items
        };
    let kinds = strings(&m.kinds, "kinds", problems);
    let names: Vec<WildMatch> = strings(&m.names, "names", problems)
        .iter()
        .map(|n| WildMatch::new(n))
        .collect();
    let selector = match &m.selector {
        None => None,
        Some(s)
            if s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty) =>
        {
            problems.push(
                "spec.match.selector is empty, which selects every object; give matchLabels or \
                 matchExpressions"
                    .into(),
            );
            None
        }
        Some(s) => match Selector::try_from(s.clone()) {
            Ok(selector) => Some(selector),
            Err(e) => {
                problems.push(format!(
                    "spec.match.selector is not a valid label selector: {e}"
                ));
                None
            }
        },
    };
    if names.is_empty() && m.selector.is_none() {
        problems.push(
            "spec.match must name the objects (match.names, with * and ?) or select them \
             (match.selector): kinds alone would lift the policies for a whole namespace"
                .into(),
        );
    }
    (kinds, names, selector)
}

type Subjects = (Vec<String>, Vec<String>, Vec<String>);

fn subjects_of(spec: &ExceptionSpec<'_>, namespace: &str, problems: &mut Vec<String>) -> Subjects {
    let Some(s) = &spec.subjects else {
        return Default::default();
    };
    let list = |l: &Option<crate::view::Strings<'_>>| -> Vec<String> {
        l.as_ref()
            .map(|l| l.0.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    };
    let users = list(&s.users);
    let groups = list(&s.groups);
    if users.iter().chain(&groups).any(|u| u.trim().is_empty()) {
        problems.push("spec.subjects has an empty user or group".into());
    }
    let mut accounts = Vec::new();
    for account in s.service_accounts.iter().flatten() {
        if account.name.trim().is_empty() {
            problems.push("spec.subjects.serviceAccounts has an entry without a name".into());
            continue;
        }
        let ns = account.namespace.as_deref().unwrap_or(namespace);
        accounts.push(format!("system:serviceaccount:{ns}:{}", account.name));
    }
    if users.is_empty() && groups.is_empty() && accounts.is_empty() {
        problems.push(
            "spec.subjects is given but names nobody; leave it out to hold for every user, or \
             name users, groups or serviceAccounts"
                .into(),
        );
    }
    (users, groups, accounts)
}

/// An RFC 3339 time (`2026-12-01T18:00:00Z`, or with an offset).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let invalid = |e: &dyn std::fmt::Display| {
        format!("spec.expires {text:?} is not an RFC 3339 time such as 2026-12-01T18:00:00Z ({e})")
    };
    let at: k8s_openapi::jiff::Timestamp = text.parse().map_err(|e| invalid(&e))?;
    let seconds = at.as_second();
    let nanos = u32::try_from(at.subsec_nanosecond()).unwrap_or(0);
    match u64::try_from(seconds) {
        Ok(s) => Ok(SystemTime::UNIX_EPOCH + Duration::new(s, nanos)),
        // Before 1970: long past.
        Err(_) => Ok(SystemTime::UNIX_EPOCH),
    }
}

/// What is wrong with writing this PolicyException at `now`: an author who is not an admin
/// (when `judge_author`; `check` has no author), and every problem of the exception itself.
pub fn judge_write(
    request: &Request<'_>,
    admins: &Admins,
    max: Duration,
    now: SystemTime,
    judge_author: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if judge_author && !admins.is_admin(request.username, request.groups) {
        problems.push(format!(
            "user {:?} may not {} PolicyExceptions: only prodguard's admins (admins.users, \
             admins.groups) may lift a policy",
            request.username,
            if request.operation == crate::unit::Operation::Create {
                "create"
            } else {
                "change"
            }
        ));
    }
    let Some(object) = request.object else {
        problems.push("the request carries no PolicyException".into());
        return problems;
    };
    match Exception::from_view(object, request.namespace) {
        Ok(exception) => problems.extend(exception.window_problem(now, max)),
        Err(found) => problems.extend(found),
    }
    // `PolicyException openg2p/dba-break-glass: ...`
    let what = request.describe();
    problems
        .into_iter()
        .map(|p| format!("{what}: {p}"))
        .collect()
}

/// The exceptions of a cluster (or of `check`'s input), by namespace.
#[derive(Debug, Default)]
pub struct ExceptionSet {
    by_namespace: HashMap<String, Vec<Arc<Exception>>>,
}

impl ExceptionSet {
    pub fn new<E: Into<Arc<Exception>>>(exceptions: impl IntoIterator<Item = E>) -> ExceptionSet {
        let mut by_namespace: HashMap<String, Vec<Arc<Exception>>> = HashMap::new();
        for e in exceptions {
            let e = e.into();
            by_namespace.entry(e.namespace.clone()).or_default().push(e);
        }
        for list in by_namespace.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        ExceptionSet { by_namespace }
    }

    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Exception>> {
        self.by_namespace.values().flatten()
    }

    /// How many are in force at `now`.
    pub fn in_force(&self, now: SystemTime, max: Duration) -> usize {
        self.iter().filter(|e| e.in_force(now, max)).count()
    }

    /// When the first exception in force at `now` ends.
    pub fn next_end(&self, now: SystemTime, max: Duration) -> Option<SystemTime> {
        self.iter()
            .filter(|e| e.in_force(now, max))
            .map(|e| e.expires)
            .min()
    }

    /// Whether an exception that could lift `policy` in `namespace` at `now` selects by labels
    /// (so that matching needs the object's labels): none, for most requests.
    pub fn needs_labels(
        &self,
        namespace: &str,
        policy: &str,
        now: SystemTime,
        max: Duration,
    ) -> bool {
        self.candidates(namespace, policy, now, max)
            .any(|e| e.selector.is_some())
    }

    /// Those in the target's namespace that lift `policy` and are in force at `now`.
    fn candidates<'s>(
        &'s self,
        namespace: &str,
        policy: &'s str,
        now: SystemTime,
        max: Duration,
    ) -> impl Iterator<Item = &'s Arc<Exception>> + 's {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(move |e| e.in_force(now, max) && e.policies.contains(&policy))
    }

    /// The first exception (by name) in force at `now` that lifts `policy` for `target`.
    /// `labels` are the object's, when read (see [`ExceptionSet::needs_labels`]).
    pub fn covering(
        &self,
        policy: &str,
        target: &Target<'_>,
        labels: Option<&BTreeMap<String, String>>,
        now: SystemTime,
        max: Duration,
    ) -> Option<Arc<Exception>> {
        self.candidates(target.namespace, policy, now, max)
            .find(|e| e.holds_for(target, labels))
            .cloned()
    }

    /// Exceptions that ended within [`RECENTLY_EXPIRED`] before `now`.
    pub fn recently_expired(&self, now: SystemTime) -> Vec<Arc<Exception>> {
        let since = now
            .checked_sub(RECENTLY_EXPIRED)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut expired: Vec<_> = self
            .iter()
            .filter(|e| e.expires <= now && e.expires > since)
            .cloned()
            .collect();
        expired.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        expired
    }
}

/// Where the engine finds exceptions: a set that is swapped whole when the cluster's change,
/// and whether it is complete yet.
#[derive(Debug, Default)]
pub struct Exceptions {
    current: RwLock<Option<Arc<ExceptionSet>>>,
}

impl Exceptions {
    /// A store that knows no exceptions until [`Exceptions::replace`] is first called (for a
    /// watch: fail closed until the first list is complete).
    pub fn unsynced() -> Arc<Exceptions> {
        Arc::new(Exceptions::default())
    }

    /// A store holding `set` from the start (`check`'s input, tests).
    pub fn fixed(set: ExceptionSet) -> Arc<Exceptions> {
        let store = Exceptions::default();
        store.replace(set);
        Arc::new(store)
    }

    /// The exceptions now, or `None` while the store is not synced.
    pub fn current(&self) -> Option<Arc<ExceptionSet>> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, set: ExceptionSet) {
        let set = Some(Arc::new(set));
        match self.current.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    const NOW: u64 = 1_800_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn rfc3339(seconds: u64) -> String {
        k8s_openapi::jiff::Timestamp::from_second(seconds as i64)
            .unwrap()
            .to_string()
    }

    fn exception(spec: serde_json::Value) -> Result<Exception, Vec<String>> {
        let object = crate::view::owned(json!({
            "apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
            "metadata": {"name": "dba-break-glass", "namespace": "openg2p"},
            "spec": spec,
        }))
        .unwrap();
        Exception::from_view(&object, "default")
    }

    fn break_glass() -> Exception {
        exception(json!({
            "policies": ["db-access"],
            "match": {"kinds": ["Pod"], "names": ["social-registry-postgresql-?"]},
            "subjects": {"users": ["dba1"], "groups": ["dbas"],
                         "serviceAccounts": [{"name": "backup"}, {"namespace": "ops", "name": "runner"}]},
            "reason": "incident 42",
            "expires": rfc3339(NOW + 3600),
        }))
        .unwrap()
    }

    fn target<'a>(name: &'a str, user: &'a str, groups: &'a [Cow<'a, str>]) -> Target<'a> {
        Target {
            namespace: "openg2p",
            kind: "Pod",
            name,
            username: user,
            groups,
        }
    }

    #[test]
    fn matching_by_namespace_kind_name_and_subject() {
        let set = ExceptionSet::new([break_glass()]);
        let max = DEFAULT_MAX_DURATION;
        let covers = |t: &Target<'_>| set.covering("db-access", t, None, at(NOW), max).is_some();
        assert!(covers(&target("social-registry-postgresql-0", "dba1", &[])));
        assert!(covers(&target(
            "social-registry-postgresql-0",
            "x",
            &[Cow::Borrowed("dbas")]
        )));
        assert!(covers(&target(
            "social-registry-postgresql-0",
            "system:serviceaccount:openg2p:backup",
            &[]
        )));
        assert!(covers(&target(
            "social-registry-postgresql-0",
            "system:serviceaccount:ops:runner",
            &[]
        )));
        // Another user, another pod, another kind, another namespace, another policy.
        assert!(!covers(&target("social-registry-postgresql-0", "dev", &[])));
        assert!(!covers(&target(
            "social-registry-postgresql-10",
            "dba1",
            &[]
        )));
        assert!(!covers(&target("social-registry-minio-0", "dba1", &[])));
        assert!(!covers(&Target {
            kind: "Deployment",
            ..target("social-registry-postgresql-0", "dba1", &[])
        }));
        assert!(!covers(&Target {
            namespace: "other",
            ..target("social-registry-postgresql-0", "dba1", &[])
        }));
        assert!(set
            .covering(
                "min-replicas",
                &target("social-registry-postgresql-0", "dba1", &[]),
                None,
                at(NOW),
                max
            )
            .is_none());
    }

    #[test]
    fn expiry_at_the_boundary() {
        let e = break_glass();
        let max = DEFAULT_MAX_DURATION;
        assert!(e.in_force(at(NOW + 3599), max));
        assert!(
            !e.in_force(at(NOW + 3600), max),
            "it ends the second it expires"
        );
        assert!(!e.in_force(at(NOW + 3601), max));
        // An end too far ahead (it reached the cluster without prodguard's check) is not honoured.
        assert!(!e.in_force(at(NOW), Duration::from_secs(3599)));
        assert!(e.in_force(at(NOW), Duration::from_secs(3600)));
        let set = ExceptionSet::new([e]);
        assert_eq!(set.in_force(at(NOW), max), 1);
        assert_eq!(set.in_force(at(NOW + 3600), max), 0);
        assert!(set.recently_expired(at(NOW + 3599)).is_empty());
        assert_eq!(set.recently_expired(at(NOW + 3600)).len(), 1);
        assert_eq!(set.recently_expired(at(NOW + 3600 + 86_399)).len(), 1);
        assert!(set.recently_expired(at(NOW + 3600 + 86_400)).is_empty());
    }

    #[test]
    fn a_selector_needs_the_labels() {
        let e = exception(json!({
            "policies": ["min-replicas"],
            "match": {"selector": {"matchLabels": {"app": "migrate"}}},
            "reason": "one-off migration", "expires": rfc3339(NOW + 60),
        }))
        .unwrap();
        let set = ExceptionSet::new([e]);
        let max = DEFAULT_MAX_DURATION;
        let t = Target {
            kind: "Job",
            ..target("migrate-1", "anyone", &[])
        };
        let labelled = BTreeMap::from([("app".to_owned(), "migrate".to_owned())]);
        let other = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(set.needs_labels("openg2p", "min-replicas", at(NOW), max));
        assert!(!set.needs_labels("openg2p", "db-access", at(NOW), max));
        assert!(set
            .covering("min-replicas", &t, Some(&labelled), at(NOW), max)
            .is_some());
        assert!(set
            .covering("min-replicas", &t, Some(&other), at(NOW), max)
            .is_none());
        assert!(set
            .covering("min-replicas", &t, None, at(NOW), max)
            .is_none());
    }

    #[test]
    fn validation_names_every_problem() {
        let problems =
            exception(json!({"policies": ["db-acess"], "match": {"kinds": ["Pod"]}})).unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "spec.policies names \"db-acess\", which is no policy; did you mean \"db-access\"?",
            "spec.match must name the objects (match.names, with * and ?) or select them",
            "spec.reason is required",
            "spec.expires is required: an exception without an end is not accepted",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        let problems = exception(json!({
            "match": {"selector": {}}, "subjects": {}, "reason": "x", "expires": "tomorrow"
        }))
        .unwrap_err()
        .join("\n");
        for expected in [
            "spec.policies must name at least one policy",
            "spec.match.selector is empty, which selects every object",
            "spec.subjects is given but names nobody",
            "spec.expires \"tomorrow\" is not an RFC 3339 time",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
        assert!(exception(
            json!({"match": {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}})
        )
        .unwrap_err()
        .join("\n")
        .contains("spec.match.selector is not a valid label selector"));
    }

    #[test]
    fn the_window_of_a_write() {
        let e = break_glass();
        assert_eq!(e.window_problem(at(NOW), DEFAULT_MAX_DURATION), None);
        assert!(e
            .window_problem(at(NOW + 3600), DEFAULT_MAX_DURATION)
            .unwrap()
            .contains("is already past: the exception would be expired on arrival"));
        assert!(e
            .window_problem(at(NOW), Duration::from_secs(1800))
            .unwrap()
            .contains("is more than 30m ahead (maxExceptionDuration)"));
        // Offsets are times like any other.
        assert_eq!(
            parse_time("2027-01-15T09:00:00+01:00").unwrap(),
            parse_time("2027-01-15T08:00:00Z").unwrap()
        );
        assert!(
            parse_time("2027-01-15T09:00:00").is_err(),
            "a time without an offset is ambiguous"
        );
    }

    #[test]
    fn the_store_is_empty_until_synced() {
        let store = Exceptions::unsynced();
        assert!(store.current().is_none());
        store.replace(ExceptionSet::new([break_glass()]));
        assert_eq!(store.current().map(|s| s.len()), Some(1));
    }
}
