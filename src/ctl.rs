//! `ondisk ctl`: the operator's client, in the same binary as the node (as `etcdctl` is to etcd,
//! or the manager tool of the hashicorp raft example). It speaks only the public HTTP API, to any
//! node: the first reachable of `--endpoints`, trying the next when one is down.
//!
//! Output is for people by default and JSON with `--json`; a value read with `get` is written to
//! stdout as raw bytes, so binary values survive a pipe. Every failure is one `error: ...` line
//! and a non-zero exit status.

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
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use clap::Parser;
use clap::Subcommand;
use serde_json::json;
use serde_json::Value;

use crate::api::http::header::BACKUP_INDEX as BACKUP_INDEX_HEADER;
use crate::api::http::header::BACKUP_TERM as BACKUP_TERM_HEADER;
use crate::api::http::param::START as SCAN_START_PARAM;
use crate::api::http::percent_encode;
use crate::api::http::Encoding;
use crate::api::http::ScanAnswer;
use crate::api::http::MAX_SCAN_LIMIT;
use crate::store;
use crate::types::NodeId;

/// The local node 1's HTTP address with the default flags.
const DEFAULT_ENDPOINT: &str = "localhost:64001";
/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between looks at the membership while waiting for a new voter's promotion.
const PROMOTION_POLL: Duration = Duration::from_millis(200);

