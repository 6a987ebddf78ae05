//! A FUSE file system that models a page cache, for power-cut tests (like LazyFS).
//!
//! Writes land at once and reads see them, but only what was fsynced survives a power cut: a
//! file's data becomes durable when the file is fsynced, a directory entry (creation, rename,
//! link, removal) when its directory is fsynced. `powercut-fs BACKING MOUNTPOINT` mounts it and
//! takes `cut` and `exit` on stdin; [`control::PowerCut`] drives that process from a test.
//!
//! - [`model`]: the state and the cut, without FUSE;
//! - [`fs`]: the FUSE requests, mapped onto the model;
//! - [`mount`]: mounting, and the cut as unmount, roll back, mount again;
//! - [`control`]: the test side of the control protocol.

pub mod control;
pub mod fs;
pub mod model;
pub mod mount;

/// Whether this machine can mount FUSE file systems at all (the fixture's tests skip without it).
pub fn fuse_available() -> bool {
    std::path::Path::new("/dev/fuse").exists()
}
