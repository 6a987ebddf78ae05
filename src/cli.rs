//! The command line: Go-style flags as in the dragonboat and kv-db examples (`-nodeid 1` and
//! `--nodeid 1` both work), resolved into the addresses and settings a node starts with.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::Error;
use crate::network::MAX_REQUEST_BYTES_CEILING;
use crate::node::InjectedFault;
use crate::scheduling::CpuScheduling;
use crate::tls::TlsFiles;
use crate::types::Member;
use crate::types::NodeId;

/// Shown under every `ondisk -h`: the node's flags alone would hide that the binary is also the
/// cluster's client and its restore tool (as `git -h` names git's commands).
const SUBCOMMANDS_HELP: &str = "Subcommands:
  ctl       a client for a running cluster: put, get, scan, members, status, backup, ...
            (see `ondisk ctl -h`)
  restore   create the data directory of a new single-node cluster from a backup file
            (see `ondisk restore -h`)";

/// Raft addresses of nodes 1, 2 and 3 when no address or cluster is given, as in the original.
const DEFAULT_RAFT_ADDRS: [&str; 3] = ["localhost:63001", "localhost:63002", "localhost:63003"];
/// Without `-http` or `--port`, the HTTP port is the raft port plus this.
const HTTP_PORT_OFFSET: u16 = 1000;
/// `-max-request-bytes` unless given: 1.5 MiB, etcd's default, so clients moving from etcd find
/// the same limit.
const DEFAULT_MAX_REQUEST_BYTES: u64 = 3 << 19;

/// ondisk: a replicated key-value store (Raft over RocksDB) with a REPL and an HTTP API.
#[derive(Debug, Parser)]
#[command(
    name = "ondisk",
    version,
    override_usage = "ondisk [OPTIONS]          run a node\n       ondisk ctl COMMAND ...   talk to a running cluster\n       ondisk restore FILE ...  create a node from a backup",
    after_help = SUBCOMMANDS_HELP
)]
pub struct Args {
    #[command(flatten)]
    pub address: AddressArgs,

    /// Directory holding every node's data; this node uses DIR/node<ID>/.
    #[arg(long = "data-dir", default_value = "example-data")]
    pub data_dir: PathBuf,

    /// Deadline for a proposal or a linearizable read, e.g. 3s or 500ms.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Raft heartbeat interval.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Election timeout E: a follower that hears nothing from a leader for 7E/6 to 4E/3 (at
    /// random, so two rarely start at once) starts an election; at least 5 heartbeats.
    #[arg(long = "election-timeout", default_value = "1s", value_parser = humantime::parse_duration)]
    pub election_timeout: Duration,

    /// Applied entries between snapshots; each snapshot lets the log be compacted. etcd's
    /// --snapshot-count: a snapshot flushes every family of the state (data, history, events)
    /// to new tables, so taking one every few thousand writes keeps RocksDB compacting.
    #[arg(long = "snapshot-entries", default_value_t = 100_000)]
    pub snapshot_entries: u64,

    /// Log entries kept behind each snapshot point for followers that lag slightly (etcd keeps
    /// 5000).
    #[arg(long = "compaction-overhead", default_value_t = 5_000)]
    pub compaction_overhead: u64,

