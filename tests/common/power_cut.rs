//! Power cuts for integration tests: a node's data directory on the `powercut-fs` fixture (a FUSE
//! file system that keeps only what was fsynced when told to cut power). See docs/TESTING.md.

use std::fs;
use std::path::{Path, PathBuf};

use ondisk_powercut::control::PowerCut;
use ondisk_powercut::model::CutReport;
use tempfile::TempDir;

use super::BIN;

/// One mounted fixture on a temporary backing directory; unmounted and removed on drop.
pub struct PowerCutFs {
    // Declared first: unmounts before the directories go.
    fixture: PowerCut,
    _dir: TempDir,
}

impl PowerCutFs {
    /// Whether fixtures can be mounted here; prints why a test is skipped when not.
    pub fn available() -> bool {
        let available = ondisk_powercut::fuse_available();
        if !available {
            eprintln!("SKIPPED: /dev/fuse is absent, so no power-cut fixture can be mounted");
        }
        available
    }

    /// Mounts a fresh, empty fixture. Panics with the reason if it cannot.
    pub fn start() -> PowerCutFs {
        let dir = tempfile::Builder::new()
            .prefix("ondisk-powercut-")
            .tempdir()
            .expect("create a temporary directory");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).expect("create the mount point");
        let fixture = PowerCut::start(&binary(), &dir.path().join("backing"), &mountpoint)
            .unwrap_or_else(|e| panic!("cannot mount the power-cut fixture: {e}"));
        PowerCutFs { fixture, _dir: dir }
    }

    /// Where the fixture is mounted: a node's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.fixture.mountpoint().to_path_buf()
    }

    /// The fixture process's id.
    pub fn pid(&self) -> u32 {
        self.fixture.pid()
    }

    /// Power cut: everything not fsynced is lost. The processes using the fixture must be dead.
    pub fn cut(&mut self) -> CutReport {
        self.fixture
            .cut()
            .unwrap_or_else(|e| panic!("power cut of {}: {e}", self.data_dir().display()))
    }
}

/// The `powercut-fs` binary, built next to `ondisk` by `cargo build`/`cargo test` of the
/// workspace.
fn binary() -> PathBuf {
    let path = Path::new(BIN).with_file_name("powercut-fs");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release --locked -p ondisk-powercut` \
         (`make test` builds the whole workspace)",
        path.display()
    );
    path
}
