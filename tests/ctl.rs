//! `ondisk ctl` and `ondisk restore`, run as separate processes against real clusters: every ctl
//! command, a down endpoint in the list, `--prev-index` refusals, leader transfer, a backup
//! taken under write load restored into a new cluster that serves it, accepts writes and grows,
//! reads at old revisions, transactions from stdin, leases, a watch outliving its node, and the
//! lock and election recipes.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::http::http;
use common::lossy as text;
use common::succeeded as ok;
use common::Cluster;
use common::Node;
use common::NodeSpec;
use common::BIN;

/// How long a change may take to show everywhere. Generous: other suites may share the CPUs.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);
/// The ctl's own limit on one request; above the nodes' 2 s so theirs is what fails first.
const CTL_TIMEOUT: &str = "20s";

/// Runs `ondisk ARGS`, feeding `stdin`, and returns what it did. Every ctl request is bounded by
/// [`CTL_TIMEOUT`], so the process always ends.
fn ondisk(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ondisk");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).expect("write stdin");
    }
    child.wait_with_output().expect("wait for ondisk")
}

/// Runs `ondisk ctl --endpoints ENDPOINTS ARGS`.
fn ctl(endpoints: &str, args: &[&str]) -> Output {
    ctl_with_stdin(endpoints, args, b"")
}

fn ctl_with_stdin(endpoints: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut all = vec!["ctl", "--endpoints", endpoints, "--timeout", CTL_TIMEOUT];
    all.extend_from_slice(args);
    ondisk(&all, stdin)
}

/// Asserts a failure reported as one `error: ` line containing `reason`.
fn fails(output: Output, reason: &str, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{what} should fail: stdout {:?} stderr {:?}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains(reason),
        "{what}: expected one error line containing {reason:?}, got {stderr:?}"
    );
}

fn json(output: Output, what: &str) -> serde_json::Value {
    let stdout = ok(output, what);
    serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&stdout)))
}

/// An address nothing listens on: a port that was free a moment ago.
fn down_endpoint() -> SocketAddr {
    common::free_addr()
}

fn endpoint(cluster: &Cluster, id: usize) -> String {
    cluster.http_addr(id).to_string()
}

/// Ids and roles (true for a voter) as `ctl members --json` lists them.
fn roles(endpoints: &str) -> Option<BTreeMap<u64, bool>> {
    let output = ctl(endpoints, &["--json", "members"]);
    if !output.status.success() {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    doc["members"]
        .as_array()?
        .iter()
        .map(|m| Some((m["id"].as_u64()?, m["voter"].as_bool()?)))
        .collect()
}

fn membership_index(endpoints: &str) -> u64 {
    json(ctl(endpoints, &["--json", "members"]), "members")["membership_index"]
        .as_u64()
        .expect("membership_index")
}

/// Every pair on the node at `http`, read locally, as the scan API returns them.
fn digest(http_addr: &str) -> serde_json::Value {
    serde_json::Value::Array(common::http::scan_all(&format!(
        "http://{http_addr}/v1/kv/?prefix=&limit=100000&consistency=stale"
    )))
}

fn status_field(http_addr: &str, field: &str) -> u64 {
    let answer = http("GET", &format!("http://{http_addr}/v1/status"), b"");
    answer.json()[field].as_u64().unwrap_or(0)
}

#[test]
fn data_commands_work_through_the_first_reachable_endpoint() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let endpoints = format!("{},{}", down_endpoint(), endpoint(&cluster, 2));
    let e = endpoints.as_str();

    assert_eq!(ok(ctl(e, &["put", "greeting", "hello"]), "put"), b"OK\n");
    assert_eq!(ok(ctl(e, &["get", "greeting"]), "get"), b"hello");
    let binary = b"\x00\xff\xfe binary\n";
    ok(
        ctl_with_stdin(e, &["put", "blob", "-"], binary),
        "put from stdin",
    );
    assert_eq!(ok(ctl(e, &["get", "blob"]), "get binary"), binary);
    let doc = json(ctl(e, &["--json", "get", "blob"]), "get --json");
    assert!(doc["value"]["base64"].is_string(), "{doc}");
    assert_eq!(doc["version"], 1, "{doc}");

    // A stale read on another node sees the write once that node has applied it.
    let other = endpoint(&cluster, 3);
    common::wait_until(SETTLE_TIMEOUT, "node 3 applies the write", || {
        ctl(&other, &["get", "--stale", "greeting"]).stdout == b"hello"
    });

    ok(ctl(e, &["cas", "greeting", "hello", "bonjour"]), "cas");
    fails(
        ctl(e, &["cas", "greeting", "hello", "hola"]),
        "precondition failed: the current value is \"bonjour\"",
        "cas with a stale expectation",
    );
    assert_eq!(
        ok(ctl(e, &["get", "greeting"]), "get after cas"),
        b"bonjour"
    );

    for i in 0..5 {
        ok(
            ctl(e, &["put", &format!("scan/{i}"), &format!("v{i}")]),
            "put",
        );
    }
    let listed = text(&ok(ctl(e, &["scan", "scan/", "--limit", "3"]), "scan"));
    assert_eq!(listed, "scan/0\tv0\nscan/1\tv1\nscan/2\tv2\n");
    let doc = json(ctl(e, &["--json", "scan", "scan/"]), "scan --json");
    assert_eq!(doc["count"], 5);
    // A range larger than a page (about 4 MiB) is listed whole, page by page.
    let big = vec![b'b'; 1 << 20];
    for i in 0..6 {
        ok(
            ctl_with_stdin(e, &["put", &format!("big/{i}"), "-"], &big),
            "put a 1 MiB value",
        );
    }
    let listed = ok(ctl(e, &["scan", "big/"]), "scan over several pages");
    let keys: Vec<String> = listed
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| text(line.split(|b| *b == b'\t').next().unwrap_or(b"")))
        .collect();
    assert_eq!(keys, (0..6).map(|i| format!("big/{i}")).collect::<Vec<_>>());
    let pages = ok(ctl(e, &["--json", "scan", "big/"]), "scan --json");
    assert!(
        pages
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            > 1,
        "--json prints one page per line"
    );

    ok(ctl(e, &["delete", "greeting"]), "delete");
    fails(ctl(e, &["get", "greeting"]), "key not found", "get deleted");

    // A key or value starting with a dash goes after `--`.
    ok(ctl(e, &["put", "--", "-dash", "-value"]), "put after --");
    assert_eq!(
        ok(ctl(e, &["get", "--", "-dash"]), "get after --"),
        b"-value"
    );

    let all_down = format!("{},{}", down_endpoint(), down_endpoint());
    fails(
        ctl(&all_down, &["get", "x"]),
        "no endpoint is reachable",
        "every endpoint down",
    );
}

