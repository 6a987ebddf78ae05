//! How the kernel schedules a node's threads (`-cpu-scheduling`).
//!
//! A put wakes a thread at every step: a request wakes the node's thread, an append wakes the
//! log syncer, the sync's completion wakes the node's thread again, and likewise on every
//! member. Under Linux's default policy a woken thread preempts the one running on its CPU, so
//! when members share few cores (three on two in the benchmarks) each wake-up is also a context
//! switch, and the preempted thread is switched back soon after. Under `SCHED_BATCH` a woken
//! thread waits for the running one's time slice instead; a CPU that is idle still runs it at
//! once, so a lone request is not delayed. Measured on this project's benchmark machine: 4 to 10 %
//! less server CPU per request and 3 to 7 % more throughput for puts and reads, and no change to
//! a single client's latency (BENCHMARKS.md).

use std::io;

/// The scheduling policy of every thread of a node process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuScheduling {
    /// `SCHED_BATCH`: woken threads do not preempt running ones.
    Batch,
    /// `SCHED_OTHER`, the default of the kernel: woken threads preempt running ones.
    Normal,
}

/// Sets `policy` for the calling thread, which every thread it starts afterwards inherits
/// (threads, including RocksDB's and tokio's, are created with the creator's policy). Call it
/// before the process starts any thread. Leaves the thread's nice value as it is (crates that
/// set policies also reset the nice value, which an operator may have chosen).
pub fn apply_to_this_thread(policy: CpuScheduling) -> io::Result<()> {
    let policy = match policy {
        CpuScheduling::Batch => libc::SCHED_BATCH,
        CpuScheduling::Normal => libc::SCHED_OTHER,
    };
    // Both policies take static priority 0 (sched(7)); the niceness is a separate attribute.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, and pid 0 names the
    // calling thread; the call reads `param` and changes nothing else in this process.
    let result = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
