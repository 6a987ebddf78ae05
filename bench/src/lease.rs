//! `ondisk-bench lease`: what keeping leases alive costs. L leases are granted, then kept alive
//! for a bounded window, either on schedule (each lease once per TTL/3, as etcd's clients do, for
//! L / (TTL/3) keep-alives a second overall) or as fast as the clients can; the figures are the
//! keep-alives answered per second, their latency, and the CPU the three servers used per
//! keep-alive (user + system time from `/proc/PID/stat` over the window, divided by the
//! keep-alives answered).
//!
//! ondisk's keep-alives are `POST /v1/leases/ID/keep-alive` over pooled HTTP/1.1 connections,
//! spread over the three nodes (a follower forwards to the leader); etcd's go through
//! etcd-client's keep-alive streams, one per lease, opened before the window (opening one sends
//! the first keep-alive), spread over one connection per member. Each client task owns a fixed
//! share of the leases and has one keep-alive in flight. One system runs at a time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::cluster::Binaries;
use crate::cluster::Cluster;
use crate::compare::wait_serving;
use crate::http::HttpClient;
use crate::pace::Pace;
use crate::process::cpu_seconds_of;
use crate::process::cpu_seconds_self;
use crate::target::Protocol;
use crate::target::System;
use crate::workload::latency_histogram;
use crate::workload::ms;
use crate::workload::record_latency;

/// Everything the keep-alive benchmark is told.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub dir: PathBuf,
    pub systems: Vec<System>,
    pub leases: usize,
    /// Seconds each lease lives without a keep-alive.
    pub ttl: i64,
    pub duration: Duration,
    /// Keep-alives a second overall, on schedule; `None`: as fast as the clients can.
    pub rate: Option<f64>,
    /// Client tasks, each with one keep-alive in flight.
    pub clients: usize,
}

/// Concurrent grants while creating the leases.
const GRANTERS: usize = 64;
/// Tries per lease grant before the run fails.
const GRANT_ATTEMPTS: usize = 3;
/// How long the servers are watched idle, with every lease granted, before the window.
const IDLE: Duration = Duration::from_secs(3);
/// How long one keep-alive may take before it counts as an error.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A keep-alive sent later than this after its due time counts as late.
const LATE: Duration = Duration::from_millis(10);

/// What one system's run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub system: System,
    pub leases: usize,
    pub grant_secs: f64,
    /// The servers' CPU with every lease granted and none kept alive (expiry checks, heartbeats).
    pub idle_server_cores: f64,
    pub keep_alives: u64,
    pub errors: u64,
    /// Keep-alives sent more than [`LATE`] after their due time (on schedule only).
    pub late: u64,
    /// Keep-alives answered, divided by the time from the window's start to the last answer.
    pub keep_alives_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The servers' CPU over the window divided by the keep-alives answered, idle cost included.
    pub server_cpu_us_per_keep_alive: f64,
    pub server_cores: f64,
    pub client_cores: f64,
    pub first_error: Option<String>,
}

/// Runs the keep-alives on each system in turn, prints the table and returns the results as JSON.
pub async fn run(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let mut outcomes = Vec::new();
    for &system in &plan.systems {
        let outcome = run_system(plan, system).await?;
        eprintln!(
            "{system}: {} keep-alives ({:.0}/s), p50 {} us p99 {} us, {:.0} µs server CPU each, errors {}",
            outcome.keep_alives,
            outcome.keep_alives_per_sec,
            outcome.p50_us,
            outcome.p99_us,
            outcome.server_cpu_us_per_keep_alive,
            outcome.errors
        );
        outcomes.push(outcome);
    }
    print_table(plan, &outcomes);
    Ok(serde_json::json!({
        "leases": plan.leases,
        "ttl_secs": plan.ttl,
        "duration_secs": plan.duration.as_secs_f64(),
        "rate": plan.rate,
        "clients": plan.clients,
        "outcomes": outcomes,
    }))
}

