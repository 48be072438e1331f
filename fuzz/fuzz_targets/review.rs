//! Any body: decoding never panics, and a decoded review is evaluated by both webhooks of the
//! default policy set and encoded. The request's kind is counted as the router counts it: the
//! metrics exposition then holds no line but prodguard's own.
#![no_main]

use std::future::Future;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prodguard::admission::{self, Decoded};
use prodguard::engine::Engine;
use prodguard::policies::Config;
use prodguard::report::metrics::{kind_label, Metrics, RequestLabels};
use prodguard::report::NoReporter;
use prodguard::unit::{Lookups, NoLookup, Webhook};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(
            &Config::embedded_default().expect("the default policy set"),
            Arc::new(NoLookup { reason: "fuzzing".into() }),
            Arc::new(NoReporter),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    match admission::decode(data) {
        Ok(Decoded::Request(request)) => {
            let view = request.as_request();
            let metrics = Metrics::new();
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    webhook: "validate",
                    operation: view.operation_name(),
                    kind: kind_label(view.kind),
                    verdict: "allowed",
                })
                .inc();
            for line in metrics.encode().lines() {
                assert!(
                    line.starts_with("# ") || line.starts_with("prodguard_"),
                    "a foreign line in the exposition: {line:?}"
                );
            }
            let nothing = NoLookup { reason: "fuzzing".into() };
            let lookups = Lookups::immediate(&nothing);
            for webhook in [Webhook::Mutate, Webhook::Validate] {
                // Without a cluster every lookup fails at once: the evaluation never waits.
                let mut evaluation = std::pin::pin!(engine().evaluate(webhook, &view, &lookups));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let std::task::Poll::Ready(verdict) = evaluation.as_mut().poll(&mut cx) else {
                    panic!("the evaluation waited without a cluster");
                };
                admission::encode_verdict(&request.uid, &verdict).expect("encodes");
            }
        }
        Ok(Decoded::Malformed { uid, message }) => {
            admission::encode_malformed(&uid, &message).expect("encodes");
        }
        Err(_) => {}
    }
});
