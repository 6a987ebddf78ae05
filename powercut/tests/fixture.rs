//! The fixture through a real FUSE mount, driven by `powercut-fs`'s control protocol: what
//! survives a power cut and what does not. Skipped (with a message) where /dev/fuse is absent.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use ondisk_powercut::control::{ControlError, PowerCut};
use tempfile::TempDir;

/// A mounted fixture on temporary directories, unmounted and removed on drop.
struct Mount {
    // Declared first: unmounts before the directories go.
    fixture: PowerCut,
    dir: TempDir,
}

impl Mount {
    /// Mounts a fresh fixture, or `None` (said so) where FUSE is not available.
    fn start() -> Option<Mount> {
        if !ondisk_powercut::fuse_available() {
            eprintln!("SKIPPED: /dev/fuse is absent, so the power-cut fixture cannot mount");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        fs::create_dir(dir.path().join("mnt")).expect("create the mount point");
        let fixture = PowerCut::start(
            Path::new(env!("CARGO_BIN_EXE_powercut-fs")),
            &dir.path().join("backing"),
            &dir.path().join("mnt"),
        )
        .expect("mount the fixture");
        Some(Mount { fixture, dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fixture.mountpoint().join(name)
    }

    fn cut(&mut self) {
        self.fixture.cut().expect("power cut");
    }

    /// Object files in the backing directory (one per live or durable file).
    fn objects(&self) -> usize {
        fs::read_dir(self.dir.path().join("backing/objects"))
            .expect("list objects")
            .count()
    }
}

/// Writes `data` to a new (or truncated) file without syncing anything.
fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `data` to a new (or truncated) file and fsyncs the file (not its directory).
fn write_synced(path: &Path, data: &[u8]) {
    let mut file = File::create(path).expect("create");
    file.write_all(data).expect("write");
    file.sync_all().expect("fsync");
}

fn fsync_dir(path: &Path) {
    File::open(path)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync directory {}: {e}", path.display()));
}

fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

#[test]
fn unsynced_data_is_lost_and_fsynced_data_stays() {
    let Some(mut m) = Mount::start() else { return };
    let root = m.path("");
    write_synced(&m.path("kept"), b"durable");
    write_synced(&m.path("patched"), b"0123456789");
    fsync_dir(&root);

    let mut kept = OpenOptions::new()
        .append(true)
        .open(m.path("kept"))
        .unwrap();
    kept.write_all(b" and then some").unwrap();
    drop(kept);
    let patched = OpenOptions::new()
        .write(true)
        .open(m.path("patched"))
        .unwrap();
    patched.write_all_at(b"abc", 4).unwrap();
    patched.write_all_at(b"XYZ", 12).unwrap();
    drop(patched);
    assert_eq!(read(&m.path("kept")).unwrap(), b"durable and then some");
    assert_eq!(read(&m.path("patched")).unwrap(), b"0123abc789\0\0XYZ");

    m.cut();
    assert_eq!(read(&m.path("kept")).unwrap(), b"durable");
    assert_eq!(read(&m.path("patched")).unwrap(), b"0123456789");

    let patched = OpenOptions::new()
        .write(true)
        .open(m.path("patched"))
        .unwrap();
    patched.write_all_at(b"abc", 4).unwrap();
    patched.sync_data().unwrap();
    drop(patched);
    m.cut();
    assert_eq!(read(&m.path("patched")).unwrap(), b"0123abc789");
}

#[test]
fn a_new_file_vanishes_unless_its_directory_is_fsynced() {
    let Some(mut m) = Mount::start() else { return };
    fs::create_dir(m.path("dir")).unwrap();
    fsync_dir(&m.path(""));
    write_synced(&m.path("dir/synced-file-only"), b"data");
    write_synced(&m.path("dir/both"), b"data");
    fsync_dir(&m.path("dir"));
    write_synced(&m.path("dir/after"), b"data");
    fs::create_dir(m.path("dir/sub")).unwrap();
    write_synced(&m.path("dir/sub/file"), b"data");
    fsync_dir(&m.path("dir/sub"));

    m.cut();
    assert_eq!(read(&m.path("dir/synced-file-only")).unwrap(), b"data");
    assert_eq!(read(&m.path("dir/both")).unwrap(), b"data");
    assert!(!m.path("dir/after").exists(), "created after the dir fsync");
    assert!(
        !m.path("dir/sub").exists(),
        "a directory needs its parent fsynced"
    );
    assert_eq!(m.objects(), 2, "the vanished files' objects are gone too");

    write_synced(&m.path("unsynced-dir-entry"), b"data");
    m.cut();
    assert!(!m.path("unsynced-dir-entry").exists());
}

#[test]
fn renames_and_unlinks_are_undone_without_a_directory_fsync() {
    let Some(mut m) = Mount::start() else { return };
    for name in ["a", "b", "c"] {
        write_synced(&m.path(name), name.as_bytes());
    }
    fsync_dir(&m.path(""));
    fs::rename(m.path("a"), m.path("renamed")).unwrap();
    fs::rename(m.path("b"), m.path("c")).unwrap();
    fs::remove_file(m.path("c")).unwrap();
    assert!(!m.path("a").exists() && !m.path("b").exists() && !m.path("c").exists());

    m.cut();
    assert!(!m.path("renamed").exists());
    for name in ["a", "b", "c"] {
        assert_eq!(read(&m.path(name)).unwrap(), name.as_bytes(), "{name}");
    }

    fs::rename(m.path("a"), m.path("renamed")).unwrap();
    fs::remove_file(m.path("b")).unwrap();
    fsync_dir(&m.path(""));
    m.cut();
    assert_eq!(read(&m.path("renamed")).unwrap(), b"a");
    assert!(!m.path("a").exists() && !m.path("b").exists());
    assert_eq!(
        m.objects(),
        2,
        "the removed file's object is gone after the dir fsync"
    );
}

#[test]
fn a_hard_link_is_durable_with_its_directory() {
    let Some(mut m) = Mount::start() else { return };
    write_synced(&m.path("table.sst"), b"table");
    fsync_dir(&m.path(""));
    fs::create_dir(m.path("checkpoint")).unwrap();
    fsync_dir(&m.path(""));
    fs::hard_link(m.path("table.sst"), m.path("checkpoint/table.sst")).unwrap();
    fs::hard_link(m.path("table.sst"), m.path("unsynced-link")).unwrap();
    fsync_dir(&m.path("checkpoint"));
    assert_eq!(fs::metadata(m.path("table.sst")).unwrap().nlink(), 3);

    m.cut();
    assert_eq!(read(&m.path("checkpoint/table.sst")).unwrap(), b"table");
    assert!(!m.path("unsynced-link").exists());
    assert_eq!(fs::metadata(m.path("table.sst")).unwrap().nlink(), 2);

    fs::remove_file(m.path("table.sst")).unwrap();
    fsync_dir(&m.path(""));
    m.cut();
    assert!(!m.path("table.sst").exists());
    assert_eq!(read(&m.path("checkpoint/table.sst")).unwrap(), b"table");
    assert_eq!(m.objects(), 1);
}

#[test]
fn truncation_is_undone_unless_fsynced() {
    let Some(mut m) = Mount::start() else { return };
    let data: Vec<u8> = (0..100u8).collect();
    write_synced(&m.path("file"), &data);
    fsync_dir(&m.path(""));
    let file = OpenOptions::new().write(true).open(m.path("file")).unwrap();
    file.set_len(10).unwrap();
    file.write_all_at(b"grown again", 50).unwrap();
    file.set_len(200).unwrap();
    drop(file);

    m.cut();
    assert_eq!(read(&m.path("file")).unwrap(), data);

    let file = OpenOptions::new().write(true).open(m.path("file")).unwrap();
    file.set_len(10).unwrap();
    file.sync_all().unwrap();
    drop(file);
    m.cut();
    assert_eq!(read(&m.path("file")).unwrap(), &data[..10]);
}

/// How RocksDB replaces CURRENT: write a temporary file, fsync it, rename it over, fsync the
/// directory. Without the last step the old CURRENT comes back.
#[test]
fn a_file_replaced_by_rename_is_durable_once_the_directory_is_fsynced() {
    let Some(mut m) = Mount::start() else { return };
    write_synced(&m.path("CURRENT"), b"MANIFEST-000001\n");
    fsync_dir(&m.path(""));

    write_synced(&m.path("000002.dbtmp"), b"MANIFEST-000002\n");
    fs::rename(m.path("000002.dbtmp"), m.path("CURRENT")).unwrap();
    fsync_dir(&m.path(""));
    write_synced(&m.path("000003.dbtmp"), b"MANIFEST-000003\n");
    fs::rename(m.path("000003.dbtmp"), m.path("CURRENT")).unwrap();
    assert_eq!(read(&m.path("CURRENT")).unwrap(), b"MANIFEST-000003\n");

    m.cut();
    assert_eq!(read(&m.path("CURRENT")).unwrap(), b"MANIFEST-000002\n");
    assert!(!m.path("000003.dbtmp").exists());
    assert_eq!(
        m.objects(),
        1,
        "the replaced and the unsynced files are gone"
    );
}

#[test]
fn an_unlinked_open_file_stays_readable() {
    let Some(mut m) = Mount::start() else { return };
    write(&m.path("file"), b"still here");
    let open = File::open(m.path("file")).unwrap();
    fs::remove_file(m.path("file")).unwrap();
    let mut buf = [0; 10];
    open.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(m.objects(), 1);
    drop(open);
    m.cut();
    assert_eq!(m.objects(), 0);
}

#[test]
fn a_cut_is_refused_while_a_file_is_open() {
    let Some(mut m) = Mount::start() else { return };
    write(&m.path("file"), b"data");
    let open = File::open(m.path("file")).unwrap();
    let refused = m.fixture.cut();
    assert!(
        matches!(&refused, Err(ControlError::Refused(line)) if line.contains("still in use")),
        "{refused:?}"
    );
    drop(open);
    m.cut();
    assert!(!m.path("file").exists());
}

#[test]
fn statfs_shows_the_backing_file_system() {
    let Some(m) = Mount::start() else { return };
    let mounted = nix::sys::statvfs::statvfs(&m.path("")).unwrap();
    let backing = nix::sys::statvfs::statvfs(m.dir.path()).unwrap();
    assert_eq!(mounted.blocks(), backing.blocks());
    assert_eq!(mounted.fragment_size(), backing.fragment_size());
}

/// A process in another mount namespace (as `ip netns exec` makes one, with slave propagation)
/// does not hold the cut up, and sees the file system again after it.
#[test]
fn a_cut_reaches_other_mount_namespaces() {
    let Some(mut m) = Mount::start() else { return };
    write(&m.path("file"), b"data");
    let mut other = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "sleep", "60"])
        .spawn()
        .expect("run unshare");
    let mountinfo = format!("/proc/{}/mountinfo", other.id());
    let target = format!(" {} ", m.fixture.mountpoint().display());
    let sees_fixture = || {
        let mounts = fs::read_to_string(&mountinfo).unwrap_or_default();
        mounts
            .lines()
            .any(|l| l.contains(&target) && l.contains(" - fuse powercut "))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sees_fixture() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(sees_fixture(), "the other namespace never saw the fixture");

    let cut = m.fixture.cut();
    let still_seen = sees_fixture();
    let _ = other.kill();
    let _ = other.wait();
    assert!(cut.is_ok(), "{cut:?}");
    assert!(still_seen, "the remount did not reach the other namespace");
    assert!(!m.path("file").exists());
}
