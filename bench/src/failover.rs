//! `ondisk-bench failover`: how long a 3-member cluster refuses writes after its leader dies, for
//! ondisk and etcd side by side, both with a 100 ms heartbeat and a 1 s election timeout (the
//! defaults of both).
//!
//! One kill: wait until every member names the same leader and serves a write and a linearizable
//! read; SIGKILL the leader; from that instant send a write to one survivor every 20 ms, each its
//! own request that does not wait for the one before, until one succeeds; let every write sent
//! finish (each has its own deadline); start the killed member again. The figure is the time from
//! the kill until the first write succeeded. The writes sent meanwhile are counted too: one that
//! failed is one that a client would have had to retry. Kills alternate between the systems, so
//! both see the same machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cluster::Binaries;
use crate::cluster::Cluster;
use crate::cluster::MEMBERS;
use crate::process::load_average;
use crate::target::Protocol;
use crate::target::System;

/// Everything the failover benchmark is told.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub dir: PathBuf,
    /// Leader kills per system.
    pub kills: usize,
    /// Time between two writes sent to the survivor.
    pub interval: Duration,
    /// How long one write may take before it counts as failed.
    pub write_timeout: Duration,
}

/// How long a cluster may take to agree on a leader and serve every member after a (re)start.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// A kill after which no write succeeded for this long fails the benchmark.
const GIVE_UP: Duration = Duration::from_secs(30);
/// How long a status question to one member may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between readiness probes.
const POLL: Duration = Duration::from_millis(20);
/// The key the readiness probes write and read.
const PROBE_KEY: &str = "failover-probe";

/// What one kill measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Kill {
    pub system: System,
    /// The members (1-based) that was killed and that received the writes.
    pub leader: usize,
    pub survivor: usize,
    /// When the SIGKILL was sent (RFC 3339, UTC), to find it in the members' logs.
    pub killed_at: String,
    /// From the SIGKILL until the first write succeeded.
    pub accepted_after_secs: f64,
    /// Writes sent to the survivor (until the first success) and how many of them failed.
    pub writes: usize,
    pub failed: usize,
    /// The longest a write that succeeded had waited for its answer.
    pub longest_success_secs: f64,
    pub first_error: Option<String>,
}

/// Runs the kills on both systems, prints the table and returns the results as JSON.
pub async fn run(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let load_before = load_average();
    let mut clusters = [
        // Views and writes go through ondisk's HTTP API, so its client protocol does not matter.
        plan.binaries
            .cluster(System::Ondisk, &plan.dir, Protocol::Native, None)?,
        plan.binaries
            .cluster(System::Etcd, &plan.dir, Protocol::Native, None)?,
    ];
    for cluster in &mut clusters {
        cluster.start()?;
    }
    let mut kills = Vec::new();
    for round in 0..plan.kills {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let cluster = &mut clusters[i];
            let kill = kill_leader(cluster, plan)
                .await
                .with_context(|| format!("{} kill {}", cluster.system, round + 1))?;
            eprintln!(
                "kill {} {}: leader {} killed at {}, writes to {} accepted after {:.3} s; {} of {} writes failed{}",
                round + 1,
                kill.system,
                kill.leader,
                kill.killed_at,
                kill.survivor,
                kill.accepted_after_secs,
                kill.failed,
                kill.writes,
                kill.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
            );
            kills.push(kill);
        }
    }
    for cluster in &mut clusters {
        cluster.stop()?;
    }
    let load = [load_before, load_average()];
    print_table(plan, &kills, load);
    Ok(serde_json::json!({
        "load_average_before_after": load,
        "kills_per_system": plan.kills,
        "interval_ms": plan.interval.as_millis(),
        "write_timeout_secs": plan.write_timeout.as_secs_f64(),
        "kills": kills,
    }))
}

/// One kill of `cluster`'s leader, measured; the killed member is running again afterwards.
async fn kill_leader(cluster: &mut Cluster, plan: &Plan) -> anyhow::Result<Kill> {
    let leader = wait_ready(cluster).await?;
    let survivor = (leader + 1) % MEMBERS;
    let writer = Arc::new(Writer::connect(cluster, survivor).await?);
    // The survivor's connection is set up before the clock starts.
    writer.put(PROBE_KEY.to_string()).await?;
    let killed_at = Instant::now();
    let wall_clock = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    cluster.kill(leader)?;
    let writes = write_until_accepted(writer, killed_at, plan).await;
    cluster.restart(leader)?;
    let writes = writes?;
    let succeeded = writes.iter().filter(|w| w.outcome.is_ok());
    let accepted_after = succeeded.clone().map(|w| w.done).min();
    let longest_success = succeeded.map(|w| w.done - w.sent).max();
    let accepted_after = accepted_after
        .with_context(|| format!("no write succeeded within {GIVE_UP:?} of the kill"))?;
    Ok(Kill {
        system: cluster.system,
        leader: leader + 1,
        survivor: survivor + 1,
        killed_at: wall_clock.to_string(),
        accepted_after_secs: accepted_after.as_secs_f64(),
        writes: writes.len(),
        failed: writes.iter().filter(|w| w.outcome.is_err()).count(),
        longest_success_secs: longest_success.unwrap_or_default().as_secs_f64(),
        first_error: writes.iter().find_map(|w| w.outcome.clone().err()),
    })
}

