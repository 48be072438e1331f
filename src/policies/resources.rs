//! The API resources policies act on, named once: what a policy matches is made of these, and
//! the webhook rules, the audit's listing, the metric labels and `check`'s resource names all
//! come from them.

use crate::unit::Webhook;

/// An API resource (or subresource) and the kinds its requests carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    /// Served versions to register and list by, newest first.
    pub versions: &'static [&'static str],
    /// `pods`, or `pods/exec` for a subresource.
    pub plural: &'static str,
    /// The kinds a request for it carries; the first is the stored object's.
    pub kinds: &'static [&'static str],
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        self.kinds[0]
    }

    pub fn is_subresource(&self) -> bool {
        self.plural.contains('/')
    }
}

/// Requests a policy acts on: some operations on some resources, in one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub webhook: Webhook,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operations: &'static [&'static str],
    pub resources: Vec<Resource>,
    /// Whether the background audit lists these resources to judge what is stored.
    pub audited: bool,
}

impl Match {
    pub fn new(
        webhook: Webhook,
        operations: &'static [&'static str],
        resources: &[Resource],
    ) -> Match {
        Match {
            webhook,
            operations,
            resources: resources.to_vec(),
            audited: true,
        }
    }

    /// The same, left out of the background audit.
    pub fn not_audited(self) -> Match {
        Match {
            audited: false,
            ..self
        }
    }
}

