//! One audit at a time: a `coordination.k8s.io/v1` Lease held by the replica that audits.
//! A holder renews it; another replica takes it over only once it has expired.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    pub duration: Duration,
}

pub const LEASE_NAME: &str = "prodguard-audit";

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// What [`try_hold`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// This replica holds the Lease (created, renewed or taken over).
    Held,
    /// Another replica holds it, for `expires_in` more unless it renews it (unknown after a
    /// conflicting write: `None`).
    Elsewhere { expires_in: Option<Duration> },
}

impl Hold {
    pub fn held(self) -> bool {
        self == Hold::Held
    }

    /// When to try again, at most `every` from now: just after the holder's term ends when
    /// that is sooner, so that a holder that died (SIGKILL, a lost node) is replaced within
    /// the Lease's duration of its last renewal rather than up to `every` later.
    pub fn next_try(self, every: Duration) -> Duration {
        match self {
            Hold::Elsewhere {
                expires_in: Some(left),
            } => every.min(left + TAKEOVER_SLACK),
            _ => every,
        }
    }
}

/// How long after a term's end a replica tries to take the Lease over (its renewal time has
/// microseconds; this keeps the try from landing a hair before the end).
const TAKEOVER_SLACK: Duration = Duration::from_millis(20);

/// Creates, renews or takes over the Lease.
pub async fn try_hold(api: &Api<Lease>, settings: &LeaseSettings) -> Result<Hold, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(settings.duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    match api.get_opt(&settings.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(settings.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Hold::Held),
                Err(e) if conflict(&e) => Ok(Hold::Elsewhere { expires_in: None }),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let held_for = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(seconds),
            ));
            let left = term_left(spec.renew_time.as_ref().map(|t| t.0), held_for, now);
            if holder == settings.identity {
                spec.renew_time = Some(MicroTime(now));
            } else if holder.is_empty() || left.is_none() {
                spec.holder_identity = Some(settings.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(seconds);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            } else {
                return Ok(Hold::Elsewhere { expires_in: left });
            }
            // The resourceVersion read above makes this a compare-and-swap.
            match api
                .replace(&settings.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(Hold::Held),
                Err(e) if conflict(&e) => Ok(Hold::Elsewhere { expires_in: None }),
                Err(e) => Err(e),
            }
        }
    }
}

/// How long the term renewed at `renewed` and lasting `held_for` still runs at `now`; `None`
/// once it has ended, or when it was never renewed.
fn term_left(
    renewed: Option<Timestamp>,
    held_for: SignedDuration,
    now: Timestamp,
) -> Option<Duration> {
    let end = renewed?.checked_add(held_for).ok()?;
    if end < now {
        return None;
    }
    Duration::try_from(end.duration_since(now)).ok()
}

/// Gives the Lease up (on shutdown) so that another replica can audit at once.
pub async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    if let Ok(Some(mut lease)) = api.get_opt(&settings.name).await {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() == Some(settings.identity.as_str()) {
            spec.holder_identity = None;
            let _ = api
                .replace(&settings.name, &PostParams::default(), &lease)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_term_left_counts_from_the_last_renewal() {
        let now = Timestamp::from_second(1_000).unwrap();
        let renewed = Timestamp::from_second(996).unwrap();
        let six = SignedDuration::from_secs(6);
        assert_eq!(
            term_left(Some(renewed), six, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            term_left(Some(Timestamp::from_second(990).unwrap()), six, now),
            None
        );
        assert_eq!(term_left(None, six, now), None);
    }

    #[test]
    fn a_replica_tries_again_just_after_the_holders_term_ends() {
        let every = Duration::from_secs(2);
        let soon = Hold::Elsewhere {
            expires_in: Some(Duration::from_millis(300)),
        };
        assert_eq!(soon.next_try(every), Duration::from_millis(320));
        let later = Hold::Elsewhere {
            expires_in: Some(Duration::from_secs(5)),
        };
        assert_eq!(later.next_try(every), every);
        assert_eq!(Hold::Elsewhere { expires_in: None }.next_try(every), every);
        assert_eq!(Hold::Held.next_try(every), every);
    }
}
