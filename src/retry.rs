//! How prodguard's watches retry the API server: quickly enough that what they keep is current
//! again within seconds of an API server's return, never in a tight loop.
//!
//! [`watch`] is kube-runtime's watcher with two changes:
//! - its backoff is [`WatchBackoff`] (below);
//! - when a watch's connection breaks or cannot be opened again, it starts over from a list
//!   instead of resuming from the last resourceVersion. A restarted kube-apiserver (1.20,
//!   measured) held such a resumed watch of PolicyExceptions for 10 s before refusing it as too
//!   old (410), and for those 10 s an exception deleted meanwhile still lifted. A list holds
//!   the cluster's objects as they are, deletions included.
//!
//! Watches go through their own client ([`watch_client`]): kube's client retries a 503 after
//! the server's `Retry-After`, and a restarted API server answers 503 for its CRDs' resources
//! until it serves them, with `Retry-After: 10` (measured: PolicyExceptions were listed again
//! 10 s after the API server answered). A watch retries within [`MAX`] by itself.
//!
//! kube-runtime's default backoff (client-go's: 0.8 s doubling to 30 s) is kind to a struggling
//! API server, but after an outage of 15 s a watch resumed up to 13 s after the API server was
//! back (measured in the e2e scenario `rollout_kill_and_apiserver_restart_under_load`). For
//! that long a PolicyException deleted meanwhile would still lift, and a webhook configuration
//! reset would stay unrestored. prodguard holds four watches per replica, so retrying every
//! [`MAX`] costs the API server nothing worth sparing.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// A client like `config`'s for watches, without kube's retry of 503 and 429 answers (the
/// watches retry by themselves, sooner).
pub fn watch_client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    let mut config = config.clone();
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// The events of every object of `api` that `config` selects, as kube-runtime's watcher gives
/// them (errors included, for the caller to log), retried as the module documentation says.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let start = move || {
        watcher(api.clone(), config.clone())
            .backoff(WatchBackoff::default())
            .boxed()
    };
    let current = start();
    futures_util::stream::unfold(
        (start, current, WatchBackoff::default(), false),
        |(start, mut current, mut again, mut broken)| async move {
            if broken {
                // Never a tight loop: a new watcher lists at once.
                tokio::time::sleep(again.next().unwrap_or(MAX)).await;
                current = start();
                broken = false;
            }
            let item = current.next().await?;
            match &item {
                Err(watcher::Error::WatchFailed(_) | watcher::Error::WatchStartFailed(_)) => {
                    broken = true;
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => again.reset(),
                _ => {}
            }
            Some((item, (start, current, again, broken)))
        },
    )
    .boxed()
}

/// The first retry's delay.
pub const MIN: Duration = Duration::from_millis(250);
/// The longest delay between retries.
pub const MAX: Duration = Duration::from_secs(2);

/// Doubles from [`MIN`] to [`MAX`]; back to [`MIN`] after a success.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_again_after_a_success() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = backoff
            .by_ref()
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(MIN));
    }
}
