//! The interactive prompt: `put`, `get`, `delete`, `watch`, `status`, `help`, `exit`.
//!
//! Lines come from rustyline on a terminal, or raw from stdin when it is a pipe or file (tests,
//! scripts), so keys and values may be any bytes except newline. Each command runs to completion
//! before the next line is read; answers go to stdout, errors to stderr.
//!
//! A watch prints each change as this node applies it, on a thread of its own, while the prompt
//! stays usable: on a terminal through rustyline's external printer, which prints above the line
//! being typed and redraws it; otherwise straight to stdout, one whole line at a time.

use std::io;
use std::io::BufRead;
use std::io::IsTerminal;
use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::api;
use crate::cli::split_host_port;
use crate::locks;
use crate::node::Caller;
use crate::node::Node;
use crate::node::WatchStream;
use crate::types::NodeId;

/// The help text, printed at start-up, on `help`, and after invalid input.
pub const USAGE: &str = "\
Usage - type one of:
  put KEY VALUE     set KEY to VALUE (the rest of the line) through Raft, from any node
  get KEY           linearizable read of KEY, from any node
  get KEY --rev R   KEY as it was at revision R (while the history still holds it)
  delete KEY        delete KEY through Raft
  watch [PREFIX]    print every change to the keys starting with PREFIX (every key without
                    one) as this node applies it; a new watch replaces the current one
  unwatch           stop the watch
  add ADDR ID       add node ID (raft address ADDR) to the cluster; then start it with -join
  remove ID         remove node ID from the cluster
  members           list the members: id, raft address, voter or learner, leader
  leader            show the current leader
  status            this node's Raft state, leader and log indexes
  snapshot          take a snapshot now (lets the log be compacted) and print its index
  help              show this text
  exit              shut this node down (Ctrl-D on a terminal does the same)";

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplCommand {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
        /// The revision to read at; `None` for the latest.
        revision: Option<i64>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Watch the keys starting with `prefix` (every key when it is empty).
    Watch {
        prefix: Vec<u8>,
    },
    Unwatch,
    Add {
        addr: String,
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    Members,
    Leader,
    Snapshot,
    Status,
    Help,
    Exit,
    /// A blank line: nothing to do.
    Nothing,
}

/// The line does not form a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput;

/// Parses one line (without its newline). The command word is case-insensitive; a value is the
/// rest of the line after the key and the whitespace that follows it, so it may contain spaces.
pub fn parse(line: &[u8]) -> Result<ReplCommand, InvalidInput> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (word, rest) = next_token(line);
    let Some(word) = word else {
        return Ok(ReplCommand::Nothing);
    };
    let word = word.to_ascii_lowercase();
    let (key, after_key) = next_token(rest);
    let value = trim_start(after_key);
    match (word.as_slice(), key) {
        (b"put", Some(key)) if !value.is_empty() => Ok(ReplCommand::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }),
        (b"get", Some(key)) => Ok(ReplCommand::Get {
            key: key.to_vec(),
            revision: parse_revision_option(value)?,
        }),
        (b"delete", Some(key)) if value.is_empty() => Ok(ReplCommand::Delete { key: key.to_vec() }),
        (b"add", Some(addr)) => {
            let (id, rest) = next_token(after_key);
            let addr = std::str::from_utf8(addr).map_err(|_| InvalidInput)?;
            split_host_port(addr).map_err(|_| InvalidInput)?;
            match (id.map(parse_id), trim_start(rest).is_empty()) {
                (Some(Ok(id)), true) => Ok(ReplCommand::Add {
                    addr: addr.to_string(),
                    id,
                }),
                _ => Err(InvalidInput),
            }
        }
        (b"remove", Some(id)) if value.is_empty() => Ok(ReplCommand::Remove { id: parse_id(id)? }),
        (b"watch", prefix) if value.is_empty() => Ok(ReplCommand::Watch {
            prefix: prefix.unwrap_or_default().to_vec(),
        }),
        (b"unwatch", None) => Ok(ReplCommand::Unwatch),
        (b"members", None) => Ok(ReplCommand::Members),
        (b"snapshot", None) => Ok(ReplCommand::Snapshot),
        (b"leader", None) => Ok(ReplCommand::Leader),
        (b"status", None) => Ok(ReplCommand::Status),
        (b"help", None) => Ok(ReplCommand::Help),
        (b"exit", None) => Ok(ReplCommand::Exit),
        _ => Err(InvalidInput),
    }
}