#[test]
fn cluster_commands_report_members_leader_status_and_indexes() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let endpoints = format!("{},{}", down_endpoint(), endpoint(&cluster, 1));
    let e = endpoints.as_str();
    common::wait_until(SETTLE_TIMEOUT, "all three are voters", || {
        roles(e) == Some(BTreeMap::from([(1, true), (2, true), (3, true)]))
    });
    // `status` finds the nodes through the HTTP addresses each records in the membership.
    common::wait_until(
        SETTLE_TIMEOUT,
        "every member's HTTP address is known",
        || {
            let doc = json(ctl(e, &["--json", "members"]), "members");
            doc["members"].as_array().is_some_and(|members| {
                members
                    .iter()
                    .all(|m| m["http_addr"].as_str().is_some_and(|a| !a.is_empty()))
            })
        },
    );

    let members = text(&ok(ctl(e, &["members"]), "members"));
    assert!(members.starts_with("membership index: "), "{members}");
    assert!(members.contains("ROLE"), "{members}");
    assert_eq!(members.matches("voter").count(), 3, "{members}");

    let doc = json(ctl(e, &["--json", "leader"]), "leader");
    assert_eq!(doc["id"].as_u64(), Some(leader as u64));
    let line = text(&ok(ctl(e, &["leader"]), "leader"));
    assert!(line.starts_with(&format!("{leader} ")), "{line}");

    ok(ctl(e, &["put", "k", "v"]), "put");
    let table = text(&ok(ctl(e, &["status"]), "status"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("LAG"), "{table}");
    // The down endpoint, then one row per node (found through the membership).
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[1].contains("unreachable"), "{table}");
    assert_eq!(table.matches("Leader").count(), 1, "{table}");
    assert_eq!(table.matches("Follower").count(), 2, "{table}");

    let applied: u64 = text(&ok(ctl(e, &["applied-index"]), "applied-index"))
        .trim()
        .parse()
        .expect("a number");
    assert!(applied >= 1);
    let doc = json(ctl(e, &["--json", "snapshot"]), "snapshot");
    assert!(doc["index"].as_u64() >= Some(applied), "{doc}");
}

#[test]
fn a_one_node_cluster_grows_with_add_voter_and_prev_index_refuses_a_stale_view() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    ok(ctl(&e, &["put", "before", "joining"]), "put");
    let join = || vec![OsString::from("--join")];
    let two = cluster.launch_node(cluster.next_node_spec(join()));
    let three = cluster.launch_node(cluster.next_node_spec(join()));
    let four = cluster.launch_node(cluster.next_node_spec(join()));

    let stale_index = membership_index(&e);
    let addr2 = cluster.raft_addr(two).to_string();
    ok(
        ctl(
            &e,
            &[
                "add-voter",
                "2",
                &addr2,
                "--prev-index",
                &stale_index.to_string(),
            ],
        ),
        "add-voter 2 at the current membership index",
    );
    let addr3 = cluster.raft_addr(three).to_string();
    fails(
        ctl(
            &e,
            &[
                "add-voter",
                "3",
                &addr3,
                "--prev-index",
                &stale_index.to_string(),
            ],
        ),
        &format!("the membership changed since index {stale_index}"),
        "add-voter 3 with an outdated index",
    );
    assert!(!roles(&e).expect("members").contains_key(&3));
    let current = membership_index(&e).to_string();
    let added = text(&ok(
        ctl(&e, &["add-voter", "3", &addr3, "--prev-index", &current]),
        "add-voter 3 at the current index",
    ));
    assert_eq!(added, "added node 3 as a voter\n");

    // A learner catches up but stays a learner.
    let addr4 = cluster.raft_addr(four).to_string();
    ok(ctl(&e, &["add-learner", "4", &addr4]), "add-learner 4");
    let http4 = endpoint(&cluster, four);
    ok(ctl(&e, &["put", "after", "learner"]), "put");
    common::wait_until(SETTLE_TIMEOUT, "the learner has the data", || {
        ctl(&http4, &["get", "--stale", "after"]).stdout == b"learner"
    });
    assert_eq!(
        roles(&e),
        Some(BTreeMap::from([
            (1, true),
            (2, true),
            (3, true),
            (4, false)
        ]))
    );

    // The choice is replicated: under another leader the learner still stays one, until
    // add-voter asks for its promotion.
    ok(ctl(&e, &["transfer-leader", "2"]), "transfer-leader 2");
    ok(
        ctl(&e, &["put", "under", "two"]),
        "put under the new leader",
    );
    common::wait_until(
        SETTLE_TIMEOUT,
        "the learner has the new leader's data",
        || ctl(&http4, &["get", "--stale", "under"]).stdout == b"two",
    );
    assert_eq!(
        roles(&e).and_then(|roles| roles.get(&4).copied()),
        Some(false),
        "the new leader promoted a learner added to stay one"
    );
    ok(
        ctl(&e, &["add-voter", "4", &addr4]),
        "add-voter 4 promotes the learner",
    );
    assert_eq!(
        roles(&e).and_then(|roles| roles.get(&4).copied()),
        Some(true)
    );
    ok(ctl(&e, &["remove", "4"]), "remove 4");
    cluster.node(four).wait_exit(SETTLE_TIMEOUT);
    common::wait_until(SETTLE_TIMEOUT, "node 4 is gone", || {
        roles(&e) == Some(BTreeMap::from([(1, true), (2, true), (3, true)]))
    });

    // Writes and reads go through any node.
    let via3 = endpoint(&cluster, three);
    ok(ctl(&via3, &["put", "through", "three"]), "put via 3");
    assert_eq!(
        ok(
            ctl(&endpoint(&cluster, two), &["get", "through"]),
            "get via 2"
        ),
        b"three"
    );
    assert_eq!(ok(ctl(&via3, &["get", "before"]), "get"), b"joining");
}

