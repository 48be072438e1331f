//! Keeps the cluster's PolicyExceptions in an [`Exceptions`] store: a kube-runtime watcher
//! (list, then watch, relisting after a break), each object read through the same view and
//! rules as everywhere else. The set is rebuilt and swapped whole on every change (there are
//! few), holds at most [`MAX_EXCEPTIONS`], and is first published when the first list is
//! complete: until then the engine sees no exceptions (fail closed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use prometheus_client::metrics::gauge::Gauge;

use super::{Exception, ExceptionSet, Exceptions, GROUP, KIND, MAX_EXCEPTIONS, PLURAL, VERSION};

/// How often the count of exceptions in force is refreshed besides on every change.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// The gauges the watch keeps.
#[derive(Clone, Default)]
pub struct ExceptionGauges {
    /// Exceptions in force now.
    pub in_force: Gauge,
    /// PolicyExceptions in the cluster that are not honoured: invalid, or beyond the cap.
    pub ignored: Gauge,
    /// When the first exception in force ends, in Unix seconds; 0 when none is in force.
    pub next_end: Gauge,
}

impl ExceptionGauges {
    /// The gauges of what is in force in `set` now.
    fn refresh(&self, set: &ExceptionSet, max: Duration) {
        let now = SystemTime::now();
        self.in_force.set(set.in_force(now, max) as i64);
        let next_end = set
            .next_end(now, max)
            .and_then(|end| end.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        self.next_end.set(next_end);
    }
}

/// Watches PolicyExceptions in every namespace into `store` until the process ends.
pub fn spawn(client: kube::Client, store: Arc<Exceptions>, max: Duration, gauges: ExceptionGauges) {
    tokio::spawn(run(client, store, max, gauges));
}

async fn run(client: kube::Client, store: Arc<Exceptions>, max: Duration, gauges: ExceptionGauges) {
    let api: Api<DynamicObject> = Api::all_with(client, &resource());
    // Errors (no CRD yet, no permission, the API server away) are retried with backoff, never
    // in a tight loop, and within seconds of the API server's return.
    let mut events = crate::retry::watch(api, watcher::Config::default());
    // What the cluster holds, by namespace and name: the valid ones and why the others are not.
    let mut held: BTreeMap<(String, String), Held> = BTreeMap::new();
    let mut listing: Option<BTreeMap<(String, String), Held>> = None;
    let mut refresh = tokio::time::interval(GAUGE_REFRESH);
    let mut warned_unavailable = false;
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                let changed = match event {
                    Ok(watcher::Event::Init) => {
                        listing = Some(BTreeMap::new());
                        false
                    }
                    Ok(watcher::Event::InitApply(object)) => {
                        if let Some(listing) = listing.as_mut() {
                            let (key, entry) = read(&object);
                            listing.insert(key, entry);
                        }
                        false
                    }
                    Ok(watcher::Event::InitDone) => {
                        held = listing.take().unwrap_or_default();
                        warned_unavailable = false;
                        true
                    }
                    Ok(watcher::Event::Apply(object)) => {
                        let (key, entry) = read(&object);
                        held.insert(key, entry);
                        true
                    }
                    Ok(watcher::Event::Delete(object)) => {
                        held.remove(&read(&object).0);
                        true
                    }
                    Err(e) => {
                        // The watcher retries by itself; the last set stays in use.
                        if !warned_unavailable {
                            tracing::warn!(
                                "cannot watch PolicyExceptions ({e}); are the CRDs of deploy/ installed? \
                                 Until the watch works, no exception applies that was not seen before"
                            );
                            warned_unavailable = true;
                        }
                        false
                    }
                };
                if changed {
                    publish(&store, &held, &gauges, max);
                }
            }
            _ = refresh.tick() => {
                if let Some(set) = store.current() {
                    gauges.refresh(&set, max);
                }
            }
        }
    }
}

/// One PolicyException as the watch holds it.
enum Held {
    Valid(Arc<Exception>),
    Invalid,
}

fn read(object: &DynamicObject) -> ((String, String), Held) {
    let key = (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    );
    let entry = match parse(object) {
        Ok(exception) => Held::Valid(Arc::new(exception)),
        Err(problems) => {
            tracing::warn!(
                exception = %format!("{}/{}", key.0, key.1),
                "a PolicyException is not honoured: {}",
                problems.join("; ")
            );
            Held::Invalid
        }
    };
    (key, entry)
}