/// One write sent after a kill: when it was sent and answered (since the kill), and how it ended.
struct Sent {
    sent: Duration,
    done: Duration,
    outcome: Result<(), String>,
}

/// Sends a write every `plan.interval` from `killed_at` on, until one has succeeded (or
/// [`GIVE_UP`] has passed), then waits for every write sent to finish.
async fn write_until_accepted(
    writer: Arc<Writer>,
    killed_at: Instant,
    plan: &Plan,
) -> anyhow::Result<Vec<Sent>> {
    let mut ticks = tokio::time::interval_at(killed_at, plan.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    let mut finished = Vec::new();
    let mut accepted = false;
    loop {
        let sending = !accepted && killed_at.elapsed() < GIVE_UP;
        tokio::select! {
            _ = ticks.tick(), if sending => {
                let writer = writer.clone();
                let key = format!("failover-{}", finished.len() + in_flight.len());
                let timeout = plan.write_timeout;
                in_flight.spawn(async move {
                    let sent = killed_at.elapsed();
                    let outcome = match tokio::time::timeout(timeout, writer.put(key)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    };
                    Sent { sent, done: killed_at.elapsed(), outcome }
                });
            }
            Some(joined) = in_flight.join_next() => {
                let write = joined.context("a write task failed")?;
                accepted |= write.outcome.is_ok();
                finished.push(write);
            }
            else => break,
        }
    }
    Ok(finished)
}

/// Waits until every member names the same leader and serves a write and a linearizable read;
/// returns the leader's index.
async fn wait_ready(cluster: &Cluster) -> anyhow::Result<usize> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        match ready(cluster).await {
            Ok(leader) => return Ok(leader),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "{} was not ready within {READY_DEADLINE:?}",
                    cluster.system
                )))
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// One readiness probe: the agreed leader, once every member has served a write and a
/// linearizable read (so a member restarted after the previous kill has caught up).
async fn ready(cluster: &Cluster) -> anyhow::Result<usize> {
    let leader = agreed_leader(cluster).await?;
    for member in 0..MEMBERS {
        let writer = Writer::connect(cluster, member).await?;
        writer.put(PROBE_KEY.to_string()).await?;
        writer.get(PROBE_KEY.to_string()).await?;
    }
    Ok(leader)
}

/// The leader's index, if every member answers and names the same one, which says it leads.
async fn agreed_leader(cluster: &Cluster) -> anyhow::Result<usize> {
    let mut views = Vec::new();
    for member in 0..MEMBERS {
        views.push(match cluster.system {
            System::Ondisk => ondisk_view(&cluster.http[member]).await?,
            System::Etcd => etcd_view(&cluster.endpoints[member]).await?,
        });
    }
    let leader = views[0].leader;
    anyhow::ensure!(
        views.iter().all(|view| view.leader == leader),
        "the members name different leaders"
    );
    views
        .iter()
        .position(|view| view.id == leader)
        .context("the leader named is not a member")
}

/// What one member says about itself and the leader, in that system's own ids.
struct View {
    id: u64,
    leader: u64,
}

/// The view of the ondisk node whose HTTP API is at `http`; a node that names itself must also
/// say it leads (not still be winning its election).
async fn ondisk_view(http: &str) -> anyhow::Result<View> {
    let url = format!("http://{http}/v1/status");
    let text = tokio::task::spawn_blocking(move || {
        let mut answer = agent(PROBE_TIMEOUT).get(&url).call()?;
        anyhow::ensure!(answer.status().is_success(), "{url}: {}", answer.status());
        Ok(answer.body_mut().read_to_string()?)
    })
    .await??;
    let status: serde_json::Value = serde_json::from_str(&text)?;
    let id = status["id"].as_u64().context("no id")?;
    let leader = status["leader"].as_u64().context("no leader")?;
    anyhow::ensure!(
        id != leader || status["state"] == "Leader",
        "{id} is not leading yet"
    );
    Ok(View { id, leader })
}

/// The view of the etcd member whose client address is `endpoint`.
async fn etcd_view(endpoint: &str) -> anyhow::Result<View> {
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(PROBE_TIMEOUT)
        .with_connect_timeout(PROBE_TIMEOUT);
    let mut client = etcd_client::Client::connect([endpoint], Some(options)).await?;
    let status = client.status().await?;
    let id = status
        .header()
        .map(|h| h.member_id())
        .context("no header")?;
    anyhow::ensure!(status.leader() != 0, "no leader");
    Ok(View {
        id,
        leader: status.leader(),
    })
}

