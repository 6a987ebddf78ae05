//! `ondisk-bench watch`: watch fan-out. W watchers on one prefix while puts to new keys under it
//! are sent at a fixed rate (open loop) for a bounded window; every watcher checks that it
//! receives every acknowledged put exactly once, in revision order, and how long after the put
//! was sent. The put's value carries its send time, so each watcher measures on receipt.
//!
//! With [`Protocol::Native`], ondisk's watchers are HTTP streams (`GET
//! /v1/watch/PREFIX?prefix=true`), one connection each, spread over the three nodes, and its puts
//! go through its native client. etcd's watchers are gRPC watches, multiplexed as etcd's own
//! clients do: one connection per member, one watch stream on it carrying that member's share of
//! the watches; its puts go through its gRPC KV API. With [`Protocol::Grpc`], ondisk is driven by
//! that same gRPC code at its HTTP addresses, so only the servers differ. One system runs at a
//! time, alone on the machine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::Binaries;
use crate::cluster::Cluster;
use crate::compare::wait_serving;
use crate::http::HttpClient;
use crate::pace::Pace;
use crate::process::cpu_seconds_of;
use crate::process::cpu_seconds_self;
use crate::process::rss_bytes_of;
use crate::target::KvTarget;
use crate::target::Protocol;
use crate::target::System;
use crate::target::Target;
use crate::workload::latency_histogram;
use crate::workload::ms;
use crate::workload::record_latency;

/// Everything the fan-out benchmark is told.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub dir: PathBuf,
    /// What the load generator speaks to ondisk, for its watches and its puts.
    pub ondisk_protocol: Protocol,
    pub systems: Vec<System>,
    pub watchers: usize,
    /// Puts a second, sent on schedule whatever the answers' pace.
    pub rate: f64,
    /// How long puts are sent.
    pub duration: Duration,
    /// How long after the last put the watchers may take to receive everything.
    pub drain: Duration,
    /// Put tasks, each with one put in flight: the most puts in flight at once.
    pub senders: usize,
    pub value_size: usize,
}

/// Every watched key starts with this.
const PREFIX: &str = "watch-bench/";
/// Digits of the send time (microseconds since the run's epoch) at the start of each value.
const STAMP_DIGITS: usize = 20;
/// How long every watcher may take to be created.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the watchers sit idle before their memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the servers' memory is read while the puts run.
const RSS_SAMPLE: Duration = Duration::from_millis(200);
/// How often the delivery count is checked while draining.
const POLL: Duration = Duration::from_millis(20);
/// A send later than this after its due time counts as late.
const LATE: Duration = Duration::from_millis(10);

/// What one system's run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub system: System,
    pub watchers: usize,
    pub puts_due: u64,
    pub puts_acked: u64,
    pub put_errors: u64,
    /// Puts sent more than [`LATE`] after their due time: the senders could not keep up.
    pub puts_late: u64,
    /// Puts acknowledged a second, from the first put due until the last answer.
    pub puts_per_sec: f64,
    pub put_p50_us: u64,
    pub put_p99_us: u64,
    /// Events received (each watcher counts its own), without duplicates.
    pub delivered: u64,
    /// From a put being sent until a watcher received it, over every delivery.
    pub delivery_p50_us: u64,
    pub delivery_p99_us: u64,
    pub delivery_max_us: u64,
    /// Acknowledged puts some watcher never received (summed over watchers).
    pub lost: u64,
    pub duplicates: u64,
    /// Events whose revision was not above the watcher's previous one.
    pub out_of_order: u64,
    /// From the end of the put window until every watcher had every put sent (or the drain
    /// limit).
    pub drain_secs: f64,
    /// Whether every watcher had received every put sent (acknowledged or not) within the drain
    /// limit; if not, `lost` counts the acknowledged ones that had not arrived yet.
    pub drained: bool,
    /// The members' resident sets added up: before any watcher, with the watchers idle, and the
    /// largest seen from the first put until the end of the drain.
    pub rss_before_bytes: u64,
    pub rss_idle_bytes: u64,
    pub rss_peak_bytes: u64,
    /// CPU the servers and the load generator used from the first put to the end of the drain.
    pub server_cores: f64,
    pub client_cores: f64,
    pub first_error: Option<String>,
}

