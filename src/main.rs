//! The `ondisk` binary: parse flags, open the data directory, start the node, its HTTP API and the
//! REPL, and shut down cleanly on `exit`, SIGINT or SIGTERM; or run a subcommand (`ctl`,
//! `restore`). All logic lives in the library.

use std::fmt;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ondisk::cli::Args;
use ondisk::cli::Invocation;
use ondisk::cli::RestoreArgs;
use ondisk::client_port;
use ondisk::ctl;
use ondisk::grpc;
use ondisk::http;
use ondisk::node::listen;
use ondisk::node::AutoCompaction;
use ondisk::node::Node;
use ondisk::node::NodeConfig;
use ondisk::repl;
use ondisk::repl::ReplEnd;
use ondisk::scheduling;
use ondisk::store::DataDir;
use ondisk::telemetry;
use ondisk::tls::NodeTls;
use ondisk::types::Member;
use ondisk::types::TypeConfig;
use openraft::error::Fatal;
use tokio::signal::unix::signal;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;

/// jemalloc instead of glibc's malloc: a put allocates and frees many small buffers across
/// threads (requests, encoded entries, batches), and glibc's allocator was about a tenth of the
/// servers' CPU under write load; RocksDB is built to use the same jemalloc, which returns freed
/// memory where glibc kept it (a member's peak RSS under random overwrites 272–291 MiB with
/// glibc under RocksDB and mimalloc for Rust, 236–243 MiB with jemalloc for both; see
/// BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What a node says when it stops because it was removed from the cluster.
const REMOVED_MESSAGE: &str = "I've been removed from the cluster! Shutting down.";

/// Why a running node stops; each reason has its own way out (exit status, removal record).
#[derive(Debug)]
enum StopReason {
    /// `exit` at the prompt.
    Exit,
    /// SIGINT (Ctrl-C at a terminal).
    Interrupted,
    /// SIGTERM, how service managers stop a node.
    Terminated,
    /// The HTTP server failed (the failure is logged where it happened).
    HttpServerFailed,
    /// This node has been removed from the cluster: it records that and exits with status 0.
    Removed,
    /// openraft's core stopped by itself (a storage error stops it for good): the node can serve
    /// nothing more, so it exits with a failure status for a supervisor to restart it.
    RaftStopped(Fatal<TypeConfig>),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Exit => write!(f, "exit"),
            StopReason::Interrupted => write!(f, "SIGINT"),
            StopReason::Terminated => write!(f, "SIGTERM"),
            StopReason::HttpServerFailed => write!(f, "the HTTP server failed"),
            StopReason::Removed => write!(f, "removed from the cluster"),
            StopReason::RaftStopped(fatal) => write!(f, "the raft core stopped: {fatal}"),
        }
    }
}

