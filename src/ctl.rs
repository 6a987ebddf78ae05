//! `ondisk ctl`: the operator's client, in the same binary as the node (as `etcdctl` is to etcd,
//! or the manager tool of the hashicorp raft example). It speaks only the public HTTP API, to any
//! node: the first reachable of `--endpoints`, trying the next when one is down.
//!
//! Output is for people by default and JSON with `--json`; a value read with `get` is written to
//! stdout as raw bytes, so binary values survive a pipe. Every failure is one `error: ...` line
//! and a non-zero exit status.

mod auth;
mod client;
mod lease;
mod recipes;
mod txn;
mod watch;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::io::IsTerminal;
use std::io::Read;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use clap::Parser;
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;

use crate::api;
use crate::api::http::header::BACKUP_INDEX as BACKUP_INDEX_HEADER;
use crate::api::http::header::BACKUP_TERM as BACKUP_TERM_HEADER;
use crate::api::http::param;
use crate::api::http::percent_encode;
use crate::api::http::AddMemberRequest;
use crate::api::http::Encoding;
use crate::api::http::Member;
use crate::api::http::MembersAnswer;
use crate::api::http::ScanAnswer;
use crate::api::http::SnapshotAnswer;
use crate::api::http::StatusAnswer;
use crate::api::http::TransferLeaderAnswer;
use crate::api::http::TransferLeaderRequest;
use crate::api::http::MAX_SCAN_LIMIT;
use crate::store;
use crate::types::NodeId;
use client::Client;

/// The local node 1's HTTP address with the default flags.
const DEFAULT_ENDPOINT: &str = "localhost:64001";
/// Pause between looks at the membership while waiting for a new voter's promotion.
const PROMOTION_POLL: Duration = Duration::from_millis(200);

