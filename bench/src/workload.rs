//! The closed-loop load: N clients, each sending its next request as soon as the previous one is
//! answered, for a warm-up and then a measured window. Only requests that complete inside the
//! window count, so connection set-up and cold caches stay out of the figures.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use ondisk::client::Consistency;
use tokio::time::Instant;

use crate::process::cpu_seconds_of;
use crate::process::cpu_seconds_self;
use crate::target::KvTarget;

/// What each client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Writes of `value_size` bytes to random keys of the key space.
    Put,
    /// Linearizable reads of random keys.
    Get,
    /// Stale (serializable) reads of random keys, served by whichever node is asked.
    StaleGet,
    /// 90 % linearizable reads, 10 % writes.
    Mixed,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::StaleGet => "stale-get",
            Workload::Mixed => "mixed",
        })
    }
}

/// One measured run's parameters.
#[derive(Debug, Clone)]
pub struct Spec {
    pub workload: Workload,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Keys are `key-00000000` up to this many.
    pub keys: u64,
    pub value_size: usize,
}

/// What a side-by-side benchmark measures: the rounds, the workloads and client counts each
/// round runs, and what every run shares.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rounds: usize,
    pub workloads: Vec<Workload>,
    pub clients: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
    pub keys: u64,
    pub value_size: usize,
}

impl Matrix {
    /// The runs in the order they are made, each with its round: round by round, every
    /// workload at every client count. Which systems run each one, and in what order, is the
    /// caller's.
    pub fn runs(&self) -> impl Iterator<Item = (usize, Spec)> + '_ {
        (0..self.rounds).flat_map(move |round| {
            self.workloads.iter().flat_map(move |&workload| {
                self.clients.iter().map(move |&clients| {
                    let spec = Spec {
                        workload,
                        clients,
                        warmup: self.warmup,
                        duration: self.duration,
                        keys: self.keys,
                        value_size: self.value_size,
                    };
                    (round, spec)
                })
            })
        })
    }
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub ops_per_sec: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// CPU the load generator itself used, in cores (1.0 = one core busy).
    pub client_cores: f64,
    /// CPU all server processes used per completed request, in microseconds.
    pub server_cpu_us_per_op: f64,
    pub first_error: Option<String>,
}

/// The largest latency the histograms hold; a slower request is recorded as this.
const MAX_LATENCY_US: u64 = 600_000_000;

/// An empty latency histogram, in microseconds: 1 µs to 10 min at 3 significant digits, exact
/// enough for p99.9. Every histogram has the same bounds, so merging two cannot fail.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// A latency in microseconds as milliseconds with two decimals, as the tables print them.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// Adds one latency to `histogram`; anything beyond its bounds counts as the bound.
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, MAX_LATENCY_US));
}

/// The key a random draw maps to; fixed width so every key costs the same.
pub fn key(n: u64) -> Vec<u8> {
    format!("key-{n:08}").into_bytes()
}

/// Runs `spec` against `target`, whose server processes are `server_pids` (for their CPU time).
pub async fn run<T: KvTarget>(
    target: Arc<T>,
    spec: &Spec,
    server_pids: &[u32],
) -> anyhow::Result<Outcome> {
    let empty = latency_histogram()?;
    let start = Instant::now() + spec.warmup;
    let end = start + spec.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'v'; spec.value_size];

    let clients: Vec<_> = (0..spec.clients)
        .map(|client| {
            let target = target.clone();
            let spec = spec.clone();
            let value = value.clone();
            let stop = stop.clone();
            let mut counts = ClientCounts::new(empty.clone());
            tokio::spawn(async move {
                let mut random = XorShift::seeded(client as u64);
                while !stop.load(Ordering::Relaxed) {
                    let key = key(random.next() % spec.keys);
                    let write = match spec.workload {
                        Workload::Put => true,
                        Workload::Mixed => random.next().is_multiple_of(10),
                        Workload::Get | Workload::StaleGet => false,
                    };
                    let began = Instant::now();
                    let result = if write {
                        target.put(key, value.clone()).await
                    } else if spec.workload == Workload::StaleGet {
                        target.get(key, Consistency::Stale).await
                    } else {
                        target.get(key, Consistency::Linearizable).await
                    };
                    let done = Instant::now();
                    if done >= start && done <= end {
                        counts.record(done - began, result.err());
                    }
                }
                counts
            })
        })
        .collect();

    tokio::time::sleep_until(start).await;
    let client_cpu_before = cpu_seconds_self();
    let server_cpu_before = cpu_seconds_of(server_pids);
    tokio::time::sleep_until(end).await;
    let client_cpu = cpu_seconds_self() - client_cpu_before;
    let server_cpu = cpu_seconds_of(server_pids) - server_cpu_before;
    stop.store(true, Ordering::Relaxed);

    let mut total = ClientCounts::new(empty);
    for client in clients {
        match client.await {
            Ok(counts) => total.merge(counts),
            Err(e) => total.record_error(format!("client task failed: {e}")),
        }
    }
    let seconds = spec.duration.as_secs_f64();
    let ops = total.latencies.len();
    Ok(Outcome {
        ops_per_sec: ops as f64 / seconds,
        errors: total.errors,
        p50_us: total.latencies.value_at_quantile(0.50),
        p90_us: total.latencies.value_at_quantile(0.90),
        p99_us: total.latencies.value_at_quantile(0.99),
        p999_us: total.latencies.value_at_quantile(0.999),
        client_cores: client_cpu / seconds,
        server_cpu_us_per_op: if ops == 0 {
            0.0
        } else {
            server_cpu * 1e6 / ops as f64
        },
        first_error: total.first_error,
    })
}

/// One client's tally; merged at the end so clients share nothing while running.
struct ClientCounts {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl ClientCounts {
    fn new(latencies: Histogram<u64>) -> Self {
        ClientCounts {
            latencies,
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, latency: Duration, error: Option<anyhow::Error>) {
        match error {
            None => record_latency(&mut self.latencies, latency),
            Some(e) => self.record_error(format!("{e:#}")),
        }
    }

    fn record_error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: ClientCounts) {
        // Same bounds on both sides, so adding cannot fail for lack of range.
        let _ = self.latencies.add(&other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// A tiny deterministic generator: the key sequence must not cost the client more CPU than the
/// request it picks, and runs should be repeatable.
struct XorShift(u64);

impl XorShift {
    fn seeded(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
