//! `ondisk-bench tls-cost`: what TLS costs each system. A plaintext and a TLS cluster of each
//! system run side by side, and every workload runs on each of them in turn, the order rotating
//! from round to round. Running `compare` twice, once with `--tls`, compares runs taken minutes
//! apart on a shared two-core machine whose speed drifts by more than the cost being measured;
//! here the drift falls on both halves of every pair alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::time::Instant;

use crate::cluster::Binaries;
use crate::cluster::Cluster;
use crate::cluster::MEMBERS;
use crate::compare::load;
use crate::compare::median;
use crate::compare::wait_serving;
use crate::target::Protocol;
use crate::target::System;
use crate::tls::Certs;
use crate::workload;
use crate::workload::ms;
use crate::workload::Matrix;
use crate::workload::Outcome;
use crate::workload::Workload;

/// Everything the measurement is told.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub dir: PathBuf,
    /// Systems to measure; each gets a plaintext and a TLS cluster.
    pub systems: Vec<System>,
    pub matrix: Matrix,
}

/// One cluster of the measurement: a system, with or without TLS.
struct Variant {
    system: System,
    tls: bool,
    cluster: Cluster,
}

/// One system's figures for one workload at one client count.
#[derive(Debug, Clone, serde::Serialize)]
struct Cost {
    system: System,
    workload: Workload,
    clients: usize,
    plain: Outcome,
    tls: Outcome,
    /// Throughput lost to TLS, in percent of the plaintext median.
    cost_percent: f64,
    /// The lowest and highest loss of a single round (TLS run against the plaintext run of the
    /// same round), which shows how far the machine's noise reaches.
    round_cost_percent: (f64, f64),
}

/// Runs the measurement and prints its table; returns the results as JSON.
pub async fn run(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let certs = Certs::generate(&plan.dir.join("certs"), MEMBERS)?;
    let mut variants = Vec::new();
    for &system in &plan.systems {
        for tls in [false, true] {
            let dir = plan.dir.join(if tls { "tls" } else { "plain" });
            let certs = tls.then_some(&certs);
            let cluster = plan
                .binaries
                .cluster(system, &dir, Protocol::Native, certs)?;
            variants.push(Variant {
                system,
                tls,
                cluster,
            });
        }
    }
    for variant in &mut variants {
        let cluster = &mut variant.cluster;
        cluster.start()?;
        wait_serving(cluster, Instant::now())
            .await
            .with_context(|| format!("{} did not start", label(variant.system, variant.tls)))?;
        let target = cluster.connect().await?;
        load(&target, 0..plan.matrix.keys, plan.matrix.value_size).await?;
    }

    let outcomes = measure(plan, &variants).await;
    for variant in &mut variants {
        variant.cluster.stop()?;
    }
    let outcomes = outcomes?;

    let costs: Vec<Cost> = plan
        .systems
        .iter()
        .flat_map(|&system| {
            plan.matrix.workloads.iter().flat_map(move |&workload| {
                plan.matrix
                    .clients
                    .iter()
                    .map(move |&clients| (system, workload, clients))
            })
        })
        .filter_map(|(system, workload, clients)| {
            let plain = outcomes.get(&(workload, clients, system, false))?;
            let tls = outcomes.get(&(workload, clients, system, true))?;
            Some(cost(system, workload, clients, plain, tls))
        })
        .collect();
    print_table(plan, &costs);
    Ok(serde_json::json!({
        "rounds": plan.matrix.rounds,
        "duration_secs": plan.matrix.duration.as_secs_f64(),
        "keys": plan.matrix.keys,
        "value_size": plan.matrix.value_size,
        "costs": costs,
    }))
}

/// Every run of every round, by workload, client count, system and TLS.
type Outcomes = BTreeMap<(Workload, usize, System, bool), Vec<Outcome>>;

/// Runs every workload at every client count on every variant, `plan.matrix.rounds` times, in the
/// order [`turns`] gives.
async fn measure(plan: &Plan, variants: &[Variant]) -> anyhow::Result<Outcomes> {
    let mut targets = Vec::new();
    for variant in variants {
        targets.push(Arc::new(variant.cluster.connect().await?));
    }
    let mut outcomes = Outcomes::new();
    for (round, spec) in plan.matrix.runs() {
        for i in turns(round, plan.systems.len()) {
            let variant = &variants[i];
            let outcome = workload::run(targets[i].clone(), &spec, &variant.cluster.pids()).await?;
            eprintln!(
                "round {} {} x{} {}: {:.0} ops/s p99 {} us, server {:.0} us/op, errors {}",
                round + 1,
                spec.workload,
                spec.clients,
                label(variant.system, variant.tls),
                outcome.ops_per_sec,
                outcome.p99_us,
                outcome.server_cpu_us_per_op,
                outcome.errors
            );
            outcomes
                .entry((spec.workload, spec.clients, variant.system, variant.tls))
                .or_default()
                .push(outcome);
        }
    }
    Ok(outcomes)
}