#[test]
fn transfer_leader_moves_leadership_to_the_named_node() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    common::wait_until(SETTLE_TIMEOUT, "all three are voters", || {
        roles(&e) == Some(BTreeMap::from([(1, true), (2, true), (3, true)]))
    });
    ok(ctl(&e, &["put", "k", "v"]), "put");
    for _ in 0..2 {
        let current = cluster.wait_for_leader();
        let target = cluster.followers(current)[0];
        // Asked through a node that is neither the leader nor the target when there is one.
        let via = (1..=3)
            .find(|id| *id != current && *id != target)
            .unwrap_or(1);
        let answer = text(&ok(
            ctl(
                &endpoint(&cluster, via),
                &["transfer-leader", &target.to_string()],
            ),
            "transfer-leader",
        ));
        assert_eq!(answer, format!("node {target} is now the leader\n"));
        cluster.wait_until(SETTLE_TIMEOUT, "every node sees the new leader", |c| {
            c.leader_index() == Some(target)
        });
    }
    fails(
        ctl(&e, &["transfer-leader", "9"]),
        "node 9 is not a voter",
        "transfer to a non-member",
    );
    ok(ctl(&e, &["put", "k", "after"]), "write after the transfers");
    assert_eq!(ok(ctl(&e, &["get", "k"]), "get"), b"after");
}

/// Spec of a node that will run in a NEW cluster under `data_dir`: node `id` of `cluster`.
fn new_cluster_spec(
    id: usize,
    cluster: Vec<SocketAddr>,
    data_dir: &Path,
    extra: &[&str],
) -> NodeSpec {
    NodeSpec {
        id,
        cluster,
        http: common::free_addr(),
        data_dir: data_dir.to_path_buf(),
        extra_args: extra.iter().map(OsString::from).collect(),
    }
}

/// Runs `ondisk restore FILE` into `data_dir` for node 1 of a new single-node cluster: that
/// node's spec, and what the restore printed.
fn restore(file: &str, data_dir: &Path) -> (NodeSpec, String) {
    let first = new_cluster_spec(1, vec![common::free_addr()], data_dir, &[]);
    let mut args: Vec<String> = vec!["restore".into(), file.into()];
    args.extend(
        first
            .args()
            .iter()
            .take(8)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = text(&ok(ondisk(&arg_refs, b""), "restore"));
    (first, printed)
}

fn launch(spec: &NodeSpec) -> Node {
    let mut node = Node::launch(spec);
    if let Err(f) = node.wait_ready(common::STARTUP_TIMEOUT) {
        panic!("node {} did not start: {}", spec.id, f.diagnostics);
    }
    node
}

#[test]
fn a_backup_taken_under_write_load_restores_to_a_new_cluster_that_serves_it_and_grows() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 2);
    let work = tempfile::tempdir().expect("temporary directory");

    // Each writer writes its own keys in sequence, so any consistent state holds, for each
    // writer, exactly a prefix of its keys.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let stop = stop.clone();
            let url = format!("http://{}", cluster.http_addr(w + 1));
            thread::spawn(move || {
                let mut written = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}/{written:06}");
                    let answer = http("PUT", &format!("{url}/v1/kv/{key}"), key.as_bytes());
                    if answer.status == 204 {
                        written += 1;
                    }
                }
                written
            })
        })
        .collect();
    common::wait_until(SETTLE_TIMEOUT, "some writes are applied", || {
        status_field(&e, "last_applied") > 200
    });
    let file = work.path().join("backup.snap");
    let file_arg = file.to_str().expect("UTF-8 path");
    let doc = json(ctl(&e, &["--json", "backup", file_arg]), "backup");
    let index = doc["log_index"].as_u64().expect("log_index");
    assert!(doc["bytes"].as_u64() > Some(0));
    common::wait_until(SETTLE_TIMEOUT, "more writes after the backup", || {
        status_field(&e, "last_applied") > index + 50
    });
    stop.store(true, Ordering::Relaxed);
    let written: Vec<usize> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    assert!(!work.path().join("backup.snap.partial").exists());

    let data_dir = work.path().join("restored");
    let (first, restored) = restore(file_arg, &data_dir);
    assert!(
        restored.contains(&format!("at log index {index} ")),
        "{restored}"
    );

    let _node1 = launch(&first);
    let http1 = first.http.to_string();
    common::wait_until(SETTLE_TIMEOUT, "the restored node leads", || {
        ctl(&http1, &["leader"]).stdout.starts_with(b"1 ")
    });
    assert_eq!(status_field(&http1, "last_snapshot_index"), index);
    assert_eq!(membership_index(&http1), index);

    // Exactly a prefix of each writer's keys, each with its own name as value: the state of the
    // cluster at one log index, the backup's.
    let restored_pairs = digest(&http1);
    let mut counts = [0usize; 3];
    for item in restored_pairs.as_array().expect("items") {
        let key = item["key"].as_str().expect("key");
        assert_eq!(item["value"], key, "value of {key}");
        let (writer, n) = key.split_once('/').expect("writer/n");
        let writer: usize = writer[1..].parse().expect("writer id");
        let n: usize = n.parse().expect("sequence number");
        assert_eq!(n, counts[writer], "writer {writer}'s keys have a gap");
        counts[writer] += 1;
    }
    let total: usize = counts.iter().sum();
    assert!(total > 0 && counts.iter().zip(&written).all(|(c, w)| c <= w));
    let cluster_pairs = digest(&endpoint(&cluster, 2));
    let cluster_items = cluster_pairs.as_array().expect("items");
    assert!(cluster_items.len() > total, "the cluster went on writing");
    for item in restored_pairs.as_array().expect("items") {
        assert!(cluster_items.contains(item), "{item} is not in the cluster");
    }
    drop(cluster);

    // The restored node takes writes, and a node joining it catches up.
    ok(
        ctl(&http1, &["put", "restored", "yes"]),
        "write to the restored node",
    );
    let second = new_cluster_spec(
        2,
        vec![first.raft_addr(), common::free_addr()],
        &data_dir,
        &["--join"],
    );
    let _node2 = launch(&second);
    ok(
        ctl(&http1, &["add-voter", "2", &second.raft_addr().to_string()]),
        "add-voter to the restored cluster",
    );
    let http2 = second.http.to_string();
    ok(
        ctl(&http1, &["put", "joined", "yes"]),
        "write after the join",
    );
    common::wait_until(SETTLE_TIMEOUT, "node 2 holds the restored data", || {
        digest(&http2) == digest(&http1)
    });
    assert_eq!(
        ok(ctl(&http2, &["get", "restored"]), "get via the new node"),
        b"yes"
    );
}

