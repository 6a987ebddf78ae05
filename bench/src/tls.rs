//! TLS for a comparison run with `--tls`: one CA and its certificates, made once per comparison in
//! its data directory, used by both systems' members and by every client of the load generator.
//! Both systems then pay for the same encryption, so the ratios stay a comparison of servers (and
//! clients), not of one side's plaintext against the other's TLS.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// The client certificate's common name, which also names its files.
const CLIENT_NAME: &str = "client";
/// How long the generated certificates are valid: far longer than any comparison.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a client presents and trusts: etcdctl's `--cacert`, `--cert` and `--key`. Carried by a
/// [`crate::cluster::Cluster`] or given to `run`, and turned into each client library's setting
/// here, so TLS and plaintext share every other line of the load generator.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA that signs the servers' certificates.
    pub cacert: PathBuf,
    /// The client's certificate (PEM), which the servers require.
    pub cert: PathBuf,
    /// The certificate's private key (PEM).
    pub key: PathBuf,
}

impl ClientTls {
    /// The files as ondisk's native client takes them. The raft port always checks client
    /// certificates, so whether this side asks for one (a server setting) does not apply.
    pub fn ondisk_files(&self) -> ondisk::tls::TlsFiles {
        ondisk::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            trusted_ca: Some(self.cacert.clone()),
            client_cert_auth: false,
        }
    }

    /// The files read into etcd-client's setting; read on every call, which happens once per
    /// connection attempt, so nothing here can go stale.
    pub fn etcd_options(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        let ca = read(&self.cacert)?;
        let identity = etcd_client::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca))
            .identity(identity))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A CA, one certificate per member (server and client authentication, naming 127.0.0.1, so
/// the same file serves a member's peer and client ports) and one client certificate, in one
/// directory. ondisk's members and etcd's use the same files: both accept ECDSA P-256.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Makes the certificates for members 1 to `members` in `dir` (created if missing).
    pub fn generate(dir: &Path, members: usize) -> anyhow::Result<Certs> {
        let request = ondisk::tls::certs::CertRequest {
            nodes: (1..=members as u64).collect(),
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            client: CLIENT_NAME.into(),
            validity: VALIDITY,
        };
        ondisk::tls::certs::generate(dir, &request)
            .with_context(|| format!("cannot make certificates in {}", dir.display()))?;
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    /// The CA certificate, which every member and client trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(ondisk::tls::certs::CA_CERT)
    }

    /// Member `member`'s (1-based) certificate and key.
    pub fn member(&self, member: usize) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("node{member}.pem")),
            self.dir.join(format!("node{member}-key.pem")),
        )
    }

    /// What the load generator's clients present and trust.
    pub fn client(&self) -> ClientTls {
        ClientTls {
            cacert: self.ca(),
            cert: self.dir.join(format!("{CLIENT_NAME}.pem")),
            key: self.dir.join(format!("{CLIENT_NAME}-key.pem")),
        }
    }
}
