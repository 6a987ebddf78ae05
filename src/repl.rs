//! The interactive prompt: `put`, `get`, `delete`, `status`, `help`, `exit`.
//!
//! Lines come from rustyline on a terminal, or raw from stdin when it is a pipe or file (tests,
//! scripts), so keys and values may be any bytes except newline. Each command runs to completion
//! before the next line is read; answers go to stdout, errors to stderr.

use std::io;
use std::io::BufRead;
use std::io::IsTerminal;
use std::io::Write;
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::api;
use crate::cli::split_host_port;
use crate::node::Node;
use crate::types::NodeId;

/// The help text, printed at start-up, on `help`, and after invalid input.
pub const USAGE: &str = "\
Usage - type one of:
  put KEY VALUE     set KEY to VALUE (the rest of the line) through Raft, from any node
  get KEY           linearizable read of KEY, from any node
  delete KEY        delete KEY through Raft
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
    },
    Delete {
        key: Vec<u8>,
    },
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
        (b"get", Some(key)) if value.is_empty() => Ok(ReplCommand::Get { key: key.to_vec() }),
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
        (b"members", None) => Ok(ReplCommand::Members),
        (b"snapshot", None) => Ok(ReplCommand::Snapshot),
        (b"leader", None) => Ok(ReplCommand::Leader),
        (b"status", None) => Ok(ReplCommand::Status),
        (b"help", None) => Ok(ReplCommand::Help),
        (b"exit", None) => Ok(ReplCommand::Exit),
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
        run_piped(&node, &runtime)
    }
}

fn run_terminal(node: &Node, runtime: &Handle) -> ReplEnd {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("error: cannot start the line editor ({e}); reading plain lines instead");
            return run_piped(node, runtime);
        }
    };
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                if execute_line(node, runtime, line.as_bytes()) == Some(ReplEnd::Shutdown) {
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

fn run_piped(node: &Node, runtime: &Handle) -> ReplEnd {
    let mut input = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return ReplEnd::InputClosed,
            Ok(_) => {
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                if execute_line(node, runtime, line) == Some(ReplEnd::Shutdown) {
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

/// Executes one line, printing its outcome. Returns `Some(Shutdown)` for `exit`.
fn execute_line(node: &Node, runtime: &Handle, line: &[u8]) -> Option<ReplEnd> {
    let command = match parse(line) {
        Ok(command) => command,
        Err(InvalidInput) => {
            eprintln!("invalid input\n{USAGE}");
            return None;
        }
    };
    let mut out = io::stdout().lock();
    let printed = match command {
        ReplCommand::Nothing => Ok(()),
        ReplCommand::Exit => return Some(ReplEnd::Shutdown),
        ReplCommand::Help => writeln!(out, "{USAGE}"),
        ReplCommand::Status => writeln!(out, "{}", status_line(node)),
        ReplCommand::Members => node.members().iter().try_for_each(|m| {
            let role = if m.voter { "voter" } else { "learner" };
            let leader = if m.leader { ", leader" } else { "" };
            writeln!(out, "member {}: {} ({role}{leader})", m.id, m.raft_addr)
        }),
        ReplCommand::Snapshot => match runtime.block_on(node.snapshot()) {
            Ok(index) => writeln!(out, "snapshot captured at index {index}"),
            Err(e) => report(e),
        },
        ReplCommand::Leader => match node.leader() {
            Some((id, member)) => writeln!(out, "leader: {id} {}", member.raft_addr),
            None => writeln!(out, "leader: unknown (no leader elected yet)"),
        },
        ReplCommand::Add { addr, id } => {
            membership_outcome(&mut out, runtime.block_on(node.add_member(id, addr)))
        }
        ReplCommand::Remove { id } => {
            membership_outcome(&mut out, runtime.block_on(node.remove_member(id)))
        }
        ReplCommand::Put { key, value } => {
            let put = api::PutRequest {
                key,
                value,
                ..api::PutRequest::default()
            };
            match runtime.block_on(node.put(put)) {
                Ok(_) => writeln!(out, "OK"),
                Err(e) => report(e),
            }
        }
        ReplCommand::Delete { key } => {
            let delete = api::DeleteRangeRequest {
                key,
                ..api::DeleteRangeRequest::default()
            };
            match runtime.block_on(node.delete_range(delete)) {
                Ok(_) => writeln!(out, "OK"),
                Err(e) => report(e),
            }
        }
        ReplCommand::Get { key } => match runtime.block_on(node.get(&key)) {
            Ok(Some(value)) => {
                let mut answer = b"query key: ".to_vec();
                answer.extend_from_slice(&key);
                answer.extend_from_slice(b", result: ");
                answer.extend_from_slice(&value);
                answer.push(b'\n');
                out.write_all(&answer)
            }
            Ok(None) => {
                let mut answer = b"query key: ".to_vec();
                answer.extend_from_slice(&key);
                answer.extend_from_slice(b", not found\n");
                out.write_all(&answer)
            }
            Err(e) => report(e),
        },
    };
    let _ = printed.and_then(|()| out.flush());
    None
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
                key: b"key".to_vec()
            })
        );
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
