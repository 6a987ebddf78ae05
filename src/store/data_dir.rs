//! The per-node data directory, `DIR/node<N>/`, and the marker file that proves ondisk made it.
//!
//! The marker exists so that pointing `-data-dir` at the wrong place (another program's files, or
//! another node's directory) fails loudly before anything is written there.

use std::fs;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use crate::error::Error;
use crate::types::NodeId;

/// Name of the marker file at the root of every node directory.
const MARKER: &str = "ONDISK";
/// Present once the node has been removed from its cluster.
const REMOVED_MARKER: &str = "REMOVED";
/// On-disk layout version; bumped when the layout changes incompatibly.
const FORMAT_VERSION: u32 = 4;
/// The oldest layout this version opens, upgrading its marker: format 2 stored each current
/// value twice (see `store::mvcc`), and its records still read as format 3's; format 3 kept the
/// history by key, which the state machine converts when it opens (`store::legacy`). The marker
/// is rewritten before anything else, so an older ondisk refuses the directory from then on
/// instead of misreading the records written from now on.
const OLDEST_UPGRADABLE_FORMAT: u32 = 2;

/// A validated node directory. Holding one means the directory is ours and is for this node.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens `base/node<id>`, creating it (with its marker) if it does not exist or is empty.
    ///
    /// `cluster_id` identifies the cluster the command line describes (see
    /// [`crate::cli::Addresses::cluster_id`]); `None` when it cannot be known yet.
    ///
    /// Refuses, without writing anything: a non-empty directory without a marker, and one whose
    /// marker names another node, another format version or another cluster.
    pub fn open(base: &Path, node_id: NodeId, cluster_id: Option<u32>) -> Result<Self, Error> {
        let root = base.join(format!("node{node_id}"));
        let marker = root.join(MARKER);
        match fs::read_to_string(&marker) {
            Ok(text) => {
                let marker = check_marker(&root, &text, node_id, cluster_id)?;
                if marker.format < FORMAT_VERSION {
                    write_marker(&root, node_id, marker.cluster_id.or(cluster_id))?;
                    tracing::info!(
                        "upgraded {} from format {} to {FORMAT_VERSION}",
                        root.display(),
                        marker.format
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if is_non_empty_dir(&root)? {
                    return Err(Error::ForeignDataDir {
                        path: root,
                        marker: MARKER,
                    });
                }
                create_dir_durably(&root)?;
                write_marker(&root, node_id, cluster_id)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(DataDir { root })
    }

    /// The node directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The RocksDB database holding the Raft log, vote and commit point.
    pub fn log_db(&self) -> PathBuf {
        self.root.join("raft-log")
    }

    /// The RocksDB database holding the state machine.
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Where snapshots (checkpoints) and snapshots being received are kept.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The node's log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("ondisk.log")
    }

    /// Fsyncs the node directory, so that what was created in it (the databases' directories,
    /// the snapshot directory, the log file) survives a power cut: RocksDB fsyncs the files it
    /// creates in its own directory, never the entry of that directory in its parent.
    pub fn sync(&self) -> io::Result<()> {
        fs::File::open(&self.root)?.sync_all()
    }

    /// Records, durably, that this node has been removed from the cluster, so a restart with
    /// this data says so and stops instead of trying to rejoin.
    pub fn mark_removed(&self) -> io::Result<()> {
        fs::File::create(self.root.join(REMOVED_MARKER))?.sync_all()?;
        fs::File::open(&self.root)?.sync_all()
    }

    /// True once [`DataDir::mark_removed`] has been called for this directory.
    pub fn was_removed(&self) -> bool {
        self.root.join(REMOVED_MARKER).exists()
    }
}

/// Creates `dir` and its missing parents, fsyncing the directory each one was created in: a new
/// name survives a power cut only once its directory is fsynced.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    create_dir_durably(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fs::File::open(parent)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_non_empty_dir(path: &Path) -> io::Result<bool> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => Err(e),
    }
}