/// ondisk ctl: a client for a running ondisk cluster, over any node's HTTP API.
#[derive(Debug, Parser)]
#[command(
    name = "ondisk ctl",
    about = "A client for a running ondisk cluster: data, revisions, transactions, watches, \
             leases, locks and elections, users and roles, membership, leadership, snapshots, \
             backups",
    after_help = "Keys and values that start with '-' go after `--`, e.g. `ondisk ctl put -- -k -v`.\n\
                  Run `ondisk ctl COMMAND -h` for a command's own help."
)]
pub struct CtlArgs {
    /// Nodes' HTTP addresses, HOST:PORT, comma-separated; requests go to the first that answers.
    #[arg(long, global = true, value_delimiter = ',', default_value = DEFAULT_ENDPOINT)]
    pub endpoints: Vec<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait for one request's answer (a backup's transfer is not limited).
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Act as this user on a cluster with authentication on (etcdctl's flag); the password is
    /// asked for when it is left out.
    #[arg(long, global = true, value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,

    /// Verify TLS endpoints with this CA certificate (PEM); endpoints without a scheme are then
    /// reached over https.
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Present this client certificate to endpoints that ask for one (PEM).
    #[arg(
        long = "cert",
        global = true,
        value_name = "FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        global = true,
        value_name = "FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `ondisk ctl` can do.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Set KEY to VALUE (VALUE `-` reads the value from stdin, so it may be binary).
    Put {
        /// The key (any bytes the shell can pass).
        key: OsString,
        /// The value, or `-` to read it from stdin.
        #[arg(allow_hyphen_values = true)]
        value: OsString,
        /// Attach the key to this lease (see `lease grant`): it is deleted when the lease ends.
        #[arg(long)]
        lease: Option<i64>,
    },
    /// Print KEY's value (raw bytes); fails if KEY is absent. Linearizable unless --stale. With
    /// --json, the key with its revisions, version and lease.
    Get {
        /// The key to read.
        key: OsString,
        /// Read the key as it was at this revision (refused once compacted).
        #[arg(long)]
        rev: Option<i64>,
        /// Read the answering node's state as it is, without asking the leader (faster, may be
        /// behind).
        #[arg(long)]
        stale: bool,
    },
    /// Delete KEY (deleting an absent key is not an error).
    Delete {
        /// The key to delete.
        key: OsString,
    },
    /// Set KEY to NEW only if it currently holds EXPECTED (compare-and-swap); fails otherwise and
    /// shows the current value.
    Cas {
        /// The key to change.
        key: OsString,
        /// The value KEY must hold now (`-` reads it from stdin).
        #[arg(allow_hyphen_values = true)]
        expected: OsString,
        /// The value to set (`-` reads it from stdin).
        #[arg(allow_hyphen_values = true)]
        new: OsString,
    },
    /// List pairs whose key starts with PREFIX, in key order (tab-separated), fetched page by
    /// page, every page at the first one's revision; with --json, each page as the API answers
    /// it, one per line.
    Scan {
        /// Only keys starting with this (default: every key).
        #[arg(default_value = "")]
        prefix: OsString,
        /// Most pairs to list (default: all of them).
        #[arg(long)]
        limit: Option<usize>,
        /// List the pairs as they were at this revision (default: the current one).
        #[arg(long)]
        rev: Option<i64>,
    },
    /// Forget the history before revision REV: reads and watches from older revisions are
    /// refused from then on.
    Compact {
        /// The first revision to keep.
        rev: i64,
    },
    /// Run a transaction read from stdin: comparisons, a blank line, the operations run if they
    /// all hold, a blank line, the operations run otherwise. Prints SUCCESS or FAILURE and each
    /// operation's result.
    #[command(after_help = txn::FORMAT)]
    Txn,
    /// Print the changes to KEY (or every key under it, with --prefix) as they happen, one line
    /// each (`PUT key value`, `DELETE key`); with --json, the API's watch responses. Resumes on
    /// the next endpoint when the connection drops, without losing or repeating a change.
    Watch {
        /// The key, or with --prefix the prefix.
        key: OsString,
        /// Watch every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (default: changes from now on).
        #[arg(long)]
        rev: Option<i64>,
        /// Show each key's previous value too.
        #[arg(long = "prev-kv")]
        prev_kv: bool,
    },
    /// Leases: TTLs keys can be attached to (`put --lease`); the keys go when the lease ends.
    Lease {
        #[command(subcommand)]
        command: lease::LeaseCommand,
    },
    /// Hold the distributed lock NAME while COMMAND runs (after `--`), then release it, exiting
    /// with COMMAND's status. Without COMMAND, print the lock's key and hold it until
    /// interrupted. Waiters get the lock in the order they asked for it.
    Lock {
        /// The lock's name: its holders' keys are under NAME/.
        name: OsString,
        /// Seconds the lock outlives this process if it dies (its lease's TTL).
        #[arg(long, default_value_t = recipes::DEFAULT_TTL)]
        ttl: i64,
        /// The command to run while holding the lock, after `--`.
        #[arg(last = true)]
        command: Vec<OsString>,
    },
    /// Campaign to lead election NAME with VALUE, and print the leader's value each time the
    /// leadership changes; with --listen, only watch. The first campaigner leads until its
    /// process ends (or, if it dies, until its lease expires).
    Elect {
        /// The election's name: its candidates' keys are under NAME/.
        name: OsString,
        /// What this candidate announces while it leads.
        #[arg(required_unless_present = "listen", allow_hyphen_values = true)]
        value: Option<OsString>,
        /// Only print the leaders, without campaigning.
        #[arg(long, conflicts_with = "value")]
        listen: bool,
        /// Seconds the candidacy outlives this process if it dies (its lease's TTL).
        #[arg(long, default_value_t = recipes::DEFAULT_TTL)]
        ttl: i64,
    },
    /// Turn authentication on or off (etcdctl's `auth`).
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
    /// Users: add, delete, list, show, change a password, grant and revoke roles.
    User {
        #[command(subcommand)]
        command: auth::UserCommand,
    },
    /// Roles: add, delete, list, show, grant and revoke permissions on keys.
    Role {
        #[command(subcommand)]
        command: auth::RoleCommand,
    },
    /// List the members (id, addresses, voter or learner, leader) and the membership's log index,
    /// which --prev-index expects.
    Members,
    /// Print the current leader: id, raft address, HTTP address.
    Leader,
    /// One row per node (the endpoints and every member found): id, role, term, commit, applied,
    /// snapshot, log range, and lag behind the leader's log.
    Status,
    /// Add node ID at raft address ADDR as a learner that stays one (it never votes).
    AddLearner {
        /// The new node's id; an id removed before cannot be used again.
        id: NodeId,
        /// The new node's raft address, HOST:PORT (its -addr).
        addr: String,
    },
    /// Add node ID at raft address ADDR as a voter: it joins as a learner and the leader promotes
    /// it once it has caught up. Start the node with -join first.
    AddVoter {
        /// The new node's id; an id removed before cannot be used again.
        id: NodeId,
        /// The new node's raft address, HOST:PORT (its -addr).
        addr: String,
        /// Refuse unless the membership was last changed at this log index (see `members`), so a
        /// change decided on an outdated view is never applied.
        #[arg(long = "prev-index")]
        prev_index: Option<u64>,
        /// How long to wait for the promotion to voter; 0s returns once it is a learner.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Remove node ID (voter or learner); it shuts down once it learns it.
    Remove {
        /// The member to remove.
        id: NodeId,
    },
    /// Print the answering node's last applied log index.
    AppliedIndex,
    /// Take a snapshot on the answering node now (which also lets its log be compacted).
    Snapshot,
    /// Make voter ID the leader (openraft's leader transfer; no restart).
    TransferLeader {
        /// The voter to lead.
        id: NodeId,
    },
    /// Write a consistent snapshot of the state machine to FILE, with its log id and checksum;
    /// the file appears only once its checksum has been verified. Restore with `ondisk restore`.
    Backup {
        /// Where to write the backup; its directory must exist.
        file: PathBuf,
    },
    /// Make certificates for a TLS cluster in DIR: a CA (unless DIR has one already), and for
    /// each node and the client a certificate and key signed by it. Running it again re-issues
    /// the node and client certificates from the same CA, replacing the files atomically:
    /// running nodes pick them up by themselves (rotation). Needs no cluster.
    Certs(CertsArgs),
}

/// `ondisk ctl certs`: what to make.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Where the files go (created if missing).
    pub dir: PathBuf,
    /// Node ids to make certificates for: nodeID.pem and nodeID-key.pem each, good for the
    /// raft port's both ends and for the client port.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub nodes: Vec<NodeId>,
    /// Host names and IP addresses the nodes are reached at; every node certificate names all.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    pub hosts: Vec<String>,
    /// Common name of the client certificate (NAME.pem, NAME-key.pem); empty for none.
    #[arg(long, default_value = "client")]
    pub client: String,
    /// Days the node and client certificates are valid (0: already expired, to see what an
    /// expired certificate does).
    #[arg(long, default_value_t = 365)]
    pub days: u64,
}

