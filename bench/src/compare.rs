//! `ondisk-bench compare`: both systems side by side on this machine, each workload run on each
//! system in turn (the order alternating between rounds, so neither always runs on a warmer
//! machine), and one table of medians with ratios ondisk/etcd. ondisk is driven through its
//! native protocol, or through etcd's gRPC API by the same client code as etcd
//! ([`Protocol::Grpc`]), which leaves only the servers different.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ondisk::client::Consistency;
use tokio::time::Instant;

use crate::cluster::Binaries;
use crate::cluster::Cluster;
use crate::cluster::MEMBERS;
use crate::limits;
use crate::limits::Limits;
use crate::target::KvTarget;
use crate::target::Protocol;
use crate::target::System;
use crate::target::Target;
use crate::tls::Certs;
use crate::workload;
use crate::workload::key;
use crate::workload::Matrix;
use crate::workload::Outcome;
use crate::workload::Spec;
use crate::workload::Workload;

/// Everything the comparison is told.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub dir: PathBuf,
    /// What the load generator speaks to ondisk.
    pub ondisk_protocol: Protocol,
    pub matrix: Matrix,
    /// Keys loaded for the memory and restart measurements (0 skips them).
    pub big_keys: u64,
    /// Run both systems with TLS on every connection (members' and clients'), with certificates
    /// made for this comparison in `dir`, so the figures include what encryption costs each.
    pub tls: bool,
    /// Value sizes of the large-value phase (empty skips it): puts of each size, in throughput.
    pub large_values: Vec<usize>,
    /// How long each large-value run is measured. Short, because every byte a put writes stays
    /// in both systems' history: etcd's default 2 GB quota must hold all of them.
    pub large_value_duration: Duration,
}

/// Keys present when the small restart is timed.
pub const SMALL_RESTART_KEYS: u64 = 1_000;
/// Concurrent writers of the large-value phase, and the keys they write: few keys, so the phase
/// measures moving bytes rather than a growing key space.
const LARGE_VALUE_CLIENTS: usize = 16;
const LARGE_VALUE_KEYS: u64 = 64;
/// Concurrent writers while loading keys.
const LOAD_CLIENTS: usize = 256;
/// How long a cluster may take to serve its first linearizable read after a start.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between readiness probes.
const POLL: Duration = Duration::from_millis(10);
/// What the tables' caption adds when the comparison runs with TLS.
const TLS_CAPTION: &str = "; TLS everywhere on both systems: mutual TLS between members, and every client presents a certificate";

/// Per system, what the memory and restart phase measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Capacity {
    restart_small_first_secs: f64,
    restart_small_all_secs: f64,
    load_big_secs: f64,
    rss_big_bytes: u64,
    disk_big_bytes: u64,
    restart_big_first_secs: f64,
    restart_big_all_secs: f64,
    rss_after_restart_bytes: u64,
}

/// Each run's outcomes, by workload, clients, value size and system.
type Outcomes = BTreeMap<(Workload, usize, usize, System), Vec<Outcome>>;