    /// Largest request accepted, in bytes: a key with its value (and a compare-and-swap's
    /// expected value). Larger ones are refused on every interface (HTTP 413). etcd's default.
    #[arg(
        long = "max-request-bytes",
        default_value_t = DEFAULT_MAX_REQUEST_BYTES,
        value_parser = clap::value_parser!(u64).range(1..=MAX_REQUEST_BYTES_CEILING)
    )]
    pub max_request_bytes: u64,

    /// The most comparisons, and operations per branch, a transaction may hold (etcd's
    /// --max-txn-ops).
    #[arg(long = "max-txn-ops", default_value_t = crate::api::DEFAULT_MAX_TXN_OPS as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_txn_ops: u64,

    /// How history is compacted automatically: `periodic` (keep what was written within the
    /// retention) or `revision` (keep the newest retention revisions). etcd's flag.
    #[arg(long = "auto-compaction-mode", default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// How much history is kept: 0 keeps all of it; in periodic mode a duration (`30m`) or a
    /// number of hours, in revision mode a number of revisions. etcd's flag.
    #[arg(long = "auto-compaction-retention", default_value = "0")]
    pub auto_compaction_retention: String,

    /// How long a watch that asked for progress notifications is idle before it gets one.
    #[arg(long = "watch-progress-notify-interval", default_value = "10m",
          value_parser = humantime::parse_duration)]
    pub watch_progress_notify_interval: Duration,

    /// How long an authentication token stays good, in seconds (etcd's flag).
    #[arg(long = "auth-token-ttl", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// Threads that run the node's tasks (Raft core, replication, apply, request handlers).
    /// With 1, every task runs on one thread and hands work to the next without a cross-thread
    /// wake-up, which on this project's benchmark machine cut the servers' CPU per put by a
    /// quarter and a one-client get's latency by a third (BENCHMARKS.md). More let a node with
    /// many cores to itself parse client requests in parallel. Disk work runs on its own
    /// threads either way.
    #[arg(long = "runtime-threads", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub runtime_threads: u16,

    /// How the kernel schedules the node's threads: `batch` (SCHED_BATCH) lets a woken thread
    /// wait for the running one's time slice instead of preempting it, fewer context switches
    /// when the node shares its cores; `normal` is the kernel's default (SCHED_OTHER).
    #[arg(long = "cpu-scheduling", value_enum, default_value_t = CpuScheduling::Batch)]
    pub cpu_scheduling: CpuScheduling,

    /// Join an existing cluster (after `add ADDR ID` on one of its members) instead of
    /// bootstrapping one.
    #[arg(long)]
    pub join: bool,

    /// Run without the interactive prompt (serve until SIGINT/SIGTERM).
    #[arg(long = "no-repl")]
    pub no_repl: bool,

    /// Also write logs to stderr (they always go to DIR/node<ID>/ondisk.log).
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Deliberately break a guarantee, so the fault-injection suite can prove it notices.
    /// Testing only; hidden from the help.
    #[arg(long = "test-fault", hide = true, value_enum)]
    pub test_fault: Option<InjectedFault>,
}

/// TLS for the raft port (between members, always mutual) and for the client port; etcd's flag
/// names. Both ports are plaintext when their flags are not given.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// This member's certificate on the raft port, for accepting and for connecting to peers
    /// (PEM; it must allow server and client authentication).
    #[arg(long = "peer-cert-file", value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// The private key of -peer-cert-file (PEM).
    #[arg(long = "peer-key-file", value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// The CA that signs every member's certificate: peers are trusted, and accepted, only with
    /// a certificate it signed (PEM).
    #[arg(long = "peer-trusted-ca-file", value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Require a certificate signed by -peer-trusted-ca-file from whatever connects to the raft
    /// port, members and native clients alike (default: true).
    #[arg(long = "peer-client-cert-auth", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,

    /// The certificate served on the client port (HTTP, gRPC), which then speaks only TLS (PEM).
    #[arg(long = "cert-file", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,

    /// The private key of -cert-file (PEM).
    #[arg(long = "key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// The CA that signs client certificates, for -client-cert-auth (PEM).
    #[arg(long = "trusted-ca-file", value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Accept only clients with a certificate signed by -trusted-ca-file on the client port.
    #[arg(long = "client-cert-auth", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", default_value = "false")]
    pub client_cert_auth: bool,
}

