//! A private network for one cluster: every node in its own network namespace, joined by a
//! bridge, so traffic between two chosen nodes can be cut in one direction or both.
//!
//! ```text
//!   test process (root namespace, 10.A.B.1 on the bridge)
//!         |
//!   bridge odk<pid>x<n>b ---- veth ---- namespace ondisk-chaos-<pid>-<n>-n1: eth0 10.A.B.11
//!                        ---- veth ---- namespace ondisk-chaos-<pid>-<n>-n2: eth0 10.A.B.12
//!                        ---- ...
//! ```
//!
//! A cut from node X to node Y is a blackhole route to Y's address inside X's namespace: X's
//! packets to Y vanish silently, like on a broken link, while everything else (Y to X, the test
//! process to both) still flows. Cutting both directions isolates the pair.
//!
//! Everything is named after the test process's pid, removed on drop (also when a test panics),
//! and leftovers of test processes that no longer exist are swept before a new network is made.
//! No traffic leaves the machine: the bridge has no physical port.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The `ip` tool (iproute2).
const IP: &str = "/usr/sbin/ip";
/// Namespace names start with this, then `<pid>-<n>-n<id>`.
const NS_PREFIX: &str = "ondisk-chaos-";
/// Link names (at most 15 bytes) start with this, then `<pid hex>x<n hex>` and `b` or `v<id>`.
const LINK_PREFIX: &str = "odk";
/// Longest an `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many /24 subnets of 10.200.0.0/13 are tried before giving up.
const SUBNET_ATTEMPTS: u32 = 64;

/// Networks made by this process so far (each gets its own names and subnet).
static NETWORKS: AtomicU32 = AtomicU32::new(0);
/// Creating networks one at a time keeps two of ours from picking the same subnet.
static CREATING: Mutex<()> = Mutex::new(());

/// The namespaces, bridge and cuts of one cluster.
pub struct Network {
    namespaces: Vec<String>,
    bridge: String,
    subnet: [u8; 3],
    cuts: BTreeSet<(usize, usize)>,
}

impl Network {
    /// Creates a network for nodes `1..=nodes`. Fails with an explanation when namespaces cannot
    /// be made here (they need root, or CAP_NET_ADMIN and CAP_SYS_ADMIN).
    pub fn create(nodes: usize) -> Result<Network, String> {
        let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        sweep_leftovers();
        let pid = std::process::id();
        let n = NETWORKS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{pid:x}x{n:x}");
        let subnet = free_subnet(pid, n)?;
        let mut network = Network {
            namespaces: Vec::new(),
            bridge: format!("{LINK_PREFIX}{tag}b"),
            subnet,
            cuts: BTreeSet::new(),
        };
        let host = format!("{}/24", network.host_ip());
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &host, "dev", &network.bridge])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        for id in 1..=nodes {
            let ns = format!("{NS_PREFIX}{pid}-{n}-n{id}");
            ip(&["netns", "add", &ns])?;
            network.namespaces.push(ns.clone());
            let veth = format!("{LINK_PREFIX}{tag}v{id}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &network.bridge, "up"])?;
            let addr = format!("{}/24", network.node_ip(id));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The test process's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Node `id`'s address.
    pub fn node_ip(&self, id: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + id as u8)
    }

    /// The command prefix that runs a program inside node `id`'s namespace.
    pub fn launcher(&self, id: usize) -> Vec<OsString> {
        [IP, "netns", "exec", &self.namespaces[id - 1]]
            .iter()
            .map(OsString::from)
            .collect()
    }

    /// Drops every packet node `from` sends to node `to`.
    pub fn cut(&mut self, from: usize, to: usize) {
        if self.cuts.insert((from, to)) {
            let dest = format!("{}/32", self.node_ip(to));
            let ns = &self.namespaces[from - 1];
            ip(&["-n", ns, "route", "add", "blackhole", &dest])
                .unwrap_or_else(|e| panic!("cannot cut {from} -> {to}: {e}"));
        }
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn split(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            let dest = format!("{}/32", self.node_ip(to));
            let ns = &self.namespaces[from - 1];
            ip(&["-n", ns, "route", "del", "blackhole", &dest])
                .unwrap_or_else(|e| panic!("cannot heal {from} -> {to}: {e}"));
        }
    }
}

impl Drop for Network {
    /// Removes the namespaces (which takes their veth pairs with them) and the bridge. The nodes
    /// must be gone by now: a namespace lives on while a process runs in it.
    fn drop(&mut self) {
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("warning: cannot remove namespace {ns}: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("warning: cannot remove bridge {}: {e}", self.bridge);
        }
    }
}

/// Runs `ip ARGS`, bounded by [`IP_TIMEOUT`]; `Err` carries its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(IP)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {IP}: {e}"))?;
    let deadline = Instant::now() + IP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`ip {}` did not finish in time", args.join(" ")));
            }
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A /24 in 10.200.0.0/13 that no interface here uses, chosen from the pid so that concurrent
/// test processes usually start from different places.
fn free_subnet(pid: u32, n: u32) -> Result<[u8; 3], String> {
    let in_use = ip(&["-o", "-4", "addr", "show"])?;
    for attempt in 0..SUBNET_ATTEMPTS {
        let k = pid.wrapping_mul(31).wrapping_add(n * 7 + attempt) % (8 * 256);
        let subnet = [10, 200 + (k / 256) as u8, (k % 256) as u8];
        let prefix = format!(" {}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if !in_use.contains(&prefix) {
            return Ok(subnet);
        }
    }
    Err("no free subnet in 10.200.0.0/13".into())
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Removes namespaces and bridges left by test processes that died without cleaning up (killed
/// by a signal), after killing the nodes still running in those namespaces.
fn sweep_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some(owner) = ns
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if alive(owner) {
            continue;
        }
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", ns]);
    }
    let Ok(links) = ip(&["-o", "link", "show", "type", "bridge"]) else {
        return;
    };
    for line in links.lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let owner = name
            .strip_prefix(LINK_PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| u32::from_str_radix(pid, 16).ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            let _ = ip(&["link", "del", name]);
        }
    }
}