#[test]
fn restore_refuses_a_corrupt_file_and_an_existing_directory_and_leaves_nothing_behind() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    for i in 0..20 {
        ok(ctl(&e, &["put", &format!("k{i}"), "some value"]), "put");
    }
    let work = tempfile::tempdir().expect("temporary directory");
    let good = work.path().join("good.snap");
    ok(
        ctl(&e, &["backup", good.to_str().expect("UTF-8")]),
        "backup",
    );
    let bytes = fs::read(&good).expect("read backup");
    let restore = |file: &Path, data_dir: &Path| {
        ondisk(
            &[
                "restore",
                file.to_str().expect("UTF-8"),
                "-data-dir",
                data_dir.to_str().expect("UTF-8"),
                "-nodeid",
                "1",
                "-cluster",
                "127.0.0.1:1",
            ],
            b"",
        )
    };

    let target = work.path().join("never");
    let flipped = work.path().join("flipped.snap");
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    fs::write(&flipped, &damaged).expect("write");
    fails(
        restore(&flipped, &target),
        "is damaged or not an ondisk backup",
        "a flipped byte",
    );
    let truncated = work.path().join("truncated.snap");
    fs::write(&truncated, &bytes[..bytes.len() - 10]).expect("write");
    fails(
        restore(&truncated, &target),
        "is damaged or not an ondisk backup",
        "a truncated file",
    );
    assert!(!target.exists(), "a failed restore left {target:?} behind");

    let existing = work.path().join("existing");
    fs::create_dir_all(existing.join("node1")).expect("mkdir");
    fs::write(existing.join("node1").join("precious"), b"keep").expect("write");
    fails(
        restore(&good, &existing),
        "already exists",
        "an existing node directory",
    );
    assert_eq!(
        fs::read(existing.join("node1").join("precious")).expect("still there"),
        b"keep"
    );
    assert_eq!(fs::read_dir(&existing).expect("list").count(), 1);

    // A backup into a directory that does not exist fails and leaves no partial file.
    let nowhere = work.path().join("missing").join("b.snap");
    let output = ctl(&e, &["backup", nowhere.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(!work.path().join("missing").exists());

    let fresh = work.path().join("fresh");
    ok(restore(&good, &fresh), "restore of the intact file");
    assert!(fresh.join("node1").join("ONDISK").exists());
}

#[test]
fn every_subcommand_explains_itself_with_h_and_node_flags_still_work() {
    for args in [
        vec!["ctl", "-h"],
        vec!["ctl", "add-voter", "-h"],
        vec!["ctl", "backup", "-h"],
        vec!["ctl", "status", "-h"],
        vec!["restore", "-h"],
        vec!["-h"],
    ] {
        let help = text(&ok(ondisk(&args, b""), &format!("{args:?}")));
        assert!(help.contains("Usage:"), "{args:?}: {help}");
    }
    let help = text(&ondisk(&["ctl", "add-voter", "-h"], b"").stdout);
    assert!(help.contains("--prev-index"), "{help}");
    let help = text(&ondisk(&["restore", "-h"], b"").stdout);
    assert!(help.contains("-data-dir"), "{help}");
    // The node's own help names the subcommands and where their help is.
    for long_or_short in ["-h", "--help"] {
        let help = text(&ondisk(&[long_or_short], b"").stdout);
        for pointer in ["ondisk ctl -h", "ondisk restore -h", "--nodeid"] {
            assert!(help.contains(pointer), "{long_or_short}: {pointer}: {help}");
        }
    }
    fails(
        ondisk(&["-nodeid", "4"], b""),
        "node id must be 1, 2 or 3",
        "a node flag error",
    );
}

/// A ctl command that runs until it is killed (a watch, an election, a held lock), its stdout
/// lines collected as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(endpoints: &str, args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(["ctl", "--endpoints", endpoints, "--timeout", CTL_TIMEOUT])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ondisk ctl");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until `count` lines in all have been printed, and returns them all.
    fn lines(&mut self, count: usize, what: &str) -> &[String] {
        self.until(&format!("{what}: {count} lines"), |seen| {
            seen.len() >= count
        })
    }

    /// Waits until the `--json watch` lines printed so far hold `count` events in all, and
    /// returns the lines: one response may carry several events, so lines are not events.
    fn json_events(&mut self, count: usize, what: &str) -> &[String] {
        self.until(&format!("{what}: {count} events"), |seen| {
            watched_events(seen).len() >= count
        })
    }

    /// Reads lines until `done` holds for all seen so far, and returns them all.
    fn until(&mut self, expected: &str, done: impl Fn(&[String]) -> bool) -> &[String] {
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("{expected} expected, got {:?}", self.seen),
            }
        }
        &self.seen
    }

    /// Lines printed beyond those already returned, after a moment for stragglers.
    fn extra_lines(&mut self, within: Duration) -> Vec<String> {
        let mut extra = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(within) {
            extra.push(line);
        }
        extra
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The revisions `ctl --json get KEY` reports: (create, mod, version).
fn revisions(endpoints: &str, key: &str) -> (i64, i64, i64) {
    let doc = json(ctl(endpoints, &["--json", "get", key]), "get --json");
    let field = |name: &str| {
        doc[name]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} in {doc}"))
    };
    (
        field("create_revision"),
        field("mod_revision"),
        field("version"),
    )
}