fn main() -> ExitCode {
    let outcome = match Invocation::parse() {
        Invocation::Node(args) => run(args).map(|()| ExitCode::SUCCESS),
        Invocation::Ctl(args) => ctl::run(args).map_err(anyhow::Error::from),
        Invocation::Restore(args) => restore(args).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ondisk restore`: a new single-node cluster's data directory from a backup.
fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let addresses = args.address.addresses()?;
    let member = Member {
        raft_addr: addresses.raft,
        http_addr: addresses.http,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let restored = runtime.block_on(ondisk::store::restore(
        &args.file,
        &args.data_dir,
        args.address.node_id,
        member,
        addresses.cluster_id,
    ))?;
    println!("{restored}");
    Ok(())
}

/// The runtime a node's tasks run on: tokio's current-thread scheduler for one thread, so a task
/// that wakes another (a request waking the Raft core, the core waking the apply) runs it next on
/// the same thread instead of waking a second worker; the multi-thread scheduler for more.
fn node_runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
    };
    builder.enable_all().build()
}

fn run(args: Args) -> anyhow::Result<()> {
    // First, so that every thread the node starts inherits the policy; reported once logging is
    // set up.
    let scheduling = scheduling::apply_to_this_thread(args.cpu_scheduling);
    let addresses = args.addresses()?;
    // A joining node's --cluster lists members that did not found the cluster, so it says nothing
    // about which cluster the data directory belongs to.
    let cluster_id = (!args.join).then_some(addresses.cluster_id);
    let data_dir = DataDir::open(&args.data_dir, args.address.node_id, cluster_id)?;
    if data_dir.was_removed() {
        println!("{REMOVED_MESSAGE}");
        return Ok(());
    }
    let _log_writer = ondisk::logging::init(&data_dir.log_file(), args.verbose)
        .with_context(|| format!("cannot open the log file {}", data_dir.log_file().display()))?;
    if let Err(e) = scheduling {
        tracing::warn!(
            "cannot set the CPU scheduling policy {:?} ({e}); the node runs with the kernel's default",
            args.cpu_scheduling
        );
    }
    let runtime = node_runtime(args.runtime_threads).context("cannot start the async runtime")?;
    let metrics =
        telemetry::install().map_err(|e| anyhow::anyhow!("cannot install metrics: {e}"))?;

    let tls = NodeTls::load(args.tls.peer()?, args.tls.client()?)?;
    warn_if_exposed("raft", &addresses.raft, tls.peer.is_some());
    warn_if_exposed("client", &addresses.http, tls.client.is_some());
    let auto_compaction =
        AutoCompaction::parse(&args.auto_compaction_mode, &args.auto_compaction_retention)
            .map_err(anyhow::Error::msg)?;
    let config = NodeConfig {
        id: args.address.node_id,
        member: Member {
            raft_addr: addresses.raft.clone(),
            http_addr: addresses.http.clone(),
        },
        initial_members: addresses.initial_members,
        data_dir,
        timeout: args.timeout,
        heartbeat: args.heartbeat,
        election_timeout: args.election_timeout,
        snapshot_entries: args.snapshot_entries,
        compaction_overhead: args.compaction_overhead,
        join: args.join,
        max_request_bytes: args.max_request_bytes,
        max_txn_ops: usize::try_from(args.max_txn_ops).unwrap_or(usize::MAX),
        watch_progress_interval: args.watch_progress_notify_interval,
        auto_compaction,
        cluster_id: u64::from(addresses.cluster_id),
        fault: args.test_fault,
        peer_tls: tls.peer.clone(),
        auth_token_ttl: Duration::from_secs(args.auth_token_ttl),
    };
    let result = runtime.block_on(async {
        let _reloading = tls.keep_current().map(AbortOnDrop);
        let node = Node::start(config).await?;
        let http_listener = listen("http", &addresses.http).await?;
        println!("node address: {}", addresses.raft);
        println!("http address: {}", addresses.http);
        println!("{}", repl::USAGE);
        telemetry::watch_leader_changes(&node);

        let (stop, mut stopped) = mpsc::channel::<StopReason>(4);
        // etcd's gRPC API and its JSON gateway share the client port with the HTTP API, as in
        // etcd.
        let api = grpc::beside(
            grpc::routers(node.clone()),
            http::router(node.clone(), Some(metrics)),
        );
        let http_stop = stop.clone();
        let mut http_done = tokio::spawn(async move {
            let result = client_port::serve(http_listener, api, tls.client, async move {
                http_stop.closed().await;
            })
            .await;
            if let Err(e) = &result {
                tracing::error!("http server failed: {e}");
            }
        });

        if !args.no_repl {
            let repl_node = Arc::clone(&node);
            // The REPL thread runs its requests with `Handle::block_on`. On the current-thread
            // scheduler that only works while this thread is inside `Runtime::block_on`, which
            // drives the I/O and timers; it is, until the node stops.
            let handle = tokio::runtime::Handle::current();
            let repl_stop = stop.clone();
            std::thread::Builder::new()
                .name("repl".into())
                .spawn(move || {
                    if repl::run(repl_node, handle) == ReplEnd::Shutdown {
                        let _ = repl_stop.blocking_send(StopReason::Exit);
                    }
                })
                .context("cannot start the REPL")?;
        }

        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let reason = tokio::select! {
            reason = stopped.recv() => reason.unwrap_or(StopReason::Exit),
            _ = tokio::signal::ctrl_c() => StopReason::Interrupted,
            _ = terminate.recv() => StopReason::Terminated,
            _ = &mut http_done => StopReason::HttpServerFailed,
            _ = node.wait_removed() => StopReason::Removed,
            fatal = node.raft_stopped() => StopReason::RaftStopped(fatal),
        };
        match &reason {
            StopReason::RaftStopped(_) | StopReason::HttpServerFailed => {
                tracing::error!("shutting down ({reason})")
            }
            _ => tracing::info!("shutting down ({reason})"),
        }
        drop(stop);
        stopped.close();
        node.shutdown().await;
        match reason {
            StopReason::Removed => {
                node.data_dir()
                    .mark_removed()
                    .context("cannot record the removal")?;
                println!("{REMOVED_MESSAGE}");
                Ok(())
            }
            StopReason::RaftStopped(_) | StopReason::HttpServerFailed => Err(anyhow::anyhow!(
                "{reason}; exiting so that a supervisor can restart the node"
            )),
            StopReason::Exit | StopReason::Interrupted | StopReason::Terminated => Ok(()),
        }
    });
    // The REPL thread may still be blocked reading stdin; it does not hold anything that needs
    // closing, so the runtime is not kept waiting for it.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Says, on stderr and in the log, that a port reachable from other machines is served without
/// TLS: fine for a cluster on one machine, not for one across a network.
fn warn_if_exposed(port: &str, addr: &str, tls: bool) {
    if tls {
        return;
    }
    let exposed = addr
        .to_socket_addrs()
        .map(|mut resolved| resolved.any(|a| !a.ip().is_loopback()))
        .unwrap_or(false);
    if exposed {
        let line = format!(
            "warning: the {port} port {addr} is reachable beyond this machine and speaks plaintext: anyone who reaches it can read and change the data (see the README's TLS section)"
        );
        eprintln!("{line}");
        tracing::warn!("{line}");
    }
}

/// Stops a background task when the value goes out of scope.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
