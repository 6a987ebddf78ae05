//! Snapshots: what a node keeps (a RocksDB checkpoint of its state machine: hard links, no copy of
//! the data) and the binary, versioned, checksummed stream format in which a snapshot travels to a
//! follower.
//!
//! Stream layout (integers big-endian):
//! ```text
//! "ONDISKSN" | version u32 | meta_len u32 | meta (bincode SnapshotMeta)
//! { 0x04 | family u8 | key_len u32 | key | value_len u32 | value }*     (version 3 on)
//! [ 0x02 | len u32 | bincode set of node ids removed from the cluster ]
//! [ 0x03 | len u32 | bincode set of learner ids that stay learners ]      (version 2 on)
//! 0x00 | pair_count u64 | crc32 u32   (crc32 over every byte before it)
//! ```
//! A pair names the column family it belongs to (the key space, its history, the leases: see
//! `mvcc`; streams of versions 3 and 4 number format 3's families, see `legacy`). Versions 1
//! and 2 held `0x01 | key_len u32 | key | value_len u32 | value` pairs of plain keys and values,
//! from before revisions: they still load (a backup restores), as the state at revision 1. Keys and values are raw bytes, so nothing is lost to a text encoding, and
//! the receiver verifies the checksum before it installs anything.

use std::collections::BTreeSet;
use std::fs;
use std::fs::File;
use std::io;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::decode;
use super::encode;
use super::install::PreparedSnapshot;
use super::legacy;
use super::mvcc::MVCC_FAMILIES;
use super::state_db::RemoveWhenRetired;
use crate::types::NodeId;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"ONDISKSN";

/// What the cluster has decided about its members beyond openraft's membership. Replicated state:
/// applied with the log, kept beside the data, carried in snapshots and across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberRecords {
    /// Ids removed from the cluster; never admitted again.
    pub removed: BTreeSet<NodeId>,
    /// Learners added to stay learners (`add-learner`): the leader does not promote them.
    pub kept_learners: BTreeSet<NodeId>,
}
/// Version 5: the key space's families of format 4 (`mvcc::MVCC_FAMILIES`); versions 3 and 4
/// carry format 3's (`legacy::STREAM_FAMILIES`), converted when installed. Version 4: the `data`
/// family's records carry no large value; a version 3 stream's records still do, and lose it
/// when installed. An older ondisk refuses a newer stream instead of installing records it
/// cannot read.
const VERSION: u32 = 5;
/// The first version whose key-space families are format 4's.
const CHANGES_VERSION: u32 = 5;
/// Version 1 streams lack the kept-learners record; they still install (with none kept).
const OLDEST_READABLE_VERSION: u32 = 1;
/// A plain key and value (versions 1 and 2).
const TAG_PAIR: u8 = 1;
const TAG_FAMILY_PAIR: u8 = 4;
const TAG_REMOVED_IDS: u8 = 2;
const TAG_KEPT_LEARNERS: u8 = 3;
const TAG_END: u8 = 0;
/// Bytes read from a stream file at a time.
pub(super) const READ_BUFFER: usize = 1 << 20;
/// Upper bound on any length field, so a corrupt or hostile stream cannot make us allocate wildly.
const MAX_FIELD_LEN: u32 = 256 << 20;
/// Prefix of checkpoint directories in the snapshot directory.
const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// Prefix of the directory where a checkpoint is built before it is renamed to its final name;
/// each build adds its own number, because a follower may build one while installing another.
/// RocksDB itself writes into `<name>.tmp` first; neither name looks like a finished checkpoint.
const CHECKPOINT_BUILDING: &str = "building-checkpoint-";

/// Numbers the scratch directories this process makes in the snapshot directory (checkpoint
/// builds, snapshots being prepared), so two never share a name.
static SCRATCH_DIRS: AtomicU64 = AtomicU64::new(0);

/// A name starting with `prefix` for a scratch directory in the snapshot directory, unique in
/// this process (leftovers of an earlier process are removed at start-up by
/// [`newest_checkpoint_in`]).
pub(super) fn unique_name(prefix: &str) -> String {
    let number = SCRATCH_DIRS.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{number}")
}