/// Why a ctl command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No endpoint could be connected to.
    #[error("no endpoint is reachable: {0}")]
    Unreachable(String),
    /// The node answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The key or lease asked about does not exist (a 404), which some commands act on.
    #[error("{0}")]
    NotFound(String),
    /// The revision asked for is compacted away.
    #[error("{reason}")]
    Compacted {
        reason: String,
        compact_revision: i64,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from {endpoint}: {reason}")]
    BadAnswer { endpoint: String, reason: String },
    /// What was given on the command line or stdin is not usable.
    #[error("{0}")]
    Input(String),
    /// Reading input or writing output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

type Result<T, E = CtlError> = std::result::Result<T, E>;

/// The `Authorization` header for `--user NAME[:PASSWORD]`, asking for the password on the
/// terminal (without echo) when it is left out. Sent with every request: the node checks a
/// name and password once and remembers the pair while the password stands.
fn user_authorization(user: &str) -> Result<String> {
    let (name, password) = match user.split_once(':') {
        Some((name, password)) => (name.to_string(), password.to_string()),
        None => {
            let password = rpassword::prompt_password(format!("Password for {user}: "))
                .map_err(|e| CtlError::Input(format!("cannot read the password: {e}")))?;
            (user.to_string(), password)
        }
    };
    Ok(api::http::basic_authorization(&name, &password))
}

/// Runs one ctl command; the exit status is a success unless the command ran another (`lock`),
/// whose status it passes on.
pub fn run(args: CtlArgs) -> Result<ExitCode> {
    let tls = client::TlsFlags {
        cacert: args.cacert.clone(),
        cert: args.cert_file.clone(),
        key: args.key_file.clone(),
    };
    let authorization = args.user.as_deref().map(user_authorization).transpose()?;
    let client = &Client::new(&args.endpoints, args.timeout, &tls, authorization)?;
    let (json, timeout) = (args.json, args.timeout);
    let outcome = match args.command {
        CtlCommand::Lock { name, ttl, command } => {
            return recipes::lock(client, name.as_bytes(), ttl, &command, timeout)
        }
        CtlCommand::Put { key, value, lease } => {
            let mut path = kv_path(&key);
            if let Some(lease) = lease {
                path.push_str(&format!("?{}={lease}", param::LEASE));
            }
            client.call("PUT", &path, &value_arg(&value)?)?;
            done(json, "OK")
        }
        CtlCommand::Get { key, rev, stale } => get(client, key.as_bytes(), rev, stale, json),
        CtlCommand::Delete { key } => {
            client.call("DELETE", &kv_path(&key), b"")?;
            done(json, "OK")
        }
        CtlCommand::Cas { key, expected, new } => {
            let path = format!(
                "{}?{}={}",
                kv_path(&key),
                param::PREV_VALUE,
                percent_encode(&value_arg(&expected)?)
            );
            client.call("PUT", &path, &value_arg(&new)?)?;
            done(json, "OK")
        }
        CtlCommand::Scan { prefix, limit, rev } => {
            scan(client, prefix.as_bytes(), limit, rev, json)
        }
        CtlCommand::Compact { rev } => compact(client, rev, json),
        CtlCommand::Txn => txn::run(client, json),
        CtlCommand::Watch {
            key,
            prefix,
            rev,
            prev_kv,
        } => {
            let watched = watch::Watched {
                key: key.as_bytes(),
                prefix,
                start_revision: rev.unwrap_or(0),
                prev_kv,
            };
            watch::run(client, &watched, json, timeout)
        }
        CtlCommand::Lease { command } => lease::run(client, command, json, timeout),
        CtlCommand::Elect {
            name, value, ttl, ..
        } => {
            let value = value.as_ref().map(|v| v.as_bytes());
            recipes::elect(client, name.as_bytes(), value, ttl, json, timeout)
        }
        CtlCommand::Auth { command } => auth::run_auth(client, command, json),
        CtlCommand::User { command } => auth::run_user(client, command, json),
        CtlCommand::Role { command } => auth::run_role(client, command, json),
        CtlCommand::Members => members(client, json),
        CtlCommand::Leader => leader(client, json),
        CtlCommand::Status => status(client, json),
        CtlCommand::AddLearner { id, addr } => {
            add(client, id, &addr, "learner", None)?;
            done(json, &format!("added node {id} as a learner"))
        }
        CtlCommand::AddVoter {
            id,
            addr,
            prev_index,
            wait,
        } => {
            add(client, id, &addr, "voter", prev_index)?;
            if wait.is_zero() {
                done(
                    json,
                    &format!(
                        "added node {id}; the leader promotes it to voter once it has caught up"
                    ),
                )
            } else {
                wait_for_voter(client, id, wait)?;
                done(json, &format!("added node {id} as a voter"))
            }
        }
        CtlCommand::Remove { id } => {
            client.call("DELETE", &api::http::member(id), b"")?;
            done(json, &format!("removed node {id}"))
        }
        CtlCommand::AppliedIndex => applied_index(client, json),
        CtlCommand::Snapshot => snapshot(client, json),
        CtlCommand::TransferLeader { id } => {
            let request = TransferLeaderRequest { to: id };
            let answer: TransferLeaderAnswer =
                client.send_json("POST", api::http::TRANSFER_LEADER, &request)?;
            done(json, &format!("node {} is now the leader", answer.leader))
        }
        CtlCommand::Backup { file } => backup(client, &file, json),
        CtlCommand::Certs(request) => certs(&request, json),
    };
    outcome.map(|()| ExitCode::SUCCESS)
}

/// `get`: one key, at a revision if asked, read with `/v1/range` so its revisions come along.
fn get(client: &Client, key: &[u8], rev: Option<i64>, stale: bool, json: bool) -> Result<()> {
    let request = api::RangeRequest {
        key: key.to_vec(),
        revision: rev.unwrap_or(0),
        serializable: stale,
        ..api::RangeRequest::default()
    };
    let answer: api::RangeResponse = client.send_json("POST", api::http::RANGE, &request)?;
    let Some(kv) = answer.kvs.into_iter().next() else {
        return Err(CtlError::NotFound("key not found".into()));
    };
    if json {
        return print_json(&kv);
    }
    let mut out = io::stdout().lock();
    out.write_all(&kv.value)?;
    if io::stdout().is_terminal() {
        out.write_all(b"\n")?;
    }
    Ok(out.flush()?)
}

fn compact(client: &Client, rev: i64, json: bool) -> Result<()> {
    let request = api::CompactionRequest {
        revision: rev,
        physical: false,
    };
    let answer: api::CompactionResponse = client.send_json("POST", api::http::COMPACT, &request)?;
    if json {
        return print_json(&answer);
    }
    println!("compacted revision {rev}");
    Ok(())
}

fn members(client: &Client, json: bool) -> Result<()> {
    let answer: MembersAnswer = client.get(api::http::MEMBERS)?;
    if json {
        return print_json(&answer);
    }
    println!("membership index: {}", answer.membership_index);
    let rows = answer
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.raft_addr.clone(),
                m.http_addr.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if m.leader { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    print_table(
        &["ID", "RAFT ADDRESS", "HTTP ADDRESS", "ROLE", "LEADER"],
        rows,
    )
}

fn leader(client: &Client, json: bool) -> Result<()> {
    let answer: MembersAnswer = client.get(api::http::MEMBERS)?;
    let Some(leader) = answer.members.into_iter().find(|m| m.leader) else {
        return Err(CtlError::Refused(
            "no leader is known (is a quorum of nodes up?)".into(),
        ));
    };
    if json {
        return print_json(&json!({
            "id": leader.id,
            "raft_addr": leader.raft_addr,
            "http_addr": leader.http_addr,
        }));
    }
    println!("{} {} {}", leader.id, leader.raft_addr, leader.http_addr);
    Ok(())
}

fn applied_index(client: &Client, json: bool) -> Result<()> {
    let answer: StatusAnswer = client.get(api::http::STATUS)?;
    let index = answer.last_applied.unwrap_or(0);
    if json {
        return print_json(&json!({ "id": answer.id, "applied_index": index }));
    }
    println!("{index}");
    Ok(())
}

fn snapshot(client: &Client, json: bool) -> Result<()> {
    let answer: SnapshotAnswer = client.call("POST", api::http::SNAPSHOT, b"")?.parse()?;
    if json {
        return print_json(&answer);
    }
    println!("snapshot taken at log index {}", answer.index);
    Ok(())
}

/// Prints the outcome of a command that returns nothing else.
fn done(json: bool, message: &str) -> Result<()> {
    if json {
        return print_json(&json!({ "ok": true, "message": message }));
    }
    println!("{message}");
    Ok(())
}

/// Prints `doc` as one line of JSON.
fn print_json(doc: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(doc)
        .map_err(|e| CtlError::Refused(format!("cannot write the answer as JSON: {e}")))?;
    println!("{line}");
    Ok(())
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = io::stdout().lock();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// A command-line value: the argument's bytes, or stdin's when it is `-`.
fn value_arg(arg: &OsString) -> Result<Vec<u8>> {
    if arg == "-" {
        let mut value = Vec::new();
        io::stdin().lock().read_to_end(&mut value)?;
        return Ok(value);
    }
    Ok(arg.as_bytes().to_vec())
}

fn kv_path(key: &OsString) -> String {
    format!("/v1/kv/{}", percent_encode(key.as_bytes()))
}

fn add(client: &Client, id: NodeId, addr: &str, role: &str, prev_index: Option<u64>) -> Result<()> {
    let request = AddMemberRequest {
        id,
        addr: addr.to_string(),
        role: Some(role.to_string()),
        prev_index,
    };
    let body = serde_json::to_vec(&request)
        .map_err(|e| CtlError::Refused(format!("cannot encode the request: {e}")))?;
    client.call("POST", api::http::MEMBERS, &body)?;
    Ok(())
}

/// Waits until node `id` is a voter, as the cluster's membership shows it.
fn wait_for_voter(client: &Client, id: NodeId, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let answer: MembersAnswer = client.get(api::http::MEMBERS)?;
        if answer.members.iter().any(|m| m.id == id && m.voter) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Refused(format!(
                "node {id} was added as a learner but was not promoted to voter within {}; \
                 it is promoted once it has caught up (is it running, with -join?)",
                humantime::format_duration(within)
            )));
        }
        std::thread::sleep(PROMOTION_POLL);
    }
}

