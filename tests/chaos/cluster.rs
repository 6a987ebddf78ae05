//! A cluster of real `ondisk` processes, each in its own network namespace (see `netns`) and with
//! its data directory on its own power-cut fixture, that the nemesis can kill, restart, pause,
//! partition and cut the power of, and that the final checks can question over HTTP (HTTPS when
//! the run is over TLS).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::netns::Network;
use super::tls::{Certs, Security, Transport};
use crate::common::http::request;
use crate::common::power_cut::PowerCutFs;
use crate::common::{poll_until, Node, NodeSpec, STARTUP_TIMEOUT};

/// Every node listens on these ports of its own namespace's address.
const RAFT_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8000;
/// How long a status or scan request from the harness may take; a node that does not answer in
/// this time is treated as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster and its private network.
pub struct ChaosCluster {
    // Field order is drop order: processes die, then their namespaces go, then their files.
    nodes: Vec<Node>,
    paused: Vec<bool>,
    network: Network,
    specs: Vec<NodeSpec>,
    /// Node `id`'s file system at index `id - 1`; empty where FUSE is not available (then the
    /// nodes share a plain data directory and power cuts are not possible).
    fixtures: Vec<PowerCutFs>,
    /// How the harness's clients reach the nodes' HTTP API.
    transport: Transport,
    /// The plain data directory, the node logs kept across power cuts and the certificates of a
    /// TLS run; removed last.
    root: TempDir,
}

impl ChaosCluster {
    /// Starts `n` nodes, each with `extra_args` added to the usual command line (and, over mutual
    /// TLS, the flags of its own certificate, made for this cluster), and waits until each
    /// answers on its REPL.
    pub fn start(n: usize, extra_args: &[&str], security: Security) -> ChaosCluster {
        let all: Vec<usize> = (1..=n).collect();
        ChaosCluster::start_some(n, &all, extra_args, security)
    }

    /// [`ChaosCluster::start`] for the founding members `first` only: the others are left for
    /// [`ChaosCluster::restart`] to start later, as members that have never run. (Only the
    /// elections tests start a cluster this way.)
    #[allow(dead_code)]
    pub fn start_founders(n: usize, first: &[usize], security: Security) -> ChaosCluster {
        ChaosCluster::start_some(n, first, &[], security)
    }

    fn start_some(
        n: usize,
        first: &[usize],
        extra_args: &[&str],
        security: Security,
    ) -> ChaosCluster {
        let network = Network::create(n).unwrap_or_else(|e| {
            panic!(
                "the fault-injection suite needs network namespaces (run it as root, or with \
                 CAP_NET_ADMIN and CAP_SYS_ADMIN): {e}"
            )
        });
        let root = tempfile::Builder::new()
            .prefix("ondisk-chaos-data-")
            .tempdir()
            .expect("create a temporary directory");
        let fixtures: Vec<PowerCutFs> = if PowerCutFs::available() {
            (0..n).map(|_| PowerCutFs::start()).collect()
        } else {
            Vec::new()
        };
        let cluster: Vec<SocketAddr> = (1..=n)
            .map(|id| SocketAddr::from((network.node_ip(id), RAFT_PORT)))
            .collect();
        let certs = match security {
            Security::Plaintext => None,
            Security::MutualTls => {
                let ips: Vec<_> = (1..=n).map(|id| network.node_ip(id)).collect();
                Some(Certs::make(&root.path().join("certs"), &ips))
            }
        };
        let specs: Vec<NodeSpec> = (1..=n)
            .map(|id| NodeSpec {
                id,
                cluster: cluster.clone(),
                http: SocketAddr::from((network.node_ip(id), HTTP_PORT)),
                data_dir: fixtures
                    .get(id - 1)
                    .map_or_else(|| root.path().join("data"), PowerCutFs::data_dir),
                extra_args: extra_args
                    .iter()
                    .map(OsString::from)
                    .chain(certs.iter().flat_map(|certs| certs.node_args(id)))
                    .collect(),
            })
            .collect();
        let nodes = specs
            .iter()
            .map(|spec| {
                if first.contains(&spec.id) {
                    Node::launch_via(spec, &network.launcher(spec.id))
                } else {
                    not_started(spec.id)
                }
            })
            .collect();
        let mut cluster = ChaosCluster {
            nodes,
            paused: vec![false; n],
            network,
            specs,
            fixtures,
            transport: certs.map_or_else(Transport::plaintext, |certs| certs.transport()),
            root,
        };
        cluster.await_started(first);
        cluster
    }

