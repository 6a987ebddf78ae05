//! Mutual TLS for a chaos run: a CA, a certificate per node and a client certificate made by the
//! real `ondisk ctl certs` in the run's temporary directory, the flags that put each node's raft
//! port (mutual TLS) and client port (TLS, client certificates required) on them, and the
//! HTTPS settings every client of the harness then uses.

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::common::http::{agent, tls_agent};
use crate::common::{run_to_exit, BIN, COMMAND_TIMEOUT};

/// The common name of the harness's client certificate (`client.pem`, `client-key.pem`).
const CLIENT: &str = "client";

/// What a run's nodes speak on both their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP between members, plain HTTP for clients.
    Plaintext,
    /// Mutual TLS between members and on the client port, every node with its own certificate.
    MutualTls,
}

/// How the harness's HTTP clients reach the nodes: plain HTTP, or HTTPS trusting only the run's
/// CA and showing the run's client certificate. Every client (workload, watchers, probes, final
/// checks) gets its agents and URLs here, so a run is all plaintext or all TLS.
#[derive(Debug, Clone)]
pub struct Transport {
    tls: Option<TlsConfig>,
}

impl Transport {
    pub fn plaintext() -> Transport {
        Transport { tls: None }
    }

    /// Base URL of the HTTP API listening on `addr`.
    pub fn base_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// An agent with the harness's usual settings (see `common::http::agent`) speaking this
    /// transport.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        match &self.tls {
            Some(tls) => tls_agent(timeout, tls.clone()),
            None => agent(timeout),
        }
    }
}

/// The certificates of one run's nodes and its client.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Makes them in `dir` with `ondisk ctl certs`, for nodes `1..=ips.len()`, node `id` at
    /// `ips[id - 1]`. Every node certificate names every node's address: a member checks that
    /// the certificate of a peer it dials names the address it dialled, and so do the harness's
    /// clients. Panics with the command's output if it fails.
    pub fn make(dir: &Path, ips: &[Ipv4Addr]) -> Certs {
        let ids: Vec<String> = (1..=ips.len()).map(|id| id.to_string()).collect();
        let hosts: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        let (ids, hosts) = (ids.join(","), hosts.join(","));
        let mut args: Vec<OsString> = vec!["ctl".into(), "certs".into(), dir.into()];
        args.extend(["--nodes", &ids, "--hosts", &hosts, "--client", CLIENT].map(OsString::from));
        let exited = run_to_exit(args.clone(), COMMAND_TIMEOUT);
        assert!(
            exited.status.success(),
            "{BIN} {args:?} failed ({}):\n{}",
            exited.status,
            exited.stderr_text()
        );
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    /// The flags that put node `id` on its own certificate: mutual TLS on the raft port, and TLS
    /// on the client port accepting only clients with a certificate from the run's CA.
    pub fn node_args(&self, id: usize) -> Vec<OsString> {
        let file = |name: String| self.dir.join(name).into_os_string();
        let (cert, key, ca) = (
            file(format!("node{id}.pem")),
            file(format!("node{id}-key.pem")),
            file("ca.pem".into()),
        );
        vec![
            "--peer-cert-file".into(),
            cert.clone(),
            "--peer-key-file".into(),
            key.clone(),
            "--peer-trusted-ca-file".into(),
            ca.clone(),
            "--cert-file".into(),
            cert,
            "--key-file".into(),
            key,
            "--trusted-ca-file".into(),
            ca,
            "--client-cert-auth=true".into(),
        ]
    }

    /// HTTPS that trusts only the run's CA and shows its client certificate.
    pub fn transport(&self) -> Transport {
        let ca = Certificate::from_pem(&self.read("ca.pem"))
            .unwrap_or_else(|e| panic!("the CA made by `ondisk ctl certs`: {e}"));
        let cert = Certificate::from_pem(&self.read(&format!("{CLIENT}.pem")))
            .unwrap_or_else(|e| panic!("the client certificate made by `ondisk ctl certs`: {e}"));
        let key = PrivateKey::from_pem(&self.read(&format!("{CLIENT}-key.pem")))
            .unwrap_or_else(|e| panic!("the client key made by `ondisk ctl certs`: {e}"));
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&[ca]))
            .client_cert(Some(ClientCert::new_with_certs(&[cert], key)))
            .build();
        Transport { tls: Some(tls) }
    }

    /// The contents of file `name` of the certificate directory.
    fn read(&self, name: &str) -> Vec<u8> {
        let path = self.dir.join(name);
        fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }
}
