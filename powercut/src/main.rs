//! `powercut-fs BACKING MOUNTPOINT`: mounts the power-cut file system, prints `mounted`, then
//! answers one line to each command read on stdin:
//!
//! - `cut`: a power cut (nothing may have a file open on the mount): `cut: dropped N bytes, M
//!   entries`, or `error: ...`;
//! - `exit`, or the end of stdin: unmounts and exits.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ondisk_powercut::mount::Mounted;

const USAGE: &str = "usage: powercut-fs BACKING MOUNTPOINT (then `cut` or `exit` on stdin)";

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!("error: {USAGE}");
        return ExitCode::from(2);
    };
    match serve(backing, mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Mounts, then runs commands until `exit` or the end of stdin; the mount goes when `mounted`
/// is dropped.
fn serve(backing: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let mut mounted = Mounted::mount(backing, mountpoint)?;
    let mut out = io::stdout().lock();
    writeln!(out, "mounted")?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let answer = match line?.trim() {
            "" => continue,
            "exit" => break,
            "cut" => match mounted.cut() {
                Ok(report) => format!(
                    "cut: dropped {} bytes, {} entries",
                    report.bytes, report.entries
                ),
                Err(e) => format!("error: {e}"),
            },
            other => format!("error: unknown command {other:?} (commands: cut, exit)"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