/// Runs the whole comparison and prints the tables; returns the results as JSON.
pub async fn run(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    // First, on a quiet machine and the disk the clusters will use.
    let limits = limits::measure(&plan.dir)?;
    eprintln!("machine limits: {limits:?}");
    let certs = if plan.tls {
        Some(Certs::generate(&plan.dir.join("certs"), MEMBERS)?)
    } else {
        None
    };
    let mut clusters = [
        plan.binaries.cluster(
            System::Ondisk,
            &plan.dir,
            plan.ondisk_protocol,
            certs.as_ref(),
        )?,
        plan.binaries.cluster(
            System::Etcd,
            &plan.dir,
            plan.ondisk_protocol,
            certs.as_ref(),
        )?,
    ];
    let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
    for cluster in &mut clusters {
        cluster.start()?;
        let waited = wait_serving(cluster, Instant::now()).await;
        let waited = waited.with_context(|| format!("{} did not start", cluster.system))?;
        eprintln!("{} serving after {:.2?}", cluster.system, waited.all);
        let target = cluster.connect().await?;
        load(&target, 0..SMALL_RESTART_KEYS, plan.matrix.value_size).await?;
        drop(target);
        let restart = restart(cluster).await?;
        eprintln!(
            "{} restart with {SMALL_RESTART_KEYS} keys: first read {:.2?}, all {:.2?}",
            cluster.system, restart.first, restart.all
        );
        let entry = capacity.entry(cluster.system.to_string()).or_default();
        entry.restart_small_first_secs = restart.first.as_secs_f64();
        entry.restart_small_all_secs = restart.all.as_secs_f64();
        let target = cluster.connect().await?;
        load(
            &target,
            SMALL_RESTART_KEYS..plan.matrix.keys,
            plan.matrix.value_size,
        )
        .await?;
    }

    let mut outcomes = Outcomes::new();
    let targets = [
        Arc::new(clusters[0].connect().await?),
        Arc::new(clusters[1].connect().await?),
    ];
    let large_values = large_value_runs(plan);
    for (round, spec) in plan.matrix.runs().chain(large_values) {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let system = clusters[i].system;
            let outcome = workload::run(targets[i].clone(), &spec, &clusters[i].pids()).await?;
            eprintln!(
                "round {} {} x{} {} B {system}: {:.0} ops/s p50 {} us p99 {} us errors {}",
                round + 1,
                spec.workload,
                spec.clients,
                spec.value_size,
                outcome.ops_per_sec,
                outcome.p50_us,
                outcome.p99_us,
                outcome.errors
            );
            outcomes
                .entry((spec.workload, spec.clients, spec.value_size, system))
                .or_default()
                .push(outcome);
        }
    }
    drop(targets);

    if plan.big_keys > plan.matrix.keys {
        for cluster in &mut clusters {
            let entry = capacity.entry(cluster.system.to_string()).or_default();
            let target = cluster.connect().await?;
            let began = Instant::now();
            load(
                &target,
                plan.matrix.keys..plan.big_keys,
                plan.matrix.value_size,
            )
            .await?;
            entry.load_big_secs = began.elapsed().as_secs_f64();
            entry.rss_big_bytes = cluster.max_rss();
            entry.disk_big_bytes = cluster.disk_per_member();
            drop(target);
            let restart = restart(cluster).await?;
            entry.restart_big_first_secs = restart.first.as_secs_f64();
            entry.restart_big_all_secs = restart.all.as_secs_f64();
            entry.rss_after_restart_bytes = cluster.max_rss();
            eprintln!(
                "{}: {} keys loaded in {:.1} s, RSS {} MiB, restart: first read {:.2?}, all {:.2?}",
                cluster.system,
                plan.big_keys,
                entry.load_big_secs,
                entry.rss_big_bytes >> 20,
                restart.first,
                restart.all
            );
        }
    }
    for cluster in &mut clusters {
        cluster.stop()?;
    }

    let (medians, large_values): (Vec<Row>, Vec<Row>) = outcomes
        .iter()
        .filter(|((_, _, _, system), _)| *system == System::Ondisk)
        .filter_map(|((workload, clients, value_size, _), ondisk)| {
            let etcd = outcomes.get(&(*workload, *clients, *value_size, System::Etcd))?;
            Some(Row {
                workload: *workload,
                clients: *clients,
                value_size: *value_size,
                ondisk: median(ondisk),
                etcd: median(etcd),
            })
        })
        .partition(|row| row.in_matrix(plan));
    print_limits(&limits);
    print_table(plan, &medians, &capacity);
    print_one_client(&medians, &limits);
    print_large_values(plan, &large_values, &limits);
    let mut results = serde_json::json!({
        "ondisk_protocol": plan.ondisk_protocol,
        "rounds": plan.matrix.rounds,
        "duration_secs": plan.matrix.duration.as_secs_f64(),
        "keys": plan.matrix.keys,
        "value_size": plan.matrix.value_size,
        "big_keys": plan.big_keys,
        "medians": medians,
        "capacity": capacity,
        "limits": limits,
        "large_values": large_values,
    });
    // Only a TLS run says so: a plaintext run's JSON stays what it always was.
    if plan.tls {
        results["tls"] = serde_json::Value::Bool(true);
    }
    Ok(results)
}

/// How long after a start the cluster served linearizable reads.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// Until the first member answered one: the cluster is available.
    pub first: Duration,
    /// Until every member had answered one: each has applied everything committed before.
    pub all: Duration,
}