/// An object of the watch as an exception, through the view every path reads.
fn parse(object: &DynamicObject) -> Result<Exception, Vec<String>> {
    let text = serde_json::to_string(object).map_err(|e| vec![e.to_string()])?;
    Exception::from_text(&text, "")
}

/// The cluster's PolicyExceptions, listed once (`prodguard audit`): the valid ones, and how
/// many are not honoured. A cluster without the CRD has none.
pub async fn list(client: &kube::Client) -> Result<(ExceptionSet, usize), String> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let listed = match api.list(&kube::api::ListParams::default()).await {
        Ok(listed) => listed,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok((ExceptionSet::default(), 0)),
        Err(e) => return Err(format!("listing PolicyExceptions failed: {e}")),
    };
    let mut valid = Vec::new();
    let mut ignored = 0;
    for object in &listed.items {
        match read(object).1 {
            Held::Valid(e) if valid.len() < MAX_EXCEPTIONS => valid.push(e),
            _ => ignored += 1,
        }
    }
    Ok((ExceptionSet::new(valid), ignored))
}

/// Publishes what the watch holds as the store's set: the valid ones up to the cap.
fn publish(
    store: &Exceptions,
    held: &BTreeMap<(String, String), Held>,
    gauges: &ExceptionGauges,
    max: Duration,
) {
    let mut valid = Vec::new();
    let mut ignored = 0usize;
    for entry in held.values() {
        match entry {
            Held::Valid(e) if valid.len() < MAX_EXCEPTIONS => valid.push(e.clone()),
            Held::Valid(_) | Held::Invalid => ignored += 1,
        }
    }
    if valid.len() == MAX_EXCEPTIONS && ignored > 0 {
        tracing::warn!(
            held = held.len(),
            "more than {MAX_EXCEPTIONS} PolicyExceptions: the rest are not honoured"
        );
    }
    let set = ExceptionSet::new(valid);
    gauges.refresh(&set, max);
    gauges.ignored.set(ignored as i64);
    tracing::debug!(exceptions = set.len(), ignored, "PolicyExceptions updated");
    store.replace(set);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, policies: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "prodguard.io/v1alpha1", "kind": "PolicyException",
            "metadata": {"name": name, "namespace": "openg2p"},
            "spec": {"policies": policies, "match": {"names": ["db-0"]}, "reason": "incident",
                     "expires": "2999-01-01T00:00:00Z"}
        }))
        .unwrap()
    }

    #[test]
    fn the_watch_keeps_valid_exceptions_up_to_the_cap_and_counts_the_rest() {
        let store = Exceptions::unsynced();
        let gauges = ExceptionGauges::default();
        let mut held = BTreeMap::new();
        for (name, policies) in [
            ("good", serde_json::json!(["db-access"])),
            ("typo", serde_json::json!(["db-acess"])),
        ] {
            let (key, entry) = read(&object(name, policies));
            held.insert(key, entry);
        }
        assert!(store.current().is_none(), "nothing before the first list");
        // Ending centuries ahead, the valid one is not in force under a 1 h maximum.
        publish(&store, &held, &gauges, Duration::from_secs(3600));
        let set = store.current().expect("synced");
        assert_eq!(set.len(), 1);
        assert_eq!(set.iter().next().map(|e| e.name.as_str()), Some("good"));
        assert_eq!((gauges.in_force.get(), gauges.ignored.get()), (0, 1));
        assert_eq!(gauges.next_end.get(), 0, "none in force, no end");
        // Under a maximum that reaches its end, it is.
        publish(
            &store,
            &held,
            &gauges,
            Duration::from_secs(1000 * 365 * 86400),
        );
        assert_eq!(gauges.in_force.get(), 1);
        // 2999-01-01T00:00:00Z, the one in force's end.
        assert_eq!(gauges.next_end.get(), 32_472_144_000);

        let mut many = BTreeMap::new();
        for i in 0..MAX_EXCEPTIONS + 5 {
            let (key, entry) = read(&object(
                &format!("e{i:05}"),
                serde_json::json!(["db-access"]),
            ));
            many.insert(key, entry);
        }
        publish(&store, &many, &gauges, Duration::from_secs(3600));
        assert_eq!(store.current().map(|s| s.len()), Some(MAX_EXCEPTIONS));
        assert_eq!(gauges.ignored.get(), 5);
    }
}
