//! The view of an admission request that policies read (built by `admission` from a review,
//! by `check` from a file, by the audit from a listed object).

use std::borrow::Cow;

use crate::view::{Object, ShapeError};

pub use kube::core::admission::Operation;

/// One admission request, borrowed from the decoded review (or built by `check`).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub uid: &'a str,
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    /// The resource (`pods`, `deployments`) and its API group and version, which differ from
    /// the kind's on subresources (a `deployments/scale` request carries an `autoscaling/v1`
    /// Scale).
    pub resource: &'a str,
    pub resource_group: &'a str,
    pub resource_version: &'a str,
    pub sub_resource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub username: &'a str,
    pub groups: &'a [Cow<'a, str>],
    pub object: Option<&'a Object<'a>>,
    pub old_object: Option<&'a Object<'a>>,
    pub dry_run: bool,
    /// Why an object of the request does not have its kind's shape: the request is denied
    /// with it, unless prodguard stays out of its namespace.
    pub shape_error: Option<&'a ShapeError>,
}

impl<'a> Request<'a> {
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub fn operation_name(&self) -> &'static str {
        match self.operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }

    /// The object's name: the request's, else the object's, else its generateName prefix.
    pub fn object_name(&self) -> &'a str {
        if self.resource == "services" && self.sub_resource == Some("proxy") {
            return proxied_service(self.name);
        }
        if !self.name.is_empty() {
            return self.name;
        }
        let meta = self.object.or(self.old_object).map(|o| &o.metadata);
        meta.and_then(|m| m.name.as_deref().or(m.generate_name.as_deref()))
            .unwrap_or("")
    }

    /// `Deployment openg2p/web`, `pods/exec openg2p/db-0`: how messages name the target.
    pub fn describe(&self) -> String {
        let what = match self.sub_resource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.kind.to_owned(),
        };
        let name = self.object_name();
        let name = if name.is_empty() { "(unnamed)" } else { name };
        if self.namespace.is_empty() {
            format!("{what} {name}")
        } else {
            format!("{what} {}/{name}", self.namespace)
        }
    }

    /// The kind of the object the request is about: the parent's for a subresource of a
    /// known kind (`pods/exec` is about a Pod, `deployments/scale` about a Deployment).
    pub fn target_kind(&self) -> &'a str {
        match self.sub_resource.and(parent_kind(self.resource)) {
            Some(kind) => kind,
            None => self.kind,
        }
    }

    /// Whether this is a CREATE or UPDATE of the object itself (no subresource).
    pub fn is_write(&self) -> bool {
        matches!(self.operation, Operation::Create | Operation::Update)
            && self.sub_resource.is_none()
    }
}

/// The Service a `services/proxy` request names: its path says `[https:|http:]name[:port]`.
pub fn proxied_service(name: &str) -> &str {
    let name = name
        .strip_prefix("https:")
        .or_else(|| name.strip_prefix("http:"))
        .unwrap_or(name);
    name.split(':').next().unwrap_or(name)
}

/// The resources whose subresources prodguard names by their parent's kind, with that kind.
pub const PARENT_KINDS: &[(&str, &str)] = &[
    ("pods", "Pod"),
    ("services", "Service"),
    ("deployments", "Deployment"),
    ("statefulsets", "StatefulSet"),
    ("replicasets", "ReplicaSet"),
    ("replicationcontrollers", "ReplicationController"),
    ("daemonsets", "DaemonSet"),
    ("jobs", "Job"),
    ("cronjobs", "CronJob"),
];

/// The kind a subresource's parent resource holds (`deployments/scale` is about a Deployment).
pub fn parent_kind(resource: &str) -> Option<&'static str> {
    PARENT_KINDS
        .iter()
        .find(|(plural, _)| *plural == resource)
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::proxied_service;

    #[test]
    fn a_proxied_service_is_named_without_scheme_or_port() {
        assert_eq!(proxied_service("db"), "db");
        assert_eq!(proxied_service("db:5432"), "db");
        assert_eq!(proxied_service("https:db:metrics"), "db");
        assert_eq!(proxied_service("http:db"), "db");
    }
}
