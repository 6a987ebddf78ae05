//! Mounting the file system, and the power cut itself: unmount, roll the model back, mount again
//! (so that nothing the kernel cached survives either).
//!
//! The mount point is first bind-mounted onto itself and made a shared mount (the "stage"), and
//! the FUSE file system is mounted on top of it. Processes started with `ip netns exec` get a
//! new mount namespace whose copy of the stage is a slave of this one, so an unmount here also
//! unmounts their copy (the connection really closes, and the cut can proceed), and a remount
//! here appears there too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::fs::{lock, PowerCutFs, Shared};
use crate::model::{self, CutReport, Model};

/// The mount's source in `/proc/self/mountinfo` (its type is plain `fuse`), by which tests
/// recognise it.
pub const FS_NAME: &str = "powercut";
/// How long an unmount is retried while the mount is busy (a killed process's files are closed
/// by the kernel shortly after it is reaped).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// Pause between two unmount attempts.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// How long the FUSE session may take to end once its mount is gone.
const SESSION_END: Duration = Duration::from_secs(10);

/// Why mounting, cutting or unmounting failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot prepare the backing directory: {0}")]
    Backing(io::Error),
    #[error("cannot use the mount point {0}: {1}")]
    MountPoint(PathBuf, io::Error),
    #[error("cannot make {0} a shared mount: {1}")]
    Stage(PathBuf, nix::Error),
    #[error("cannot mount the file system on {0}: {1}")]
    Mount(PathBuf, io::Error),
    #[error("{0} is still in use after {BUSY_WAIT:?} (kill the processes using it first)")]
    Busy(PathBuf),
    #[error("cannot unmount {0}: {1}")]
    Unmount(PathBuf, nix::Error),
    #[error("the file system on {0} did not stop after its unmount (still mounted elsewhere?)")]
    Lingering(PathBuf),
    #[error("the power cut failed: {0}")]
    Cut(io::Error),
}

/// A mounted power-cut file system.
pub struct Mounted {
    model: Shared,
    mountpoint: PathBuf,
    /// The FUSE session while the file system is mounted.
    session: Option<BackgroundSession>,
}

impl Mounted {
    /// Mounts an empty file system backed by `backing` on `mountpoint`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mounted, Error> {
        let model = Model::new(backing).map_err(Error::Backing)?;
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| Error::MountPoint(mountpoint.to_path_buf(), e))?;
        stage(&mountpoint)?;
        let mut mounted = Mounted {
            model: Arc::new(Mutex::new(model)),
            mountpoint,
            session: None,
        };
        mounted.start_session()?;
        Ok(mounted)
    }

    fn start_session(&mut self) -> Result<(), Error> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(FS_NAME.into())];
        let fs = PowerCutFs::new(self.model.clone());
        let session = fuser::spawn_mount(fs, &self.mountpoint, &config)
            .map_err(|e| Error::Mount(self.mountpoint.clone(), e))?;
        self.session = Some(session);
        Ok(())
    }

    /// Power cut: everything not durable is lost, as are the kernel's caches. Nothing may have a
    /// file open on the mount.
    pub fn cut(&mut self) -> Result<CutReport, Error> {
        self.unmount()?;
        let report = lock(&self.model).cut().map_err(|e| Error::Cut(errno(e)))?;
        self.start_session()?;
        Ok(report)
    }

    /// Unmounts the file system (not the stage), retrying while it is busy, and waits for its
    /// session to end.
    fn unmount(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + BUSY_WAIT;
        loop {
            match umount2(&self.mountpoint, MntFlags::empty()) {
                Ok(()) => break,
                Err(nix::Error::EBUSY) if Instant::now() < deadline => thread::sleep(BUSY_RETRY),
                Err(nix::Error::EBUSY) => {
                    self.session = Some(session);
                    return Err(Error::Busy(self.mountpoint.clone()));
                }
                Err(e) => {
                    self.session = Some(session);
                    return Err(Error::Unmount(self.mountpoint.clone(), e));
                }
            }
        }
        let (done, ended) = mpsc::channel();
        thread::spawn(move || {
            let _ = done.send(session.join());
        });
        match ended.recv_timeout(SESSION_END) {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Lingering(self.mountpoint.clone())),
        }
    }
}

impl Drop for Mounted {
    /// Unmounts the file system, lazily if something still uses it, then the stage.
    fn drop(&mut self) {
        if self.unmount().is_err() {
            let _ = umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        }
        let _ = umount2(&self.mountpoint, MntFlags::MNT_DETACH);
    }
}

/// Bind-mounts `mountpoint` onto itself and makes it shared (see the module's documentation).
fn stage(mountpoint: &Path) -> Result<(), Error> {
    let none: Option<&str> = None;
    mount(Some(mountpoint), mountpoint, none, MsFlags::MS_BIND, none)
        .map_err(|e| Error::Stage(mountpoint.to_path_buf(), e))?;
    if let Err(e) = mount(none, mountpoint, none, MsFlags::MS_SHARED, none) {
        let _ = umount2(mountpoint, MntFlags::MNT_DETACH);
        return Err(Error::Stage(mountpoint.to_path_buf(), e));
    }
    Ok(())
}

fn errno(e: model::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.0)
}