fn check_marker(
    root: &Path,
    text: &str,
    node_id: NodeId,
    cluster_id: Option<u32>,
) -> Result<Marker, Error> {
    let incompatible = |reason: String| Error::IncompatibleDataDir {
        path: root.to_path_buf(),
        reason,
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    let format = field("format").and_then(|v| v.parse::<u32>().ok());
    if format == Some(1) {
        return Err(incompatible(
            "was written by an ondisk from before revisions (format=1): back it up with that \
             version (`ondisk ctl backup FILE`) and load the backup with `ondisk restore`"
                .into(),
        ));
    }
    let unsupported = || {
        incompatible(format!(
            "has an unreadable or unsupported {MARKER} marker (expected format={FORMAT_VERSION})"
        ))
    };
    let format = format
        .filter(|format| (OLDEST_UPGRADABLE_FORMAT..=FORMAT_VERSION).contains(format))
        .ok_or_else(unsupported)?;
    match field("node_id").and_then(|v| v.parse::<NodeId>().ok()) {
        Some(found) if found == node_id => {}
        Some(found) => {
            return Err(incompatible(format!(
                "belongs to node {found}, not node {node_id}"
            )))
        }
        None => {
            return Err(incompatible(format!(
                "has a {MARKER} marker without a node id"
            )))
        }
    }
    let recorded = field("cluster_id").and_then(|v| u32::from_str_radix(v, 16).ok());
    match (recorded, cluster_id) {
        (Some(recorded), Some(expected)) if recorded != expected => Err(incompatible(format!(
            "belongs to cluster {recorded:08x}, not to the cluster the command line describes \
             ({expected:08x}): check --cluster, or use another -data-dir"
        ))),
        _ => Ok(Marker {
            format,
            cluster_id: recorded,
        }),
    }
}

/// What a valid marker records besides the node id (which must be the one asked for).
struct Marker {
    format: u32,
    cluster_id: Option<u32>,
}

/// Writes the marker atomically (temp file, fsync, rename, fsync of the directory) so a crash
/// never leaves a half-written marker that would make the directory look foreign.
fn write_marker(root: &Path, node_id: NodeId, cluster_id: Option<u32>) -> io::Result<()> {
    let tmp = root.join(format!("{MARKER}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    write!(
        file,
        "ondisk data directory\nformat={FORMAT_VERSION}\nnode_id={node_id}\n"
    )?;
    if let Some(cluster_id) = cluster_id {
        writeln!(file, "cluster_id={cluster_id:08x}")?;
    }
    file.sync_all()?;
    fs::rename(&tmp, root.join(MARKER))?;
    fs::File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_fresh_directory_and_reopens_it() {
        let base = tempfile::tempdir().unwrap();
        let dir = DataDir::open(base.path(), 2, Some(7)).unwrap();
        assert!(dir.root().join(MARKER).exists());
        DataDir::open(base.path(), 2, Some(7)).unwrap();
    }

    #[test]
    fn refuses_a_foreign_directory_without_touching_it() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("node1");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("CURRENT"), b"not ours").unwrap();
        let err = DataDir::open(base.path(), 1, None).unwrap_err();
        assert!(matches!(err, Error::ForeignDataDir { .. }), "{err}");
        assert!(!root.join(MARKER).exists());
        assert_eq!(fs::read(root.join("CURRENT")).unwrap(), b"not ours");
    }

    /// A format 2 directory opens, and its marker is upgraded first, so that an older ondisk
    /// refuses it from then on; what the marker recorded is kept.
    #[test]
    fn upgrades_a_format_2_directory_and_keeps_its_cluster() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("node2");
        fs::create_dir_all(&root).unwrap();
        fs::write(
            root.join(MARKER),
            "ondisk data directory\nformat=2\nnode_id=2\ncluster_id=00000abc\n",
        )
        .unwrap();
        DataDir::open(base.path(), 2, None).unwrap();
        let marker = fs::read_to_string(root.join(MARKER)).unwrap();
        assert!(
            marker.contains(&format!("format={FORMAT_VERSION}\n")),
            "{marker}"
        );
        let err = DataDir::open(base.path(), 2, Some(0xdef)).unwrap_err();
        assert!(
            err.to_string().contains("belongs to cluster 00000abc"),
            "{err}"
        );

        fs::write(
            root.join(MARKER),
            "ondisk data directory\nformat=9\nnode_id=2\n",
        )
        .unwrap();
        let err = DataDir::open(base.path(), 2, None).unwrap_err();
        assert!(err.to_string().contains("unsupported"), "{err}");
    }

    #[test]
    fn refuses_another_nodes_directory() {
        let base = tempfile::tempdir().unwrap();
        DataDir::open(base.path(), 1, None).unwrap();
        fs::rename(base.path().join("node1"), base.path().join("node3")).unwrap();
        let err = DataDir::open(base.path(), 3, None).unwrap_err();
        assert!(err.to_string().contains("belongs to node 1"), "{err}");
    }

    #[test]
    fn refuses_a_directory_from_another_cluster() {
        let base = tempfile::tempdir().unwrap();
        DataDir::open(base.path(), 1, Some(0xabc)).unwrap();
        let err = DataDir::open(base.path(), 1, Some(0xdef)).unwrap_err();
        assert!(
            err.to_string().contains("belongs to cluster 00000abc"),
            "{err}"
        );
        DataDir::open(base.path(), 1, None).unwrap();
    }
}