/// What may follow a `get`'s key: nothing, or `--rev R` with R a revision (1 or more).
fn parse_revision_option(rest: &[u8]) -> Result<Option<i64>, InvalidInput> {
    let (flag, rest) = next_token(rest);
    let Some(flag) = flag else {
        return Ok(None);
    };
    let (revision, rest) = next_token(rest);
    let revision = revision
        .and_then(|token| std::str::from_utf8(token).ok())
        .and_then(|token| token.parse::<i64>().ok());
    match (flag, revision, next_token(rest).0) {
        (b"--rev", Some(revision), None) if revision > 0 => Ok(Some(revision)),
        _ => Err(InvalidInput),
    }
}

fn parse_id(token: &[u8]) -> Result<NodeId, InvalidInput> {
    std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<NodeId>().ok())
        .ok_or(InvalidInput)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The first whitespace-separated token and what follows it.
fn next_token(bytes: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let bytes = trim_start(bytes);
    if bytes.is_empty() {
        return (None, bytes);
    }
    let end = bytes
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    (Some(&bytes[..end]), &bytes[end..])
}

/// Why the REPL stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplEnd {
    /// The user asked to stop the node (`exit`, Ctrl-D or Ctrl-C at a terminal).
    Shutdown,
    /// Piped input ran out; the node keeps serving until it is signalled.
    InputClosed,
}

/// Reads and executes commands until `exit` or the end of input. Blocking: run it on its own
/// thread; `runtime` executes each command on the node's async runtime.
pub fn run(node: Arc<Node>, runtime: Handle) -> ReplEnd {
    if io::stdin().is_terminal() {
        run_terminal(&node, &runtime)
    } else {
        run_piped(&mut Session::new(&node, &runtime, WatchOutput::Stdout))
    }
}

fn run_terminal(node: &Node, runtime: &Handle) -> ReplEnd {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("error: cannot start the line editor ({e}); reading plain lines instead");
            return run_piped(&mut Session::new(node, runtime, WatchOutput::Stdout));
        }
    };
    let output = match editor.create_external_printer() {
        Ok(printer) => WatchOutput::Terminal(Arc::new(Mutex::new(Box::new(printer)))),
        Err(_) => WatchOutput::Stdout,
    };
    let mut session = Session::new(node, runtime, output);
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                if session.execute_line(line.as_bytes()) == Some(ReplEnd::Shutdown) {
                    return ReplEnd::Shutdown;
                }
            }
            Err(
                rustyline::error::ReadlineError::Eof | rustyline::error::ReadlineError::Interrupted,
            ) => return ReplEnd::Shutdown,
            Err(e) => {
                eprintln!("error: reading input failed: {e}");
                return ReplEnd::InputClosed;
            }
        }
    }
}

fn run_piped(session: &mut Session<'_>) -> ReplEnd {
    let mut input = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return ReplEnd::InputClosed,
            Ok(_) => {
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                if session.execute_line(line) == Some(ReplEnd::Shutdown) {
                    return ReplEnd::Shutdown;
                }
            }
            Err(e) => {
                eprintln!("error: reading input failed: {e}");
                return ReplEnd::InputClosed;
            }
        }
    }
}

/// Where a watch prints its lines.
#[derive(Clone)]
enum WatchOutput {
    /// Straight to stdout, a whole line per write, so a line never mixes with a command's answer.
    Stdout,
    /// Through rustyline, which prints above the prompt and redraws the line being typed.
    Terminal(Arc<Mutex<Box<dyn rustyline::ExternalPrinter + Send>>>),
}

impl WatchOutput {
    /// Prints `line`, which ends with a newline.
    fn print(&self, line: &[u8]) {
        match self {
            WatchOutput::Stdout => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(line).and_then(|()| out.flush());
            }
            WatchOutput::Terminal(printer) => {
                let text = String::from_utf8_lossy(line).into_owned();
                let _ = locks::lock(printer).print(text);
            }
        }
    }
}

/// A running watch: a thread that prints its events. Dropping it stops the watch and waits for
/// the thread, so no line of it appears after the prompt said it stopped.
struct ActiveWatch {
    stop: Option<oneshot::Sender<()>>,
    printer: Option<thread::JoinHandle<()>>,
}

