//! What the no-op server does per review (read the uid, write the answer): the floor that
//! prodguard's micro-benchmarks (`cargo bench --bench micro`) are compared against.
//! `cargo bench -p loadbench --bench noop`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

fn noop(c: &mut Criterion) {
    for (name, body) in [
        (
            "pod-create",
            &include_bytes!("../../tests/fixtures/bench/pod-create.json")[..],
        ),
        (
            "deployment-create",
            &include_bytes!("../../tests/fixtures/bench/deployment-create.json")[..],
        ),
        (
            "deployment-update",
            &include_bytes!("../../tests/fixtures/bench/deployment-update.json")[..],
        ),
    ] {
        c.bench_function(&format!("{name}/noop-answer"), |b| {
            b.iter(|| loadbench::noop::noop_answer(black_box(body)).expect("a review"))
        });
    }
}

criterion_group!(benches, noop);
criterion_main!(benches);