#[test]
fn get_and_scan_read_old_revisions_until_compacted() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let e = e.as_str();
    let mut mods = Vec::new();
    for value in ["one", "two", "three"] {
        ok(ctl(e, &["put", "k", value]), "put");
        ok(ctl(e, &["put", &format!("s/{value}"), value]), "put");
        mods.push(revisions(e, "k").1);
    }
    let (created, modified, version) = revisions(e, "k");
    assert_eq!((created, modified, version), (mods[0], mods[2], 3));
    for (rev, value) in mods.iter().zip(["one", "two", "three"]) {
        let read = ok(
            ctl(e, &["get", "k", "--rev", &rev.to_string()]),
            "get --rev",
        );
        assert_eq!(read, value.as_bytes(), "k at revision {rev}");
    }
    // At the second value's revision, only the first s/ key existed.
    let listed = text(&ok(
        ctl(e, &["scan", "s/", "--rev", &mods[1].to_string()]),
        "scan --rev",
    ));
    assert_eq!(listed, "s/one\tone\n");

    let answer = text(&ok(ctl(e, &["compact", &mods[1].to_string()]), "compact"));
    assert_eq!(answer, format!("compacted revision {}\n", mods[1]));
    fails(
        ctl(e, &["get", "k", "--rev", &mods[0].to_string()]),
        "compacted",
        "get below the compacted revision",
    );
    assert_eq!(
        ok(ctl(e, &["get", "k", "--rev", &mods[1].to_string()]), "get"),
        b"two"
    );
}

#[test]
fn txn_reads_etcdctls_form_from_stdin_and_runs_either_branch() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let e = e.as_str();
    let txn =
        b"value(\"job\") = \"idle\"\n\nput job \"running now\"\nget job\n\nput job idle\nget job\n";

    let first = text(&ok(
        ctl_with_stdin(e, &["txn"], txn),
        "txn on an absent key",
    ));
    assert_eq!(first, "FAILURE\n\nOK\n\njob\nidle\n");
    let second = text(&ok(ctl_with_stdin(e, &["txn"], txn), "txn on an idle job"));
    assert_eq!(second, "SUCCESS\n\nOK\n\njob\nrunning now\n");
    let doc = json(
        ctl_with_stdin(
            e,
            &["--json", "txn"],
            b"version(\"job\") = 2\n\ndel job\n\n",
        ),
        "txn --json",
    );
    assert_eq!(doc["succeeded"], true, "{doc}");
    assert_eq!(doc["responses"][0]["delete_range"]["deleted"], 1, "{doc}");
    fails(
        ctl(e, &["get", "job"]),
        "key not found",
        "get after the delete",
    );

    fails(
        ctl_with_stdin(e, &["txn"], b"create(\"a\") = 0\n\nput a\n"),
        "txn input line 3: put takes a KEY and a VALUE",
        "a put without a value",
    );
    fails(
        ctl_with_stdin(e, &["txn"], b"size(\"a\") = 1\n"),
        "txn input line 1: unknown comparison target",
        "an unknown target",
    );
}