impl ActiveWatch {
    /// Prints the responses of `stream` on a new thread until it ends or the watch is dropped.
    /// A thread rather than a task, because rustyline's printer may block while the prompt
    /// redraws, and the runtime's threads must never block.
    fn start(runtime: &Handle, stream: WatchStream, output: WatchOutput) -> io::Result<Self> {
        let (stop, stopped) = oneshot::channel();
        let runtime = runtime.clone();
        let printer = thread::Builder::new()
            .name("repl-watch".into())
            .spawn(move || print_watch(&runtime, stream, stopped, &output))?;
        Ok(ActiveWatch {
            stop: Some(stop),
            printer: Some(printer),
        })
    }
}

impl Drop for ActiveWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(printer) = self.printer.take() {
            let _ = printer.join();
        }
    }
}

/// Prints each event of `stream` as one line until the watch ends or `stop` fires.
fn print_watch(
    runtime: &Handle,
    mut stream: WatchStream,
    mut stop: oneshot::Receiver<()>,
    output: &WatchOutput,
) {
    loop {
        let next = runtime.block_on(async {
            tokio::select! {
                response = stream.next() => response,
                _ = &mut stop => None,
            }
        });
        let Some(response) = next else {
            return;
        };
        for event in &response.events {
            output.print(&event_line(event));
        }
        if response.canceled {
            output.print(format!("watch: ended: {}\n", response.cancel_reason).as_bytes());
            return;
        }
    }
}

/// `watch: PUT key = value (revision N)` or `watch: DELETE key (revision N)`, with a newline.
fn event_line(event: &api::Event) -> Vec<u8> {
    let mut line = b"watch: ".to_vec();
    match event.kind {
        api::EventKind::Put => {
            line.extend_from_slice(b"PUT ");
            line.extend_from_slice(&event.kv.key);
            line.extend_from_slice(b" = ");
            line.extend_from_slice(&event.kv.value);
        }
        api::EventKind::Delete => {
            line.extend_from_slice(b"DELETE ");
            line.extend_from_slice(&event.kv.key);
        }
    }
    line.extend_from_slice(format!(" (revision {})\n", event.kv.mod_revision).as_bytes());
    line
}

/// What the prompt keeps from one line to the next: the node, and the watch it runs.
struct Session<'a> {
    node: &'a Node,
    runtime: &'a Handle,
    output: WatchOutput,
    watch: Option<ActiveWatch>,
}

impl<'a> Session<'a> {
    fn new(node: &'a Node, runtime: &'a Handle, output: WatchOutput) -> Self {
        Session {
            node,
            runtime,
            output,
            watch: None,
        }
    }

    /// Executes one line, printing its outcome. Returns `Some(Shutdown)` for `exit`.
    fn execute_line(&mut self, line: &[u8]) -> Option<ReplEnd> {
        match parse(line) {
            Ok(ReplCommand::Exit) => return Some(ReplEnd::Shutdown),
            Ok(ReplCommand::Watch { prefix }) => self.start_watch(prefix),
            Ok(ReplCommand::Unwatch) => self.stop_watch(),
            Ok(command) => execute(self.node, self.runtime, command),
            Err(InvalidInput) => eprintln!("invalid input\n{USAGE}"),
        }
        None
    }

    /// Ends the watch, if any; only then takes stdout, which the watch's thread may be waiting
    /// for to print its last line.
    fn stop_watch(&mut self) {
        let answer = match self.watch.take() {
            Some(watch) => {
                drop(watch);
                "watch stopped"
            }
            None => "no watch to stop",
        };
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{answer}").and_then(|()| out.flush());
    }

    /// Replaces the current watch with one of the keys starting with `prefix`, from the next
    /// revision on, and says from which revision it reports.
    fn start_watch(&mut self, prefix: Vec<u8>) {
        drop(self.watch.take());
        let request = api::WatchRequest {
            range_end: api::prefix_end(&prefix),
            key: prefix,
            ..api::WatchRequest::default()
        };
        let mut answer = match &request.key[..] {
            [] => b"watching every key".to_vec(),
            prefix => [&b"watching keys starting with "[..], prefix].concat(),
        };
        // Taken first, so that the watch's first line cannot come before this answer.
        let mut out = io::stdout().lock();
        // Inside the runtime: the watch runs as a task of the node's.
        let started = self.runtime.block_on(async {
            let mut stream = self.node.watch(&Caller::Operator, request)?;
            let created = stream
                .next()
                .await
                .ok_or(crate::error::Error::ShuttingDown)?;
            Ok::<_, crate::error::Error>((stream, created.header.revision + 1))
        });
        let started = started.and_then(|(stream, from)| {
            let watch = ActiveWatch::start(self.runtime, stream, self.output.clone())?;
            Ok((watch, from))
        });
        match started {
            Ok((watch, from)) => {
                self.watch = Some(watch);
                answer.extend_from_slice(format!(" from revision {from}\n").as_bytes());
                let _ = out.write_all(&answer).and_then(|()| out.flush());
            }
            Err(e) => {
                let _ = report(e);
            }
        }
    }
}

