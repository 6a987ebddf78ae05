//! What the machine itself allows, measured where the benchmark's clusters keep their data: how
//! long one small durable write takes (a write and `fdatasync`, what every commit waits for on
//! each member), how fast the disk takes a long sequential write, and one round trip on loopback.
//! The comparison prints its one-client latencies against the floors these make and its
//! large-value throughput against the disk's rate, so a figure reads as "how far from the
//! hardware", not only "how far from etcd".

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

/// Small durable writes timed: each a 4 KiB write at the end of a growing file, then
/// `fdatasync`, as a log append is.
const SYNCED_WRITES: usize = 500;
const SYNCED_WRITE_BYTES: usize = 4096;
/// The sequential write: this many bytes in 1 MiB writes, then one `fdatasync`.
const SEQUENTIAL_BYTES: usize = 512 << 20;
const SEQUENTIAL_BLOCK: usize = 1 << 20;
/// Loopback round trips timed, each 64 bytes there and back.
const ROUND_TRIPS: usize = 2000;
const ROUND_TRIP_BYTES: usize = 64;

/// The machine's limits, as measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limits {
    /// Median time of one 4 KiB write and its `fdatasync`, in microseconds.
    pub synced_write_p50_us: f64,
    /// Sequential write rate including the final `fdatasync`, in MiB/s.
    pub sequential_mib_per_sec: f64,
    /// Median TCP round trip on loopback, in microseconds.
    pub round_trip_p50_us: f64,
}

impl Limits {
    /// The least a durable put can take from one client: the request reaches the leader, which
    /// sends the entry to a follower; the leader's and the follower's syncs can overlap; the
    /// follower's acknowledgement comes back and the answer goes to the client. Two round trips
    /// and one synced write.
    pub fn put_floor_us(&self) -> f64 {
        2.0 * self.round_trip_p50_us + self.synced_write_p50_us
    }

    /// The least a linearizable read can take from one client: the request's round trip and the
    /// leader's round trip to a follower confirming it still leads.
    pub fn linearizable_read_floor_us(&self) -> f64 {
        2.0 * self.round_trip_p50_us
    }

    /// The least a read from the answering member's own state can take: one round trip.
    pub fn stale_read_floor_us(&self) -> f64 {
        self.round_trip_p50_us
    }
}

/// Measures the limits, writing scratch files in `dir` (removed again).
pub fn measure(dir: &Path) -> anyhow::Result<Limits> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = dir.join("limits.scratch");
    let measured = (|| {
        Ok(Limits {
            synced_write_p50_us: synced_write_p50_us(&scratch)?,
            sequential_mib_per_sec: sequential_mib_per_sec(&scratch)?,
            round_trip_p50_us: round_trip_p50_us()?,
        })
    })();
    let _ = std::fs::remove_file(&scratch);
    measured
}

fn synced_write_p50_us(path: &Path) -> anyhow::Result<f64> {
    let file = create(path)?;
    let block = vec![0x5au8; SYNCED_WRITE_BYTES];
    let mut times = Vec::with_capacity(SYNCED_WRITES);
    for i in 0..SYNCED_WRITES {
        let began = Instant::now();
        file.write_all_at(&block, (i * SYNCED_WRITE_BYTES) as u64)?;
        file.sync_data()?;
        times.push(began.elapsed());
    }
    Ok(median_us(times))
}

fn sequential_mib_per_sec(path: &Path) -> anyhow::Result<f64> {
    let mut file = create(path)?;
    // Not zeros: a file system or device that compresses or skips them would flatter the rate.
    let block: Vec<u8> = (0..SEQUENTIAL_BLOCK).map(|i| (i * 7 + 13) as u8).collect();
    let began = Instant::now();
    for _ in 0..SEQUENTIAL_BYTES / SEQUENTIAL_BLOCK {
        file.write_all(&block)?;
    }
    file.sync_data()?;
    let seconds = began.elapsed().as_secs_f64();
    Ok((SEQUENTIAL_BYTES >> 20) as f64 / seconds)
}

fn round_trip_p50_us() -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut message = [0u8; ROUND_TRIP_BYTES];
        for _ in 0..ROUND_TRIPS {
            stream.read_exact(&mut message)?;
            stream.write_all(&message)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut message = [0u8; ROUND_TRIP_BYTES];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let began = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        times.push(began.elapsed());
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("the loopback echo thread panicked"))??;
    Ok(median_us(times))
}

fn create(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn median_us(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(f64::NAN, |t| t.as_secs_f64() * 1e6)
}