/// A directory name in the snapshot directory for one checkpoint build.
pub(super) fn checkpoint_building_name() -> String {
    unique_name(CHECKPOINT_BUILDING)
}

/// openraft's `SnapshotData` for ondisk.
#[derive(Debug)]
pub enum SnapshotData {
    /// A snapshot this node holds: a checkpoint of its own state machine.
    Checkpoint(Arc<Checkpoint>),
    /// A snapshot received from the leader, verified and written out as tables, to be installed.
    Prepared(Box<PreparedSnapshot>),
}

/// A point-in-time RocksDB checkpoint of the state machine. Shared by whoever streams it; the
/// directory is removed once it has been replaced and the last user is done with it.
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: SnapshotMeta,
    dir: RemoveWhenRetired,
}

impl Checkpoint {
    /// The checkpoint's RocksDB directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Marks the checkpoint for removal once nothing uses it.
    pub(super) fn retire(&self) {
        self.dir.retire();
    }
}

/// Reads a whole snapshot stream file, checking its structure and checksum, and returns its
/// metadata: a backup is checked before it is kept.
pub fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    let mut reader = SnapshotReader::new(BufReader::with_capacity(READ_BUFFER, File::open(path)?))?;
    while reader.next_pair()?.is_some() {}
    Ok(reader.meta)
}

/// etcd's snapshot files are whole 512-byte blocks followed by a SHA-256 of them, and etcdctl
/// refuses to save a snapshot of any other length.
const ETCD_BLOCK: usize = 512;
const ETCD_DIGEST: usize = 32;

/// Seals a snapshot stream as etcd seals its snapshots, so that `etcdctl snapshot save` accepts
/// it: fed the stream, it ends it with zeros up to a whole number of 512-byte blocks and the
/// SHA-256 of all that. A reader of the stream skips the seal.
#[derive(Default)]
pub struct EtcdSeal {
    sha: sha2::Sha256,
    len: u64,
}

impl EtcdSeal {
    pub fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.sha, bytes);
        self.len += bytes.len() as u64;
    }

    /// The bytes that end the sealed stream.
    pub fn finish(mut self) -> Vec<u8> {
        let used = usize::try_from(self.len % ETCD_BLOCK as u64).unwrap_or(0);
        let mut tail = vec![0u8; (ETCD_BLOCK - used) % ETCD_BLOCK];
        sha2::Digest::update(&mut self.sha, &tail);
        tail.extend_from_slice(&sha2::Digest::finalize(self.sha));
        tail
    }
}

/// The directory name of a checkpoint at `meta`, so the newest one sorts last.
pub(super) fn checkpoint_name(meta: &SnapshotMeta) -> String {
    let (index, term) = meta
        .last_log_id
        .map_or((0, 0), |id| (id.index, id.leader_id.term));
    format!("{CHECKPOINT_PREFIX}{index:020}-{term:020}")
}

/// Wraps an existing checkpoint directory.
pub(super) fn checkpoint_at(path: PathBuf, meta: SnapshotMeta) -> Checkpoint {
    Checkpoint {
        meta,
        dir: RemoveWhenRetired::new(path),
    }
}

/// Tidies the snapshot directory at start-up: removes partial checkpoints, received files and all
/// but the newest checkpoint, and returns the newest checkpoint's directory.
pub(super) fn newest_checkpoint_in(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut checkpoints: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if is_checkpoint_name(name) && path.is_dir() {
            checkpoints.push(path);
        } else if path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    checkpoints.sort();
    let newest = checkpoints.pop();
    for old in checkpoints {
        fs::remove_dir_all(old)?;
    }
    Ok(newest)
}