impl TlsArgs {
    /// The raft port's TLS files, or none for plaintext. Mutual TLS needs all three files.
    pub fn peer(&self) -> Result<Option<TlsFiles>, Error> {
        let (cert, key, ca) = (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        );
        if cert.is_none() && key.is_none() && ca.is_none() {
            if self.peer_client_cert_auth == Some(true) {
                return Err(Error::Config(
                    "-peer-client-cert-auth needs -peer-cert-file, -peer-key-file and -peer-trusted-ca-file".into(),
                ));
            }
            return Ok(None);
        }
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                trusted_ca: Some(ca.clone()),
                client_cert_auth: self.peer_client_cert_auth.unwrap_or(true),
            })),
            _ => Err(Error::Config(
                "TLS between members needs all of -peer-cert-file, -peer-key-file and -peer-trusted-ca-file".into(),
            )),
        }
    }

    /// The client port's TLS files, or none for plaintext.
    pub fn client(&self) -> Result<Option<TlsFiles>, Error> {
        match (&self.cert_file, &self.key_file) {
            (None, None) if self.trusted_ca_file.is_none() && !self.client_cert_auth => Ok(None),
            (Some(cert), Some(key)) => {
                if self.client_cert_auth && self.trusted_ca_file.is_none() {
                    return Err(Error::Config(
                        "-client-cert-auth needs -trusted-ca-file".into(),
                    ));
                }
                Ok(Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    trusted_ca: self.trusted_ca_file.clone(),
                    client_cert_auth: self.client_cert_auth,
                }))
            }
            _ => Err(Error::Config(
                "TLS on the client port needs both -cert-file and -key-file".into(),
            )),
        }
    }
}

/// The flags that say who a node is and where it and its cluster live. Shared by the node and
/// `restore`, so a restored node is described exactly as it is later started.
#[derive(Debug, clap::Args)]
pub struct AddressArgs {
    /// This node's id. Ids 1, 2 and 3 have default addresses (localhost:63001..63003).
    #[arg(long = "nodeid", visible_aliases = ["replicaid", "id"], default_value_t = 1)]
    pub node_id: NodeId,

    /// This node's raft address, HOST:PORT (default: from -nodeid, or from --cluster).
    #[arg(long)]
    pub addr: Option<String>,

    /// Initial members' raft addresses in id order, comma-separated; entry N is node N
    /// (an `http://` prefix is accepted, as in kv-db).
    #[arg(long)]
    pub cluster: Option<String>,

    /// HTTP API address, HOST:PORT (default: the raft host, raft port + 1000).
    #[arg(long)]
    pub http: Option<String>,

    /// HTTP API port on the raft address's host (the kv-db form; -http takes precedence).
    #[arg(long)]
    pub port: Option<u16>,
}

/// `ondisk restore`: creates a node's data directory for a new single-node cluster from a backup.
#[derive(Debug, Parser)]
#[command(
    name = "ondisk restore",
    about = "Create the data directory of a NEW single-node cluster from a backup file",
    long_about = "Create the data directory of a NEW single-node cluster from a backup file \
        written by `ondisk ctl backup`.\n\n\
        The file's checksum is verified before anything is created, and an existing node \
        directory is never overwritten. Give the same -nodeid/-addr/-cluster/-http flags you \
        will start the node with (without -join); the node then serves the backed-up data as \
        the only voter, and other nodes join it with `ondisk ctl add-voter`.\n\n\
        Example: ondisk restore backup.snap -data-dir restored -nodeid 1 -cluster 127.0.0.1:63001"
)]
pub struct RestoreArgs {
    /// The backup file to restore from.
    pub file: PathBuf,

    #[command(flatten)]
    pub address: AddressArgs,

    /// Directory holding every node's data; the restored node is DIR/node<ID>/, which must not
    /// exist yet.
    #[arg(long = "data-dir")]
    pub data_dir: PathBuf,
}

/// What the command line asks the binary to do: run a node, or one of the subcommands. The
/// subcommand is recognised before any flag parsing, so a node's Go-style flags work exactly as
/// they always have; another subcommand is one more variant and one more arm in [`Invocation::parse`].
#[derive(Debug)]
pub enum Invocation {
    Node(Args),
    Ctl(crate::ctl::CtlArgs),
    Restore(RestoreArgs),
}

