//! `--metrics-auth=kubernetes`: `/metrics` answers a bearer token that the API server
//! authenticates (TokenReview) and allows to `get` the non-resource URL `/metrics`
//! (SubjectAccessReview), as controller-runtime's metrics filter does. Answers are kept for
//! [`CACHE_TTL`], so that a Prometheus scrape every 30 s costs the API server two reviews a
//! minute at most; at most [`REVIEWS_AT_ONCE`] reviews are in flight, whatever callers send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;

use crate::cluster::{TokenReviews, TokenVerdict};
use crate::report::metrics::RefusalLabels;

/// How long an answer about a token is kept.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Tokens whose answer is kept; when full, the expired ones go, then all.
pub const CACHE_ENTRIES: usize = 256;
/// TokenReviews and SubjectAccessReviews in flight at once.
pub const REVIEWS_AT_ONCE: usize = 4;

/// The reviewer with its cache and its bound on reviews in flight.
pub struct MetricsAuth {
    reviews: Arc<dyn TokenReviews>,
    cache: Mutex<HashMap<String, (TokenVerdict, Instant)>>,
    in_flight: Semaphore,
    refusals: Family<RefusalLabels, Counter>,
}

impl MetricsAuth {
    pub fn new(
        reviews: Arc<dyn TokenReviews>,
        refusals: Family<RefusalLabels, Counter>,
    ) -> MetricsAuth {
        MetricsAuth {
            reviews,
            cache: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(REVIEWS_AT_ONCE),
            refusals,
        }
    }

    fn refuse(&self, status: StatusCode, reason: &'static str, message: &str) -> Response {
        self.refusals
            .get_or_create(&RefusalLabels {
                listener: "metrics",
                reason,
            })
            .inc();
        let mut response = (status, message.to_owned()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    fn cached(&self, token: &str) -> Option<TokenVerdict> {
        let cache = self.cache.lock().ok()?;
        let (verdict, at) = cache.get(token)?;
        (at.elapsed() < CACHE_TTL).then(|| verdict.clone())
    }

    fn remember(&self, token: &str, verdict: TokenVerdict) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (verdict, Instant::now()));
    }

    /// `None` when the request may read the metrics; else the refusal to send.
    pub async fn check(&self, headers: &axum::http::HeaderMap) -> Option<Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Some(self.refuse(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "a bearer token is required (--metrics-auth=kubernetes)\n",
            ));
        };
        let verdict = match self.cached(token) {
            Some(verdict) => verdict,
            None => {
                // The semaphore is never closed.
                let _slot = self.in_flight.acquire().await;
                match self.cached(token) {
                    Some(verdict) => verdict,
                    None => match self.reviews.review(token).await {
                        Ok(verdict) => {
                            self.remember(token, verdict.clone());
                            verdict
                        }
                        Err(e) => {
                            tracing::warn!("cannot review a metrics token: {e}");
                            return Some(self.refuse(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "review_failed",
                                "the API server could not review the token; try again\n",
                            ));
                        }
                    },
                }
            }
        };
        match verdict {
            TokenVerdict::Allowed => None,
            TokenVerdict::Unauthenticated => Some(self.refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the token is not one the API server accepts\n",
            )),
            TokenVerdict::Forbidden(user) => {
                tracing::debug!(%user, "refused a metrics reader");
                Some(self.refuse(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this user may not get the non-resource URL /metrics\n",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Answers(AtomicUsize);

    #[async_trait::async_trait]
    impl TokenReviews for Answers {
        async fn review(&self, token: &str) -> Result<TokenVerdict, String> {
            self.0.fetch_add(1, Ordering::Relaxed);
            match token {
                "prometheus" => Ok(TokenVerdict::Allowed),
                "dev" => Ok(TokenVerdict::Forbidden("dev".into())),
                "down" => Err("connection refused".into()),
                _ => Ok(TokenVerdict::Unauthenticated),
            }
        }
    }

    fn headers(value: Option<&str>) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn status(response: Option<Response>) -> StatusCode {
        response.map_or(StatusCode::OK, |r| r.status())
    }

    #[tokio::test]
    async fn only_an_allowed_token_reads_and_answers_are_kept() {
        let answers = Arc::new(Answers(AtomicUsize::new(0)));
        let auth = MetricsAuth::new(answers.clone(), Family::default());
        assert_eq!(status(auth.check(&headers(None)).await), 401);
        assert_eq!(status(auth.check(&headers(Some("Basic x"))).await), 401);
        assert_eq!(status(auth.check(&headers(Some("Bearer "))).await), 401);
        assert_eq!(answers.0.load(Ordering::Relaxed), 0, "no token, no review");
        assert_eq!(
            status(auth.check(&headers(Some("Bearer prometheus"))).await),
            200
        );
        assert_eq!(
            status(auth.check(&headers(Some("Bearer prometheus"))).await),
            200
        );
        assert_eq!(answers.0.load(Ordering::Relaxed), 1, "the answer is kept");
        assert_eq!(status(auth.check(&headers(Some("Bearer dev"))).await), 403);
        assert_eq!(
            status(auth.check(&headers(Some("Bearer forged"))).await),
            401
        );
        let refused = auth.check(&headers(Some("Bearer down"))).await;
        assert_eq!(status(refused), 503);
        // A failed review is not kept: the next scrape asks again.
        let _ = auth.check(&headers(Some("Bearer down"))).await;
        assert_eq!(answers.0.load(Ordering::Relaxed), 5);
        let count = |reason| {
            auth.refusals
                .get_or_create(&RefusalLabels {
                    listener: "metrics",
                    reason,
                })
                .get()
        };
        assert_eq!(
            (
                count("no_token"),
                count("forbidden"),
                count("unauthenticated"),
                count("review_failed")
            ),
            (3, 1, 1, 2)
        );
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let answers = Arc::new(Answers(AtomicUsize::new(0)));
        let auth = MetricsAuth::new(answers, Family::default());
        for i in 0..(3 * CACHE_ENTRIES) {
            let _ = auth.check(&headers(Some(&format!("Bearer t{i}")))).await;
        }
        assert!(auth.cache.lock().unwrap().len() <= CACHE_ENTRIES);
    }
}
