//! Automatic compaction of the history (`-auto-compaction-mode`, `-auto-compaction-retention`,
//! etcd's flags): the leader proposes a compaction now and then, so the history, and the disk it
//! takes, stays bounded however long the cluster runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::api;
use crate::error::Error;
use crate::types::ApplyError;

use super::Caller;
use super::Node;

/// How often revision-mode compaction looks at the revision.
const REVISION_CHECK: Duration = Duration::from_secs(5);
/// The shortest interval between samples of the revision in periodic mode.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What history the leader keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// The newest this many revisions.
    Revisions(i64),
    /// The revisions made within this long.
    Period(Duration),
}

impl AutoCompaction {
    /// Reads etcd's two flags: `mode` is `periodic` or `revision`; `retention` is `0` (keep
    /// everything), a number (hours in periodic mode, as in etcd; revisions in revision mode) or
    /// a duration such as `30m` (periodic mode).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<Self>, String> {
        let retention = retention.trim();
        if retention == "0" {
            return Ok(None);
        }
        match mode {
            "revision" => retention
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Some(AutoCompaction::Revisions(n)))
                .ok_or_else(|| {
                    format!("-auto-compaction-retention must be a number of revisions, not {retention:?}")
                }),
            "periodic" => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    Err(_) => humantime::parse_duration(retention).map_err(|e| {
                        format!("-auto-compaction-retention {retention:?} is not a duration: {e}")
                    })?,
                };
                if period.is_zero() {
                    return Ok(None);
                }
                Ok(Some(AutoCompaction::Period(period)))
            }
            other => Err(format!(
                "-auto-compaction-mode must be periodic or revision, not {other:?}"
            )),
        }
    }

    fn check_interval(self) -> Duration {
        match self {
            AutoCompaction::Revisions(_) => REVISION_CHECK,
            AutoCompaction::Period(period) => (period / 10).max(MIN_SAMPLE_INTERVAL),
        }
    }
}

impl Node {
    /// Runs for the node's life: while this member leads, compacts the history as `policy` says.
    /// Every member samples its own revision in periodic mode, so a new leader knows how far
    /// back each revision was made.
    pub(super) fn compact_automatically(self: &Arc<Self>, policy: AutoCompaction) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
            let mut ticks = tokio::time::interval(policy.check_interval());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(node) = node.upgrade() else { return };
                let Ok(revisions) = node.state.revisions() else {
                    continue;
                };
                let target = match policy {
                    AutoCompaction::Revisions(keep) => revisions.current - keep,
                    AutoCompaction::Period(period) => {
                        let now = Instant::now();
                        samples.push_back((now, revisions.current));
                        let mut target = 0;
                        while let Some(&(at, revision)) = samples.front() {
                            if now.duration_since(at) < period {
                                break;
                            }
                            target = revision;
                            samples.pop_front();
                        }
                        target
                    }
                };
                let leads = node.raft.metrics().borrow_watched().state == ServerState::Leader;
                if !leads || target <= revisions.compacted.max(0) {
                    continue;
                }
                let request = api::CompactionRequest {
                    revision: target,
                    physical: false,
                };
                match node.compact(&Caller::Operator, request).await {
                    Ok(_) => tracing::info!("history compacted to revision {target}"),
                    Err(Error::Request(ApplyError::Compacted { .. })) => {}
                    Err(e) => tracing::warn!("automatic compaction to {target} failed: {e}"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_retention_flags_are_understood() {
        assert_eq!(AutoCompaction::parse("periodic", "0"), Ok(None));
        assert_eq!(
            AutoCompaction::parse("periodic", "1"),
            Ok(Some(AutoCompaction::Period(Duration::from_secs(3600))))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "30m"),
            Ok(Some(AutoCompaction::Period(Duration::from_secs(1800))))
        );
        assert_eq!(
            AutoCompaction::parse("revision", "1000"),
            Ok(Some(AutoCompaction::Revisions(1000)))
        );
        assert!(AutoCompaction::parse("revision", "1h").is_err());
        assert!(AutoCompaction::parse("sometimes", "1").is_err());
    }
}
