//! Mounting the file system, and the power cut itself: unmount, roll the model back, mount again
//! (so that nothing the kernel cached survives either).
//!
//! The mount point is first bind-mounted onto itself and made a shared mount (the "stage"), and
//! the FUSE file system is mounted on top of it. Processes started with `ip netns exec` get a
//! new mount namespace whose copy of the stage is a slave of this one, so an unmount here also
//! unmounts their copy (the connection really closes, and the cut can proceed), and a remount
//! here appears there too.
//!
//! The FUSE mount itself is made here rather than by `fuser`, whose unmount-on-drop would, once
//! the file system is gone, unmount whatever is left at the mount point: the stage.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fuser::{Config, Session, SessionACL};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{getgid, getuid};

use crate::fs::{lock, PowerCutFs, Shared};
use crate::model::{self, CutReport, Model};

/// The mount's source in `/proc/self/mountinfo` (its type is `fuse`), by which tests recognise
/// it.
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
    /// The thread serving the FUSE session while the file system is mounted.
    session: Option<JoinHandle<io::Result<()>>>,
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

    /// Mounts the file system on the stage and serves it on a thread of its own.
    fn start_session(&mut self) -> Result<(), Error> {
        let failed = |e: io::Error| Error::Mount(self.mountpoint.clone(), e);
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(failed)?;
        let options = format!(
            "fd={},rootmode=40755,user_id={},group_id={}",
            device.as_raw_fd(),
            getuid(),
            getgid()
        );
        mount(
            Some(FS_NAME),
            &self.mountpoint,
            Some("fuse"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| failed(e.into()))?;
        let fs = PowerCutFs::new(self.model.clone());
        let acl = SessionACL::Owner;
        let session = match Session::from_fd(fs, OwnedFd::from(device), acl, Config::default()) {
            Ok(session) => session,
            Err(e) => {
                let _ = umount2(&self.mountpoint, MntFlags::MNT_DETACH);
                return Err(failed(e));
            }
        };
        self.session = Some(thread::spawn(move || session.run()));
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
