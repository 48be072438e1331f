//! The one handle through which policies read the cluster while they evaluate a request: a
//! policy asks for what it needs when it needs it (the Pod a CONNECT targets, a namespace's
//! labels, a role's rules, a role's bindings), and the handle
//! - answers each question once per request (a second policy asking the same gets the first
//!   answer, memoized by what was asked);
//! - bounds all the reads of a request together by one deadline (the lookup timeout), so a
//!   slow API server gets the policy's own verdict rather than the webhook's failure policy;
//! - is answered, through the same [`ClusterLookup`] trait, by the API client (the webhook),
//!   by what the audit listed, or by `check`'s input (the `cluster` edge's `Snapshot`,
//!   which answers at once, with no deadline).
//!
//! Adding a fact means a method on [`ClusterLookup`] and one here; nothing is declared ahead.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::cluster::{Binding, ClusterLookup, LookupError, NoLookup, RoleKey};

/// The cluster as one request's evaluation sees it.
pub struct Lookups<'s> {
    source: &'s dyn ClusterLookup,
    /// When every read of the request must be done, and the timeout it came from.
    deadline: Option<(tokio::time::Instant, Duration)>,
    /// What was asked (`pod openg2p/db-0`), and its answer.
    memo: Mutex<Vec<(String, Box<dyn Any + Send>)>>,
}

static NOTHING: NoLookup = NoLookup {
    reason: String::new(),
};

impl<'s> Lookups<'s> {
    /// Reads through `source`, all reads done within `timeout` from now. Needs a Tokio runtime.
    pub fn within(source: &'s dyn ClusterLookup, timeout: Duration) -> Lookups<'s> {
        Lookups {
            source,
            deadline: Some((tokio::time::Instant::now() + timeout, timeout)),
            memo: Mutex::new(Vec::new()),
        }
    }

    /// Reads from a source that answers at once (a snapshot): no deadline, no runtime needed.
    pub fn immediate(source: &'s dyn ClusterLookup) -> Lookups<'s> {
        Lookups {
            source,
            deadline: None,
            memo: Mutex::new(Vec::new()),
        }
    }

    /// A cluster that answers nothing (policy unit tests of requests that need no lookup).
    pub fn none() -> Lookups<'static> {
        Lookups::immediate(&NOTHING)
    }

    /// The Pod `namespace/name`, as JSON (decode it into the view with
    /// [`Object::decode`](crate::view::Object::decode)).
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<String, String> {
        self.memo(
            format!("pod {namespace}/{name}"),
            self.source.get_pod(namespace, name),
        )
        .await
    }

    /// The Traefik Middleware `namespace/name`, as JSON; `None` when it does not exist.
    pub async fn middleware(&self, namespace: &str, name: &str) -> Result<Option<String>, String> {
        let read = async {
            match self.source.get_middleware(namespace, name).await {
                Ok(text) => Ok(Some(text)),
                Err(LookupError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.memo(format!("middleware {namespace}/{name}"), read)
            .await
    }

    /// The labels of namespace `namespace`.
    pub async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        self.memo(
            format!("namespace {namespace}"),
            self.source.namespace_labels(namespace),
        )
        .await
    }

    /// The JSON of every Pod of `namespace`.
    pub async fn pods_in(&self, namespace: &str) -> Result<Vec<String>, String> {
        self.memo(
            format!("the pods of namespace {namespace}"),
            self.source.pods_in(namespace),
        )
        .await
    }

    /// The JSON of every StatefulSet of `namespace`.
    pub async fn statefulsets_in(&self, namespace: &str) -> Result<Vec<String>, String> {
        self.memo(
            format!("the StatefulSets of namespace {namespace}"),
            self.source.statefulsets_in(namespace),
        )
        .await
    }

    /// The Service `namespace/name`, as JSON.
    pub async fn service(&self, namespace: &str, name: &str) -> Result<String, String> {
        self.memo(
            format!("Service {namespace}/{name}"),
            self.source.get_service(namespace, name),
        )
        .await
    }

    /// The rules of `role`; `None` when it does not exist.
    pub async fn role_rules(&self, role: &RoleKey) -> Result<Option<Vec<PolicyRule>>, String> {
        self.memo(role.to_string(), self.source.role_rules(role))
            .await
    }

    /// The bindings that grant `role`.
    pub async fn bindings_to(&self, role: &RoleKey) -> Result<Vec<Binding>, String> {
        self.memo(
            format!("the bindings of {role}"),
            self.source.bindings_to(role),
        )
        .await
    }

    /// The answer to `what`: remembered, or read within the deadline and remembered.
    async fn memo<T: Clone + Send + 'static>(
        &self,
        what: String,
        read: impl Future<Output = Result<T, LookupError>>,
    ) -> Result<T, String> {
        if let Some(answer) = self.remembered::<T>(&what) {
            return answer;
        }
        let answer = match self.deadline {
            None => read.await.map_err(|e| e.to_string()),
            Some((at, timeout)) => match tokio::time::timeout_at(at, read).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!("reading {what} took longer than {timeout:?}")),
            },
        };
        if let Ok(mut memo) = self.memo.lock() {
            memo.push((what, Box::new(answer.clone())));
        }
        answer
    }