/// The order of round `round` over the variants of `systems` systems (indexed system by system,
/// plaintext then TLS): a system's two clusters run back to back, so each round's pair saw the
/// same machine; which of the two goes first alternates, and so does which system starts.
fn turns(round: usize, systems: usize) -> impl Iterator<Item = usize> {
    (0..systems).flat_map(move |k| {
        let system = (round + k) % systems;
        let first = round % 2;
        [2 * system + first, 2 * system + (1 - first)]
    })
}

fn cost(
    system: System,
    workload: Workload,
    clients: usize,
    plain: &[Outcome],
    tls: &[Outcome],
) -> Cost {
    let (plain_median, tls_median) = (median(plain), median(tls));
    let rounds: Vec<f64> = plain
        .iter()
        .zip(tls)
        .map(|(p, t)| loss_percent(p.ops_per_sec, t.ops_per_sec))
        .collect();
    let lowest = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Cost {
        system,
        workload,
        clients,
        cost_percent: loss_percent(plain_median.ops_per_sec, tls_median.ops_per_sec),
        plain: plain_median,
        tls: tls_median,
        round_cost_percent: (lowest, highest),
    }
}

/// How much lower `tls` is than `plain`, in percent of `plain`.
fn loss_percent(plain: f64, tls: f64) -> f64 {
    if plain == 0.0 {
        f64::NAN
    } else {
        (1.0 - tls / plain) * 100.0
    }
}

fn label(system: System, tls: bool) -> String {
    format!("{system} {}", if tls { "TLS" } else { "plain" })
}

fn print_table(plan: &Plan, costs: &[Cost]) {
    println!(
        "\nMedians of {} rounds, {} s each after {} s warm-up, {} keys, {}-byte values; \
         each round runs a system's plaintext and TLS clusters back to back, alternating which \
         goes first. TLS: mutual TLS between members, and every client presents a certificate.\n",
        plan.matrix.rounds,
        plan.matrix.duration.as_secs_f64(),
        plan.matrix.warmup.as_secs_f64(),
        plan.matrix.keys,
        plan.matrix.value_size,
    );
    println!("| system | workload | clients | plain ops/s | TLS ops/s | TLS cost | cost per round | p99 ms plain / TLS | server CPU µs/op plain / TLS | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in costs {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | **{:.1} %** | {:.1} to {:.1} % | {} / {} | {:.0} / {:.0} | {} |",
            c.system,
            c.workload,
            c.clients,
            c.plain.ops_per_sec,
            c.tls.ops_per_sec,
            c.cost_percent,
            c.round_cost_percent.0,
            c.round_cost_percent.1,
            ms(c.plain.p99_us),
            ms(c.tls.p99_us),
            c.plain.server_cpu_us_per_op,
            c.tls.server_cpu_us_per_op,
            c.plain.errors + c.tls.errors,
        );
    }
    let tls_of = |system: System, workload: Workload, clients: usize| {
        costs
            .iter()
            .find(|c| (c.system, c.workload, c.clients) == (system, workload, clients))
            .map(|c| &c.tls)
    };
    let pairs: Vec<_> = costs
        .iter()
        .filter(|c| c.system == System::Ondisk)
        .filter_map(|c| Some((c, tls_of(System::Etcd, c.workload, c.clients)?)))
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!("\n| workload | clients | ondisk TLS / etcd TLS | p99 ondisk TLS / etcd TLS (ms) |");
    println!("|---|---:|---:|---:|");
    for (ondisk, etcd) in pairs {
        println!(
            "| {} | {} | **{:.2}×** | {} / {} |",
            ondisk.workload,
            ondisk.clients,
            ondisk.tls.ops_per_sec / etcd.ops_per_sec,
            ms(ondisk.tls.p99_us),
            ms(etcd.p99_us),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::turns;

    #[test]
    fn each_round_runs_every_cluster_once_with_pairs_back_to_back() {
        assert_eq!(turns(0, 2).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(turns(1, 2).collect::<Vec<_>>(), [3, 2, 1, 0]);
        assert_eq!(turns(2, 2).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(turns(1, 1).collect::<Vec<_>>(), [1, 0]);
    }
}