#[test]
fn a_revoked_lease_takes_its_keys_and_an_expired_one_too() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let e = e.as_str();
    let granted = text(&ok(ctl(e, &["lease", "grant", "30"]), "lease grant"));
    let id = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no lease id in {granted:?}"))
        .to_string();
    assert!(granted.ends_with("granted with TTL(30s)\n"), "{granted}");
    ok(
        ctl(e, &["put", "leased", "v", "--lease", &id]),
        "put --lease",
    );
    assert_eq!(revisions(e, "leased").2, 1);
    let doc = json(ctl(e, &["--json", "get", "leased"]), "get --json");
    assert_eq!(
        doc["lease"].as_i64().map(|l| l.to_string()),
        Some(id.clone())
    );
    let ttl = text(&ok(ctl(e, &["lease", "ttl", &id, "--keys"]), "lease ttl"));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(30s), remaining("))
            && ttl.ends_with("attached keys([leased])\n"),
        "{ttl}"
    );
    let renewed = text(&ok(
        ctl(e, &["lease", "keep-alive", &id, "--once"]),
        "keep-alive",
    ));
    assert_eq!(renewed, format!("lease {id} keepalived with TTL(30)\n"));
    let listed = text(&ok(ctl(e, &["lease", "list"]), "lease list"));
    assert!(listed.lines().any(|line| line == id), "{listed}");

    ok(ctl(e, &["lease", "revoke", &id]), "lease revoke");
    fails(
        ctl(e, &["get", "leased"]),
        "key not found",
        "a revoked lease's key",
    );
    fails(
        ctl(e, &["lease", "ttl", &id]),
        "not found",
        "ttl of a revoked lease",
    );

    // A lease nobody keeps alive expires, and its key goes with it.
    let doc = json(ctl(e, &["--json", "lease", "grant", "1"]), "lease grant");
    let short = doc["id"].as_i64().expect("id").to_string();
    ok(
        ctl(e, &["put", "brief", "v", "--lease", &short]),
        "put --lease",
    );
    common::wait_until(SETTLE_TIMEOUT, "the unrenewed lease expires", || {
        !ctl(e, &["get", "brief"]).status.success()
    });
    fails(
        ctl(e, &["lease", "keep-alive", &short]),
        "not found",
        "keep-alive of an expired lease",
    );
}

/// (kind, key, value) of every event in `ctl --json watch` lines, checking that revisions only
/// grow.
fn watched_events(lines: &[String]) -> Vec<(String, String, String)> {
    let mut last_revision = 0;
    let mut events = Vec::new();
    for line in lines {
        let doc: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        for event in doc["events"].as_array().into_iter().flatten() {
            let revision = event["kv"]["mod_revision"].as_i64().expect("mod_revision");
            assert!(revision > last_revision, "revisions go back: {lines:?}");
            last_revision = revision;
            let field = |name: &str| event["kv"][name].as_str().unwrap_or("").to_string();
            let kind = event["type"].as_str().unwrap_or("").to_string();
            events.push((kind, field("key"), field("value")));
        }
    }
    events
}

