//! Three-member clusters of each system on loopback, each in its own data directory, with fsync
//! on (the default of both): started, stopped and restarted as an operator would.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::process::disk_bytes;
use crate::process::free_port;
use crate::process::peak_rss_bytes_of;
use crate::process::Server;
use crate::target::Protocol;
use crate::target::System;
use crate::target::Target;
use crate::tls::Certs;
use crate::tls::ClientTls;

/// How many members each cluster has.
pub const MEMBERS: usize = 3;
/// etcd's heartbeat interval and election timeout, in milliseconds.
const ETCD_HEARTBEAT_MS: u64 = 100;
const ETCD_ELECTION_TIMEOUT_MS: u64 = 1000;

/// The server binaries a benchmark starts its clusters from.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub ondisk: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    /// A cluster of `system` under `dir`, not started yet; `protocol` is what the load generator
    /// speaks to ondisk (etcd always gets gRPC), and with `certs` every port speaks TLS.
    pub fn cluster(
        &self,
        system: System,
        dir: &Path,
        protocol: Protocol,
        certs: Option<&Certs>,
    ) -> anyhow::Result<Cluster> {
        match system {
            System::Ondisk => Cluster::ondisk(&self.ondisk, dir, protocol, certs),
            System::Etcd => Cluster::etcd(&self.etcd, dir, certs),
        }
    }
}

/// One cluster: how to start each member, and the members running now.
pub struct Cluster {
    pub system: System,
    /// What the load generator speaks to the members: always gRPC for etcd.
    pub protocol: Protocol,
    dir: PathBuf,
    commands: Vec<(String, Vec<String>)>,
    bin: PathBuf,
    servers: Vec<Server>,
    /// Where clients speaking `protocol` connect: ondisk's raft addresses (native) or HTTP
    /// addresses (gRPC), etcd's client addresses.
    pub endpoints: Vec<String>,
    /// ondisk's HTTP API addresses, in member order (empty for etcd).
    pub http: Vec<String>,
    /// What clients present and trust when the members speak TLS; `None` for plaintext.
    pub tls: Option<ClientTls>,
}

impl Cluster {
    /// A 3-node ondisk cluster under `dir`, to be driven with `protocol`; not started yet. With
    /// `certs`, both ports of every node speak TLS and demand a client certificate.
    pub fn ondisk(
        bin: &Path,
        dir: &Path,
        protocol: Protocol,
        certs: Option<&Certs>,
    ) -> anyhow::Result<Cluster> {
        let raft: Vec<String> = (0..MEMBERS)
            .map(|_| free_port().map(|port| format!("127.0.0.1:{port}")))
            .collect::<anyhow::Result<_>>()?;
        let http: Vec<String> = (0..MEMBERS)
            .map(|_| free_port().map(|port| format!("127.0.0.1:{port}")))
            .collect::<anyhow::Result<_>>()?;
        let data_dir = dir.join("ondisk");
        let commands = (0..MEMBERS)
            .map(|i| {
                let mut args = vec![
                    format!("--nodeid={}", i + 1),
                    format!("--cluster={}", raft.join(",")),
                    format!("--http={}", http[i]),
                    format!("--data-dir={}", data_dir.display()),
                    "--no-repl".to_string(),
                ];
                args.extend(certs.map_or_else(Vec::new, |certs| tls_args(certs, i + 1)));
                (format!("ondisk-{}", i + 1), args)
            })
            .collect();
        // ondisk serves etcd's gRPC API on the HTTP port (HTTP/2 cleartext next to HTTP/1.1, or
        // both over TLS).
        let endpoints = match protocol {
            Protocol::Native => raft,
            Protocol::Grpc => http.clone(),
        };
        Ok(Cluster {
            system: System::Ondisk,
            protocol,
            dir: data_dir,
            commands,
            bin: bin.to_path_buf(),
            servers: Vec::new(),
            endpoints,
            http,
            tls: certs.map(Certs::client),
        })
    }