/// ondisk ctl: a client for a running ondisk cluster, over any node's HTTP API.
#[derive(Debug, Parser)]
#[command(
    name = "ondisk ctl",
    about = "A client for a running ondisk cluster: data, membership, leadership, snapshots, backups",
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
    },
    /// Print KEY's value (raw bytes); fails if KEY is absent. Linearizable unless --stale.
    Get {
        /// The key to read.
        key: OsString,
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
    /// page; with --json, each page as the API answers it, one per line.
    Scan {
        /// Only keys starting with this (default: every key).
        #[arg(default_value = "")]
        prefix: OsString,
        /// Most pairs to list (default: all of them).
        #[arg(long)]
        limit: Option<usize>,
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
    /// The answer could not be understood.
    #[error("unexpected answer from {endpoint}: {reason}")]
    BadAnswer { endpoint: String, reason: String },
    /// Reading input or writing output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

type Result<T, E = CtlError> = std::result::Result<T, E>;

/// Runs one ctl command.
pub fn run(args: CtlArgs) -> Result<()> {
    let client = Client::new(&args.endpoints, args.timeout);
    let json = args.json;
    match args.command {
        CtlCommand::Put { key, value } => {
            let value = value_arg(&value)?;
            client.call("PUT", &kv_path(&key), &value)?;
            done(json, "OK")
        }
        CtlCommand::Get { key, stale } => {
            let query = if stale { "?consistency=stale" } else { "" };
            let answer = client.call("GET", &format!("{}{query}", kv_path(&key)), b"")?;
            if json {
                let mut doc = encoded(&answer.body);
                doc["key"] = Value::String(String::from_utf8_lossy(key.as_bytes()).into());
                return print_json(&doc);
            }
            let mut out = io::stdout().lock();
            out.write_all(&answer.body)?;
            if io::stdout().is_terminal() {
                out.write_all(b"\n")?;
            }
            Ok(out.flush()?)
        }
        CtlCommand::Delete { key } => {
            client.call("DELETE", &kv_path(&key), b"")?;
            done(json, "OK")
        }
        CtlCommand::Cas { key, expected, new } => {
            let path = format!(
                "{}?prev_value={}",
                kv_path(&key),
                percent_encode(&value_arg(&expected)?)
            );
            match client.call("PUT", &path, &value_arg(&new)?) {
                Err(CtlError::Refused(reason)) if reason.starts_with("precondition failed") => {
                    Err(CtlError::Refused(reason))
                }
                other => other.and_then(|_| done(json, "OK")),
            }
        }
        CtlCommand::Scan { prefix, limit } => scan(&client, prefix.as_bytes(), limit, json),
        CtlCommand::Members => {
            let doc = client.call("GET", "/v1/members", b"")?.json()?;
            if json {
                return print_json(&doc);
            }
            println!(
                "membership index: {}",
                doc["membership_index"].as_u64().unwrap_or(0)
            );
            let rows = members(&doc)
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
        CtlCommand::Leader => {
            let doc = client.call("GET", "/v1/members", b"")?.json()?;
            let Some(leader) = members(&doc).into_iter().find(|m| m.leader) else {
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
        CtlCommand::Status => status(&client, json),
        CtlCommand::AddLearner { id, addr } => {
            add(&client, id, &addr, "learner", None)?;
            done(json, &format!("added node {id} as a learner"))
        }
        CtlCommand::AddVoter {
            id,
            addr,
            prev_index,
            wait,
        } => {
            add(&client, id, &addr, "voter", prev_index)?;
            if !wait.is_zero() {
                wait_for_voter(&client, id, wait)?;
                return done(json, &format!("added node {id} as a voter"));
            }
            done(
                json,
                &format!("added node {id}; the leader promotes it to voter once it has caught up"),
            )
        }
        CtlCommand::Remove { id } => {
            client.call("DELETE", &format!("/v1/members/{id}"), b"")?;
            done(json, &format!("removed node {id}"))
        }
        CtlCommand::AppliedIndex => {
            let doc = client.call("GET", "/v1/status", b"")?.json()?;
            let index = doc["last_applied"].as_u64().unwrap_or(0);
            if json {
                return print_json(&json!({ "id": doc["id"], "applied_index": index }));
            }
            println!("{index}");
            Ok(())
        }
        CtlCommand::Snapshot => {
            let doc = client.call("POST", "/v1/snapshot", b"")?.json()?;
            if json {
                return print_json(&doc);
            }
            println!(
                "snapshot taken at log index {}",
                doc["index"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        CtlCommand::TransferLeader { id } => {
            let body = json!({ "to": id }).to_string();
            client.call("POST", "/v1/transfer-leader", body.as_bytes())?;
            done(json, &format!("node {id} is now the leader"))
        }
        CtlCommand::Backup { file } => backup(&client, &file, json),
    }
}

/// Prints the outcome of a command that returns nothing else.
fn done(json: bool, message: &str) -> Result<()> {
    if json {
        return print_json(&json!({ "ok": true, "message": message }));
    }
    println!("{message}");
    Ok(())
}

fn print_json(doc: &Value) -> Result<()> {
    println!("{doc}");
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

/// A value as JSON, as the API encodes one: UTF-8 text as is, anything else as base64.
fn encoded(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "value": text, "encoding": "utf-8" }),
        Err(_) => json!({
            "value": base64::engine::general_purpose::STANDARD.encode(bytes),
            "encoding": "base64",
        }),
    }
}

/// One member as `GET /v1/members` lists it.
#[derive(Debug, serde::Deserialize)]
struct Member {
    id: NodeId,
    raft_addr: String,
    http_addr: String,
    voter: bool,
    leader: bool,
}

fn members(doc: &Value) -> Vec<Member> {
    serde_json::from_value(doc["members"].clone()).unwrap_or_default()
}

fn add(client: &Client, id: NodeId, addr: &str, role: &str, prev_index: Option<u64>) -> Result<()> {
    let body = json!({ "id": id, "addr": addr, "role": role, "prev_index": prev_index });
    client.call("POST", "/v1/members", body.to_string().as_bytes())?;
    Ok(())
}

/// Waits until node `id` is a voter, as the cluster's membership shows it.
fn wait_for_voter(client: &Client, id: NodeId, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let doc = client.call("GET", "/v1/members", b"")?.json()?;
        if members(&doc).iter().any(|m| m.id == id && m.voter) {
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
/// stays at one page whatever the range's size.
fn scan(client: &Client, prefix: &[u8], limit: Option<usize>, json: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    let mut listed = 0;
    let mut start = None;
    loop {
        let wanted = limit.map_or(MAX_SCAN_LIMIT, |limit| (limit - listed).min(MAX_SCAN_LIMIT));
        let mut path = format!("/v1/kv/?prefix={}&limit={wanted}", percent_encode(prefix));
        if let Some(start) = &start {
            path.push_str(&format!("&{SCAN_START_PARAM}={start}"));
        }
        let answer = client.call("GET", &path, b"")?;
        let page: ScanAnswer = answer.parse()?;
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

/// `status`: asks each endpoint, then each member not yet seen, for its status.
fn status(client: &Client, json: bool) -> Result<()> {
    let mut endpoints: Vec<String> = client.endpoints.clone();
    if let Ok(answer) = client.call("GET", "/v1/members", b"") {
        if let Ok(doc) = answer.json() {
            endpoints.extend(
                members(&doc)
                    .into_iter()
                    .map(|m| m.http_addr)
                    .filter(|addr| !addr.is_empty()),
            );
        }
    }
    let mut seen_ids = BTreeSet::new();
    let mut seen_endpoints = BTreeSet::new();
    let mut rows: Vec<(String, Result<Value>)> = Vec::new();
    for endpoint in endpoints {
        if !seen_endpoints.insert(endpoint.clone()) {
            continue;
        }
        let answer = client
            .call_one(&endpoint, "GET", "/v1/status", b"")
            .and_then(|answer| answer.json());
        if let Ok(doc) = &answer {
            if !seen_ids.insert(doc["id"].as_u64()) {
                continue;
            }
        }
        rows.push((endpoint, answer));
    }
    if json {
        let docs: Vec<Value> = rows
            .iter()
            .map(|(endpoint, answer)| match answer {
                Ok(doc) => json!({ "endpoint": endpoint, "status": doc }),
                Err(e) => json!({ "endpoint": endpoint, "error": e.to_string() }),
            })
            .collect();
        return print_json(&Value::Array(docs));
    }
    let leader_last_log = rows.iter().find_map(|(_, answer)| {
        let doc = answer.as_ref().ok()?;
        (doc["state"] == "Leader").then(|| doc["last_log_index"].as_u64().unwrap_or(0))
    });
    let number = |doc: &Value, field: &str| {
        doc[field]
            .as_u64()
            .map_or_else(|| "-".to_string(), |n| n.to_string())
    };
    let table = rows
        .iter()
        .map(|(endpoint, answer)| match answer {
            Ok(doc) => {
                let last_log = doc["last_log_index"].as_u64().unwrap_or(0);
                vec![
                    endpoint.clone(),
                    number(doc, "id"),
                    doc["state"].as_str().unwrap_or("?").to_string(),
                    number(doc, "term"),
                    number(doc, "committed"),
                    number(doc, "last_applied"),
                    number(doc, "last_snapshot_index"),
                    format!("{}..{}", number(doc, "first_log_index"), last_log),
                    leader_last_log.map_or_else(
                        || "?".to_string(),
                        |leader| leader.saturating_sub(last_log).to_string(),
                    ),
                ]
            }
            // The reason is in the --json output; in the table it would swamp the columns.
            Err(_) => vec![endpoint.clone(), "-".into(), "unreachable".into()],
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
    let (endpoint, mut response) = client.open("GET", "/v1/backup")?;
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

/// A complete answer.
struct Answer {
    endpoint: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        self.parse()
    }

    /// The body as the JSON document `T`.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| CtlError::BadAnswer {
            endpoint: self.endpoint.clone(),
            reason: format!("not JSON: {e}"),
        })
    }
}

/// Talks to the cluster through the first endpoint that accepts a connection.
struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// For backups: no limit on the whole transfer, only on waiting for the answer to start.
    streaming_agent: ureq::Agent,
}

impl Client {
    fn new(endpoints: &[String], timeout: Duration) -> Self {
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.trim();
                e.strip_prefix("http://")
                    .unwrap_or(e)
                    .trim_end_matches('/')
                    .to_string()
            })
            .filter(|e| !e.is_empty())
            .collect();
        let agent = |global: Option<Duration>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(global)
                .timeout_recv_response(Some(timeout))
                .max_redirects(0)
                .build()
                .into()
        };
        Client {
            endpoints,
            agent: agent(Some(timeout)),
            streaming_agent: agent(None),
        }
    }

    /// Sends a request to the first endpoint that can be connected to, and fails with the node's
    /// error message unless the answer is a success.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let mut down = Vec::new();
        for endpoint in &self.endpoints {
            match self.send(&self.agent, endpoint, method, path, body) {
                Ok(response) => return complete(endpoint, response),
                Err(Attempt::Down(reason)) => down.push(format!("{endpoint}: {reason}")),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(CtlError::Unreachable(down.join("; ")))
    }

    /// Sends a request to `endpoint` alone.
    fn call_one(&self, endpoint: &str, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        match self.send(&self.agent, endpoint, method, path, body) {
            Ok(response) => complete(endpoint, response),
            Err(Attempt::Down(reason)) => Err(CtlError::Unreachable(reason)),
            Err(Attempt::Failed(e)) => Err(e),
        }
    }

    /// Starts a request whose body is to be streamed, on the first endpoint that answers with a
    /// success.
    fn open(&self, method: &str, path: &str) -> Result<(String, ureq::http::Response<ureq::Body>)> {
        let mut down = Vec::new();
        for endpoint in &self.endpoints {
            match self.send(&self.streaming_agent, endpoint, method, path, b"") {
                Ok(response) if response.status().is_success() => {
                    return Ok((endpoint.clone(), response))
                }
                Ok(response) => return Err(failure(endpoint, response)),
                Err(Attempt::Down(reason)) => down.push(format!("{endpoint}: {reason}")),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(CtlError::Unreachable(down.join("; ")))
    }

    fn send(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, Attempt> {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{endpoint}{path}"))
            .body(body.to_vec())
            .map_err(|e| {
                Attempt::Failed(CtlError::Refused(format!(
                    "invalid endpoint {endpoint:?}: {e}"
                )))
            })?;
        agent.run(request).map_err(|e| match e {
            // Nothing reached the node: the next endpoint may be asked instead.
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                Attempt::Down(e.to_string())
            }
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
                Attempt::Down(io.to_string())
            }
            other => Attempt::Failed(CtlError::Refused(format!(
                "request to {endpoint} failed (its outcome is unknown): {other}"
            ))),
        })
    }
}

/// How one endpoint's attempt ended short of an answer.
enum Attempt {
    /// It could not be connected to; nothing was sent.
    Down(String),
    /// It failed in a way another endpoint would not fix.
    Failed(CtlError),
}

/// Reads a response's body; a status other than success becomes the node's error message.
fn complete(endpoint: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Answer> {
    if !response.status().is_success() {
        return Err(failure(endpoint, response));
    }
    let body = response
        .body_mut()
        .with_config()
        .read_to_vec()
        .map_err(|e| CtlError::BadAnswer {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    Ok(Answer {
        endpoint: endpoint.to_string(),
        body,
    })
}

/// The error a node's unsuccessful answer carries, in the words of its JSON `error` field.
fn failure(endpoint: &str, mut response: ureq::http::Response<ureq::Body>) -> CtlError {
    let status = response.status();
    let body = response.body_mut().read_to_vec().unwrap_or_default();
    let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = match (doc["error"].as_str(), status.as_u16()) {
        (Some("precondition failed"), 412) => {
            let current = &doc["current"];
            let current = match (current["value"].as_str(), current["encoding"].as_str()) {
                (Some(value), Some("base64")) => format!("{value} (base64)"),
                (Some(value), _) => format!("{value:?}"),
                (None, _) => "absent".to_string(),
            };
            format!("precondition failed: the current value is {current}")
        }
        (Some(error), _) => error.to_string(),
        (None, _) => format!("{endpoint} answered {status}"),
    };
    CtlError::Refused(message)
}
