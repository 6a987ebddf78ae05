//! `ondisk-bench big`: each system at size. One system at a time (so the disk holds one cluster's
//! data), a 3-member cluster is started and loaded with N keys of V random bytes each from
//! [`WRITERS`] concurrent writers, until every key is in, the system refuses a write (etcd's
//! space quota, 2 GB by default: where it stops is part of the result), the disk is nearly full,
//! or the time limit is reached. Then the figures a size brings out: disk per member against the
//! live data (keys and values), memory during and after the load, and a full restart of every
//! member, timed to the first linearizable read and until every member serves one. The cluster's
//! data is removed before the next system starts.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::cluster::Binaries;
use crate::cluster::Cluster;
use crate::cluster::MEMBERS;
use crate::compare::restart;
use crate::compare::wait_serving;
use crate::process::available_bytes;
use crate::target::KvTarget;
use crate::target::Protocol;
use crate::target::System;
use crate::workload::key;

/// Everything the size benchmark is told.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub dir: PathBuf,
    pub systems: Vec<System>,
    pub keys: u64,
    pub value_size: usize,
    /// The longest one system's load may take; what is loaded by then is measured.
    pub load_limit: Duration,
}

/// Concurrent writers while loading, each with one put in flight.
const WRITERS: usize = 256;
/// Attempts per key before a refusal ends the load (a put may time out once under load).
const ATTEMPTS: usize = 3;
/// The load stops when the disk has less than this free, whatever the system.
const MIN_FREE_BYTES: u64 = 2 << 30;
/// How often the load reports its progress and checks the disk and the clock.
const PROGRESS: Duration = Duration::from_secs(10);

/// Why a load ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum LoadEnd {
    /// Every key is in.
    Complete,
    /// The system refused a put [`ATTEMPTS`] times; its last answer.
    Refused(String),
    /// Less than [`MIN_FREE_BYTES`] left on the disk.
    DiskNearlyFull,
    /// [`Plan::load_limit`] passed.
    TimeLimit,
}

/// What one system's run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub system: System,
    pub keys_loaded: u64,
    pub load_end: LoadEnd,
    pub load_secs: f64,
    /// Keys and values loaded, in bytes.
    pub live_bytes: u64,
    pub disk_per_member_bytes: u64,
    /// The largest member's peak resident set over the whole load.
    pub peak_rss_bytes: u64,
    pub restart_first_secs: f64,
    pub restart_all_secs: f64,
    /// The largest member's resident set just after the restart.
    pub rss_after_restart_bytes: u64,
}

/// Runs each system in turn and prints one table; returns the results as JSON.
pub async fn run(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let mut outcomes = Vec::new();
    for &system in &plan.systems {
        let outcome = run_system(plan, system).await?;
        eprintln!("{system}: {outcome:?}");
        outcomes.push(outcome);
    }
    print_table(plan, &outcomes);
    Ok(serde_json::json!({
        "keys": plan.keys,
        "value_size": plan.value_size,
        "outcomes": outcomes,
    }))
}

/// Starts `system`'s cluster, loads it, measures it, restarts it, stops it and removes its data.
async fn run_system(plan: &Plan, system: System) -> anyhow::Result<Outcome> {
    let mut cluster = plan
        .binaries
        .cluster(system, &plan.dir, Protocol::Native, None)?;
    let needed = live_bytes(plan, plan.keys) * MEMBERS as u64 + MIN_FREE_BYTES;
    let free = available_bytes(&plan.dir)?;
    if system == System::Ondisk && free < needed {
        anyhow::bail!(
            "{} keys of {} bytes need about {} GiB on {} for three members; {} GiB are free: \
             ask for fewer keys",
            plan.keys,
            plan.value_size,
            needed >> 30,
            plan.dir.display(),
            free >> 30
        );
    }
    cluster.start()?;
    wait_serving(&cluster, Instant::now())
        .await
        .with_context(|| format!("{system} did not start"))?;
    let target = cluster.connect().await?;
    let began = Instant::now();
    let (keys_loaded, load_end) = load(&target, plan, &cluster).await;
    let load_secs = began.elapsed().as_secs_f64();
    drop(target);
    eprintln!("{system}: {keys_loaded} keys loaded in {load_secs:.0} s ({load_end:?})");
    let peak_rss_bytes = cluster.max_peak_rss();
    let serving = restart(&mut cluster).await?;
    let outcome = Outcome {
        system,
        keys_loaded,
        load_end,
        load_secs,
        live_bytes: live_bytes(plan, keys_loaded),
        disk_per_member_bytes: cluster.disk_per_member(),
        peak_rss_bytes,
        restart_first_secs: serving.first.as_secs_f64(),
        restart_all_secs: serving.all.as_secs_f64(),
        rss_after_restart_bytes: cluster.max_rss(),
    };
    cluster.stop()?;
    cluster.remove_data()?;
    Ok(outcome)
}

/// Bytes of keys and values in the first `keys` keys.
fn live_bytes(plan: &Plan, keys: u64) -> u64 {
    keys * (key(0).len() + plan.value_size) as u64
}