    /// A 3-member etcd cluster under `dir`; not started yet. With `certs`, every peer and client
    /// URL is https:// and both demand a client certificate.
    pub fn etcd(bin: &Path, dir: &Path, certs: Option<&Certs>) -> anyhow::Result<Cluster> {
        let scheme = if certs.is_some() { "https" } else { "http" };
        let mut peer_urls = Vec::new();
        let mut client_addrs = Vec::new();
        for _ in 0..MEMBERS {
            peer_urls.push(format!("{scheme}://127.0.0.1:{}", free_port()?));
            client_addrs.push(format!("127.0.0.1:{}", free_port()?));
        }
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(i, url)| format!("etcd-{}={url}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let data_dir = dir.join("etcd");
        let commands = (0..MEMBERS)
            .map(|i| {
                let name = format!("etcd-{}", i + 1);
                let client_url = format!("{scheme}://{}", client_addrs[i]);
                let mut args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", data_dir.join(&name).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={}", peer_urls[i]),
                    format!("--initial-advertise-peer-urls={}", peer_urls[i]),
                    format!("--initial-cluster={initial_cluster}"),
                    "--initial-cluster-state=new".to_string(),
                    "--initial-cluster-token=ondisk-bench".to_string(),
                    // etcd's defaults, spelled out: ondisk's defaults are the same (BENCHMARKS.md).
                    format!("--heartbeat-interval={ETCD_HEARTBEAT_MS}"),
                    format!("--election-timeout={ETCD_ELECTION_TIMEOUT_MS}"),
                    "--logger=zap".to_string(),
                    "--log-outputs=stderr".to_string(),
                    "--log-level=warn".to_string(),
                ];
                args.extend(certs.map_or_else(Vec::new, |certs| tls_args(certs, i + 1)));
                (name, args)
            })
            .collect();
        Ok(Cluster {
            system: System::Etcd,
            protocol: Protocol::Grpc,
            dir: data_dir,
            commands,
            bin: bin.to_path_buf(),
            servers: Vec::new(),
            endpoints: client_addrs,
            http: Vec::new(),
            tls: certs.map(Certs::client),
        })
    }

    /// A client of every member, speaking the cluster's protocol.
    pub async fn connect(&self) -> anyhow::Result<Target> {
        self.connect_to(self.endpoints.clone()).await
    }

    /// A client of `endpoints` (some of [`Cluster::endpoints`]), speaking the cluster's protocol,
    /// over TLS if the cluster speaks it.
    pub async fn connect_to(&self, endpoints: Vec<String>) -> anyhow::Result<Target> {
        Target::connect(self.protocol, endpoints, self.tls.as_ref()).await
    }

    /// Starts every member (they find each other by themselves).
    pub fn start(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        self.servers = (0..self.commands.len())
            .map(|member| self.spawn(member))
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }

    /// SIGKILLs member `member` (0-based) and reaps it; its data stays for [`Cluster::restart`].
    pub fn kill(&mut self, member: usize) -> anyhow::Result<()> {
        self.server(member)?.kill()
    }

    /// Starts member `member` again with its first command line (after [`Cluster::kill`]).
    pub fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        let server = self.spawn(member)?;
        *self.server(member)? = server;
        Ok(())
    }

    fn server(&mut self, member: usize) -> anyhow::Result<&mut Server> {
        let system = self.system;
        self.servers
            .get_mut(member)
            .with_context(|| format!("{system} has no running member {member}"))
    }

    /// Starts member `member`, its output appended to its own file in the data directory.
    fn spawn(&self, member: usize) -> anyhow::Result<Server> {
        let (name, args) = &self.commands[member];
        let mut command = Command::new(&self.bin);
        command.args(args);
        Server::spawn(name.clone(), command, &self.log(name))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.out"))
    }

    /// A failure naming the first member that has exited, with the last line it wrote (see
    /// [`Server::exit_report`]); `Ok` while every member started runs.
    pub fn check_running(&self) -> anyhow::Result<()> {
        let exited = self
            .servers
            .iter()
            .zip(&self.commands)
            .find_map(|(server, (name, _))| server.exit_report(&self.log(name)));
        match exited {
            Some(report) => anyhow::bail!("{} member {report}", self.system),
            None => Ok(()),
        }
    }

    /// Stops every member with SIGTERM and waits for each.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        for server in self.servers.drain(..) {
            server.stop()?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(Server::pid).collect()
    }

    /// The largest resident set of any member, in bytes.
    pub fn max_rss(&self) -> u64 {
        self.servers
            .iter()
            .map(Server::rss_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The largest peak resident set of any member since it started, in bytes.
    pub fn max_peak_rss(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(peak_rss_bytes_of)
            .max()
            .unwrap_or(0)
    }

    /// Removes the members' data (stop them first).
    pub fn remove_data(&self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }

    /// The resident sets of every member added up, in bytes.
    pub fn total_rss(&self) -> u64 {
        self.servers.iter().map(Server::rss_bytes).sum()
    }

    /// Bytes on disk of the whole cluster divided by its members.
    pub fn disk_per_member(&self) -> u64 {
        disk_bytes(&self.dir) / MEMBERS as u64
    }
}

/// Member `member`'s (1-based) TLS flags, under the names ondisk and etcd share: mutual TLS on
/// the peer (raft) port, where members and ondisk's native clients alike must present a
/// certificate the CA signed, and TLS with client certificates required on the client port
/// (ondisk's HTTP and gRPC, etcd's gRPC). Client authentication on the peer port is ondisk's
/// default but not etcd's, so it is spelled out for both.
fn tls_args(certs: &Certs, member: usize) -> Vec<String> {
    let (cert, key) = certs.member(member);
    let ca = certs.ca();
    vec![
        format!("--peer-cert-file={}", cert.display()),
        format!("--peer-key-file={}", key.display()),
        format!("--peer-trusted-ca-file={}", ca.display()),
        "--peer-client-cert-auth=true".to_string(),
        format!("--cert-file={}", cert.display()),
        format!("--key-file={}", key.display()),
        format!("--trusted-ca-file={}", ca.display()),
        "--client-cert-auth=true".to_string(),
    ]
}