    fn remembered<T: Clone + 'static>(&self, what: &str) -> Option<Result<T, String>> {
        let memo = self.memo.lock().ok()?;
        memo.iter()
            .find(|(asked, _)| asked == what)
            .and_then(|(_, answer)| answer.downcast_ref::<Result<T, String>>())
            .cloned()
    }

    /// What was read, in the order it was first asked (`pod openg2p/db-0`).
    pub fn asked(&self) -> Vec<String> {
        self.memo
            .lock()
            .map(|m| m.iter().map(|(asked, _)| asked.clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the reads that reach the cluster; namespace labels take `delay` each.
    struct Counting {
        reads: AtomicUsize,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl ClusterLookup for Counting {
        async fn get_pod(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Err(LookupError::NotFound {
                what: format!("pod {namespace}/{name}"),
            })
        }
        async fn namespace_labels(&self, _: &str) -> Result<BTreeMap<String, String>, LookupError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(BTreeMap::from([("a".to_owned(), "b".to_owned())]))
        }
        async fn role_rules(&self, _: &RoleKey) -> Result<Option<Vec<PolicyRule>>, LookupError> {
            Ok(None)
        }
        async fn bindings_to(&self, _: &RoleKey) -> Result<Vec<Binding>, LookupError> {
            Ok(Vec::new())
        }
        async fn get_middleware(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Err(LookupError::NotFound {
                what: format!("Middleware {namespace}/{name}"),
            })
        }
        async fn pods_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        async fn statefulsets_in(&self, _: &str) -> Result<Vec<String>, LookupError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        async fn get_service(&self, namespace: &str, name: &str) -> Result<String, LookupError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Err(LookupError::NotFound {
                what: format!("Service {namespace}/{name}"),
            })
        }
    }

    #[tokio::test]
    async fn each_question_is_read_once_per_request() {
        let cluster = Counting {
            reads: AtomicUsize::new(0),
            delay: Duration::ZERO,
        };
        let lookups = Lookups::within(&cluster, Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(lookups.namespace_labels("openg2p").await.unwrap().len(), 1);
            assert_eq!(
                lookups.pod("openg2p", "db-0").await.unwrap_err(),
                "pod openg2p/db-0 was not found"
            );
        }
        assert_eq!(cluster.reads.load(Ordering::SeqCst), 2);
        assert_eq!(lookups.asked(), ["namespace openg2p", "pod openg2p/db-0"]);
        // Another question is another read; another request starts afresh.
        lookups.namespace_labels("other").await.unwrap();
        assert_eq!(cluster.reads.load(Ordering::SeqCst), 3);
        let next = Lookups::within(&cluster, Duration::from_secs(1));
        next.namespace_labels("openg2p").await.unwrap();
        assert_eq!(cluster.reads.load(Ordering::SeqCst), 4);
    }

    /// On a paused clock (time moves only when every task waits), so that a busy machine
    /// cannot make the first read late.
    #[tokio::test(start_paused = true)]
    async fn the_reads_of_a_request_share_one_deadline() {
        let cluster = Counting {
            reads: AtomicUsize::new(0),
            delay: Duration::from_millis(60),
        };
        let lookups = Lookups::within(&cluster, Duration::from_millis(100));
        // The first read fits; the second would end at 120 ms, past the request's deadline.
        assert!(lookups.namespace_labels("a").await.is_ok());
        assert_eq!(
            lookups.namespace_labels("b").await.unwrap_err(),
            "reading namespace b took longer than 100ms"
        );
        // The late answer is remembered as late.
        assert!(lookups.namespace_labels("b").await.is_err());
        assert_eq!(cluster.reads.load(Ordering::SeqCst), 2);
    }
}