#[test]
fn watch_prints_changes_made_elsewhere_and_survives_its_nodes_death() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let (e1, e2, e3) = (
        endpoint(&cluster, 1),
        endpoint(&cluster, 2),
        endpoint(&cluster, 3),
    );
    let mut watch = Running::start(
        &format!("{e1},{e2}"),
        &["--json", "watch", "w/", "--prefix"],
    );
    let created = watch.lines(1, "the watch starts")[0].clone();
    assert!(created.contains("\"created\":true"), "{created}");

    ok(ctl(&e2, &["put", "w/a", "1"]), "put on node 2");
    ok(ctl(&e3, &["delete", "w/a"]), "delete on node 3");
    ok(ctl(&e3, &["put", "other", "x"]), "put outside the prefix");
    let lines = watch.json_events(2, "two events").to_vec();
    let expected = |n: usize| -> Vec<(String, String, String)> {
        [
            ("PUT", "w/a", "1"),
            ("DELETE", "w/a", ""),
            ("PUT", "w/b", "2"),
            ("PUT", "w/c", "3"),
        ]
        .iter()
        .take(n)
        .map(|(k, key, v)| (k.to_string(), key.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(watched_events(&lines), expected(2));

    // The node the watch reads from dies; the watch goes on at node 2 from where it was.
    cluster.kill(1);
    cluster.wait_for_leader();
    // Create-only writes, so a retry after an answer lost in the failover adds no event.
    for (via, key, value) in [(&e2, "w/b", "2"), (&e3, "w/c", "3")] {
        let txn = format!("create(\"{key}\") = 0\n\nput {key} {value}\n\n");
        common::wait_until(SETTLE_TIMEOUT, "a put after node 1 died", || {
            ctl_with_stdin(via, &["txn"], txn.as_bytes())
                .status
                .success()
        });
    }
    let lines = watch
        .json_events(4, "the events after the failover")
        .to_vec();
    let mut all = lines.clone();
    all.extend(watch.extra_lines(Duration::from_millis(500)));
    let events: Vec<_> = watched_events(&all);
    assert_eq!(events, expected(4), "{all:?}");

    // Text output, replayed from the history.
    let mut replay = Running::start(&e3, &["watch", "w/", "--prefix", "--rev", "1", "--prev-kv"]);
    assert_eq!(
        replay.lines(4, "the replayed events"),
        ["PUT w/a 1", "DELETE w/a (was 1)", "PUT w/b 2", "PUT w/c 3"]
    );
}

#[test]
fn two_lock_holders_never_overlap_and_the_command_status_is_passed_on() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let work = tempfile::tempdir().expect("temporary directory");
    let log = work.path().join("critical.log");
    let script = format!(
        "echo start $$ >> {0}; sleep 0.2; echo end $$ >> {0}",
        log.display()
    );
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (e, script) = (e.clone(), script.clone());
            thread::spawn(move || {
                for _ in 0..3 {
                    ok(
                        ctl(&e, &["lock", "jobs", "--", "sh", "-c", &script]),
                        "lock -- sh",
                    );
                }
            })
        })
        .collect();
    for holder in holders {
        holder.join().expect("holder");
    }
    let written = fs::read_to_string(&log).expect("the log");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 12, "{written}");
    for pair in lines.chunks(2) {
        let pid = pair[0].strip_prefix("start ").expect("a start line");
        assert_eq!(pair[1], format!("end {pid}"), "interleaved:\n{written}");
    }
    assert_eq!(
        ctl(&e, &["lock", "jobs", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    // Every holder released its key.
    assert_eq!(ok(ctl(&e, &["scan", "jobs/"]), "scan"), b"");

    // Held without a command: the key is printed, and a second locker waits until the first
    // holder is gone.
    let mut holder = Running::start(&e, &["lock", "held", "--ttl", "30"]);
    let key = holder.lines(1, "the held key")[0].clone();
    assert!(key.starts_with("held/"), "{key}");
    let marker = work.path().join("second");
    let mut second = Command::new(BIN)
        .args(["ctl", "--endpoints", &e, "lock", "held", "--", "touch"])
        .arg(&marker)
        .spawn()
        .expect("start the second locker");
    common::wait_until(SETTLE_TIMEOUT, "the second locker has queued", || {
        text(&ok(ctl(&e, &["scan", "held/"]), "scan"))
            .lines()
            .count()
            == 2
    });
    assert!(
        !marker.exists(),
        "the second locker ran while the lock was held"
    );
    // SIGTERM releases the lock at once (its lease would hold it for 30 s more).
    let terminated = Command::new("kill")
        .args(["-TERM", &holder.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(terminated.success());
    let holder_status = common::poll_until(SETTLE_TIMEOUT, || holder.child.try_wait().ok()?)
        .expect("the holder ends on SIGTERM");
    assert_eq!(holder_status.code(), Some(130));
    let status = common::poll_until(SETTLE_TIMEOUT, || second.try_wait().ok()?)
        .expect("the second locker gets the lock once the holder is gone");
    assert!(status.success() && marker.exists());
}

#[test]
fn elect_prints_the_next_leader_when_the_first_one_dies() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let mut first = Running::start(&e, &["elect", "boss", "alpha", "--ttl", "1"]);
    assert_eq!(first.lines(1, "the first campaigner leads"), ["alpha"]);
    let mut second = Running::start(&e, &["elect", "boss", "beta", "--ttl", "1"]);
    assert_eq!(second.lines(1, "the second sees the first lead"), ["alpha"]);
    let mut listener = Running::start(&e, &["elect", "boss", "--listen"]);
    assert_eq!(listener.lines(1, "the listener"), ["alpha"]);

    // Killed, the first campaigner stops renewing its lease, which expires with its key.
    first.child.kill().expect("kill the first campaigner");
    assert_eq!(second.lines(2, "the second takes over"), ["alpha", "beta"]);
    assert_eq!(listener.lines(2, "the listener"), ["alpha", "beta"]);
}

/// `method url` with an `Authorization` header when given: (status, body).
fn http_as(method: &str, url: &str, authorization: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let request = request.body(body.to_vec()).expect("valid request");
    let agent = common::http::agent(Duration::from_secs(20));
    let mut response = agent
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, body)
}

/// A token for `name` from `POST /v1/auth/authenticate`.
fn token(base: &str, name: &str, password: &str) -> String {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let url = format!("{base}/v1/auth/authenticate");
    let (status, answer) = http_as("POST", &url, None, body.as_bytes());
    assert_eq!(status, 200, "authenticate {name}: {answer}");
    let doc: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    doc["token"].as_str().expect("a token").to_string()
}

#[test]
fn authentication_over_http_and_ctl_with_expiring_tokens_bounded_logins_and_a_backup() {
    let mut cluster = Cluster::start_with_args(1, &["--auth-token-ttl", "2"]);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let base = format!("http://{e}");
    common::http::enable_auth_with_app_user(&base);

    // ctl: a user in its prefix; nobody without a user; a clear line for a refusal.
    let app = ["--user", "app:apppw"];
    ok(
        ctl(&e, &[&app[..], &["put", "app/a", "1"]].concat()),
        "put as app",
    );
    let got = ok(
        ctl(&e, &[&app[..], &["get", "app/a"]].concat()),
        "get as app",
    );
    assert_eq!(text(&got).trim(), "1");
    fails(
        ctl(&e, &["get", "app/a"]),
        "user name is empty",
        "get without a user",
    );
    fails(
        ctl(&e, &[&app[..], &["put", "other", "1"]].concat()),
        "permission denied",
        "put outside the prefix",
    );
    fails(
        ctl(&e, &["--user", "app:wrong", "get", "app/a"]),
        "authentication failed",
        "a wrong password",
    );

    // HTTP: 401 without credentials, 403 outside the user's keys, a token that expires.
    let kv = |key: &str| format!("{base}/v1/kv/{key}");
    assert_eq!(http_as("GET", &kv("app/a"), None, b"").0, 401);
    let bearer = format!("Bearer {}", token(&base, "app", "apppw"));
    assert_eq!(
        http_as("GET", &kv("app/a"), Some(&bearer), b""),
        (200, "1".to_string())
    );
    assert_eq!(http_as("GET", &kv("other"), Some(&bearer), b"").0, 403);
    common::wait_until(SETTLE_TIMEOUT, "the 2 s token expires", || {
        http_as("GET", &kv("app/a"), Some(&bearer), b"").0 == 401
    });

    // A flood of wrong passwords is answered (refused or turned away) while the node serves.
    let root_basic = "Basic cm9vdDpyb290cHc="; // root:rootpw
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let base = base.clone();
            thread::spawn(move || {
                let body = serde_json::json!({"name": "root", "password": "guess"}).to_string();
                let url = format!("{base}/v1/auth/authenticate");
                (0..25)
                    .map(|_| http_as("POST", &url, None, body.as_bytes()).0)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    assert_eq!(http_as("GET", &kv("app/a"), Some(root_basic), b"").0, 200);
    for statuses in flood.into_iter().map(|t| t.join().expect("flood thread")) {
        assert!(
            statuses.iter().all(|s| *s == 401 || *s == 429),
            "{statuses:?}"
        );
    }

    // A backup carries users and roles: the restored cluster checks them as the old one did.
    let work = tempfile::tempdir().expect("temporary directory");
    let file = work.path().join("backup.snap");
    let file_arg = file.to_str().expect("UTF-8 path");
    ok(
        ctl(&e, &["--user", "root:rootpw", "backup", file_arg]),
        "backup as root",
    );
    fails(
        ctl(&e, &[&app[..], &["backup", file_arg]].concat()),
        "permission denied",
        "backup as app",
    );
    let data_dir = work.path().join("restored");
    let (first, _) = restore(file_arg, &data_dir);
    let _restored = launch(&first);
    let restored = first.http.to_string();
    let mut last = String::new();
    common::poll_until(SETTLE_TIMEOUT, || {
        let output = ctl(&restored, &[&app[..], &["get", "app/a"]].concat());
        last = format!("{}{}", text(&output.stdout), text(&output.stderr));
        (text(&output.stdout).trim() == "1").then_some(())
    })
    .unwrap_or_else(|| panic!("the restored node does not serve app: {last}"));
    fails(
        ctl(&restored, &["get", "app/a"]),
        "user name is empty",
        "the restored node without a user",
    );
}

#[test]
fn users_and_roles_are_managed_with_ctl_as_with_etcdctl() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader();
    let e = endpoint(&cluster, 1);
    let run = |args: &[&str]| text(&ok(ctl(&e, args), &args.join(" "))).trim().to_string();
    let root = ["--user", "root:rootpw"];
    let as_root = |args: &[&str]| run(&[&root[..], args].concat());

    // Set up as etcdctl's users do, then turn checking on.
    assert_eq!(run(&["user", "add", "root:rootpw"]), "User root created");
    assert_eq!(run(&["role", "add", "root"]), "Role root created");
    assert_eq!(
        run(&["user", "grant-role", "root", "root"]),
        "Role root is granted to user root"
    );
    run(&["role", "add", "app"]);
    assert_eq!(
        run(&[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix"
        ]),
        "Role app updated"
    );
    run(&["role", "grant-permission", "app", "read", "shared"]);
    // Without a terminal, the password is stdin's first line.
    ok(
        ctl_with_stdin(&e, &["user", "add", "app"], b"apppw\n"),
        "user add with the password on stdin",
    );
    run(&["user", "grant-role", "app", "app"]);
    assert_eq!(run(&["auth", "enable"]), "Authentication Enabled");

    // Root sees users and roles; nobody else may.
    assert_eq!(as_root(&["user", "list"]), "app\nroot");
    assert_eq!(as_root(&["user", "get", "app"]), "User: app\nRoles: app");
    assert_eq!(
        as_root(&["role", "get", "app"]),
        "Role app\nKV Read:\n\trange [app/, app0) (prefix app/)\n\tkey shared\n\
         KV Write:\n\trange [app/, app0) (prefix app/)"
    );
    let app = |password: &str, args: &[&str]| {
        let user = format!("app:{password}");
        ctl(&e, &[&["--user", user.as_str()][..], args].concat())
    };
    fails(
        app("apppw", &["user", "list"]),
        "permission denied",
        "user list as app",
    );
    fails(
        ctl(&e, &["role", "list"]),
        "user name is empty",
        "role list without a user",
    );

    // The user's permissions, then a new password: the old one stops working.
    ok(app("apppw", &["put", "app/a", "1"]), "put in the prefix");
    fails(
        app("apppw", &["put", "shared", "1"]),
        "permission denied",
        "put on a read-only key",
    );
    ok(
        ctl_with_stdin(
            &e,
            &[&root[..], &["user", "passwd", "app"]].concat(),
            b"newpw\n",
        ),
        "passwd",
    );
    fails(
        app("apppw", &["get", "app/a"]),
        "authentication failed",
        "the old password",
    );
    assert_eq!(
        text(&ok(app("newpw", &["get", "app/a"]), "get, new password")),
        "1"
    );

    // Revoking the permission takes it away at once.
    assert_eq!(
        as_root(&["role", "revoke-permission", "app", "app/", "--prefix"]),
        "Permission of range [app/, app0) (prefix app/) is revoked from role app"
    );
    fails(
        app("newpw", &["get", "app/a"]),
        "permission denied",
        "get after the revoke",
    );

    // Taking everything down again, then the switch off: no user needed.
    assert_eq!(
        as_root(&["user", "revoke-role", "app", "app"]),
        "Role app is revoked from user app"
    );
    assert_eq!(as_root(&["user", "delete", "app"]), "User app deleted");
    assert_eq!(as_root(&["role", "delete", "app"]), "Role app deleted");
    fails(
        ctl(&e, &[&root[..], &["user", "get", "app"]].concat()),
        "user name not found",
        "a deleted user",
    );
    assert_eq!(as_root(&["role", "list"]), "root");
    assert_eq!(as_root(&["auth", "disable"]), "Authentication Disabled");
    ok(
        ctl(&e, &["put", "free", "1"]),
        "put with authentication off",
    );
    assert_eq!(
        json(ctl(&e, &["--json", "user", "list"]), "user list --json"),
        serde_json::json!(["root"])
    );
}