/// Keep-alives a second when each of `leases` is renewed once per TTL/3.
pub fn scheduled_rate(leases: usize, ttl: i64) -> f64 {
    leases as f64 * 3.0 / ttl.max(1) as f64
}

/// Starts `system`'s cluster, grants the leases, keeps them alive for the window and stops it.
async fn run_system(plan: &Plan, system: System) -> anyhow::Result<Outcome> {
    // Leases go through ondisk's HTTP API; the native client only probes for readiness.
    let mut cluster = plan
        .binaries
        .cluster(system, &plan.dir, Protocol::Native, None)?;
    cluster.start()?;
    wait_serving(&cluster, Instant::now())
        .await
        .with_context(|| format!("{system} did not start"))?;
    let granting = Instant::now();
    let renewers = match system {
        System::Ondisk => ondisk_renewers(&cluster, plan).await?,
        System::Etcd => etcd_renewers(&cluster, plan).await?,
    };
    let grant_secs = granting.elapsed().as_secs_f64();
    let pids = cluster.pids();
    let idle_before = cpu_seconds_of(&pids);
    tokio::time::sleep(IDLE).await;
    let idle_server_cores = (cpu_seconds_of(&pids) - idle_before) / IDLE.as_secs_f64();

    let server_cpu_before = cpu_seconds_of(&pids);
    let client_cpu_before = cpu_seconds_self();
    let start = Instant::now();
    let end = start + plan.duration;
    let pace = plan.rate.map(|rate| Pace::new(start, rate));
    let clients = renewers.len();
    let tasks: Vec<_> = renewers
        .into_iter()
        .enumerate()
        .map(|(client, renewer)| tokio::spawn(keep_alive(renewer, client, clients, pace, end)))
        .collect();
    let mut total = Tally::new()?;
    for task in tasks {
        total.merge(task.await??);
    }
    let finished = Instant::now().max(end);
    let server_cpu = cpu_seconds_of(&pids) - server_cpu_before;
    let client_cpu = cpu_seconds_self() - client_cpu_before;
    cluster.stop()?;

    let seconds = (finished - start).as_secs_f64();
    let keep_alives = total.latencies.len();
    Ok(Outcome {
        system,
        leases: plan.leases,
        grant_secs,
        idle_server_cores,
        keep_alives,
        errors: total.errors,
        late: total.late,
        keep_alives_per_sec: keep_alives as f64 / seconds,
        p50_us: total.latencies.value_at_quantile(0.50),
        p99_us: total.latencies.value_at_quantile(0.99),
        max_us: total.latencies.max(),
        server_cpu_us_per_keep_alive: if keep_alives == 0 {
            0.0
        } else {
            server_cpu * 1e6 / keep_alives as f64
        },
        server_cores: server_cpu / seconds,
        client_cores: client_cpu / seconds,
        first_error: total.first_error,
    })
}

/// One client task's leases and the means to renew them.
enum Renewer {
    /// The keep-alive URL of each lease.
    Ondisk { http: HttpClient, urls: Vec<String> },
    /// An open keep-alive stream per lease.
    Etcd {
        streams: Vec<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    },
}

impl Renewer {
    /// How many leases this renewer keeps alive.
    fn leases(&self) -> usize {
        match self {
            Renewer::Ondisk { urls, .. } => urls.len(),
            Renewer::Etcd { streams } => streams.len(),
        }
    }