/// Runs the fan-out on each system in turn, prints the table and returns the results as JSON.
pub async fn run(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let mut outcomes = Vec::new();
    for &system in &plan.systems {
        let outcome = run_system(plan, system).await?;
        eprintln!(
            "{system}: {} watchers, {} puts acked, delivery p50 {} us p99 {} us max {} us, lost {}, duplicates {}",
            outcome.watchers,
            outcome.puts_acked,
            outcome.delivery_p50_us,
            outcome.delivery_p99_us,
            outcome.delivery_max_us,
            outcome.lost,
            outcome.duplicates
        );
        outcomes.push(outcome);
    }
    print_table(plan, &outcomes);
    Ok(serde_json::json!({
        "ondisk_protocol": plan.ondisk_protocol,
        "watchers": plan.watchers,
        "rate": plan.rate,
        "duration_secs": plan.duration.as_secs_f64(),
        "value_size": plan.value_size,
        "outcomes": outcomes,
    }))
}

/// Starts `system`'s cluster, runs the fan-out on it and stops it.
async fn run_system(plan: &Plan, system: System) -> anyhow::Result<Outcome> {
    let mut cluster = plan
        .binaries
        .cluster(system, &plan.dir, plan.ondisk_protocol, None)?;
    cluster.start()?;
    wait_serving(&cluster, Instant::now())
        .await
        .with_context(|| format!("{system} did not start"))?;
    let target = Arc::new(cluster.connect().await?);
    let puts_due = Pace::new(Instant::now(), plan.rate).count(plan.duration);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        ready: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        puts: puts_due,
    });
    let rss_before_bytes = cluster.total_rss();
    let (stop, stopped) = watch::channel(false);
    let watchers = match cluster.protocol {
        Protocol::Native => start_http_watchers(&cluster, plan.watchers, &shared, &stopped)?,
        Protocol::Grpc => start_grpc_watchers(&cluster, plan.watchers, &shared, &stopped)?,
    };
    wait_ready(&shared, plan.watchers, &watchers).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle_bytes = cluster.total_rss();

    let pids = cluster.pids();
    let peak_rss = sample_peak_rss(pids.clone(), stopped.clone());
    let server_cpu_before = cpu_seconds_of(&pids);
    let client_cpu_before = cpu_seconds_self();
    let began = Instant::now();
    let puts = send_puts(target, plan, &shared).await?;
    let window_end = Instant::now();
    // A put that failed with an unknown outcome may still have been applied, so the drain waits
    // for every put sent; the ones never applied keep it waiting until its limit.
    let expected = shared.puts * plan.watchers as u64;
    let complete = drain(&shared, expected, window_end + plan.drain).await;
    let drain_end = Instant::now();
    let server_cpu = cpu_seconds_of(&pids) - server_cpu_before;
    let client_cpu = cpu_seconds_self() - client_cpu_before;
    stop.send_replace(true);
    let rss_peak_bytes = peak_rss.await.unwrap_or(0);

    let received = gather(watchers, &puts.acked).await?;
    cluster.stop()?;
    let seconds = (drain_end - began).as_secs_f64();
    Ok(Outcome {
        system,
        watchers: plan.watchers,
        puts_due,
        puts_acked: puts.acked_count,
        put_errors: puts.errors,
        puts_late: puts.late,
        puts_per_sec: puts.acked_count as f64 / (window_end - began).as_secs_f64(),
        put_p50_us: puts.latencies.value_at_quantile(0.50),
        put_p99_us: puts.latencies.value_at_quantile(0.99),
        delivered: received.latencies.len(),
        delivery_p50_us: received.latencies.value_at_quantile(0.50),
        delivery_p99_us: received.latencies.value_at_quantile(0.99),
        delivery_max_us: received.latencies.max(),
        lost: received.lost,
        duplicates: received.duplicates,
        out_of_order: received.out_of_order,
        drain_secs: (drain_end - window_end).as_secs_f64(),
        drained: complete,
        rss_before_bytes,
        rss_idle_bytes,
        rss_peak_bytes,
        server_cores: server_cpu / seconds,
        client_cores: client_cpu / seconds,
        first_error: puts.first_error.or(received.first_error),
    })
}