/// True for the final name of a checkpoint, `checkpoint-<index>-<term>` (see [`checkpoint_name`]),
/// and false for anything an interrupted build or transfer may leave behind.
fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix(CHECKPOINT_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(index, term)| {
            [index, term]
                .iter()
                .all(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes the snapshot stream format into `out`, computing the checksum on the way.
pub(super) struct SnapshotEncoder<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    pairs: u64,
}

impl<W: Write> SnapshotEncoder<W> {
    /// Starts a stream with `meta` in its header.
    pub fn new(out: W, meta: &SnapshotMeta) -> io::Result<Self> {
        Self::of_version(out, meta, VERSION)
    }

    /// Starts a stream of an older `version`, as an older ondisk wrote it.
    #[cfg(test)]
    pub fn of_older_version(out: W, meta: &SnapshotMeta, version: u32) -> io::Result<Self> {
        Self::of_version(out, meta, version)
    }

    fn of_version(out: W, meta: &SnapshotMeta, version: u32) -> io::Result<Self> {
        let mut encoder = SnapshotEncoder {
            out,
            crc: crc32fast::Hasher::new(),
            pairs: 0,
        };
        let meta_bytes = encode(meta)?;
        encoder.write(MAGIC)?;
        encoder.write(&version.to_be_bytes())?;
        encoder.write_len(meta_bytes.len())?;
        encoder.write(&meta_bytes)?;
        Ok(encoder)
    }

    /// Adds a pair of the column family numbered `family`.
    pub fn add(&mut self, family: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.write(&[TAG_FAMILY_PAIR, family])?;
        self.write_len(key.len())?;
        self.write(key)?;
        self.write_len(value.len())?;
        self.write(value)?;
        self.pairs += 1;
        Ok(())
    }

    /// Records what the cluster decided about its members, replicated state like the pairs.
    pub fn add_member_records(&mut self, records: &MemberRecords) -> io::Result<()> {
        self.add_id_set(TAG_REMOVED_IDS, &records.removed)?;
        self.add_id_set(TAG_KEPT_LEARNERS, &records.kept_learners)
    }

    fn add_id_set(&mut self, tag: u8, ids: &BTreeSet<NodeId>) -> io::Result<()> {
        let bytes = encode(ids)?;
        self.write(&[tag])?;
        self.write_len(bytes.len())?;
        self.write(&bytes)
    }

    /// Writes the trailer and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.write(&[TAG_END])?;
        let pairs = self.pairs.to_be_bytes();
        self.write(&pairs)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_be_bytes())?;
        Ok(self.out)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    fn write_len(&mut self, len: usize) -> io::Result<()> {
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_FIELD_LEN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "field too large"))?;
        self.write(&len.to_be_bytes())
    }
}

/// One pair of a snapshot stream.
pub(super) struct SnapshotPair {
    /// The column family's number; `None` for a plain key and value of a version 1 or 2 stream.
    pub family: Option<u8>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Reads a snapshot stream pair by pair; the checksum is verified when the end is reached, so a
/// caller must consume every pair (and see `Ok(None)`) before trusting any of them. Each key and
/// value is copied once, from the input's buffer: give it a file in a `BufReader`, or pieces
/// already in memory as they are ([`PieceReader`]).
pub(super) struct SnapshotReader<R: BufRead> {
    input: R,
    crc: crc32fast::Hasher,
    pub meta: SnapshotMeta,
    /// The member records, known once the records holding them have been read (before the end).
    pub records: MemberRecords,
    pairs: u64,
    /// The stream's version, which decides how its families are numbered.
    version: u32,
}

impl<R: BufRead> SnapshotReader<R> {
    /// The key-space families of this stream, in the order it numbers them.
    pub fn key_space_families(&self) -> &'static [&'static str] {
        if self.version >= CHANGES_VERSION {
            MVCC_FAMILIES
        } else {
            legacy::STREAM_FAMILIES
        }
    }

    /// Reads the header from `input`.
    pub fn new(input: R) -> io::Result<Self> {
        let mut reader = SnapshotReader {
            input,
            crc: crc32fast::Hasher::new(),
            meta: SnapshotMeta::default(),
            records: MemberRecords::default(),
            pairs: 0,
            version: 0,
        };
        let mut magic = [0u8; 8];
        reader.read(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not an ondisk snapshot"));
        }
        let version = reader.read_u32()?;
        if !(OLDEST_READABLE_VERSION..=VERSION).contains(&version) {
            return Err(invalid(&format!("unsupported snapshot version {version}")));
        }
        reader.version = version;
        let meta_bytes = reader.read_field()?;
        reader.meta = decode(&meta_bytes)?;
        Ok(reader)
    }