    pub fn ids(&self) -> Vec<usize> {
        (1..=self.specs.len()).collect()
    }

    pub fn size(&self) -> usize {
        self.specs.len()
    }

    pub fn network(&mut self) -> &mut Network {
        &mut self.network
    }

    /// How the harness's clients reach the nodes.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// An agent for the nodes' HTTP API that gives up after `timeout`.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        self.transport.agent(timeout)
    }

    /// Base URL of node `id`'s HTTP API.
    pub fn base_url(&self, id: usize) -> String {
        self.transport.base_url(self.specs[id - 1].http)
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: usize) {
        self.resume(id);
        self.nodes[id - 1].kill();
    }

    /// Starts node `id` again (it must be down) with the same command line, and waits for it.
    pub fn restart(&mut self, id: usize) {
        self.restart_all(&[id]);
    }

    /// Starts the given (stopped) nodes together, and waits for each.
    pub fn restart_all(&mut self, ids: &[usize]) {
        for &id in ids {
            assert!(!self.nodes[id - 1].is_running(), "node {id} is running");
            self.nodes[id - 1] = Node::launch_via(&self.specs[id - 1], &self.network.launcher(id));
        }
        self.await_started(ids);
    }

    fn await_started(&mut self, ids: &[usize]) {
        for &id in ids {
            if let Err(failure) = self.nodes[id - 1].wait_ready(STARTUP_TIMEOUT) {
                panic!(
                    "node {id} failed to start (exit status {:?})\n{}",
                    failure.status, failure.diagnostics
                );
            }
            self.check_on_fixture(id);
        }
    }

    /// Whether the nodes' data directories are on power-cut fixtures.
    pub fn can_cut_power(&self) -> bool {
        !self.fixtures.is_empty()
    }

    /// Panics unless node `id`'s own mount namespace (`ip netns exec` gives each node a new one)
    /// has its fixture mounted on its data directory: otherwise the node would write to the disk
    /// below, and power cuts would silently lose nothing.
    fn check_on_fixture(&self, id: usize) {
        if !self.can_cut_power() {
            return;
        }
        let data_dir = self.specs[id - 1].data_dir.to_string_lossy().into_owned();
        let pid = self.nodes[id - 1].pid();
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let mounted = mounts.lines().any(|line| {
            let mountpoint = line.split(' ').nth(4);
            let mut source = line.split(" - ").nth(1).unwrap_or("").split(' ');
            mountpoint == Some(data_dir.as_str())
                && source.next() == Some("fuse")
                && source.next() == Some(ondisk_powercut::mount::FS_NAME)
        });
        assert!(
            mounted,
            "node {id} (pid {pid}) does not see its power-cut fixture on {data_dir} in its mount \
             namespace"
        );
    }

    /// Cuts the power of node `id`'s file system (the node must be down): everything the node
    /// did not fsync is lost. Its log file is kept aside first, for a failed run's evidence.
    /// Returns what was lost, for the fault log.
    pub fn cut_power(&mut self, id: usize) -> String {
        let spec = &self.specs[id - 1];
        let kept = self.kept_log(id);
        let log = fs::read(spec.log_path()).unwrap_or_default();
        let appended = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&kept)
            .and_then(|mut f| {
                f.write_all(&log)
                    .and_then(|()| f.write_all(b"--- power cut\n"))
            });
        if let Err(e) = appended {
            eprintln!(
                "warning: cannot keep node {id}'s log in {}: {e}",
                kept.display()
            );
        }
        let Some(fixture) = self.fixtures.get_mut(id - 1) else {
            panic!("node {id} is not on a power-cut fixture (/dev/fuse is absent)");
        };
        let report = fixture.cut();
        format!(
            "node {id} lost {} bytes, {} entries",
            report.bytes, report.entries
        )
    }

    /// Where node `id`'s log is kept across power cuts.
    fn kept_log(&self, id: usize) -> PathBuf {
        self.root
            .path()
            .join(format!("node{id}-before-power-cuts.log"))
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&mut self, id: usize) {
        if !self.paused[id - 1] {
            self.nodes[id - 1].signal("STOP");
            self.paused[id - 1] = true;
        }
    }

    /// SIGCONTs node `id` if it is paused.
    pub fn resume(&mut self, id: usize) {
        if self.paused[id - 1] {
            self.nodes[id - 1].signal("CONT");
            self.paused[id - 1] = false;
        }
    }

    /// Ids of nodes whose process has exited (none should, unless killed).
    pub fn exited(&mut self) -> Vec<usize> {
        self.ids()
            .into_iter()
            .filter(|&id| !self.nodes[id - 1].is_running())
            .collect()
    }

    /// `GET /v1/status` of node `id`, or `None` if it does not answer in time.
    pub fn status(&self, id: usize) -> Option<serde_json::Value> {
        let url = format!("{}/v1/status", self.base_url(id));
        let answer = request(&self.agent(PROBE_TIMEOUT), "GET", &url, b"").ok()?;
        (answer.status == 200)
            .then(|| serde_json::from_slice(&answer.body).ok())
            .flatten()
    }

    /// The node that a majority of the nodes names as leader and that itself says it leads.
    pub fn leader(&self) -> Option<usize> {
        let statuses: BTreeMap<usize, serde_json::Value> = self
            .ids()
            .into_iter()
            .filter_map(|id| Some((id, self.status(id)?)))
            .collect();
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for status in statuses.values() {
            if let Some(leader) = status["leader"].as_u64() {
                *votes.entry(leader).or_default() += 1;
            }
        }
        let (&leader, &count) = votes.iter().max_by_key(|(_, count)| **count)?;
        let leader = leader as usize;
        let says_so = statuses
            .get(&leader)
            .is_some_and(|s| s["state"] == "Leader");
        (count > self.size() / 2 && says_so).then_some(leader)
    }

    /// Polls for [`ChaosCluster::leader`] for at most `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> Option<usize> {
        poll_until(timeout, || self.leader())
    }

    /// Every pair on node `id`, read locally (`consistency=stale`), as `(key, value)` text.
    pub fn local_data(&self, id: usize) -> Option<Vec<(String, String)>> {
        let url = format!(
            "{}/v1/kv/?prefix=&limit=100000&consistency=stale",
            self.base_url(id)
        );
        let answer = request(&self.agent(PROBE_TIMEOUT), "GET", &url, b"").ok()?;
        if answer.status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
        json["items"]
            .as_array()?
            .iter()
            .map(|item| {
                Some((
                    format!("{}:{}", item["encoding"], item["key"].as_str()?),
                    item["value"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Every node's process diagnostics (output tails, exit status).
    pub fn diagnostics(&self) -> String {
        self.nodes.iter().map(Node::diagnostics).collect()
    }

    /// Copies every node's log file into `dir`, after what was kept of it before power cuts.
    pub fn save_logs(&self, dir: &Path) {
        for spec in &self.specs {
            let mut log = fs::read(self.kept_log(spec.id)).unwrap_or_default();
            log.extend(fs::read(spec.log_path()).unwrap_or_default());
            let _ = fs::write(dir.join(format!("node{}.log", spec.id)), log);
        }
        let _ = std::fs::write(dir.join("processes.txt"), self.diagnostics());
    }
}

/// Stands for node `id` before it is first started: a process that has exited, as a killed node's
/// has, which [`ChaosCluster::restart`] replaces with the node itself.
fn not_started(id: usize) -> Node {
    let mut placeholder = Node::launch_args(id, vec![OsString::from("--version")], None);
    placeholder.wait_exit(STARTUP_TIMEOUT);
    placeholder
}