/// Executes a command that needs nothing from the session, printing its outcome.
fn execute(node: &Node, runtime: &Handle, command: ReplCommand) {
    let mut out = io::stdout().lock();
    let printed = match command {
        // What the session itself does.
        ReplCommand::Nothing
        | ReplCommand::Exit
        | ReplCommand::Watch { .. }
        | ReplCommand::Unwatch => Ok(()),
        ReplCommand::Help => writeln!(out, "{USAGE}"),
        ReplCommand::Status => writeln!(out, "{}", status_line(node)),
        ReplCommand::Members => node.members().iter().try_for_each(|m| {
            let role = if m.voter { "voter" } else { "learner" };
            let leader = if m.leader { ", leader" } else { "" };
            writeln!(out, "member {}: {} ({role}{leader})", m.id, m.raft_addr)
        }),
        ReplCommand::Snapshot => match runtime.block_on(node.snapshot(&Caller::Operator)) {
            Ok(index) => writeln!(out, "snapshot captured at index {index}"),
            Err(e) => report(e),
        },
        ReplCommand::Leader => match node.leader() {
            Some((id, member)) => writeln!(out, "leader: {id} {}", member.raft_addr),
            None => writeln!(out, "leader: unknown (no leader elected yet)"),
        },
        ReplCommand::Add { addr, id } => membership_outcome(
            &mut out,
            runtime.block_on(node.add_member(&Caller::Operator, id, addr)),
        ),
        ReplCommand::Remove { id } => membership_outcome(
            &mut out,
            runtime.block_on(node.remove_member(&Caller::Operator, id)),
        ),
        ReplCommand::Put { key, value } => {
            let put = api::PutRequest {
                key,
                value,
                ..api::PutRequest::default()
            };
            match runtime.block_on(node.put(&Caller::Operator, put)) {
                Ok(_) => writeln!(out, "OK"),
                Err(e) => report(e),
            }
        }
        ReplCommand::Delete { key } => {
            let delete = api::DeleteRangeRequest {
                key,
                ..api::DeleteRangeRequest::default()
            };
            match runtime.block_on(node.delete_range(&Caller::Operator, delete)) {
                Ok(_) => writeln!(out, "OK"),
                Err(e) => report(e),
            }
        }
        ReplCommand::Get { key, revision } => match runtime.block_on(read(node, &key, revision)) {
            Ok(value) => out.write_all(&query_answer(&key, value.as_deref())),
            Err(e) => report(e),
        },
    };
    let _ = printed.and_then(|()| out.flush());
}

/// `key`'s value, at `revision` or the latest (linearizable either way).
async fn read(
    node: &Node,
    key: &[u8],
    revision: Option<i64>,
) -> crate::error::Result<Option<Vec<u8>>> {
    let Some(revision) = revision else {
        return node.get(&Caller::Operator, key).await;
    };
    let request = api::RangeRequest {
        key: key.to_vec(),
        revision,
        ..api::RangeRequest::default()
    };
    let response = node.range(&Caller::Operator, request, usize::MAX).await?;
    Ok(response.kvs.into_iter().next().map(|kv| kv.value))
}

/// `query key: KEY, result: VALUE` or `query key: KEY, not found`, with a newline.
fn query_answer(key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut answer = b"query key: ".to_vec();
    answer.extend_from_slice(key);
    match value {
        Some(value) => {
            answer.extend_from_slice(b", result: ");
            answer.extend_from_slice(value);
        }
        None => answer.extend_from_slice(b", not found"),
    }
    answer.push(b'\n');
    answer
}

/// Prints a membership change's outcome in the words of the original example.
fn membership_outcome(out: &mut impl Write, outcome: crate::error::Result<()>) -> io::Result<()> {
    match outcome {
        Ok(()) => writeln!(out, "membership change completed successfully"),
        Err(e) => {
            eprintln!("membership change failed, {e}");
            Ok(())
        }
    }
}

