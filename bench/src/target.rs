//! The two systems under test behind one interface: ondisk through its native client, etcd
//! through its gRPC API. Each is what that system's own users would pick for speed, so neither
//! side pays for a gateway. ondisk also serves etcd's gRPC API, so it can be driven by the very
//! client code that drives etcd ([`Protocol::Grpc`]): that isolates the servers from the clients.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use ondisk::client::Client;
use ondisk::client::Consistency;

use crate::tls::ClientTls;

/// Which system a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Ondisk,
    Etcd,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Ondisk => "ondisk",
            System::Etcd => "etcd",
        })
    }
}

/// What the load generator speaks to a system. etcd speaks only gRPC; ondisk speaks both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// ondisk's binary frames on its raft port (`ondisk::client`).
    Native,
    /// etcd's v3 gRPC API through the etcd-client crate: etcd's client port, ondisk's HTTP port.
    Grpc,
}

impl Protocol {
    /// How ondisk is driven with this protocol, for the tables' captions.
    pub fn ondisk_caption(self) -> &'static str {
        match self {
            Protocol::Native => "ondisk driven through its native protocol (raft port)",
            Protocol::Grpc => {
                "ondisk driven through etcd's gRPC API (HTTP port), by the same etcd-client code as etcd"
            }
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Native => "native",
            Protocol::Grpc => "grpc",
        })
    }
}

/// A key-value store as the load generator sees it. Every call is one request on the wire.
pub trait KvTarget: Send + Sync + 'static {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn get(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// ondisk over its native binary protocol (raft port): one multiplexed connection per node,
/// writes sent to the leader, reads spread over the nodes.
pub struct OndiskTarget {
    client: Client,
}

impl OndiskTarget {
    /// `endpoints` are the nodes' raft addresses; with `tls`, the raft port speaks mutual TLS
    /// and the client presents `tls`'s certificate.
    pub fn new(endpoints: Vec<String>, tls: Option<&ClientTls>) -> anyhow::Result<Self> {
        let client = match tls {
            None => Client::new(endpoints, REQUEST_TIMEOUT)?,
            Some(tls) => Client::with_tls(endpoints, REQUEST_TIMEOUT, tls.ondisk_files())
                .context("cannot set up TLS for ondisk's native client")?,
        };
        Ok(OndiskTarget { client })
    }
}

impl KvTarget for OndiskTarget {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        let put = ondisk::api::PutRequest {
            key,
            value,
            ..ondisk::api::PutRequest::default()
        };
        self.client.put(put).await?;
        Ok(())
    }

    async fn get(&self, key: Vec<u8>, consistency: Consistency) -> anyhow::Result<()> {
        self.client.get(&key, consistency).await?;
        Ok(())
    }
}

/// etcd's gRPC API, with the etcd-client crate's channel balanced over every endpoint (HTTP/2,
/// one connection per member), as etcd's own clients do. Serves etcd, and ondisk with
/// [`Protocol::Grpc`].
pub struct EtcdTarget {
    kv: etcd_client::KvClient,
}

impl EtcdTarget {
    /// `endpoints` are HOST:PORT: etcd's client addresses, or ondisk's HTTP addresses. With
    /// `tls`, etcd-client dials them as https:// and presents `tls`'s certificate.
    pub async fn connect(endpoints: Vec<String>, tls: Option<&ClientTls>) -> anyhow::Result<Self> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(REQUEST_TIMEOUT);
        if let Some(tls) = tls {
            options = options.with_tls(tls.etcd_options()?);
        }
        let client = etcd_client::Client::connect(&endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect over gRPC to {}", endpoints.join(",")))?;
        Ok(EtcdTarget {
            kv: client.kv_client(),
        })
    }
}

impl KvTarget for EtcdTarget {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.kv.clone().put(key, value, None).await?;
        Ok(())
    }

    async fn get(&self, key: Vec<u8>, consistency: Consistency) -> anyhow::Result<()> {
        // etcd's "serializable" read is its stale read: served by the member without consensus.
        let options = (consistency == Consistency::Stale)
            .then(|| etcd_client::GetOptions::new().with_serializable());
        self.kv.clone().get(key, options).await?;
        Ok(())
    }
}

/// Either client, chosen at run time by the protocol (not the system: etcd's gRPC client drives
/// ondisk too).
pub enum Target {
    Native(OndiskTarget),
    Grpc(EtcdTarget),
}

impl Target {
    /// A client speaking `protocol` to `endpoints` (addresses that serve that protocol), over
    /// TLS with `tls`'s files if given, in plaintext otherwise.
    pub async fn connect(
        protocol: Protocol,
        endpoints: Vec<String>,
        tls: Option<&ClientTls>,
    ) -> anyhow::Result<Target> {
        Ok(match protocol {
            Protocol::Native => Target::Native(OndiskTarget::new(endpoints, tls)?),
            Protocol::Grpc => Target::Grpc(EtcdTarget::connect(endpoints, tls).await?),
        })
    }
}

impl KvTarget for Target {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Native(target) => target.put(key, value).await,
            Target::Grpc(target) => target.put(key, value).await,
        }
    }

    async fn get(&self, key: Vec<u8>, consistency: Consistency) -> anyhow::Result<()> {
        match self {
            Target::Native(target) => target.get(key, consistency).await,
            Target::Grpc(target) => target.get(key, consistency).await,
        }
    }
}