    /// The next pair, or `None` at a verified end.
    pub fn next_pair(&mut self) -> io::Result<Option<SnapshotPair>> {
        let mut tag = [0u8; 1];
        self.read(&mut tag)?;
        loop {
            match tag[0] {
                TAG_REMOVED_IDS => self.records.removed = decode(&self.read_field()?)?,
                TAG_KEPT_LEARNERS => self.records.kept_learners = decode(&self.read_field()?)?,
                _ => break,
            }
            self.read(&mut tag)?;
        }
        match tag[0] {
            TAG_PAIR | TAG_FAMILY_PAIR => {
                let family = if tag[0] == TAG_FAMILY_PAIR {
                    let mut family = [0u8; 1];
                    self.read(&mut family)?;
                    Some(family[0])
                } else {
                    None
                };
                let key = self.read_field()?;
                let value = self.read_field()?;
                self.pairs += 1;
                Ok(Some(SnapshotPair { family, key, value }))
            }
            TAG_END => {
                let mut count = [0u8; 8];
                self.read(&mut count)?;
                let expected_crc = self.crc.clone().finalize();
                let mut crc = [0u8; 4];
                self.input.read_exact(&mut crc)?;
                if u64::from_be_bytes(count) != self.pairs {
                    return Err(invalid("snapshot pair count does not match its trailer"));
                }
                if u32::from_be_bytes(crc) != expected_crc {
                    return Err(invalid("snapshot checksum mismatch"));
                }
                self.check_tail()?;
                Ok(None)
            }
            other => Err(invalid(&format!("unknown snapshot record tag {other}"))),
        }
    }

    /// Accepts nothing after the end, or the seal of a snapshot saved through etcd's API
    /// ([`EtcdSeal`]): zeros, then a SHA-256 (the stream itself is already verified by its CRC).
    fn check_tail(&mut self) -> io::Result<()> {
        let mut tail = Vec::new();
        (&mut self.input)
            .take((ETCD_BLOCK + ETCD_DIGEST + 1) as u64)
            .read_to_end(&mut tail)?;
        let sealed = tail.len() >= ETCD_DIGEST
            && tail.len() < ETCD_BLOCK + ETCD_DIGEST
            && tail[..tail.len() - ETCD_DIGEST].iter().all(|&b| b == 0);
        if tail.is_empty() || sealed {
            Ok(())
        } else {
            Err(invalid("unexpected data after the end of the snapshot"))
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut bytes = [0u8; 4];
        self.read(&mut bytes)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn read_field(&mut self) -> io::Result<Vec<u8>> {
        let len = self.read_u32()?;
        if len > MAX_FIELD_LEN {
            return Err(invalid("snapshot field length out of range"));
        }
        let len = len as usize;
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let taken = available.len().min(len - bytes.len());
            bytes.extend_from_slice(&available[..taken]);
            self.input.consume(taken);
        }
        self.crc.update(&bytes);
        Ok(bytes)
    }
}

/// A stream read from pieces that another thread or task hands over through a channel, in
/// order; an error handed over ends the stream with it, and a closed channel ends it cleanly.
/// Reads block, so it is read on a blocking thread.
pub(super) struct PieceReader {
    pieces: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
}

impl PieceReader {
    pub fn new(pieces: mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        PieceReader {
            pieces,
            current: Vec::new(),
            position: 0,
        }
    }
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The pieces are the buffer: reading through it copies nothing more.
impl BufRead for PieceReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.position == self.current.len() {
            match self.pieces.blocking_recv() {
                Some(Ok(piece)) => {
                    self.current = piece;
                    self.position = 0;
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(&self.current[self.position..])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.current.len());
    }
}

/// Cuts what is written into chunks of exactly `chunk_len` bytes and sends each as soon as it is
/// full; [`Self::finish`] sends the rest, shorter (possibly empty), which marks the end. Writing
/// fails once the receiving end has gone.
pub(super) struct ChunkSender {
    chunks: mpsc::Sender<io::Result<Vec<u8>>>,
    chunk_len: usize,
    current: Vec<u8>,
}

impl ChunkSender {
    pub fn new(chunks: mpsc::Sender<io::Result<Vec<u8>>>, chunk_len: usize) -> Self {
        let chunk_len = chunk_len.max(1);
        ChunkSender {
            chunks,
            chunk_len,
            current: Vec::with_capacity(chunk_len),
        }
    }

