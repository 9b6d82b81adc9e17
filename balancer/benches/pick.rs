//! Cost of one `pick` for every policy at 8, 128 and 1024 backends, plus the peak-EWMA
//! estimator's update and read. The fleet is fixed per size (random in-flight counts, most
//! backends with free slots), and exposes a stored generation the way the proxy's registry does,
//! so the numbers are the policies' own cost, not the O(n) id hash of the slice implementation.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ebbtide_balancer::ewma::PeakEwma;
use ebbtide_balancer::policies::build;
use ebbtide_balancer::{BackendView, Candidates};
use ebbtide_config::rng::Rng;
use ebbtide_config::{Balancer, PolicyKind};
use std::hint::black_box;

/// Fleet sizes benchmarked: a small pool, a large one, and the roadmap's "thousands".
const SIZES: [usize; 3] = [8, 128, 1024];

/// A fleet as the proxy presents it: views plus a generation counter.
struct Fleet {
    views: Vec<BackendView>,
    generation: u64,
}

impl Candidates for Fleet {
    fn len(&self) -> usize {
        self.views.len()
    }
    fn view(&self, i: usize) -> BackendView {
        self.views[i]
    }
    fn generation(&self) -> u64 {
        self.generation
    }
}

/// `n` backends: capacity 16, 0..=16 in flight (about 1 in 17 full), 1 in 20 not accepting,
/// weights 1..=4, three price tiers, latency estimates 1..50ms with 1 in 10 unsampled.
fn fleet(n: usize, seed: u64) -> Fleet {
    let mut rng = Rng::new(seed);
    let views = (0..n)
        .map(|i| BackendView {
            id: 1_000 + i as u64,
            in_flight: rng.below(17) as u32,
            capacity: Some(16),
            weight: 1 + rng.below(4) as u32,
            ewma_latency_ns: if rng.below(10) == 0 {
                0
            } else {
                (1 + rng.below(50) as u64) * 1_000_000
            },
            cost_per_hour: [0.02, 0.05, 0.10][rng.below(3)],
            accepting: rng.below(20) != 0,
            ramp: Default::default(),
        })
        .collect();
    Fleet {
        views,
        generation: n as u64,
    }
}

fn pick(c: &mut Criterion) {
    for kind in PolicyKind::ALL {
        let mut group = c.benchmark_group(format!("pick/{}", kind.name()));
        for n in SIZES {
            let f = fleet(n, 7);
            let policy = build(&Balancer {
                policy: kind,
                ..Balancer::default()
            });
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::from_parameter(n), &f, |b, f| {
                b.iter(|| {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    black_box(policy.pick(black_box(f), Some(key), 0))
                })
            });
        }
        group.finish();
    }
}

fn ewma(c: &mut Criterion) {
    let e = PeakEwma::new(10_000_000_000);
    let mut now = 0u64;
    c.bench_function("ewma/observe", |b| {
        b.iter(|| {
            now += 1_000;
            e.observe(black_box(5_000_000 + (now & 0xfffff)), now);
        })
    });
    c.bench_function("ewma/estimate", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(e.estimate(black_box(now)))
        })
    });
}

criterion_group!(benches, pick, ewma);
criterion_main!(benches);