impl Invocation {
    /// Parses the process's arguments, accepting single-dash long flags. On a usage error or
    /// `-h`, clap prints and exits, as for any command-line tool.
    pub fn parse() -> Self {
        let mut argv: Vec<OsString> = std::env::args_os().collect();
        let subcommand = argv.get(1).and_then(|arg| arg.to_str()).map(str::to_owned);
        match subcommand.as_deref() {
            Some("ctl") => Invocation::Ctl(crate::ctl::CtlArgs::parse_from(go_style(
                subcommand_argv(&mut argv),
            ))),
            Some("restore") => Invocation::Restore(RestoreArgs::parse_from(go_style(
                subcommand_argv(&mut argv),
            ))),
            _ => Invocation::Node(Args::parse_from(go_style(argv))),
        }
    }
}

/// The arguments of a subcommand, with `ondisk SUB` as its program name, so its help and errors
/// name it.
fn subcommand_argv(argv: &mut Vec<OsString>) -> Vec<OsString> {
    let mut rest = argv.split_off(1);
    let name = rest.remove(0);
    let mut program = OsString::from("ondisk ");
    program.push(name);
    std::iter::once(program).chain(rest).collect()
}

/// Rewrites `-name` and `-name=value` to `--name...`, leaving `-h`/`-v`-style short flags alone.
/// Everything after `--` is left as it is, so a key or value may start with a dash.
fn go_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut literal = false;
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| match arg.to_str() {
            Some("--") if !literal => {
                literal = true;
                arg
            }
            Some(s) if i > 0 && !literal && is_single_dash_long_flag(s) => {
                OsString::from(format!("-{s}"))
            }
            _ => arg,
        })
        .collect()
}

fn is_single_dash_long_flag(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    let name = rest.split('=').next().unwrap_or("");
    !rest.starts_with('-')
        && name.len() > 1
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Where this node listens and whom it starts a cluster with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub raft: String,
    pub http: String,
    pub initial_members: BTreeMap<NodeId, Member>,
    /// Identifies the cluster the command line describes: a checksum of the listed initial
    /// members (before any `-addr` override), the same on every founding member. A data directory
    /// records it, so one started against another cluster's flags is refused.
    pub cluster_id: u32,
}

impl Args {
    /// Works out this node's addresses and the initial membership from the flags.
    pub fn addresses(&self) -> Result<Addresses, Error> {
        self.address.addresses()
    }
}