/// Loads keys in order from [`WRITERS`] writers until one of the [`LoadEnd`]s; returns the keys
/// written and why it stopped.
async fn load(target: &impl KvTarget, plan: &Plan, cluster: &Cluster) -> (u64, LoadEnd) {
    let next = AtomicU64::new(0);
    let loaded = AtomicU64::new(0);
    let end: Mutex<Option<LoadEnd>> = Mutex::new(None);
    let stop = |why: LoadEnd| {
        end.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    };
    let stopped = || end.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    let writer = |_| {
        let (next, loaded) = (&next, &loaded);
        async move {
            let mut value = vec![0u8; plan.value_size];
            while !stopped() {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.keys {
                    return;
                }
                fill_random(&mut value, n);
                let mut attempt = 1;
                loop {
                    match target.put(key(n), value.clone()).await {
                        Ok(()) => break,
                        Err(e) if attempt >= ATTEMPTS => {
                            return stop(LoadEnd::Refused(format!("{e:#}")))
                        }
                        Err(_) => attempt += 1,
                    }
                }
                loaded.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let progress = async {
        let began = Instant::now();
        loop {
            tokio::time::sleep(PROGRESS).await;
            let done = loaded.load(Ordering::Relaxed);
            let free = available_bytes(&plan.dir).unwrap_or(u64::MAX);
            eprintln!(
                "  {done} keys after {:.0} s ({:.0} keys/s), {} MiB per member, {} GiB free",
                began.elapsed().as_secs_f64(),
                done as f64 / began.elapsed().as_secs_f64(),
                cluster.disk_per_member() >> 20,
                free >> 30
            );
            if free < MIN_FREE_BYTES {
                stop(LoadEnd::DiskNearlyFull);
            }
            if began.elapsed() >= plan.load_limit {
                stop(LoadEnd::TimeLimit);
            }
        }
    };
    let writers = futures::future::join_all((0..WRITERS).map(writer));
    // The progress loop only ends with the writers.
    tokio::select! {
        _ = writers => {}
        _ = progress => {}
    }
    let end = end.lock().unwrap_or_else(|e| e.into_inner()).take();
    (
        loaded.load(Ordering::Relaxed),
        end.unwrap_or(LoadEnd::Complete),
    )
}

/// Fills `value` with pseudo-random bytes from `seed` (xorshift64*, started from the seed's
/// SplitMix64 hash so that every seed gives another sequence): incompressible, so RocksDB's and
/// bbolt's compression flatter neither system, and cheap enough not to slow the writers.
fn fill_random(value: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    state = (state ^ (state >> 31)) | 1;
    for chunk in value.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

fn print_table(plan: &Plan, outcomes: &[Outcome]) {
    let mib = |bytes: u64| format!("{} MiB", bytes >> 20);
    let secs = |secs: f64| format!("{secs:.2} s");
    println!(
        "\n{} keys of {} random bytes asked for, {WRITERS} writers; 3 members of each system on loopback\n",
        plan.keys, plan.value_size
    );
    let systems: Vec<String> = outcomes.iter().map(|o| o.system.to_string()).collect();
    println!("| | {} |", systems.join(" | "));
    println!("|---|{}", "---:|".repeat(outcomes.len()));
    let row = |label: &str, cell: &dyn Fn(&Outcome) -> String| {
        let cells: Vec<String> = outcomes.iter().map(cell).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("keys loaded", &|o| o.keys_loaded.to_string());
    row("load ended", &|o| match &o.load_end {
        LoadEnd::Refused(_) => "refused a write".to_string(),
        other => format!("{other:?}"),
    });
    row("load time", &|o| secs(o.load_secs));
    row("load rate", &|o| {
        format!(
            "{:.0} keys/s, {:.1} MiB/s",
            o.keys_loaded as f64 / o.load_secs,
            o.live_bytes as f64 / o.load_secs / f64::from(1 << 20)
        )
    });
    row("live data (keys and values)", &|o| mib(o.live_bytes));
    row("disk per member", &|o| mib(o.disk_per_member_bytes));
    row("disk / live data", &|o| {
        format!(
            "{:.2}",
            o.disk_per_member_bytes as f64 / o.live_bytes.max(1) as f64
        )
    });
    row("largest member's peak RSS while loading", &|o| {
        mib(o.peak_rss_bytes)
    });
    row("full restart to first linearizable read", &|o| {
        secs(o.restart_first_secs)
    });
    row("full restart until every member serves one", &|o| {
        secs(o.restart_all_secs)
    });
    row("largest member's RSS just after the restart", &|o| {
        mib(o.rss_after_restart_bytes)
    });
    for outcome in outcomes {
        if let LoadEnd::Refused(error) = &outcome.load_end {
            println!("\n{}: the write refused: {error}", outcome.system);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values must not repeat, nor compress: either would flatter the disk figures.
    #[test]
    fn every_key_gets_its_own_incompressible_value() {
        let values: Vec<Vec<u8>> = (0..64)
            .map(|seed| {
                let mut value = vec![0; 1000];
                fill_random(&mut value, seed);
                value
            })
            .collect();
        let distinct: std::collections::HashSet<&[u8]> = values.iter().map(|v| &v[..8]).collect();
        assert_eq!(distinct.len(), values.len());
        let bytes: std::collections::HashSet<u8> = values[0].iter().copied().collect();
        assert!(bytes.len() > 200, "1000 random bytes take most byte values");
    }
}