/// Writes to and reads from one member, through the interface that system's users would use to
/// talk to a given member: ondisk's HTTP API (a follower forwards the write to the leader) and
/// etcd's gRPC API.
enum Writer {
    Ondisk { base: String, agent: ureq::Agent },
    Etcd(etcd_client::KvClient),
}

impl Writer {
    /// A client of member `member` alone, so every request goes to that member.
    async fn connect(cluster: &Cluster, member: usize) -> anyhow::Result<Writer> {
        Ok(match cluster.system {
            System::Ondisk => Writer::Ondisk {
                base: format!("http://{}/v1/kv", cluster.http[member]),
                // The node's own -timeout (3 s) ends a write first; this only bounds the wait.
                agent: agent(GIVE_UP),
            },
            System::Etcd => {
                let options = etcd_client::ConnectOptions::new()
                    .with_timeout(GIVE_UP)
                    .with_connect_timeout(PROBE_TIMEOUT);
                let client =
                    etcd_client::Client::connect([&cluster.endpoints[member]], Some(options))
                        .await?;
                Writer::Etcd(client.kv_client())
            }
        })
    }

    /// Writes a one-byte value to `key`; `Ok` once the member says the write is committed.
    async fn put(&self, key: String) -> anyhow::Result<()> {
        match self {
            Writer::Ondisk { base, agent } => {
                let url = format!("{base}/{key}");
                let agent = agent.clone();
                tokio::task::spawn_blocking(move || {
                    let answer = agent.put(&url).send("x")?;
                    http_outcome(answer)
                })
                .await?
            }
            Writer::Etcd(kv) => {
                kv.clone().put(key, "x", None).await?;
                Ok(())
            }
        }
    }

    /// A linearizable read (a missing key is an answer too).
    async fn get(&self, key: String) -> anyhow::Result<()> {
        match self {
            Writer::Ondisk { base, agent } => {
                let url = format!("{base}/{key}");
                let agent = agent.clone();
                tokio::task::spawn_blocking(move || {
                    let answer = agent.get(&url).call()?;
                    if answer.status() == 404 {
                        return Ok(());
                    }
                    http_outcome(answer)
                })
                .await?
            }
            Writer::Etcd(kv) => {
                kv.clone().get(key, None).await?;
                Ok(())
            }
        }
    }
}

/// Success, or the status and the node's one-line reason.
fn http_outcome(mut answer: ureq::http::Response<ureq::Body>) -> anyhow::Result<()> {
    if answer.status().is_success() {
        return Ok(());
    }
    let reason = answer.body_mut().read_to_string().unwrap_or_default();
    anyhow::bail!("{}: {}", answer.status(), reason.trim())
}

/// An HTTP agent that reports every status as an answer, without keeping connections: each
/// request is its own, as from an independent client.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_idle_connections(0)
        .build()
        .into()
}

/// Prints the medians side by side, with the machine's load average before and after the run:
/// fsyncs, and so elections, slow down when other processes keep the disk busy.
fn print_table(plan: &Plan, kills: &[Kill], load: [Option<f64>; 2]) {
    let load = load.map(|l| l.map_or("?".into(), |l| format!("{l:.1}")));
    println!(
        "\n{} SIGKILLs of the leader per system; a write to a survivor every {} ms from the kill on; \
         load average {} before, {} after.\n",
        plan.kills,
        plan.interval.as_millis(),
        load[0],
        load[1]
    );
    println!("| | ondisk | etcd |\n|---|---:|---:|");
    let of = |system: System| kills.iter().filter(move |k| k.system == system);
    let spread = |system: System| {
        let mut secs: Vec<f64> = of(system).map(|k| k.accepted_after_secs).collect();
        secs.sort_by(f64::total_cmp);
        match (median(&secs), secs.first(), secs.last()) {
            (Some(median), Some(min), Some(max)) => {
                format!("**{median:.2} s** ({min:.2}–{max:.2})")
            }
            _ => "-".into(),
        }
    };
    println!(
        "| writes accepted again after the kill, median (min–max) | {} | {} |",
        spread(System::Ondisk),
        spread(System::Etcd)
    );
    let failed = |system: System| {
        let writes: usize = of(system).map(|k| k.writes).sum();
        let failed: usize = of(system).map(|k| k.failed).sum();
        format!("{failed} of {writes}")
    };
    println!(
        "| writes sent meanwhile that failed | {} | {} |",
        failed(System::Ondisk),
        failed(System::Etcd)
    );
    let longest = |system: System| {
        of(system)
            .map(|k| k.longest_success_secs)
            .fold(0.0, f64::max)
    };
    println!(
        "| longest wait of a write that succeeded | {:.2} s | {:.2} s |",
        longest(System::Ondisk),
        longest(System::Etcd)
    );
    for system in [System::Ondisk, System::Etcd] {
        if let Some(error) = of(system).find_map(|k| k.first_error.as_deref()) {
            println!("\n{system}: first failed write: {error}");
        }
    }
}

/// The median of sorted `values` (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> Option<f64> {
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}