impl AddressArgs {
    /// Works out this node's addresses and the initial membership from the flags.
    pub fn addresses(&self) -> Result<Addresses, Error> {
        let listed: Vec<String> = match &self.cluster {
            Some(list) => list
                .split(',')
                .map(|entry| entry.trim())
                .filter(|entry| !entry.is_empty())
                .map(|entry| {
                    entry
                        .strip_prefix("http://")
                        .unwrap_or(entry)
                        .trim_end_matches('/')
                        .to_string()
                })
                .collect(),
            None => DEFAULT_RAFT_ADDRS.iter().map(|a| a.to_string()).collect(),
        };
        if listed.is_empty() {
            return Err(Error::Config("--cluster lists no addresses".into()));
        }
        let own_entry = usize::try_from(self.node_id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .and_then(|i| listed.get(i));
        let raft = match (&self.addr, own_entry) {
            (Some(addr), _) => addr.clone(),
            (None, Some(listed)) => listed.clone(),
            (None, None) if self.cluster.is_some() => {
                return Err(Error::Config(format!(
                    "node id {} has no entry in --cluster ({} entries) and no -addr",
                    self.node_id,
                    listed.len()
                )))
            }
            (None, None) => {
                return Err(Error::Config(
                    "node id must be 1, 2 or 3 when address is not specified".into(),
                ))
            }
        };
        let (host, raft_port) = split_host_port(&raft)?;
        let http = match (&self.http, self.port) {
            (Some(http), _) => http.clone(),
            (None, Some(port)) => format!("{host}:{port}"),
            (None, None) => {
                let port = raft_port.checked_add(HTTP_PORT_OFFSET).ok_or_else(|| {
                    Error::Config(format!(
                        "raft port {raft_port} leaves no room for the default HTTP port; give -http"
                    ))
                })?;
                format!("{host}:{port}")
            }
        };
        split_host_port(&http)?;
        let mut initial_members: BTreeMap<NodeId, Member> = listed
            .iter()
            .zip(1..)
            .map(|(addr, id)| {
                (
                    id,
                    Member {
                        raft_addr: addr.clone(),
                        http_addr: String::new(),
                    },
                )
            })
            .collect();
        if let Some(member) = initial_members.get_mut(&self.node_id) {
            member.raft_addr = raft.clone();
        }
        let cluster_id = crc32fast::hash(listed.join(",").as_bytes());
        Ok(Addresses {
            raft,
            http,
            initial_members,
            cluster_id,
        })
    }
}

/// Splits `host:port`, refusing anything else with a message naming the address.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), Error> {
    let bad = || Error::Config(format!("invalid address {addr:?}: expected HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Args {
        let argv = std::iter::once("ondisk")
            .chain(line.split_whitespace())
            .map(OsString::from);
        Args::try_parse_from(go_style(argv)).unwrap()
    }

    #[test]
    fn single_and_double_dash_flags_mean_the_same() {
        assert_eq!(args("-nodeid 2").address.node_id, 2);
        assert_eq!(args("--nodeid 2").address.node_id, 2);
        assert_eq!(args("-replicaid=3").address.node_id, 3);
        assert_eq!(args("-data-dir /tmp/x").data_dir, PathBuf::from("/tmp/x"));
        assert!(args("-v").verbose);
    }

    #[test]
    fn nothing_after_a_double_dash_is_rewritten() {
        let argv = ["ondisk", "ctl", "-json", "put", "--", "-key", "-value"].map(OsString::from);
        let rewritten = go_style(argv);
        assert_eq!(rewritten[2], "--json");
        assert_eq!(rewritten[5], "-key");
        assert_eq!(rewritten[6], "-value");
    }

    #[test]
    fn a_subcommand_gets_its_own_program_name() {
        let mut argv = ["ondisk", "restore", "b.snap"].map(OsString::from).to_vec();
        assert_eq!(subcommand_argv(&mut argv), ["ondisk restore", "b.snap"]);
    }

    #[test]
    fn default_ids_map_to_the_original_addresses() {
        let a = args("-nodeid 2").addresses().unwrap();
        assert_eq!(a.raft, "localhost:63002");
        assert_eq!(a.http, "localhost:64002");
        assert_eq!(a.initial_members.len(), 3);
    }

    #[test]
    fn an_unknown_id_needs_an_address() {
        let err = args("-nodeid 4").addresses().unwrap_err();
        assert_eq!(
            err.to_string(),
            "node id must be 1, 2 or 3 when address is not specified"
        );
        assert_eq!(
            args("-nodeid 4 -addr 127.0.0.1:7000")
                .addresses()
                .unwrap()
                .raft,
            "127.0.0.1:7000"
        );
    }

    #[test]
    fn the_kv_db_form_picks_this_nodes_entry() {
        let a = args("--id 2 --cluster http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 --port 22380")
            .addresses()
            .unwrap();
        assert_eq!(a.raft, "127.0.0.1:22379");
        assert_eq!(a.http, "127.0.0.1:22380");
        assert_eq!(a.initial_members[&3].raft_addr, "127.0.0.1:32379");
    }

    #[test]
    fn malformed_addresses_are_refused() {
        assert!(args("-nodeid 1 -addr nonsense").addresses().is_err());
        assert!(args("-nodeid 1 -http 127.0.0.1:notaport")
            .addresses()
            .is_err());
    }
}
