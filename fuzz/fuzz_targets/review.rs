//! Any body: decoding never panics, and a decoded review is evaluated by both webhooks of the
//! default policy set and encoded.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prodguard::admission::{self, Decoded};
use prodguard::cluster::NoLookup;
use prodguard::config::Config;
use prodguard::engine::{Context, Engine, Request, Webhook};
use prodguard::report::NoReporter;

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
            let view = Request::from_admission(&request);
            for webhook in [Webhook::Mutate, Webhook::Validate] {
                let verdict = engine().evaluate(webhook, &view, &Context::default());
                admission::encode(admission::respond(&request, &verdict)).expect("encodes");
            }
        }
        Ok(Decoded::Malformed { uid, message }) => {
            admission::encode(admission::respond_malformed(&uid, &message)).expect("encodes");
        }
        Err(_) => {}
    }
});
