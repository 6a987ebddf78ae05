//! `ondisk restore`: turns a backup (a snapshot stream written by `ondisk ctl backup`) into the
//! data directory of a NEW single-node cluster, which other nodes then join.
//!
//! The directory is exactly what a node would have after installing the snapshot and purging its
//! log up to it: the ONDISK marker (node id, and the cluster id a single-node bootstrap with the
//! same flags computes), a state database at the backup's log id whose membership is this node
//! alone, a checkpoint to send to joining nodes, and a log that starts after the backup's log id
//! with a vote for the backup's term. The node then elects itself and carries on from there.
//!
//! Nothing is created until the whole file has passed its checksum, the node directory is built
//! under a temporary name and renamed into place only once complete, and on failure everything
//! created is removed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use openraft::storage::RaftLogStorage;

use super::snapshot;
use super::DataDir;
use super::LogStore;
use super::StateMachineStore;
use crate::error::Error;
use crate::types::LogId;
use crate::types::Member;
use crate::types::Membership;
use crate::types::NodeId;
use crate::types::Vote;

/// What a restore produced, as the command reports it.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The node directory created.
    pub dir: PathBuf,
    /// The log id the backup was taken at, where the new cluster's log resumes.
    pub log_id: LogId,
    /// Members of the cluster the backup came from.
    pub backup_members: Vec<NodeId>,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored {} from the backup at log index {} (term {}) of a cluster with members {:?}; \
             start the node without -join, then add others with `ondisk ctl add-voter`",
            self.dir.display(),
            self.log_id.index,
            self.log_id.leader_id.term,
            self.backup_members
        )
    }
}

/// Creates `base/node<node_id>` from the backup `file` as the only voter, at `member`'s
/// addresses, of a new cluster identified by `cluster_id` (see
/// [`crate::cli::Addresses::cluster_id`]).
pub async fn restore(
    file: &Path,
    base: &Path,
    node_id: NodeId,
    member: Member,
    cluster_id: u32,
) -> Result<Restored, Error> {
    let unreadable = |e: io::Error| {
        Error::Config(format!(
            "{} is damaged or not an ondisk backup ({e}); nothing was created",
            file.display()
        ))
    };
    let verify_path = file.to_path_buf();
    let backup = tokio::task::spawn_blocking(move || snapshot::verify(&verify_path))
        .await
        .map_err(|e| Error::Io(io::Error::other(e.to_string())))?
        .map_err(unreadable)?;
    let Some(log_id) = backup.last_log_id else {
        return Err(Error::Config(format!(
            "{} holds no applied entries: start a new cluster instead",
            file.display()
        )));
    };
    let target = base.join(format!("node{node_id}"));
    if fs::symlink_metadata(&target).is_ok() {
        return Err(Error::Config(format!(
            "{} already exists; restore only creates a new node directory",
            target.display()
        )));
    }
    let created_base = !base.exists();
    let staging = base.join(format!(".node{node_id}.restoring"));
    let outcome = async {
        fs::create_dir_all(base)?;
        if staging.exists() {
            // Left by an interrupted restore of this same node; it was never put in service.
            fs::remove_dir_all(&staging)?;
        }
        let data_dir = DataDir::open(&staging, node_id, Some(cluster_id))?;
        fill(&data_dir, file, node_id, member, log_id).await?;
        data_dir.sync()?;
        fs::rename(data_dir.root(), &target)?;
        snapshot::sync_dir(&target)?;
        fs::remove_dir(&staging)?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = fs::remove_dir_all(&staging);
        if created_base {
            let _ = fs::remove_dir_all(base);
        }
        return Err(e);
    }
    Ok(Restored {
        dir: target,
        log_id,
        backup_members: backup.last_membership.nodes().map(|(id, _)| *id).collect(),
    })
}

/// Writes the state machine and the log of a node that has just installed the backup.
async fn fill(
    data_dir: &DataDir,
    file: &Path,
    node_id: NodeId,
    member: Member,
    log_id: LogId,
) -> Result<(), Error> {
    let storage = |path: PathBuf| {
        move |e: io::Error| Error::Storage {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, member)]),
    )
    .map_err(|e| Error::Config(format!("cannot form the membership: {e}")))?;
    let mut state_machine = StateMachineStore::open(&data_dir.state_db(), data_dir.snapshots())?;
    let restored = state_machine
        .restore(file.to_path_buf(), membership)
        .await
        .map_err(storage(data_dir.state_db()))?;
    if restored.last_log_id != Some(log_id) {
        return Err(Error::Config(format!(
            "{} changed while it was being restored",
            file.display()
        )));
    }
    drop(state_machine);
    let mut log = LogStore::open(&data_dir.log_db())?;
    let log_failed = storage(data_dir.log_db());
    log.save_vote(&Vote::new(log_id.leader_id.term, node_id))
        .await
        .map_err(&log_failed)?;
    log.purge(log_id).await.map_err(&log_failed)?;
    Ok(())
}