/// `scan`: fetches pages until the range or `limit` ends, printing each as it arrives, so memory
/// stays at one page whatever the range's size. Every page after the first is read at the first
/// one's revision, so the listing is one consistent state whatever changes meanwhile.
fn scan(
    client: &Client,
    prefix: &[u8],
    limit: Option<usize>,
    rev: Option<i64>,
    json: bool,
) -> Result<()> {
    let mut out = io::stdout().lock();
    let mut listed = 0;
    let mut start = None;
    let mut revision = rev;
    loop {
        let wanted = limit.map_or(MAX_SCAN_LIMIT, |limit| (limit - listed).min(MAX_SCAN_LIMIT));
        let mut path = format!(
            "{}?{}={}&{}={wanted}",
            api::http::KV,
            param::PREFIX,
            percent_encode(prefix),
            param::LIMIT
        );
        if let Some(start) = &start {
            path.push_str(&format!("&{}={start}", param::START));
        }
        if let Some(revision) = revision {
            path.push_str(&format!("&{}={revision}", param::REVISION));
        }
        let answer = client.call("GET", &path, b"")?;
        let page: ScanAnswer = answer.parse()?;
        revision = Some(page.revision);
        if json {
            out.write_all(&answer.body)?;
            out.write_all(b"\n")?;
        } else {
            for item in &page.items {
                match item.encoding {
                    Encoding::Base64 => writeln!(out, "{}\t{}\t(base64)", item.key, item.value)?,
                    Encoding::Utf8 => writeln!(out, "{}\t{}", item.key, item.value)?,
                }
            }
        }
        listed += page.count;
        match page.next {
            Some(next) if limit.is_none_or(|limit| listed < limit) && page.count > 0 => {
                start = Some(next)
            }
            _ => return Ok(out.flush()?),
        }
    }
}

