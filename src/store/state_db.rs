//! The state machine's RocksDB, in generations: installing a snapshot builds a complete new
//! database beside the one in service and then switches to it, instead of rewriting the live one.
//!
//! `state.current` names the generation in service (`state` when the file is absent, so a fresh
//! node starts with `state/`). A switch writes the new name to `state.current.tmp`, fsyncs it and
//! renames it over `state.current`: a crash before the rename keeps the old generation, after it
//! the new one, never a mix. Generations not named by the pointer are leftovers of an interrupted
//! install or of a retired generation, and are removed when the state machine opens.

use std::borrow::Borrow;
use std::fs;
use std::io;
use std::io::Write;
use std::ops::Deref;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;

use rocksdb::DB;

use super::open_rocksdb;
use super::WalSyncs;
use crate::error::Error;
use crate::locks;

/// The pointer file's suffix, appended to the base directory's name.
const POINTER_SUFFIX: &str = ".current";

/// One generation of the state machine database.
///
/// Field order matters: `db` is dropped (closed) before `cleanup` runs, so a retired
/// generation's directory is removed only once nothing uses it any more.
pub struct StateDb {
    db: DB,
    cleanup: RemoveWhenRetired,
}

/// Lets code written for any RocksDB handle (`Arc<DB>` or a generation) take a generation.
impl Borrow<DB> for StateDb {
    fn borrow(&self) -> &DB {
        &self.db
    }
}

impl Deref for StateDb {
    type Target = DB;

    fn deref(&self) -> &DB {
        &self.db
    }
}

impl StateDb {
    /// The directory holding this generation.
    pub fn path(&self) -> &Path {
        self.cleanup.path()
    }
}

/// A directory that is removed when its owner is dropped, once it has been retired: the owner
/// (a database generation, a checkpoint) may still be in use when it is replaced.
#[derive(Debug)]
pub(super) struct RemoveWhenRetired {
    path: PathBuf,
    retired: AtomicBool,
}

impl RemoveWhenRetired {
    pub fn new(path: PathBuf) -> Self {
        RemoveWhenRetired {
            path,
            retired: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the directory for removal when this value is dropped.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl Drop for RemoveWhenRetired {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!("cannot remove retired {}: {e}", self.path.display());
            }
        }
    }
}

/// The generation in service, shared by the state machine, its readers and snapshot builders.
/// Each user takes its own handle, so a switch never pulls a database out from under a reader.
#[derive(Clone)]
pub struct SharedStateDb {
    base: PathBuf,
    current: Arc<RwLock<Arc<StateDb>>>,
    column_families: &'static [&'static str],
}

impl SharedStateDb {
    /// Opens the generation named by the pointer next to `base` (or `base` itself), removing
    /// leftovers of other generations.
    pub fn open(base: &Path, column_families: &'static [&'static str]) -> Result<Self, Error> {
        let current_path = Self::in_service(base)?;
        remove_other_generations(base, &current_path)?;
        let db = open_generation(&current_path, column_families)?;
        Ok(SharedStateDb {
            base: base.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(db))),
            column_families,
        })
    }

    /// Where the generation in service is (it may not exist yet).
    pub fn in_service(base: &Path) -> io::Result<PathBuf> {
        match fs::read_to_string(pointer(base)) {
            Ok(name) => Ok(sibling(base, name.trim())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(base.to_path_buf()),
            Err(e) => Err(e),
        }
    }

    /// A handle to the generation in service now.
    pub fn current(&self) -> Arc<StateDb> {
        locks::read(&self.current).clone()
    }

    /// Creates an empty generation beside the current one, for an install to fill.
    pub fn create_next(&self) -> io::Result<Arc<StateDb>> {
        let current = self.current();
        let next_number = generation_number(&self.base, current.path()) + 1;
        let path = sibling(
            &self.base,
            &format!("{}.{next_number}", base_name(&self.base)),
        );
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        open_generation(&path, self.column_families)
            .map(Arc::new)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Durably makes `next` the generation in service and retires the previous one. `next` must
    /// hold everything it should (synced) before this is called.
    pub fn switch_to(&self, next: Arc<StateDb>) -> io::Result<()> {
        let name = next
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("state generation has no usable name"))?
            .to_string();
        let tmp = sibling(
            &self.base,
            &format!("{}{POINTER_SUFFIX}.tmp", base_name(&self.base)),
        );
        let mut file = fs::File::create(&tmp)?;
        file.write_all(name.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, pointer(&self.base))?;
        if let Some(dir) = self.base.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        let previous = std::mem::replace(&mut *locks::write(&self.current), next);
        previous.cleanup.retire();
        Ok(())
    }
}

fn open_generation(path: &Path, column_families: &[&str]) -> Result<StateDb, Error> {
    Ok(StateDb {
        db: open_rocksdb(path, column_families, WalSyncs::Rarely)?,
        cleanup: RemoveWhenRetired::new(path.to_path_buf()),
    })
}

fn base_name(base: &Path) -> String {
    base.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into())
}

fn pointer(base: &Path) -> PathBuf {
    sibling(base, &format!("{}{POINTER_SUFFIX}", base_name(base)))
}

fn sibling(base: &Path, name: &str) -> PathBuf {
    base.with_file_name(name)
}

/// `state` is generation 0, `state.N` generation N.
fn generation_number(base: &Path, path: &Path) -> u64 {
    let prefix = format!("{}.", base_name(base));
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Removes every generation directory next to `base` except `keep`.
fn remove_other_generations(base: &Path, keep: &Path) -> io::Result<()> {
    let Some(parent) = base.parent() else {
        return Ok(());
    };
    let name = base_name(base);
    let generation_prefix = format!("{name}.");
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_generation = file_name == name
            || file_name
                .strip_prefix(&generation_prefix)
                .is_some_and(|n| n.parse::<u64>().is_ok());
        if is_generation && path != keep && path.is_dir() {
            tracing::info!("removing leftover state generation {}", path.display());
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFS: &[&str] = &["data"];

    #[test]
    fn a_switch_survives_reopening_and_the_old_generation_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("state");
        let shared = SharedStateDb::open(&base, CFS).unwrap();
        let old = shared.current();
        let next = shared.create_next().unwrap();
        next.put(b"k", b"new").unwrap();
        next.flush().unwrap();
        shared.switch_to(next).unwrap();
        assert!(base.exists(), "a reader still holds the old generation");
        drop(old);
        assert!(
            !base.exists(),
            "the retired generation is removed with its last handle"
        );
        let path = shared.current().path().to_path_buf();
        drop(shared);

        let reopened = SharedStateDb::open(&base, CFS).unwrap();
        assert_eq!(reopened.current().path(), path);
        assert_eq!(reopened.current().get(b"k").unwrap(), Some(b"new".to_vec()));
    }

    #[test]
    fn an_interrupted_install_is_discarded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("state");
        let shared = SharedStateDb::open(&base, CFS).unwrap();
        shared.current().put(b"k", b"old").unwrap();
        let partial = shared.create_next().unwrap();
        let partial_path = partial.path().to_path_buf();
        partial.put(b"k", b"half-installed").unwrap();
        drop((partial, shared));

        let reopened = SharedStateDb::open(&base, CFS).unwrap();
        assert_eq!(reopened.current().get(b"k").unwrap(), Some(b"old".to_vec()));
        assert!(!partial_path.exists());
    }
}