/// Waits until the watchers have received `expected` events in all, or `deadline`; true if they
/// have.
async fn drain(shared: &Shared, expected: u64, deadline: Instant) -> bool {
    loop {
        if shared.delivered.load(Ordering::Relaxed) >= expected {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What every watcher received, added up.
struct Received {
    latencies: Histogram<u64>,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    first_error: Option<String>,
}

/// Waits for the (stopped) watcher tasks and adds up their tallies against the `acked` puts.
async fn gather(watchers: Vec<WatcherTask>, acked: &[u64]) -> anyhow::Result<Received> {
    let mut received = Received {
        latencies: latency_histogram()?,
        lost: 0,
        duplicates: 0,
        out_of_order: 0,
        first_error: None,
    };
    for task in watchers {
        let error = match task.await {
            Ok(Ok(tallies)) => {
                for tally in tallies {
                    received.lost += tally.missing(acked);
                    received.duplicates += tally.duplicates;
                    received.out_of_order += tally.out_of_order;
                    // Same bounds on both sides, so adding cannot fail for lack of range.
                    let _ = received.latencies.add(&tally.latencies);
                }
                continue;
            }
            Ok(Err(e)) => format!("watcher: {e:#}"),
            Err(e) => format!("watcher task failed: {e}"),
        };
        received.first_error.get_or_insert(error);
    }
    Ok(received)
}

/// What the puts and every watcher share.
struct Shared {
    /// The instant send times are counted from.
    epoch: Instant,
    /// Watches created so far.
    ready: AtomicUsize,
    /// Events received by all watchers together, without duplicates.
    delivered: AtomicU64,
    /// Puts the run sends: the sequence numbers in the keys are below this.
    puts: u64,
}

impl Shared {
    /// Microseconds from the epoch until now.
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A watcher task's (or a multiplexed stream's) watchers' tallies, or why it ended early.
type WatcherTask = JoinHandle<anyhow::Result<Vec<Tally>>>;

/// One watcher's record of what it received.
struct Tally {
    /// Bit `n` set: the put with sequence number `n` was received.
    seen: Vec<u64>,
    latencies: Histogram<u64>,
    duplicates: u64,
    out_of_order: u64,
    last_revision: i64,
}

impl Tally {
    /// Nothing received yet, with room for `puts` sequence numbers.
    fn new(puts: u64) -> anyhow::Result<Tally> {
        Ok(Tally {
            seen: vec![0; usize::try_from(puts.div_ceil(64))?],
            latencies: latency_histogram()?,
            duplicates: 0,
            out_of_order: 0,
            last_revision: 0,
        })
    }

    /// Records one received event; true when it is the first receipt of its put.
    fn event(&mut self, key: &[u8], value: &[u8], mod_revision: i64, shared: &Shared) -> bool {
        if mod_revision <= self.last_revision {
            self.out_of_order += 1;
        }
        self.last_revision = self.last_revision.max(mod_revision);
        let (Some(seq), Some(sent_us)) = (sequence_of(key), sent_us_of(value)) else {
            return false;
        };
        let Some(word) = usize::try_from(seq / 64)
            .ok()
            .and_then(|word| self.seen.get_mut(word))
        else {
            return false;
        };
        let bit = 1u64 << (seq % 64);
        if *word & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        *word |= bit;
        let waited = shared.now_us().saturating_sub(sent_us);
        record_latency(&mut self.latencies, Duration::from_micros(waited));
        true
    }

    /// How many of the `acked` puts (a bitmap like `seen`) this watcher never received.
    fn missing(&self, acked: &[u64]) -> u64 {
        acked
            .iter()
            .zip(&self.seen)
            .map(|(acked, seen)| u64::from((acked & !seen).count_ones()))
            .sum()
    }
}

/// The key of put `seq`.
fn key_of(seq: u64) -> Vec<u8> {
    format!("{PREFIX}{seq:08}").into_bytes()
}

/// The sequence number in a key [`key_of`] made.
fn sequence_of(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(PREFIX.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

/// A value of `size` bytes (at least [`STAMP_DIGITS`]) starting with the send time.
fn stamped_value(sent_us: u64, size: usize) -> Vec<u8> {
    let mut value = format!("{sent_us:0STAMP_DIGITS$}").into_bytes();
    value.resize(size.max(STAMP_DIGITS), b'v');
    value
}

/// The send time a [`stamped_value`] carries.
fn sent_us_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..STAMP_DIGITS)?)
        .ok()?
        .parse()
        .ok()
}

/// One stream of ondisk's HTTP watch API per watcher, watcher `i` on node `i % 3`.
fn start_http_watchers(
    cluster: &Cluster,
    watchers: usize,
    shared: &Arc<Shared>,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<WatcherTask>> {
    let http = HttpClient::new();
    let prefix = ondisk::api::http::percent_encode(PREFIX.as_bytes());
    (0..watchers)
        .map(|i| {
            let node = cluster
                .http
                .get(i % cluster.http.len().max(1))
                .context("ondisk has no HTTP address")?;
            let url = format!(
                "http://{node}{}{prefix}?{}=true",
                ondisk::api::http::WATCH,
                ondisk::api::http::param::PREFIX
            );
            let tally = Tally::new(shared.puts)?;
            Ok(tokio::spawn(http_watcher(
                http.clone(),
                url,
                tally,
                shared.clone(),
                stopped.clone(),
            )))
        })
        .collect()
}

/// Reads one ondisk HTTP watch stream until told to stop.
async fn http_watcher(
    http: HttpClient,
    url: String,
    mut tally: Tally,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Tally>> {
    let mut lines = http.lines(&url).await?;
    loop {
        let chunk = tokio::select! {
            chunk = lines.next_lines() => chunk?,
            _ = stopped.wait_for(|stop| *stop) => return Ok(vec![tally]),
        };
        let chunk = chunk.with_context(|| format!("{url}: the stream ended"))?;
        for line in chunk.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let response: ondisk::api::WatchResponse =
                serde_json::from_slice(line).context("a watch line that is not a response")?;
            if response.created {
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            if response.canceled {
                anyhow::bail!("{url}: watch canceled: {}", response.cancel_reason);
            }
            let new = response
                .events
                .iter()
                .filter(|event| {
                    tally.event(
                        &event.kv.key,
                        &event.kv.value,
                        event.kv.mod_revision,
                        &shared,
                    )
                })
                .count();
            shared.delivered.fetch_add(new as u64, Ordering::Relaxed);
        }
    }
}

/// One gRPC connection per member (etcd's, or ondisk's at its HTTP address), each with one watch
/// stream carrying its share of watches.
fn start_grpc_watchers(
    cluster: &Cluster,
    watchers: usize,
    shared: &Arc<Shared>,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<WatcherTask>> {
    let members = cluster.endpoints.len().max(1);
    cluster
        .endpoints
        .iter()
        .enumerate()
        .map(|(member, endpoint)| {
            // Watcher i on member i % members, as with the HTTP watchers.
            let share = (member..watchers).step_by(members).count();
            let tallies = (0..share)
                .map(|_| Tally::new(shared.puts))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(tokio::spawn(grpc_watch_stream(
                endpoint.clone(),
                tallies,
                shared.clone(),
                stopped.clone(),
            )))
        })
        .collect()
}

/// Creates one watch per tally on one gRPC stream to `endpoint` and reads it until told to stop.
async fn grpc_watch_stream(
    endpoint: String,
    tallies: Vec<Tally>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Tally>> {
    if tallies.is_empty() {
        return Ok(tallies);
    }
    let client = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .with_context(|| format!("cannot connect over gRPC to {endpoint}"))?;
    let options = etcd_client::WatchOptions::new().with_prefix();
    let (mut watcher, mut stream) = client
        .watch_client()
        .watch(PREFIX, Some(options.clone()))
        .await?;
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let mut spare = tallies.into_iter();
    let mut by_watch: HashMap<i64, Tally> = HashMap::new();
    by_watch.insert(
        watcher.watch_id(),
        spare.next().context("no tally for the first watch")?,
    );
    for _ in 0..spare.len() {
        watcher.watch(PREFIX, Some(options.clone())).await?;
    }
    loop {
        let response = tokio::select! {
            response = stream.message() => response?,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let response = response.with_context(|| format!("{endpoint}: the stream ended"))?;
        if response.canceled() {
            anyhow::bail!("{endpoint}: watch canceled: {}", response.cancel_reason());
        }
        if response.created() {
            let tally = spare
                .next()
                .context("more watches created than asked for")?;
            by_watch.insert(response.watch_id(), tally);
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        let tally = by_watch
            .get_mut(&response.watch_id())
            .with_context(|| format!("events for unknown watch {}", response.watch_id()))?;
        let new = response
            .events()
            .iter()
            .filter_map(|event| event.kv())
            .filter(|kv| tally.event(kv.key(), kv.value(), kv.mod_revision(), &shared))
            .count();
        shared.delivered.fetch_add(new as u64, Ordering::Relaxed);
    }
    Ok(by_watch.into_values().collect())
}

/// Waits until `watchers` watches are created, failing if a watcher task ends first.
async fn wait_ready(shared: &Shared, watchers: usize, tasks: &[WatcherTask]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    while shared.ready.load(Ordering::Relaxed) < watchers {
        if tasks.iter().any(JoinHandle::is_finished) {
            anyhow::bail!("a watcher ended before every watch was created");
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "only {} of {watchers} watches created within {READY_DEADLINE:?}",
                shared.ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// The largest total resident set of `pids`, read every [`RSS_SAMPLE`] until `stopped`.
fn sample_peak_rss(pids: Vec<u32>, mut stopped: watch::Receiver<bool>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(pids.iter().map(|&pid| rss_bytes_of(pid)).sum());
            tokio::select! {
                _ = tokio::time::sleep(RSS_SAMPLE) => {}
                _ = stopped.wait_for(|stop| *stop) => return peak,
            }
        }
    })
}

/// What the put senders did.
struct Puts {
    /// Bit `n` set: put `n` was acknowledged.
    acked: Vec<u64>,
    acked_count: u64,
    errors: u64,
    late: u64,
    latencies: Histogram<u64>,
    first_error: Option<String>,
}

/// Sends puts `0..shared.puts` on schedule from [`Plan::senders`] tasks, put `n` by task
/// `n % senders`, and waits for every answer.
async fn send_puts(target: Arc<Target>, plan: &Plan, shared: &Arc<Shared>) -> anyhow::Result<Puts> {
    let pace = Pace::new(Instant::now(), plan.rate);
    let senders = plan.senders.max(1) as u64;
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let target = target.clone();
            let shared = shared.clone();
            let value_size = plan.value_size;
            tokio::spawn(async move {
                let mut latencies = latency_histogram()?;
                let mut acked = Vec::new();
                let mut errors = Vec::new();
                let mut late = 0;
                for seq in (sender..shared.puts).step_by(senders as usize) {
                    let due = pace.due(seq);
                    tokio::time::sleep_until(due).await;
                    let sent = Instant::now();
                    if sent - due > LATE {
                        late += 1;
                    }
                    let value = stamped_value(shared.now_us(), value_size);
                    match target.put(key_of(seq), value).await {
                        Ok(()) => {
                            record_latency(&mut latencies, sent.elapsed());
                            acked.push(seq);
                        }
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
                anyhow::Ok((acked, errors, late, latencies))
            })
        })
        .collect();
    let mut puts = Puts {
        acked: vec![0; usize::try_from(shared.puts.div_ceil(64))?],
        acked_count: 0,
        errors: 0,
        late: 0,
        latencies: latency_histogram()?,
        first_error: None,
    };
    for task in tasks {
        let (acked, errors, late, latencies) = task.await??;
        for seq in acked {
            puts.acked[usize::try_from(seq / 64)?] |= 1 << (seq % 64);
            puts.acked_count += 1;
        }
        puts.errors += errors.len() as u64;
        if puts.first_error.is_none() {
            puts.first_error = errors.into_iter().next();
        }
        puts.late += late;
        let _ = puts.latencies.add(&latencies);
    }
    Ok(puts)
}

/// How one row of the table shows an outcome.
type Cell = fn(&Outcome) -> String;

/// Prints the systems side by side, one column each, as BENCHMARKS.md shows them.
fn print_table(plan: &Plan, outcomes: &[Outcome]) {
    let ondisk_caption = if outcomes.iter().any(|o| o.system == System::Ondisk) {
        format!("; {}", plan.ondisk_protocol.ondisk_caption())
    } else {
        String::new()
    };
    println!(
        "\n{} watchers on one prefix, {} puts/s for {} s ({}-byte values), open loop{ondisk_caption}.\n",
        plan.watchers,
        plan.rate,
        plan.duration.as_secs_f64(),
        plan.value_size
    );
    let header: Vec<String> = outcomes.iter().map(|o| o.system.to_string()).collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(outcomes.len()));
    let rows: [(&str, Cell); 13] = [
        ("puts due / acked / errors / sent late", |o| {
            format!(
                "{} / {} / {} / {}",
                o.puts_due, o.puts_acked, o.put_errors, o.puts_late
            )
        }),
        ("puts acked/s", |o| format!("{:.0}", o.puts_per_sec)),
        ("put p50 / p99 ms", |o| {
            format!("{} / {}", ms(o.put_p50_us), ms(o.put_p99_us))
        }),
        ("events delivered", |o| o.delivered.to_string()),
        ("delivery from send p50 / p99 / max ms", |o| {
            format!(
                "{} / {} / {}",
                ms(o.delivery_p50_us),
                ms(o.delivery_p99_us),
                ms(o.delivery_max_us)
            )
        }),
        ("acked puts not received / duplicated / out of order", |o| {
            format!("{} / {} / {}", o.lost, o.duplicates, o.out_of_order)
        }),
        ("drain after the last put, s", |o| {
            let limit = if o.drained {
                ""
            } else {
                " (limit: not all received)"
            };
            format!("{:.2}{limit}", o.drain_secs)
        }),
        ("RSS of the 3 members, no watchers, MiB", |o| {
            (o.rss_before_bytes >> 20).to_string()
        }),
        ("RSS with the watchers idle, MiB", |o| {
            (o.rss_idle_bytes >> 20).to_string()
        }),
        ("RSS peak, puts and drain, MiB", |o| {
            (o.rss_peak_bytes >> 20).to_string()
        }),
        ("server CPU, cores", |o| format!("{:.2}", o.server_cores)),
        ("load generator CPU, cores", |o| {
            format!("{:.2}", o.client_cores)
        }),
        ("first error", |o| {
            o.first_error.clone().unwrap_or_else(|| "none".into())
        }),
    ];
    for (label, cell) in rows {
        let cells: Vec<String> = outcomes.iter().map(cell).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_carries_its_send_time_and_a_key_its_sequence() {
        let value = stamped_value(1_234_567, 128);
        assert_eq!(value.len(), 128);
        assert_eq!(sent_us_of(&value), Some(1_234_567));
        assert_eq!(sequence_of(&key_of(42)), Some(42));
        assert_eq!(sequence_of(b"other/00000042"), None);
    }

    #[test]
    fn a_tally_counts_duplicates_reordering_and_missing_puts() {
        let shared = Shared {
            epoch: Instant::now(),
            ready: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            puts: 3,
        };
        let mut tally = Tally::new(3).unwrap();
        let value = stamped_value(0, 32);
        assert!(tally.event(&key_of(0), &value, 10, &shared));
        assert!(!tally.event(&key_of(0), &value, 11, &shared));
        assert!(tally.event(&key_of(2), &value, 9, &shared));
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.out_of_order, 1);
        // Puts 0, 1 and 2 acknowledged; 1 never arrived.
        assert_eq!(tally.missing(&[0b111]), 1);
    }
}
