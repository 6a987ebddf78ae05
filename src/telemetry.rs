//! Prometheus metrics: request counts and latencies recorded as requests happen, and Raft and
//! storage figures sampled from the node when `/metrics` is scraped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::async_runtime::WatchReceiver;

use crate::node::Node;

/// Latency buckets in seconds: from a fast local read to a proposal that hits the timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Installs the process-wide recorder. Only the binary calls this; in tests and benchmarks that
/// don't, recording is a no-op.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Counts one finished HTTP request and its latency under `op`.
pub fn record_request(op: &'static str, status: u16, elapsed: Duration) {
    metrics::counter!("ondisk_http_requests_total", "op" => op, "code" => status.to_string())
        .increment(1);
    metrics::histogram!("ondisk_http_request_duration_seconds", "op" => op)
        .record(elapsed.as_secs_f64());
}

/// Counts leader changes as this node observes them, for as long as the node runs.
pub fn watch_leader_changes(node: &Arc<Node>) {
    // The server metrics change with the leader and the membership, not with every commit.
    let mut metrics = node.raft().server_metrics();
    // Registered at once, so the series exists (at 0) even when the first leader was elected
    // before this watch began and no change has been seen yet.
    metrics::counter!("ondisk_leader_changes_total").increment(0);
    tokio::spawn(async move {
        let mut leader = metrics.borrow_watched().current_leader;
        while metrics.changed().await.is_ok() {
            let now = metrics.borrow_watched().current_leader;
            if now != leader {
                metrics::counter!("ondisk_leader_changes_total").increment(1);
                leader = now;
            }
        }
    });
}

/// Samples the node's current figures into gauges, then renders everything as Prometheus text.
pub async fn render(handle: &PrometheusHandle, node: &Node) -> String {
    let status = node.status();
    let index = |v: Option<u64>| v.unwrap_or(0) as f64;
    metrics::gauge!("ondisk_raft_term").set(status.term as f64);
    metrics::gauge!("ondisk_raft_is_leader").set(if status.leader == Some(status.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("ondisk_raft_last_log_index").set(index(status.last_log_index));
    metrics::gauge!("ondisk_raft_commit_index").set(index(status.committed));
    metrics::gauge!("ondisk_raft_applied_index").set(index(status.last_applied));
    metrics::gauge!("ondisk_raft_snapshot_index").set(index(status.last_snapshot_index));
    metrics::gauge!("ondisk_raft_purged_index").set(index(status.purged));
    metrics::gauge!("ondisk_raft_first_log_index").set(status.first_log_index as f64);
    let store = node.store_figures();
    metrics::gauge!("ondisk_revision").set(store.revision as f64);
    metrics::gauge!("ondisk_compact_revision").set(store.compact_revision as f64);
    metrics::gauge!("ondisk_watches").set(store.watches as f64);
    metrics::gauge!("ondisk_leases").set(store.leases as f64);
    metrics::counter!("ondisk_snapshots_built_total").absolute(status.snapshots_built);
    metrics::counter!("ondisk_snapshots_installed_total").absolute(status.snapshots_installed);
    metrics::counter!("ondisk_snapshots_sent_total").absolute(status.snapshots_sent);
    let dir = node.data_dir().clone();
    let state_dir = node.state_dir();
    let sizes = tokio::task::spawn_blocking(move || {
        [
            ("raft-log", dir.log_db()),
            ("state", state_dir),
            ("snapshots", dir.snapshots()),
        ]
        .map(|(name, path)| (name, disk_usage(&path)))
    })
    .await;
    if let Ok(sizes) = sizes {
        for (name, bytes) in sizes {
            metrics::gauge!("ondisk_disk_bytes", "dir" => name).set(bytes as f64);
        }
    }
    handle.render()
}

/// Bytes used by the files under `dir`, one level of subdirectories deep (RocksDB directories
/// are flat; the snapshot directory holds checkpoint directories, whose files are hard links
/// shared with the state machine).
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(meta) if meta.is_dir() => std::fs::read_dir(entry.path())
                .map(|inner| {
                    inner
                        .filter_map(|e| e.ok()?.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0),
            _ => 0,
        })
        .sum()
}