/// Waits until every member has applied everything committed so far, then stops every member,
/// starts them again, and times how long until they serve linearizable reads. Settling first
/// keeps a follower's backlog of committed but unapplied entries (which a restart would have to
/// apply) out of what is meant to be the cost of the restart itself.
pub(crate) async fn restart(cluster: &mut Cluster) -> anyhow::Result<Serving> {
    wait_serving(cluster, Instant::now()).await?;
    cluster.stop()?;
    let began = Instant::now();
    cluster.start()?;
    wait_serving(cluster, began).await
}

/// Polls every member at once with linearizable reads until each has answered one.
pub async fn wait_serving(cluster: &Cluster, began: Instant) -> anyhow::Result<Serving> {
    let deadline = began + START_DEADLINE;
    let members = cluster.endpoints.iter().map(|endpoint| async move {
        let target = loop {
            match cluster.connect_to(vec![endpoint.clone()]).await {
                Ok(target) => break target,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    cluster.check_running()?;
                    tokio::time::sleep(POLL).await
                }
            }
        };
        loop {
            match target.get(key(0), Consistency::Linearizable).await {
                Ok(()) => return Ok(began.elapsed()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "{endpoint} gave no linearizable read within {START_DEADLINE:?}"
                    )))
                }
                Err(_) => {
                    cluster.check_running()?;
                    tokio::time::sleep(POLL).await
                }
            }
        }
    });
    let waited = futures::future::try_join_all(members).await?;
    Ok(Serving {
        first: waited.iter().copied().min().unwrap_or_default(),
        all: waited.iter().copied().max().unwrap_or_default(),
    })
}