/// One row of `status --json`: an endpoint and its status, or why it could not be had.
#[derive(Serialize)]
struct StatusRow {
    endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `status`: asks each endpoint, then each member not yet seen, for its status.
fn status(client: &Client, json: bool) -> Result<()> {
    let mut endpoints: Vec<String> = client.endpoints.clone();
    if let Ok(answer) = client.get::<MembersAnswer>(api::http::MEMBERS) {
        endpoints.extend(
            answer
                .members
                .into_iter()
                .map(|m: Member| m.http_addr)
                .filter(|addr| !addr.is_empty()),
        );
    }
    let mut seen_ids = BTreeSet::new();
    let mut seen_endpoints = BTreeSet::new();
    let mut rows: Vec<StatusRow> = Vec::new();
    for endpoint in endpoints {
        if !seen_endpoints.insert(endpoint.clone()) {
            continue;
        }
        let answer = client
            .call_one(&endpoint, "GET", api::http::STATUS, b"")
            .and_then(|answer| answer.parse::<StatusAnswer>());
        if let Ok(status) = &answer {
            if !seen_ids.insert(status.id) {
                continue;
            }
        }
        let (status, error) = match answer {
            Ok(status) => (Some(status), None),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(StatusRow {
            endpoint,
            status,
            error,
        });
    }
    if json {
        return print_json(&rows);
    }
    let leader_last_log = rows
        .iter()
        .filter_map(|row| row.status.as_ref())
        .find(|status| status.state == "Leader")
        .map(|status| status.last_log_index.unwrap_or(0));
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let table = rows
        .iter()
        .map(|row| match &row.status {
            Some(status) => {
                let last_log = status.last_log_index.unwrap_or(0);
                vec![
                    row.endpoint.clone(),
                    status.id.to_string(),
                    status.state.clone(),
                    status.term.to_string(),
                    number(status.committed),
                    number(status.last_applied),
                    number(status.last_snapshot_index),
                    format!("{}..{}", status.first_log_index, last_log),
                    leader_last_log.map_or_else(
                        || "?".to_string(),
                        |leader| leader.saturating_sub(last_log).to_string(),
                    ),
                ]
            }
            // The reason is in the --json output; in the table it would swamp the columns.
            None => vec![row.endpoint.clone(), "-".into(), "unreachable".into()],
        })
        .collect();
    print_table(
        &[
            "ENDPOINT", "ID", "ROLE", "TERM", "COMMIT", "APPLIED", "SNAPSHOT", "LOG", "LAG",
        ],
        table,
    )
}

/// `backup`: streams a fresh snapshot into a temporary file beside FILE, verifies its checksum,
/// and only then renames it to FILE.
fn backup(client: &Client, file: &Path, json: bool) -> Result<()> {
    let (position, mut response) = client.open_from(0, api::http::BACKUP)?;
    let endpoint = client.endpoints[position].clone();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (index, term) = (header(BACKUP_INDEX_HEADER), header(BACKUP_TERM_HEADER));
    let mut partial_name = file.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = PathBuf::from(partial_name);
    let written = (|| -> Result<u64> {
        let mut out = fs::File::create(&partial)?;
        let copied = io::copy(&mut response.body_mut().as_reader(), &mut out).map_err(|e| {
            CtlError::Refused(format!("the backup stream from {endpoint} broke off: {e}"))
        })?;
        out.sync_all()?;
        let meta = store::verify_snapshot(&partial).map_err(|e| {
            CtlError::Refused(format!("the backup from {endpoint} is damaged: {e}"))
        })?;
        if meta.last_log_id.map(|id| id.index) != Some(index) {
            return Err(CtlError::BadAnswer {
                endpoint: endpoint.clone(),
                reason: "the backup's header does not match the log index announced".into(),
            });
        }
        fs::rename(&partial, file)?;
        Ok(copied)
    })();
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if json {
        return print_json(&json!({
            "file": file.display().to_string(),
            "bytes": bytes,
            "log_index": index,
            "log_term": term,
        }));
    }
    println!(
        "backup at log index {index} (term {term}), {bytes} bytes, checksum verified, written to {}",
        file.display()
    );
    Ok(())
}

/// `certs`: makes the files and lists them.
fn certs(args: &CertsArgs, json: bool) -> Result<()> {
    let request = crate::tls::certs::CertRequest {
        nodes: args.nodes.clone(),
        hosts: args.hosts.clone(),
        client: args.client.clone(),
        validity: Duration::from_secs(args.days.saturating_mul(24 * 3600)),
    };
    let written = crate::tls::certs::generate(&args.dir, &request)
        .map_err(|e| CtlError::Input(e.to_string()))?;
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    if json {
        print_json(&json!({ "written": names }))
    } else {
        for name in names {
            println!("{name}");
        }
        Ok(())
    }
}
