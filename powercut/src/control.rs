//! The test side of `powercut-fs`: start it, cut power, and stop it (also when a test panics).

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};

use crate::model::CutReport;

/// How long mounting may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cut may take (unmount, roll back, mount again).
const CUT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the process may take to unmount and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between polls of the process's exit.
const POLL: Duration = Duration::from_millis(10);

/// Why the fixture process did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, io::Error),
    #[error("powercut-fs did not answer within {0:?}")]
    Timeout(Duration),
    #[error("powercut-fs exited (its error is on stderr)")]
    Exited,
    #[error("powercut-fs: {0}")]
    Refused(String),
    #[error("cannot talk to powercut-fs: {0}")]
    Io(#[from] io::Error),
}

/// A running `powercut-fs` process with its file system mounted.
pub struct PowerCut {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    mountpoint: PathBuf,
}

impl PowerCut {
    /// Starts `binary` (the `powercut-fs` executable) on `backing` and `mountpoint` and waits
    /// until it has mounted.
    pub fn start(
        binary: &Path,
        backing: &Path,
        mountpoint: &Path,
    ) -> Result<PowerCut, ControlError> {
        let mut child = Command::new(binary)
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ControlError::Spawn(binary.to_path_buf(), e))?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut fixture = PowerCut {
            stdin: child.stdin.take(),
            child,
            lines,
            mountpoint: mountpoint.to_path_buf(),
        };
        match fixture.answer(START_TIMEOUT)?.as_str() {
            "mounted" => Ok(fixture),
            other => Err(ControlError::Refused(other.to_string())),
        }
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The process id (to check which mount namespace sees the mount, for example).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Power cut: everything not fsynced is lost. Nothing may have a file open on the mount
    /// (kill the processes using it first).
    pub fn cut(&mut self) -> Result<CutReport, ControlError> {
        self.send("cut")?;
        let answer = self.answer(CUT_TIMEOUT)?;
        parse_cut(&answer).ok_or(ControlError::Refused(answer))
    }

    fn send(&mut self, command: &str) -> Result<(), ControlError> {
        let stdin = self.stdin.as_mut().ok_or(ControlError::Exited)?;
        stdin.write_all(format!("{command}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    fn answer(&mut self, timeout: Duration) -> Result<String, ControlError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ControlError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Exited),
        }
    }
}

/// Reads `cut: dropped N bytes, M entries`.
fn parse_cut(answer: &str) -> Option<CutReport> {
    let rest = answer.strip_prefix("cut: dropped ")?;
    let (bytes, rest) = rest.split_once(" bytes, ")?;
    let entries = rest.strip_suffix(" entries")?;
    Some(CutReport {
        bytes: bytes.parse().ok()?,
        entries: entries.parse().ok()?,
    })
}

impl Drop for PowerCut {
    /// Asks the process to unmount and exit; if it does not in time, kills it and detaches its
    /// mounts so no dead mount is left behind.
    fn drop(&mut self) {
        let _ = self.send("exit");
        self.stdin = None;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..2 {
            let _ = umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_answers_are_parsed() {
        assert_eq!(
            parse_cut("cut: dropped 12 bytes, 3 entries"),
            Some(CutReport {
                bytes: 12,
                entries: 3
            })
        );
        assert_eq!(parse_cut("error: busy"), None);
    }
}
