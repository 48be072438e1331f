//! The axum router: `POST /mutate`, `POST /validate`, `GET /healthz`, `GET /readyz`.
//! [`app`] builds it from the state, so tests can drive it without a socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

use crate::admission::{self, Decoded};
use crate::engine::{Engine, Request, Verdict, Webhook};
use crate::report::metrics::{kind_label, FindingLabels, Metrics, RequestLabels, WebhookLabels};

/// The largest review body accepted; larger ones get 413. The API server caps a request
/// body at 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub struct AppState {
    /// The policies in force; replaced whole when the configuration is reloaded.
    engine: RwLock<Arc<Engine>>,
    /// False while starting and once shutting down: `/readyz` then fails.
    pub ready: AtomicBool,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(engine: Engine) -> Arc<AppState> {
        AppState::with_metrics(engine, Arc::new(Metrics::new()))
    }

    pub fn with_metrics(engine: Engine, metrics: Arc<Metrics>) -> Arc<AppState> {
        Arc::new(AppState {
            engine: RwLock::new(Arc::new(engine)),
            ready: AtomicBool::new(true),
            metrics,
        })
    }

    /// The engine reviews are evaluated with now.
    pub fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(engine) => engine.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a new engine in force for the next reviews; reviews in flight finish with theirs.
    pub fn replace_engine(&self, engine: Engine) {
        match self.engine.write() {
            Ok(mut current) => *current = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
    }
}

/// The plain-HTTP metrics router: `GET /metrics`.
pub fn metrics_app(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    )
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

async fn mutate(state: State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    review(state, Webhook::Mutate, body).await
}

async fn validate(state: State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    review(state, Webhook::Validate, body).await
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "code": status.as_u16()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_body(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn review(
    State(state): State<Arc<AppState>>,
    webhook: Webhook,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is larger than {MAX_BODY_BYTES} bytes (3 MiB)")
            } else {
                rejection.body_text()
            };
            tracing::debug!(%status, "rejected body: {message}");
            return json_error(status, &message);
        }
    };
    let started = Instant::now();
    let metrics = &state.metrics;
    let count = |operation: &'static str, kind: &'static str, verdict: &'static str| {
        metrics
            .requests
            .get_or_create(&RequestLabels {
                webhook: webhook.as_str(),
                operation,
                kind,
                verdict,
            })
            .inc();
    };
    let response = match admission::decode(&body) {
        Err(e) => {
            tracing::debug!(webhook = webhook.as_str(), "not a review: {e}");
            count("", "", "invalid");
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        Ok(Decoded::Malformed { uid, message }) => {
            tracing::debug!(%uid, webhook = webhook.as_str(), "malformed request: {message}");
            count("", "", "malformed");
            admission::respond_malformed(&uid, &message)
        }
        Ok(Decoded::Request(request)) => {
            let view = Request::from_admission(&request);
            let span = tracing::debug_span!(
                "review",
                webhook = webhook.as_str(),
                uid = view.uid,
                kind = view.kind,
                namespace = view.namespace,
                name = view.object_name(),
                operation = ?view.operation,
                user = view.username,
            );
            async {
                let verdict = state.engine().review(webhook, &view).await;
                let operation = view.operation_name();
                match &verdict {
                    Verdict::Decided(d) => {
                        tracing::debug!(
                            allowed = d.allowed,
                            patch_ops = d.patch.len(),
                            warnings = d.warnings.len(),
                            "reviewed"
                        );
                        let label = if !d.allowed {
                            "denied"
                        } else if !d.patch.is_empty() {
                            "patched"
                        } else {
                            "allowed"
                        };
                        count(operation, kind_label(view.kind), label);
                        for item in &d.reports {
                            metrics
                                .findings
                                .get_or_create(&FindingLabels {
                                    policy: item.policy,
                                    action: item.action.as_str(),
                                    source: "admission",
                                })
                                .inc();
                        }
                    }
                    Verdict::Malformed(m) => {
                        tracing::debug!("malformed object: {m}");
                        count(operation, kind_label(view.kind), "malformed");
                    }
                }
                admission::respond(&request, &verdict)
            }
            .instrument(span)
            .await
        }
    };
    let encoded = admission::encode(response);
    metrics
        .latency
        .get_or_create(&WebhookLabels {
            webhook: webhook.as_str(),
        })
        .observe(started.elapsed().as_secs_f64());
    match encoded {
        Ok(body) => json_body(body),
        Err(e) => {
            tracing::error!("cannot encode a response: {e}");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the response",
            )
        }
    }
}