fn report(error: crate::error::Error) -> io::Result<()> {
    eprintln!("error: {error}");
    Ok(())
}

/// `status: id=1 state=Leader leader=1 term=3 ...`, one line of key=value pairs, `-` for none.
fn status_line(node: &Node) -> String {
    let s = node.status();
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    format!(
        "status: id={} state={} leader={} term={} last_log={} committed={} applied={} applied_this_run={} snapshot={} purged={}",
        s.id,
        s.state,
        opt(s.leader),
        s.term,
        opt(s.last_log_index),
        opt(s.committed),
        opt(s.last_applied),
        s.applied_this_run,
        opt(s.last_snapshot_index),
        opt(s.purged),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn put_keeps_the_rest_of_the_line_as_the_value() {
        assert_eq!(
            parse(b"put k hello  world "),
            Ok(ReplCommand::Put {
                key: b"k".to_vec(),
                value: b"hello  world ".to_vec()
            })
        );
        assert_eq!(
            parse(b"PUT k \xff\x00"),
            Ok(ReplCommand::Put {
                key: b"k".to_vec(),
                value: b"\xff\x00".to_vec()
            })
        );
    }

    #[test]
    fn membership_commands_parse_case_insensitively() {
        assert_eq!(
            parse(b"ADD localhost:63100 4"),
            Ok(ReplCommand::Add {
                addr: "localhost:63100".into(),
                id: 4
            })
        );
        assert_eq!(parse(b"Remove 4"), Ok(ReplCommand::Remove { id: 4 }));
        assert_eq!(parse(b"members"), Ok(ReplCommand::Members));
        assert_eq!(parse(b"LEADER"), Ok(ReplCommand::Leader));
    }

    #[test]
    fn malformed_lines_are_invalid() {
        for line in [
            &b"put"[..],
            b"put onlykey",
            b"get",
            b"get a b",
            b"delete",
            b"frobnicate x",
            b"status now",
            b"add 4",
            b"add localhost:63100 four",
            b"add nonsense 4",
            b"add localhost:63100",
            b"remove",
            b"remove x",
            b"add a:1 4 5",
        ] {
            assert_eq!(
                parse(line),
                Err(InvalidInput),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(parse(b"   "), Ok(ReplCommand::Nothing));
        assert_eq!(
            parse(b"Get key\r"),
            Ok(ReplCommand::Get {
                key: b"key".to_vec(),
                revision: None
            })
        );
    }

    #[test]
    fn watch_takes_an_optional_prefix_and_get_an_optional_revision() {
        assert_eq!(
            parse(b"watch greet/"),
            Ok(ReplCommand::Watch {
                prefix: b"greet/".to_vec()
            })
        );
        assert_eq!(
            parse(b"WATCH"),
            Ok(ReplCommand::Watch { prefix: Vec::new() })
        );
        assert_eq!(parse(b"unwatch"), Ok(ReplCommand::Unwatch));
        assert_eq!(
            parse(b"get k --rev 7"),
            Ok(ReplCommand::Get {
                key: b"k".to_vec(),
                revision: Some(7)
            })
        );
        for line in [
            &b"watch a b"[..],
            b"unwatch a",
            b"get k --rev",
            b"get k --rev 0",
            b"get k --rev -1",
            b"get k --rev x",
            b"get k --rev 7 8",
            b"get k --revision 7",
        ] {
            assert_eq!(
                parse(line),
                Err(InvalidInput),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest! {
        /// Whatever bytes arrive, parsing answers (never panics), and a put's key and value are
        /// exactly what was typed.
        #[test]
        fn any_line_parses_or_is_invalid(line in proptest::collection::vec(any::<u8>(), 0..64)) {
            let line: Vec<u8> = line.into_iter().filter(|b| *b != b'\n').collect();
            let _ = parse(&line);
        }

        #[test]
        fn put_round_trips_key_and_value(
            key in "[a-zA-Z0-9_/-]{1,16}",
            value in proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..32),
        ) {
            prop_assume!(!value[0].is_ascii_whitespace() && value.last() != Some(&b'\r'));
            let mut line = format!("put {key} ").into_bytes();
            line.extend_from_slice(&value);
            prop_assert_eq!(parse(&line), Ok(ReplCommand::Put { key: key.into_bytes(), value }));
        }
    }
}