const fn core(plural: &'static str, kinds: &'static [&'static str]) -> Resource {
    Resource {
        group: "",
        versions: &["v1"],
        plural,
        kinds,
    }
}

const fn apps(plural: &'static str, kinds: &'static [&'static str]) -> Resource {
    Resource {
        group: "apps",
        versions: &["v1"],
        plural,
        kinds,
    }
}

pub const PODS: Resource = core("pods", &["Pod"]);
/// What Kubernetes 1.20-1.22 send as `EphemeralContainers`, later ones as a `Pod`.
pub const EPHEMERAL_CONTAINERS: Resource =
    core("pods/ephemeralcontainers", &["Pod", "EphemeralContainers"]);
pub const PODS_EXEC: Resource = core("pods/exec", &["PodExecOptions"]);
pub const PODS_ATTACH: Resource = core("pods/attach", &["PodAttachOptions"]);
pub const PODS_PORTFORWARD: Resource = core("pods/portforward", &["PodPortForwardOptions"]);
pub const PODS_PROXY: Resource = core("pods/proxy", &["PodProxyOptions"]);
pub const SERVICES_PROXY: Resource = core("services/proxy", &["ServiceProxyOptions"]);
pub const POD_TEMPLATES: Resource = core("podtemplates", &["PodTemplate"]);
pub const REPLICATION_CONTROLLERS: Resource =
    core("replicationcontrollers", &["ReplicationController"]);
pub const CONFIG_MAPS: Resource = core("configmaps", &["ConfigMap"]);
pub const SECRETS: Resource = core("secrets", &["Secret"]);
pub const DEPLOYMENTS: Resource = apps("deployments", &["Deployment"]);
pub const STATEFUL_SETS: Resource = apps("statefulsets", &["StatefulSet"]);
pub const DAEMON_SETS: Resource = apps("daemonsets", &["DaemonSet"]);
pub const REPLICA_SETS: Resource = apps("replicasets", &["ReplicaSet"]);
pub const DEPLOYMENTS_SCALE: Resource = apps("deployments/scale", &["Scale"]);
pub const STATEFUL_SETS_SCALE: Resource = apps("statefulsets/scale", &["Scale"]);
pub const REPLICA_SETS_SCALE: Resource = apps("replicasets/scale", &["Scale"]);
pub const JOBS: Resource = Resource {
    group: "batch",
    versions: &["v1"],
    plural: "jobs",
    kinds: &["Job"],
};
/// `batch/v1` on current clusters, `batch/v1beta1` before 1.21.
pub const CRON_JOBS: Resource = Resource {
    group: "batch",
    versions: &["v1", "v1beta1"],
    plural: "cronjobs",
    kinds: &["CronJob"],
};
/// Registered as `autoscaling/v1`: with `matchPolicy: Equivalent` the API server converts
/// the other versions' requests to it.
pub const HORIZONTAL_POD_AUTOSCALERS: Resource = Resource {
    group: "autoscaling",
    versions: &["v1"],
    plural: "horizontalpodautoscalers",
    kinds: &["HorizontalPodAutoscaler"],
};
pub const INGRESSES: Resource = Resource {
    group: "networking.k8s.io",
    versions: &["v1"],
    plural: "ingresses",
    kinds: &["Ingress"],
};

/// Traefik's routes and middlewares (`traefik.io/v1alpha1`, Traefik v3).
pub const INGRESS_ROUTES: Resource = Resource {
    group: "traefik.io",
    versions: &["v1alpha1"],
    plural: "ingressroutes",
    kinds: &["IngressRoute"],
};
pub const MIDDLEWARES: Resource = Resource {
    group: "traefik.io",
    versions: &["v1alpha1"],
    plural: "middlewares",
    kinds: &["Middleware"],
};

/// Custom resources: a cluster without their CRDs has none of them (the audit lists them when
/// they are served, and is not failed when they are not).
pub const OPTIONAL: &[Resource] = &[INGRESS_ROUTES, MIDDLEWARES];

const fn rbac(plural: &'static str, kinds: &'static [&'static str]) -> Resource {
    Resource {
        group: "rbac.authorization.k8s.io",
        versions: &["v1"],
        plural,
        kinds,
    }
}

pub const ROLES: Resource = rbac("roles", &["Role"]);
pub const CLUSTER_ROLES: Resource = rbac("clusterroles", &["ClusterRole"]);
pub const ROLE_BINDINGS: Resource = rbac("rolebindings", &["RoleBinding"]);
pub const CLUSTER_ROLE_BINDINGS: Resource = rbac("clusterrolebindings", &["ClusterRoleBinding"]);
/// prodguard's own PolicyExceptions, whose writes the engine judges itself (no policy of the
/// registry: it cannot be turned off).
pub const POLICY_EXCEPTIONS: Resource = Resource {
    group: "prodguard.io",
    versions: &["v1alpha1"],
    plural: "policyexceptions",
    kinds: &["PolicyException"],
};

/// Every resource above.
pub const ALL: &[Resource] = &[
    PODS,
    EPHEMERAL_CONTAINERS,
    PODS_EXEC,
    PODS_ATTACH,
    PODS_PORTFORWARD,
    PODS_PROXY,
    SERVICES_PROXY,
    POD_TEMPLATES,
    REPLICATION_CONTROLLERS,
    CONFIG_MAPS,
    SECRETS,
    DEPLOYMENTS,
    STATEFUL_SETS,
    DAEMON_SETS,
    REPLICA_SETS,
    DEPLOYMENTS_SCALE,
    STATEFUL_SETS_SCALE,
    REPLICA_SETS_SCALE,
    JOBS,
    CRON_JOBS,
    HORIZONTAL_POD_AUTOSCALERS,
    INGRESSES,
    INGRESS_ROUTES,
    MIDDLEWARES,
    ROLES,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    CLUSTER_ROLE_BINDINGS,
    POLICY_EXCEPTIONS,
];

/// The stored resource of kind `kind`, if it is one above.
pub fn of_kind(kind: &str) -> Option<Resource> {
    ALL.iter()
        .find(|r| !r.is_subresource() && r.kind() == kind)
        .copied()
}

/// Any group's resource of `kind`: a kind prodguard does not know the API of (a custom
/// resource a policy setting names). Matched by the kind the request carries; the webhook
/// configuration needs a rule of its own for it. Each distinct kind is kept once for the
/// process's life (configurations name a handful).
pub fn of_any_group(kind: &str) -> Resource {
    static KINDS: std::sync::Mutex<Vec<&'static [&'static str]>> =
        std::sync::Mutex::new(Vec::new());
    let mut kinds = match KINDS.lock() {
        Ok(kinds) => kinds,
        Err(poisoned) => poisoned.into_inner(),
    };
    let interned = match kinds.iter().find(|k| k[0] == kind) {
        Some(found) => *found,
        None => {
            let name: &'static str = Box::leak(kind.to_owned().into_boxed_str());
            let slice: &'static [&'static str] = Box::leak(vec![name].into_boxed_slice());
            kinds.push(slice);
            slice
        }
    };
    Resource {
        group: ANY_GROUP,
        versions: &[],
        plural: "",
        kinds: interned,
    }
}

/// The group of [`of_any_group`]'s resources.
pub const ANY_GROUP: &str = "*";

/// The pod-bearing workloads: what container policies act on.
pub const WORKLOADS: &[Resource] = &[
    DEPLOYMENTS,
    STATEFUL_SETS,
    DAEMON_SETS,
    REPLICA_SETS,
    JOBS,
    CRON_JOBS,
    POD_TEMPLATES,
    REPLICATION_CONTROLLERS,
];
