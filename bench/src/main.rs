//! `ondisk-bench`: closed-loop load against ondisk (native protocol, or etcd's gRPC API) or etcd
//! (gRPC), the side-by-side comparison that `make bench-compare` runs, the leader failover
//! comparison, what TLS costs each system, and the watch fan-out and lease keep-alive
//! comparisons. See BENCHMARKS.md for the method.

mod big;
mod cluster;
mod compare;
mod failover;
mod http;
mod lease;
mod limits;
mod pace;
mod process;
mod target;
mod tls;
mod tls_cost;
mod watch;
mod workload;

use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;

use crate::cluster::Binaries;
use crate::target::Protocol;
use crate::target::System;
use crate::target::Target;
use crate::tls::ClientTls;
use crate::workload::Matrix;
use crate::workload::Spec;
use crate::workload::Workload;

/// Load generator for ondisk and etcd.
#[derive(Debug, Parser)]
#[command(name = "ondisk-bench", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a running cluster with one workload and print what it measured (JSON).
    Run {
        /// Which system the endpoints belong to.
        #[arg(long, value_enum)]
        system: System,
        /// What to speak to the endpoints: ondisk serves both (default native), etcd only grpc
        /// (its default).
        #[arg(long, value_enum)]
        protocol: Option<Protocol>,
        /// ondisk: the nodes' raft addresses (native) or HTTP addresses (grpc); etcd: the
        /// members' client addresses (HOST:PORT,...).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
        /// What each client sends.
        #[arg(long, value_enum, default_value_t = Workload::Put)]
        workload: Workload,
        /// Concurrent clients, each with one request in flight.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[command(flatten)]
        tls: RunTls,
    },
    /// Start a 3-node ondisk and a 3-member etcd cluster on loopback, run every workload on each
    /// in alternation, print one table of medians with ratios ondisk/etcd, and stop both.
    Compare {
        #[command(flatten)]
        systems: Systems,
        #[command(flatten)]
        ondisk_client: OndiskClient,
        #[command(flatten)]
        matrix: MatrixArgs,
        /// Keys loaded at the end to measure memory and restart time (0: skip that phase).
        #[arg(long = "big-keys", default_value_t = 1_000_000)]
        big_keys: u64,
        /// Value sizes in bytes of the large-value phase, comma-separated (0: skip it).
        #[arg(
            long = "large-values",
            value_delimiter = ',',
            default_value = "65536,1048576"
        )]
        large_values: Vec<usize>,
        /// Measured time of each large-value run (each round runs every size once).
        #[arg(long = "large-value-duration", default_value = "2s", value_parser = humantime::parse_duration)]
        large_value_duration: Duration,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        load: LoadArgs,
        /// Run both systems with TLS everywhere: mutual TLS between members, TLS with client
        /// certificates required on client ports, every load-generator client presenting one
        /// (certificates made for the run in its directory).
        #[arg(long)]
        tls: bool,
    },
    /// What TLS costs each system: start a plaintext and a TLS cluster of each on loopback, run
    /// every workload on all of them in rotation, and print each system's throughput lost to TLS
    /// with the spread over rounds.
    TlsCost {
        #[command(flatten)]
        systems: Systems,
        #[command(flatten)]
        only: Only,
        #[command(flatten)]
        matrix: MatrixArgs,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start a 3-node ondisk and a 3-member etcd cluster on loopback (100 ms heartbeat, 1 s
    /// election timeout on both), SIGKILL the leader of each in turn, time how long until a
    /// survivor accepts writes again, and print medians side by side.
    Failover {
        #[command(flatten)]
        systems: Systems,
        /// Leader kills per system.
        #[arg(long, default_value_t = 8)]
        kills: usize,
        /// Time between two writes sent to a survivor after a kill.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// How long one write may take before it counts as failed.
        #[arg(long = "write-timeout", default_value = "10s", value_parser = humantime::parse_duration)]
        write_timeout: Duration,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Watch fan-out: start each system's 3-member cluster in turn, open W watchers on one
    /// prefix, send puts under it at a fixed rate, and report each put's delivery latency to every
    /// watcher, lost or duplicated events, and the servers' memory and CPU.
    Watch {
        #[command(flatten)]
        systems: Systems,
        #[command(flatten)]
        ondisk_client: OndiskClient,
        #[command(flatten)]
        only: Only,
        /// Watchers, spread over the members.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Puts a second, sent on schedule (open loop).
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// How long puts are sent.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// How long after the last put the watchers may take to receive everything.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        drain: Duration,
        /// Put tasks, each with one put in flight: the most puts in flight at once.
        #[arg(long, default_value_t = 1000)]
        senders: usize,
        /// Bytes per value (the first 20 are the send time).
        #[arg(long = "value-size", default_value_t = 128)]
        value_size: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Lease keep-alive cost: start each system's 3-member cluster in turn, grant L leases, keep
    /// them alive for a window, and report keep-alives a second and server CPU per keep-alive.
    Lease {
        #[command(flatten)]
        systems: Systems,
        #[command(flatten)]
        only: Only,
        /// Leases granted and kept alive.
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// Each lease's TTL, in seconds.
        #[arg(long, default_value_t = 30)]
        ttl: i64,
        /// How long the leases are kept alive.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Keep-alives a second overall, on schedule (default: each lease once per TTL/3).
        #[arg(long, conflicts_with = "flat_out")]
        rate: Option<f64>,
        /// Send keep-alives as fast as the clients can instead of on schedule.
        #[arg(long = "flat-out")]
        flat_out: bool,
        /// Client tasks, each with one keep-alive in flight.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Each system at size, one at a time: load N keys of V random bytes into its 3-member
    /// cluster (until it refuses: etcd's space quota), then report disk per member against the
    /// live data, memory, and a full restart timed to the first linearizable read.
    Big {
        #[command(flatten)]
        systems: Systems,
        #[command(flatten)]
        only: Only,
        /// Keys to load.
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        /// Bytes per value: 10 million keys of 1,000 bytes are about 10 GB of live data.
        #[arg(long = "value-size", default_value_t = 1000)]
        value_size: usize,
        /// The longest one system's load may take; what is in by then is measured.
        #[arg(long = "load-limit", default_value = "40m", value_parser = humantime::parse_duration)]
        load_limit: Duration,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Which systems a one-at-a-time benchmark runs on.
#[derive(Debug, clap::Args)]
struct Only {
    /// Systems to run, in this order, comma-separated.
    #[arg(
        long = "system",
        value_enum,
        value_delimiter = ',',
        default_value = "ondisk,etcd"
    )]
    systems: Vec<System>,
}

/// The two systems a side-by-side benchmark starts, and where they keep their data.
#[derive(Debug, clap::Args)]
struct Systems {
    /// The ondisk binary to start.
    #[arg(long, default_value = "ondisk")]
    ondisk: PathBuf,
    /// The etcd binary to start.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Where both clusters keep their data (removed afterwards unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data directory (logs included) after the run.
    #[arg(long)]
    keep: bool,
}

impl Systems {
    /// The two servers named on the command line, for a benchmark's plan.
    fn binaries(&self) -> Binaries {
        Binaries {
            ondisk: self.ondisk.clone(),
            etcd: self.etcd.clone(),
        }
    }
}

/// How a benchmark that can drive ondisk either way talks to it (etcd always gets gRPC).
#[derive(Debug, clap::Args)]
struct OndiskClient {
    /// What the load generator speaks to ondisk (etcd always gets gRPC); with grpc, ondisk is
    /// driven by the same etcd-client code as etcd, so only the servers differ.
    #[arg(long = "ondisk-protocol", value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
}

/// TLS for `run` against a cluster that speaks it, etcdctl's flags: all three or none (plaintext).
/// The same files serve both systems and both protocols (ondisk's raft port for native, the
/// client port for grpc).
#[derive(Debug, clap::Args)]
struct RunTls {
    /// The CA that signs the servers' certificates (PEM); connects over TLS.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    cacert: Option<PathBuf>,
    /// The client certificate to present (PEM), signed by a CA the servers trust.
    #[arg(long, value_name = "FILE", requires_all = ["cacert", "key"])]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["cacert", "cert"])]
    key: Option<PathBuf>,
}

impl RunTls {
    /// The client's TLS files, or none for plaintext (clap has checked they come together).
    fn client(self) -> Option<ClientTls> {
        match (self.cacert, self.cert, self.key) {
            (Some(cacert), Some(cert), Some(key)) => Some(ClientTls { cacert, cert, key }),
            _ => None,
        }
    }
}

/// Which measurements a side-by-side benchmark takes, and how often.
#[derive(Debug, clap::Args)]
struct MatrixArgs {
    /// Rounds; each runs every workload on every cluster.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "put,get,stale-get,mixed"
    )]
    workloads: Vec<Workload>,
    /// Concurrent client counts to run each workload at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
}

impl MatrixArgs {
    /// The matrix these arguments and `load` ask for, over `keys` keys.
    fn with(self, load: &LoadArgs, keys: u64) -> Matrix {
        Matrix {
            rounds: self.rounds.max(1),
            workloads: self.workloads,
            clients: self.clients,
            warmup: load.warmup,
            duration: load.duration,
            keys,
            value_size: load.value_size,
        }
    }
}

/// What every measured run shares.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Untimed warm-up before each measured window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Length of each measured window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per written value.
    #[arg(long = "value-size", default_value_t = 128)]
    value_size: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Run {
            system,
            protocol,
            endpoints,
            load,
            workload,
            clients,
            tls,
        } => {
            let protocol = match (system, protocol) {
                (System::Ondisk, protocol) => protocol.unwrap_or(Protocol::Native),
                (System::Etcd, None | Some(Protocol::Grpc)) => Protocol::Grpc,
                (System::Etcd, Some(Protocol::Native)) => {
                    anyhow::bail!("etcd speaks only gRPC: --protocol grpc, or leave it out")
                }
            };
            let tls = tls.client();
            let target = Arc::new(Target::connect(protocol, endpoints, tls.as_ref()).await?);
            let spec = Spec {
                workload,
                clients,
                warmup: load.warmup,
                duration: load.duration,
                keys: load.keys.max(1),
                value_size: load.value_size,
            };
            let outcome = workload::run(target, &spec, &[]).await?;
            println!("{}", serde_json::to_string(&outcome)?);
            Ok(())
        }
        Command::Compare {
            systems,
            ondisk_client,
            matrix,
            big_keys,
            large_values,
            large_value_duration,
            json,
            load,
            tls,
        } => {
            let dir = fresh_dir(systems.dir.as_deref())?;
            let plan = compare::Plan {
                binaries: systems.binaries(),
                dir: dir.clone(),
                ondisk_protocol: ondisk_client.protocol,
                matrix: matrix.with(&load, load.keys.max(compare::SMALL_RESTART_KEYS)),
                big_keys,
                tls,
                large_values,
                large_value_duration,
            };
            finish(compare::run(&plan), &dir, systems.keep, json).await
        }
        Command::TlsCost {
            systems,
            only,
            matrix,
            json,
            load,
        } => {
            let dir = fresh_dir(systems.dir.as_deref())?;
            let plan = tls_cost::Plan {
                binaries: systems.binaries(),
                dir: dir.clone(),
                systems: only.systems,
                matrix: matrix.with(&load, load.keys.max(1)),
            };
            finish(tls_cost::run(&plan), &dir, systems.keep, json).await
        }
        Command::Failover {
            systems,
            kills,
            interval,
            write_timeout,
            json,
        } => {
            let dir = fresh_dir(systems.dir.as_deref())?;
            let plan = failover::Plan {
                binaries: systems.binaries(),
                dir: dir.clone(),
                kills: kills.max(1),
                interval,
                write_timeout,
            };
            finish(failover::run(&plan), &dir, systems.keep, json).await
        }
        Command::Watch {
            systems,
            ondisk_client,
            only,
            watchers,
            rate,
            duration,
            drain,
            senders,
            value_size,
            json,
        } => {
            let limit = process::raise_open_files_limit()?;
            // Each watcher holds a socket here and one in a server; keep room for the rest.
            let needed = u64::try_from(watchers)?.saturating_add(1024);
            if limit < needed {
                anyhow::bail!("{watchers} watchers need {needed} open files; the limit is {limit}");
            }
            let dir = fresh_dir(systems.dir.as_deref())?;
            let plan = watch::Plan {
                binaries: systems.binaries(),
                dir: dir.clone(),
                ondisk_protocol: ondisk_client.protocol,
                systems: only.systems,
                watchers: watchers.max(1),
                rate,
                duration,
                drain,
                senders,
                value_size,
            };
            finish(watch::run(&plan), &dir, systems.keep, json).await
        }
        Command::Lease {
            systems,
            only,
            leases,
            ttl,
            duration,
            rate,
            flat_out,
            clients,
            json,
        } => {
            let dir = fresh_dir(systems.dir.as_deref())?;
            let plan = lease::Plan {
                binaries: systems.binaries(),
                dir: dir.clone(),
                systems: only.systems,
                leases,
                ttl,
                duration,
                rate: if flat_out {
                    None
                } else {
                    Some(rate.unwrap_or_else(|| lease::scheduled_rate(leases, ttl)))
                },
                clients: clients.max(1),
            };
            finish(lease::run(&plan), &dir, systems.keep, json).await
        }
        Command::Big {
            systems,
            only,
            keys,
            value_size,
            load_limit,
            json,
        } => {
            let dir = fresh_dir(systems.dir.as_deref())?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let plan = big::Plan {
                binaries: systems.binaries(),
                dir: dir.clone(),
                systems: only.systems,
                keys,
                value_size,
                load_limit,
            };
            finish(big::run(&plan), &dir, systems.keep, json).await
        }
    }
}

/// A directory for the clusters' data that does not exist yet: `dir`, or a new one in the
/// system's temporary directory.
fn fresh_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::temp_dir().join(format!("ondisk-bench-{}", std::process::id())),
    };
    if dir.exists() {
        anyhow::bail!("{} exists; give a new directory with --dir", dir.display());
    }
    Ok(dir)
}

/// Runs `work` until it ends or Ctrl-C, removes `dir` unless `keep`, and writes the result to
/// `json` if asked.
async fn finish(
    work: impl std::future::Future<Output = anyhow::Result<serde_json::Value>>,
    dir: &Path,
    keep: bool,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let result = tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The directory did not exist before the run, so everything in it is ours.
    if !keep {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let result = result?;
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