    /// Renews lease `lease` (an index into this renewer's own) and checks it is still alive.
    async fn renew(&mut self, lease: usize) -> anyhow::Result<()> {
        let ttl = match self {
            Renewer::Ondisk { http, urls } => {
                let url = urls.get(lease).context("no such lease")?;
                let body = http.send(hyper::Method::POST, url, Vec::new()).await?;
                let answer: ondisk::api::LeaseKeepAliveResponse = serde_json::from_slice(&body)?;
                answer.ttl
            }
            Renewer::Etcd { streams } => {
                let (keeper, stream) = streams.get_mut(lease).context("no such lease")?;
                keeper.keep_alive().await?;
                let answer = tokio::time::timeout(KEEP_ALIVE_TIMEOUT, stream.message())
                    .await
                    .context("no keep-alive answer in time")??;
                answer.context("the keep-alive stream ended")?.ttl()
            }
        };
        if ttl <= 0 {
            anyhow::bail!("lease expired");
        }
        Ok(())
    }
}

/// Grants the leases over HTTP, lease `i` on node `i % 3`, and gives client `c` the leases
/// `i % clients == c`, each renewed on the node it was granted on.
async fn ondisk_renewers(cluster: &Cluster, plan: &Plan) -> anyhow::Result<Vec<Renewer>> {
    let http = HttpClient::new();
    let nodes = &cluster.http;
    let node_of = |i: usize| nodes.get(i % nodes.len().max(1)).cloned();
    let grant = serde_json::to_vec(&ondisk::api::LeaseGrantRequest {
        ttl: plan.ttl,
        id: 0,
    })?;
    let ids = grant_all(plan.leases, |i| {
        let http = http.clone();
        let grant = grant.clone();
        let node = node_of(i);
        async move {
            let node = node.context("ondisk has no HTTP address")?;
            let url = format!("http://{node}{}", ondisk::api::http::LEASES);
            let body = http.send(hyper::Method::POST, &url, grant).await?;
            let answer: ondisk::api::LeaseGrantResponse = serde_json::from_slice(&body)?;
            Ok(answer.id)
        }
    })
    .await?;
    let clients = plan.clients.max(1);
    (0..clients)
        .map(|client| {
            let urls = (client..ids.len())
                .step_by(clients)
                .map(|i| {
                    let node = node_of(i).context("ondisk has no HTTP address")?;
                    Ok(format!(
                        "http://{node}{}",
                        ondisk::api::http::keep_alive(ids[i])
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(Renewer::Ondisk {
                http: http.clone(),
                urls,
            })
        })
        .collect()
}

/// Grants the leases over one connection per member, lease `i` through member `i % 3`, and opens
/// a keep-alive stream for each, client `c` owning the leases `i % clients == c`.
async fn etcd_renewers(cluster: &Cluster, plan: &Plan) -> anyhow::Result<Vec<Renewer>> {
    let mut members = Vec::new();
    for endpoint in &cluster.endpoints {
        let client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .with_context(|| format!("cannot connect to etcd at {endpoint}"))?;
        members.push(client.lease_client());
    }
    anyhow::ensure!(!members.is_empty(), "etcd has no members");
    let member_of = |i: usize| members[i % members.len()].clone();
    let ttl = plan.ttl;
    let ids = grant_all(plan.leases, |i| {
        let mut lease = member_of(i);
        async move { Ok(lease.grant(ttl, None).await?.id()) }
    })
    .await?;
    let clients = plan.clients.max(1);
    let opening = (0..clients).map(|client| {
        let leases: Vec<(usize, i64)> = (client..ids.len())
            .step_by(clients)
            .map(|i| (i, ids[i]))
            .collect();
        let member_of = &member_of;
        async move {
            let mut streams = Vec::with_capacity(leases.len());
            for (i, id) in leases {
                streams.push(member_of(i).keep_alive(id).await?);
            }
            anyhow::Ok(Renewer::Etcd { streams })
        }
    });
    futures::future::try_join_all(opening).await
}

/// Grants `leases` leases with `grant(i)`, [`GRANTERS`] at a time (each tried up to
/// [`GRANT_ATTEMPTS`] times), and returns their ids in order.
async fn grant_all<F, Fut>(leases: usize, grant: F) -> anyhow::Result<Vec<i64>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    use futures::StreamExt;
    futures::stream::iter(0..leases)
        .map(|i| {
            let grant = &grant;
            async move {
                // A grant that timed out may still have been applied; granting again leaves at
                // most an extra lease nobody keeps alive, which expires by itself.
                let mut attempt = 1;
                loop {
                    match grant(i).await {
                        Ok(id) => return Ok(id),
                        Err(e) if attempt >= GRANT_ATTEMPTS => {
                            return Err(e.context(format!("granting lease {i}")))
                        }
                        Err(e) => eprintln!("granting lease {i} (attempt {attempt}): {e:#}"),
                    }
                    attempt += 1;
                }
            }
        })
        .buffered(GRANTERS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One client task: renews its leases in turn until `end`. On schedule, its k-th keep-alive is
/// the run's keep-alive number `k * clients + client`, sent when that falls due.
async fn keep_alive(
    mut renewer: Renewer,
    client: usize,
    clients: usize,
    pace: Option<Pace>,
    end: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let leases = renewer.leases();
    if leases == 0 {
        return Ok(tally);
    }
    for k in 0.. {
        if let Some(pace) = pace {
            let due = pace.due((k * clients + client) as u64);
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due).await;
            if Instant::now() - due > LATE {
                tally.late += 1;
            }
        } else if Instant::now() >= end {
            break;
        }
        let sent = Instant::now();
        match renewer.renew(k % leases).await {
            Ok(()) => record_latency(&mut tally.latencies, sent.elapsed()),
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    Ok(tally)
}

/// A client task's record.
struct Tally {
    latencies: Histogram<u64>,
    errors: u64,
    late: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Nothing recorded yet.
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latencies: latency_histogram()?,
            errors: 0,
            late: 0,
            first_error: None,
        })
    }

    /// Adds another task's record to this one.
    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides, so adding cannot fail for lack of range.
        let _ = self.latencies.add(&other.latencies);
        self.errors += other.errors;
        self.late += other.late;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// How one row of the table shows an outcome.
type Cell = fn(&Outcome) -> String;

/// Prints the systems side by side, one column each, as BENCHMARKS.md shows them.
fn print_table(plan: &Plan, outcomes: &[Outcome]) {
    let schedule = match plan.rate {
        Some(rate) => format!("on schedule at {rate:.0} keep-alives/s"),
        None => "as fast as the clients can".to_string(),
    };
    println!(
        "\n{} leases (TTL {} s) kept alive for {} s {schedule}, {} client tasks.\n",
        plan.leases,
        plan.ttl,
        plan.duration.as_secs_f64(),
        plan.clients
    );
    let header: Vec<String> = outcomes.iter().map(|o| o.system.to_string()).collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(outcomes.len()));
    let rows: [(&str, Cell); 8] = [
        ("granting every lease, s", |o| {
            format!("{:.2}", o.grant_secs)
        }),
        ("server CPU idle with every lease, cores", |o| {
            format!("{:.3}", o.idle_server_cores)
        }),
        ("keep-alives answered / errors / sent late", |o| {
            format!("{} / {} / {}", o.keep_alives, o.errors, o.late)
        }),
        ("keep-alives/s", |o| format!("{:.0}", o.keep_alives_per_sec)),
        ("latency p50 / p99 / max ms", |o| {
            format!("{} / {} / {}", ms(o.p50_us), ms(o.p99_us), ms(o.max_us))
        }),
        ("server CPU per keep-alive, µs", |o| {
            format!("{:.0}", o.server_cpu_us_per_keep_alive)
        }),
        ("server CPU over the window, cores", |o| {
            format!("{:.2}", o.server_cores)
        }),
        ("load generator CPU, cores", |o| {
            format!("{:.2}", o.client_cores)
        }),
    ];
    for (label, cell) in rows {
        let cells: Vec<String> = outcomes.iter().map(cell).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    for outcome in outcomes {
        if let Some(error) = &outcome.first_error {
            println!("\n{}: first error: {error}", outcome.system);
        }
    }
}