    /// Sends the last, short chunk.
    pub fn finish(self) -> io::Result<()> {
        send_chunk(&self.chunks, self.current)
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let taken = bytes.len().min(self.chunk_len - self.current.len());
        self.current.extend_from_slice(&bytes[..taken]);
        if self.current.len() == self.chunk_len {
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(self.chunk_len));
            send_chunk(&self.chunks, full)?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send_chunk(chunks: &mpsc::Sender<io::Result<Vec<u8>>>, chunk: Vec<u8>) -> io::Result<()> {
    chunks
        .blocking_send(Ok(chunk))
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's reader is gone"))
}

/// An error for a stream whose content is not what the format allows.
pub(super) fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_sample(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut encoder = SnapshotEncoder::new(Vec::new(), &SnapshotMeta::default()).unwrap();
        for (k, v) in pairs {
            encoder.add(0, k, v).unwrap();
        }
        encoder.add_member_records(&sample_records()).unwrap();
        encoder.finish().unwrap()
    }

    fn sample_records() -> MemberRecords {
        MemberRecords {
            removed: BTreeSet::from([4, 9]),
            kept_learners: BTreeSet::from([5]),
        }
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(bytes: &[u8]) -> io::Result<(Pairs, MemberRecords)> {
        let mut reader = SnapshotReader::new(bytes)?;
        let mut pairs = Vec::new();
        while let Some(pair) = reader.next_pair()? {
            pairs.push((pair.key, pair.value));
        }
        Ok((pairs, reader.records))
    }

    #[test]
    fn binary_keys_values_and_member_records_round_trip() {
        let pairs: [(&[u8], &[u8]); 3] = [
            (b"a", b"\xff\xfe\x00"),
            (b"\x00\xff", b""),
            (b"plain", b"value with spaces"),
        ];
        let (read, records) = decode_all(&encode_sample(&pairs)).unwrap();
        let expected: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(records, sample_records());
    }

    /// Streams from nodes of the previous format (version 1: removed ids, no kept learners)
    /// still install.
    #[test]
    fn a_version_1_stream_is_read_with_no_kept_learners() {
        let mut stream = Vec::new();
        let mut crc = crc32fast::Hasher::new();
        let mut put = |bytes: &[u8], stream: &mut Vec<u8>| {
            crc.update(bytes);
            stream.extend_from_slice(bytes);
        };
        let meta = encode(&SnapshotMeta::default()).unwrap();
        let removed = encode(&BTreeSet::from([7u64])).unwrap();
        put(MAGIC, &mut stream);
        put(&1u32.to_be_bytes(), &mut stream);
        put(&(meta.len() as u32).to_be_bytes(), &mut stream);
        put(&meta, &mut stream);
        put(&[TAG_PAIR, 0, 0, 0, 1, b'k', 0, 0, 0, 1, b'v'], &mut stream);
        put(&[TAG_REMOVED_IDS], &mut stream);
        put(&(removed.len() as u32).to_be_bytes(), &mut stream);
        put(&removed, &mut stream);
        put(&[TAG_END], &mut stream);
        put(&1u64.to_be_bytes(), &mut stream);
        let checksum = crc.finalize();
        stream.extend_from_slice(&checksum.to_be_bytes());

        let (pairs, records) = decode_all(&stream).unwrap();
        assert_eq!(pairs, vec![(b"k".to_vec(), b"v".to_vec())]);
        assert_eq!(records.removed, BTreeSet::from([7]));
        assert!(records.kept_learners.is_empty());
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let mut bytes = encode_sample(&[(b"key", b"value")]);
        let in_the_value = bytes.len() - 40;
        bytes[in_the_value] ^= 0x20;
        assert!(decode_all(&bytes).is_err());
    }

    #[test]
    fn a_stream_sealed_as_etcd_seals_snapshots_reads_as_itself() {
        let pairs: [(&[u8], &[u8]); 1] = [(b"key", b"value")];
        let mut bytes = encode_sample(&pairs);
        let mut seal = EtcdSeal::default();
        seal.update(&bytes);
        let tail = seal.finish();
        let digest = tail[tail.len() - ETCD_DIGEST..].to_vec();
        bytes.extend_from_slice(&tail);
        // etcdctl's test: whole 512-byte blocks, then the SHA-256 of them.
        assert_eq!(bytes.len() % ETCD_BLOCK, ETCD_DIGEST);
        let blocks = &bytes[..bytes.len() - ETCD_DIGEST];
        assert_eq!(
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(blocks))
                .to_vec(),
            digest
        );
        assert_eq!(decode_all(&bytes).unwrap().0.len(), 1);
        bytes.push(0);
        assert!(
            decode_all(&bytes).is_err(),
            "anything else after the end is refused"
        );
    }

    #[test]
    fn a_truncated_stream_is_detected() {
        let bytes = encode_sample(&[(b"key", b"value")]);
        assert!(decode_all(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn only_finished_checkpoints_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let finished = checkpoint_name(&SnapshotMeta::default());
        for name in [
            finished.as_str(),
            &checkpoint_building_name(),
            &format!("{}.tmp", checkpoint_building_name()),
            "checkpoint-building.partial.tmp",
        ] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        fs::write(dir.path().join("receiving-7.partial"), b"half").unwrap();
        let newest = newest_checkpoint_in(dir.path()).unwrap();
        assert_eq!(newest, Some(dir.path().join(&finished)));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_verified_file_reports_its_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received");
        fs::write(&path, encode_sample(&[(b"k", b"v")])).unwrap();
        assert_eq!(verify(&path).unwrap(), SnapshotMeta::default());
    }

    fn pairs() -> impl proptest::strategy::Strategy<Value = Pairs> {
        use proptest::prelude::*;
        let bytes = || proptest::collection::vec(any::<u8>(), 0..32);
        proptest::collection::vec((bytes(), bytes()), 0..8)
    }

    fn encode_pairs(pairs: &Pairs) -> Vec<u8> {
        let borrowed: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        encode_sample(&borrowed)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary bytes, with or without a valid magic and version in front, are refused or
        /// decoded, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            with_header in proptest::prelude::any::<bool>(),
        ) {
            let mut input = Vec::new();
            if with_header {
                input.extend_from_slice(MAGIC);
                input.extend_from_slice(&VERSION.to_be_bytes());
            }
            input.extend_from_slice(&bytes);
            let _ = decode_all(&input);
        }

        /// A valid stream decodes to exactly its pairs.
        #[test]
        fn valid_streams_round_trip(pairs in pairs()) {
            let (decoded, records) = decode_all(&encode_pairs(&pairs)).unwrap();
            proptest::prop_assert_eq!(decoded, pairs);
            proptest::prop_assert_eq!(records, sample_records());
        }

        /// Any damaged byte or any truncation of a valid stream is detected: no pair from it ever
        /// passes the checksum. An inserted byte is detected or changes nothing.
        #[test]
        fn damage_is_detected(
            pairs in pairs(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            mask in 1u8..=255,
            extra in proptest::prelude::any::<u8>(),
        ) {
            let stream = encode_pairs(&pairs);
            let mut flipped = stream.clone();
            flipped[at.index(stream.len())] ^= mask;
            proptest::prop_assert!(decode_all(&flipped).is_err());
            proptest::prop_assert!(decode_all(&stream[..at.index(stream.len())]).is_err());
            let mut inserted = stream.clone();
            inserted.insert(at.index(stream.len() + 1), extra);
            if let Ok((decoded, _)) = decode_all(&inserted) {
                proptest::prop_assert_eq!(decoded, pairs);
            }
        }
    }
}
