//! Micro-benchmarks: decode, evaluate and encode of each review fixture, the whole path of one
//! webhook call, and image-reference parsing. `cargo bench --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use prodguard::admission::{self, Decoded};
use prodguard::engine::{Engine, Verdict};
use prodguard::policies::image_ref::ImageRef;
use prodguard::policies::Config;
use prodguard::report::NoReporter;
use prodguard::unit::NoLookup;
use prodguard::unit::{Request, Webhook};

const FIXTURES: [(&str, &str); 3] = [
    (
        "pod-create-6k",
        include_str!("../tests/fixtures/bench/pod-create.json"),
    ),
    (
        "deployment-create-11k",
        include_str!("../tests/fixtures/bench/deployment-create.json"),
    ),
    (
        "deployment-update-21k",
        include_str!("../tests/fixtures/bench/deployment-update.json"),
    ),
];

fn engine() -> Engine {
    let config = Config::embedded_default().expect("default policy set");
    Engine::new(
        &config,
        Arc::new(NoLookup {
            reason: "bench".into(),
        }),
        Arc::new(NoReporter),
    )
}

fn decode(body: &[u8]) -> Box<admission::ReviewRequest<'_>> {
    match admission::decode(body) {
        Ok(Decoded::Request(request)) => request,
        other => panic!("fixture does not decode: {other:?}"),
    }
}

/// One webhook call as the server makes it: decode, evaluate, build and encode the answer.
fn webhook_call(engine: &Engine, webhook: Webhook, body: &[u8]) -> Vec<u8> {
    let request = decode(body);
    let view = request.as_request();
    let verdict = evaluate(engine, webhook, &view);
    admission::encode_verdict(&request.uid, &verdict).expect("encode")
}

/// The review of one request, as the server runs it (these need no cluster lookup, so the
/// evaluation never waits).
fn evaluate(engine: &Engine, webhook: Webhook, view: &Request<'_>) -> Verdict {
    engine
        .review(webhook, view)
        .now_or_never()
        .expect("no lookup to wait for")
}

fn benches(c: &mut Criterion) {
    let engine = engine();
    for (name, body) in FIXTURES {
        let body = body.as_bytes();
        let request = decode(body);
        let view = request.as_request();
        // The policies must act on these fixtures: a patch, and a verdict.
        let Verdict::Decided(mutated) = evaluate(&engine, Webhook::Mutate, &view) else {
            panic!("{name}: malformed")
        };
        assert!(!mutated.patch.is_empty(), "{name}: no patch");
        let Verdict::Decided(validated) = evaluate(&engine, Webhook::Validate, &view) else {
            panic!("{name}: malformed")
        };
        let mut group = c.benchmark_group(name);
        group.bench_function("decode", |b| b.iter(|| decode(black_box(body))));
        group.bench_function("evaluate-mutate", |b| {
            b.iter(|| evaluate(&engine, Webhook::Mutate, black_box(&view)))
        });
        group.bench_function("evaluate-validate", |b| {
            b.iter(|| evaluate(&engine, Webhook::Validate, black_box(&view)))
        });
        let patched = Verdict::Decided(mutated.clone());
        group.bench_function("encode-mutate", |b| {
            b.iter(|| admission::encode_verdict(black_box(&request.uid), &patched))
        });
        let judged = Verdict::Decided(validated.clone());
        group.bench_function("encode-validate", |b| {
            b.iter(|| admission::encode_verdict(black_box(&request.uid), &judged))
        });
        group.bench_function("call-mutate", |b| {
            b.iter(|| webhook_call(&engine, Webhook::Mutate, black_box(body)))
        });
        group.bench_function("call-validate", |b| {
            b.iter(|| webhook_call(&engine, Webhook::Validate, black_box(body)))
        });
        group.finish();
    }
    let references = [
        "nginx",
        "redis:7.2",
        "docker.io/bitnami/postgresql:16.3.0-debian-12-r14",
        "registry.local:5000/openg2p/social-registry@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "[2001:db8::1]:5000/team/app:v2",
    ];
    c.bench_function("image-ref/parse-5", |b| {
        b.iter(|| {
            for r in references {
                let _ = black_box(ImageRef::parse(black_box(r)));
            }
        })
    });
}

criterion_group!(micro, benches);
criterion_main!(micro);
