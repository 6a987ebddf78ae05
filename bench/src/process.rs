//! Server processes the comparison starts, and what it reads about them from `/proc`.
//!
//! Every child is held by a [`Server`] whose drop kills and reaps it, so the comparison stops
//! exactly what it started, whether it finishes, fails or is interrupted.

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::PoisonError;

use anyhow::Context;

/// A running server process, killed when dropped.
pub struct Server {
    name: String,
    child: Option<Child>,
}

impl Server {
    /// Starts `command` with its output appended to `log`.
    pub fn spawn(name: String, mut command: Command, log: &Path) -> anyhow::Result<Server> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Server {
            name,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// If the process has exited by itself (it is a zombie, not yet reaped), its name and the
    /// last line it wrote to `log`: a server that cannot start says why there, and a wait for it
    /// to serve should stop with that instead of running to its deadline. One this program
    /// stopped or killed is not reported.
    pub fn exit_report(&self, log: &Path) -> Option<String> {
        let child = self.child.as_ref()?;
        let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // The state follows the parenthesised command name, which may itself hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if !matches!(state, Some('Z') | None) {
            return None;
        }
        let output = fs::read_to_string(log).unwrap_or_default();
        let last = output.lines().rev().find(|line| !line.trim().is_empty());
        Some(format!(
            "{} exited: {}",
            self.name,
            last.unwrap_or("(it wrote nothing)")
        ))
    }

    /// Asks the process to stop (SIGTERM) and waits for it, as an operator's restart would.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
            // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            child
                .wait()
                .with_context(|| format!("waiting for {} to stop", self.name))?;
        }
        Ok(())
    }

    /// SIGKILLs the process and reaps it: a crash, with no chance to flush or say goodbye.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("cannot kill {}", self.name))?;
            child
                .wait()
                .with_context(|| format!("waiting for {} to die", self.name))?;
        }
        Ok(())
    }

    /// Resident memory in bytes (VmRSS), or 0 if the process is gone.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes_of(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on right now, and not handed out before by this process: the
/// kernel may pick a port it has just released again, and two servers told one port would not
/// both start. The probe socket is released at once, so another program could still take the
/// port before the server binds it; the server then exits with "address in use", which
/// [`Server::exit_report`] passes on.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// Resident memory of process `pid` in bytes (VmRSS from `/proc/PID/status`), or 0 if it is gone.
pub fn rss_bytes_of(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The largest resident set of process `pid` since it started, in bytes (0 if unknown).
pub fn peak_rss_bytes_of(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A size in kB from `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bytes an unprivileged process may still write to the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> anyhow::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs(3) writes only into the zeroed struct we pass, and reads the path, a valid
    // NUL-terminated string that outlives the call.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the free space of {}", dir.display()));
    }
    // The fields' types differ between platforms (u64 here).
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(blocks * block_size)
}

/// Raises this process's soft limit on open files to its hard limit, so that a thousand watch
/// streams (and the servers it starts, which inherit the limit) do not run out of descriptors;
/// returns the soft limit now in force.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            anyhow::bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            anyhow::bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// User plus system CPU seconds this process has used.
pub fn cpu_seconds_self() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the buffer we own and returns 0 on success.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// User plus system CPU seconds the processes `pids` have used (from `/proc/PID/stat`).
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which is in parentheses and may contain spaces.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// Bytes used by the files under `dir`, each file counted once however many names it has:
/// ondisk's snapshots are RocksDB checkpoints, hard links to the state's own table files.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) if seen.insert((meta.dev(), meta.ino())) => total += meta.len(),
                _ => {}
            }
        }
    }
    total
}

/// The machine's load average over the last minute (from `/proc/loadavg`), to tell a run on a busy
/// machine from one on a quiet machine.
pub fn load_average() -> Option<f64> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