/// Writes every key of `keys` once, from [`LOAD_CLIENTS`] concurrent writers.
pub(crate) async fn load(
    target: &Target,
    keys: std::ops::Range<u64>,
    value_size: usize,
) -> anyhow::Result<()> {
    let value = vec![b'v'; value_size];
    let writers = (0..LOAD_CLIENTS as u64).map(|writer| {
        let keys = keys.clone();
        let value = value.clone();
        async move {
            let mut n = keys.start + writer;
            while n < keys.end {
                target
                    .put(key(n), value.clone())
                    .await
                    .with_context(|| format!("loading key {n}"))?;
                n += LOAD_CLIENTS as u64;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(writers).await.map(drop)
}

/// Medians per workload, client count, value size and system.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    workload: Workload,
    clients: usize,
    value_size: usize,
    ondisk: Outcome,
    etcd: Outcome,
}

impl Row {
    /// True for a run of the main matrix (its value size), false for the large-value phase.
    fn in_matrix(&self, plan: &Plan) -> bool {
        self.value_size == plan.matrix.value_size
    }
}

/// The large-value phase's runs, round by round: puts of every size in `plan.large_values` but 0
/// and the matrix's own (which its runs already cover).
fn large_value_runs(plan: &Plan) -> impl Iterator<Item = (usize, Spec)> + '_ {
    let sizes = plan
        .large_values
        .iter()
        .filter(|&&size| size > 0 && size != plan.matrix.value_size);
    (0..plan.matrix.rounds).flat_map(move |round| {
        sizes.clone().map(move |&value_size| {
            let spec = Spec {
                workload: Workload::Put,
                clients: LARGE_VALUE_CLIENTS,
                warmup: plan.matrix.warmup,
                duration: plan.large_value_duration,
                keys: LARGE_VALUE_KEYS,
                value_size,
            };
            (round, spec)
        })
    })
}

/// Each figure's median over the rounds, taken separately.
pub(crate) fn median(runs: &[Outcome]) -> Outcome {
    fn mid<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    let of = |f: fn(&Outcome) -> f64| mid(runs.iter().map(f).collect());
    let of_u = |f: fn(&Outcome) -> u64| mid(runs.iter().map(f).collect());
    Outcome {
        ops_per_sec: of(|o| o.ops_per_sec),
        errors: runs.iter().map(|o| o.errors).sum(),
        p50_us: of_u(|o| o.p50_us),
        p90_us: of_u(|o| o.p90_us),
        p99_us: of_u(|o| o.p99_us),
        p999_us: of_u(|o| o.p999_us),
        client_cores: of(|o| o.client_cores),
        server_cpu_us_per_op: of(|o| o.server_cpu_us_per_op),
        first_error: runs.iter().find_map(|o| o.first_error.clone()),
    }
}

fn print_table(plan: &Plan, rows: &[Row], capacity: &BTreeMap<String, Capacity>) {
    println!(
        "\nMedians of {} alternating rounds, {} s each after {} s warm-up, {} keys, {}-byte values; {}{}.\n",
        plan.matrix.rounds,
        plan.matrix.duration.as_secs_f64(),
        plan.matrix.warmup.as_secs_f64(),
        plan.matrix.keys,
        plan.matrix.value_size,
        plan.ondisk_protocol.ondisk_caption(),
        if plan.tls { TLS_CAPTION } else { "" }
    );
    println!("| workload | clients | ondisk ops/s | etcd ops/s | ratio | ondisk p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | p99 ratio | errors o/e | client cores o/e | server CPU µs/op o/e |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |us: u64| us as f64 / 1000.0;
    for row in rows {
        let (o, e) = (&row.ondisk, &row.etcd);
        println!(
            "| {} | {} | {:.0} | {:.0} | **{:.2}×** | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} | {} / {} | {:.2} / {:.2} | {:.0} / {:.0} |",
            row.workload,
            row.clients,
            o.ops_per_sec,
            e.ops_per_sec,
            ratio(o.ops_per_sec, e.ops_per_sec),
            ms(o.p50_us),
            ms(o.p99_us),
            ms(o.p999_us),
            ms(e.p50_us),
            ms(e.p99_us),
            ms(e.p999_us),
            ratio(o.p99_us as f64, e.p99_us as f64),
            o.errors,
            e.errors,
            o.client_cores,
            e.client_cores,
            o.server_cpu_us_per_op,
            e.server_cpu_us_per_op,
        );
    }
    for row in rows {
        for (system, outcome) in [("ondisk", &row.ondisk), ("etcd", &row.etcd)] {
            if let Some(error) = &outcome.first_error {
                println!(
                    "\n{system} {} x{}: first error: {error}",
                    row.workload, row.clients
                );
            }
        }
    }
    let (Some(o), Some(e)) = (capacity.get("ondisk"), capacity.get("etcd")) else {
        return;
    };
    println!("\n| | ondisk | etcd | ratio |\n|---|---:|---:|---:|");
    let secs = |label: &str, o: f64, e: f64| {
        println!("| {label} | {o:.2} s | {e:.2} s | {:.2} |", ratio(o, e));
    };
    secs(
        &format!("full restart to first linearizable read, {SMALL_RESTART_KEYS} keys"),
        o.restart_small_first_secs,
        e.restart_small_first_secs,
    );
    secs(
        &format!("full restart until every member serves one, {SMALL_RESTART_KEYS} keys"),
        o.restart_small_all_secs,
        e.restart_small_all_secs,
    );
    if plan.big_keys > plan.matrix.keys {
        let mib = |label: &str, o: u64, e: u64| {
            println!(
                "| {label} | {} MiB | {} MiB | {:.2} |",
                o >> 20,
                e >> 20,
                ratio(o as f64, e as f64)
            );
        };
        let n = plan.big_keys;
        secs(
            &format!("loading up to {n} keys"),
            o.load_big_secs,
            e.load_big_secs,
        );
        mib(
            &format!("largest member RSS, {n} keys"),
            o.rss_big_bytes,
            e.rss_big_bytes,
        );
        mib(
            &format!("disk per member, {n} keys"),
            o.disk_big_bytes,
            e.disk_big_bytes,
        );
        secs(
            &format!("full restart to first linearizable read, {n} keys"),
            o.restart_big_first_secs,
            e.restart_big_first_secs,
        );
        secs(
            &format!("full restart until every member serves one, {n} keys"),
            o.restart_big_all_secs,
            e.restart_big_all_secs,
        );
        mib(
            "largest member RSS just after that restart",
            o.rss_after_restart_bytes,
            e.rss_after_restart_bytes,
        );
    }
}

fn print_limits(limits: &Limits) {
    println!("\nThe machine, measured in the benchmark's directory before the clusters started:\n");
    println!("| limit | value |\n|---|---:|");
    println!(
        "| 4 KiB write + fdatasync, median | {:.0} µs |",
        limits.synced_write_p50_us
    );
    println!(
        "| sequential write (512 MiB, then fdatasync) | {:.0} MiB/s |",
        limits.sequential_mib_per_sec
    );
    println!(
        "| loopback TCP round trip, median | {:.0} µs |",
        limits.round_trip_p50_us
    );
    println!(
        "| floor of a durable put from one client (2 round trips + 1 synced write) | {:.0} µs |",
        limits.put_floor_us()
    );
    println!(
        "| floor of a linearizable read from one client (2 round trips) | {:.0} µs |",
        limits.linearizable_read_floor_us()
    );
}

/// One client's latency, each system's p50 against the floor the machine allows.
fn print_one_client(rows: &[Row], limits: &Limits) {
    let floors = rows
        .iter()
        .filter(|row| row.clients == 1)
        .filter_map(|row| {
            let floor = match row.workload {
                Workload::Put => limits.put_floor_us(),
                Workload::Get => limits.linearizable_read_floor_us(),
                Workload::StaleGet => limits.stale_read_floor_us(),
                Workload::Mixed => return None,
            };
            Some((row, floor))
        });
    let mut floors = floors.peekable();
    if floors.peek().is_none() {
        return;
    }
    println!("\nOne client: median latency against the machine's floor (see the limits above).\n");
    println!("| workload | floor ms | ondisk p50 / p99 ms | etcd p50 / p99 ms | ondisk p50 / floor | etcd p50 / floor | ondisk p50 / etcd p50 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ms = |us: f64| us / 1000.0;
    for (row, floor) in floors {
        let (o, e) = (&row.ondisk, &row.etcd);
        println!(
            "| {} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2}× | {:.2}× | {:.2} |",
            row.workload,
            ms(floor),
            ms(o.p50_us as f64),
            ms(o.p99_us as f64),
            ms(e.p50_us as f64),
            ms(e.p99_us as f64),
            o.p50_us as f64 / floor,
            e.p50_us as f64 / floor,
            ratio(o.p50_us as f64, e.p50_us as f64),
        );
    }
}

/// Large values: bytes put per second, against etcd and against the disk's sequential rate
/// (every put writes its value at least to the log of each member, so the disk bounds it).
fn print_large_values(plan: &Plan, rows: &[Row], limits: &Limits) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\nLarge values: {LARGE_VALUE_CLIENTS} clients putting to {LARGE_VALUE_KEYS} keys, medians of {} alternating rounds of {} s.\n",
        plan.matrix.rounds,
        plan.large_value_duration.as_secs_f64()
    );
    println!("| value | ondisk MiB/s | etcd MiB/s | ratio | ondisk / disk rate | etcd / disk rate | ondisk p50 / p99 ms | etcd p50 / p99 ms | errors o/e | server CPU µs/op o/e |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib_per_sec = |row: &Row, outcome: &Outcome| {
        outcome.ops_per_sec * row.value_size as f64 / f64::from(1u32 << 20)
    };
    let ms = |us: u64| us as f64 / 1000.0;
    for row in rows {
        let (o, e) = (&row.ondisk, &row.etcd);
        let (o_rate, e_rate) = (mib_per_sec(row, o), mib_per_sec(row, e));
        println!(
            "| {} KiB | {:.1} | {:.1} | **{:.2}×** | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} / {} | {:.0} / {:.0} |",
            row.value_size >> 10,
            o_rate,
            e_rate,
            ratio(o_rate, e_rate),
            o_rate / limits.sequential_mib_per_sec,
            e_rate / limits.sequential_mib_per_sec,
            ms(o.p50_us),
            ms(o.p99_us),
            ms(e.p50_us),
            ms(e.p99_us),
            o.errors,
            e.errors,
            o.server_cpu_us_per_op,
            e.server_cpu_us_per_op,
        );
    }
}

fn ratio(ondisk: f64, etcd: f64) -> f64 {
    if etcd == 0.0 {
        f64::NAN
    } else {
        ondisk / etcd
    }
}
