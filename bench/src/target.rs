//! The two systems under test behind one interface: ondisk through its native client, etcd
//! through its gRPC API. Each is what that system's own users would pick for speed, so neither
//! side pays for a gateway.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use ondisk::client::Client;
use ondisk::client::Consistency;

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
    /// `endpoints` are the nodes' raft addresses.
    pub fn new(endpoints: Vec<String>) -> anyhow::Result<Self> {
        Ok(OndiskTarget {
            client: Client::new(endpoints, REQUEST_TIMEOUT)?,
        })
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

/// etcd over gRPC, with the etcd-client crate's channel balanced over every endpoint (HTTP/2, one
/// connection per member), as etcd's own clients do.
pub struct EtcdTarget {
    kv: etcd_client::KvClient,
}

impl EtcdTarget {
    /// `endpoints` are the members' client URLs' HOST:PORT.
    pub async fn connect(endpoints: Vec<String>) -> anyhow::Result<Self> {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(REQUEST_TIMEOUT);
        let client = etcd_client::Client::connect(&endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))?;
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

/// Either system, chosen at run time.
pub enum Target {
    Ondisk(OndiskTarget),
    Etcd(EtcdTarget),
}

impl Target {
    /// A client of `system` at `endpoints`.
    pub async fn connect(system: System, endpoints: Vec<String>) -> anyhow::Result<Target> {
        Ok(match system {
            System::Ondisk => Target::Ondisk(OndiskTarget::new(endpoints)?),
            System::Etcd => Target::Etcd(EtcdTarget::connect(endpoints).await?),
        })
    }
}

impl KvTarget for Target {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Ondisk(target) => target.put(key, value).await,
            Target::Etcd(target) => target.put(key, value).await,
        }
    }

    async fn get(&self, key: Vec<u8>, consistency: Consistency) -> anyhow::Result<()> {
        match self {
            Target::Ondisk(target) => target.get(key, consistency).await,
            Target::Etcd(target) => target.get(key, consistency).await,
        }
    }
}
