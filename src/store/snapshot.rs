//! The snapshot file: a binary, versioned, checksummed dump of the state machine at one log id.
//!
//! Layout (integers big-endian):
//! ```text
//! "ONDISKSN" | version u32 | meta_len u32 | meta (bincode SnapshotMeta)
//! { 0x01 | key_len u32 | key | value_len u32 | value }*
//! [ 0x02 | len u32 | bincode set of node ids removed from the cluster ]
//! 0x00 | pair_count u64 | crc32 u32   (crc32 over every byte before it)
//! ```
//! Keys and values are raw bytes, so nothing is lost to a text encoding. The same bytes are what
//! the transport streams to a follower, so the receiver can verify what it got before installing.

use std::fs;
use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Seek;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use std::collections::BTreeSet;

use super::decode;
use super::encode;
use crate::types::NodeId;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"ONDISKSN";
const VERSION: u32 = 1;
const TAG_PAIR: u8 = 1;
const TAG_REMOVED_IDS: u8 = 2;
const TAG_END: u8 = 0;
/// Upper bound on any length field, so a corrupt or hostile file cannot make us allocate wildly.
const MAX_FIELD_LEN: u32 = 256 << 20;
const SUFFIX: &str = ".snap";

/// openraft's `SnapshotData` for ondisk: an open snapshot file and where it lives.
///
/// The open handle keeps the bytes readable while they are streamed to a follower even if a newer
/// snapshot replaces the file meanwhile.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

impl SnapshotFile {
    /// Opens an existing snapshot file for reading from its start.
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(SnapshotFile { path, file })
    }
}

/// Reads a whole snapshot file, checking its structure and checksum, and returns its metadata.
/// Used on a received file before it is offered to openraft, whose install must not fail.
pub fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    let mut reader = SnapshotReader::new(File::open(path)?)?;
    while reader.next_pair()?.is_some() {}
    Ok(reader.meta)
}

/// The final file name of a snapshot at `meta`, so the newest one sorts last.
pub(super) fn file_name(meta: &SnapshotMeta) -> String {
    let (index, term) = meta
        .last_log_id
        .map_or((0, 0), |id| (id.index, id.leader_id.term));
    format!("snapshot-{index:020}-{term:020}{SUFFIX}")
}

/// Finds the newest complete snapshot in `dir` and removes leftovers (older snapshots, partial
/// files from an interrupted build or transfer).
pub(super) fn newest_in(dir: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut complete: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snapshot-") && name.ends_with(SUFFIX) {
            complete.push(path);
        } else {
            fs::remove_file(&path)?;
        }
    }
    complete.sort();
    let Some(newest) = complete.pop() else {
        return Ok(None);
    };
    for old in complete {
        fs::remove_file(old)?;
    }
    let meta = SnapshotReader::new(File::open(&newest)?)?.meta;
    Ok(Some((meta, newest)))
}

/// Streams key-value pairs into a new snapshot file, computing the checksum on the way.
pub(super) struct SnapshotWriter {
    tmp_path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    pairs: u64,
}

impl SnapshotWriter {
    /// Starts a snapshot file under `dir` with `meta` in its header.
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> io::Result<Self> {
        let tmp_path = dir.join(format!("{}.partial", file_name(meta)));
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, File::create(&tmp_path)?),
            tmp_path,
            crc: crc32fast::Hasher::new(),
            pairs: 0,
        };
        let meta_bytes = encode(meta)?;
        writer.write(MAGIC)?;
        writer.write(&VERSION.to_be_bytes())?;
        writer.write_len(meta_bytes.len())?;
        writer.write(&meta_bytes)?;
        Ok(writer)
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.write(&[TAG_PAIR])?;
        self.write_len(key.len())?;
        self.write(key)?;
        self.write_len(value.len())?;
        self.write(value)?;
        self.pairs += 1;
        Ok(())
    }

    /// Records the ids removed from the cluster, which are replicated state like the pairs.
    pub fn add_removed_ids(&mut self, removed: &BTreeSet<NodeId>) -> io::Result<()> {
        let bytes = encode(removed)?;
        self.write(&[TAG_REMOVED_IDS])?;
        self.write_len(bytes.len())?;
        self.write(&bytes)
    }

    /// Writes the trailer, fsyncs, and renames the file to its final name in `dir`.
    pub fn finish(mut self, final_path: &Path) -> io::Result<()> {
        self.write(&[TAG_END])?;
        let pairs = self.pairs.to_be_bytes();
        self.write(&pairs)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_be_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp_path, final_path)?;
        sync_dir(final_path)
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

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Reads a snapshot file pair by pair; the checksum is verified when the end is reached, so a
/// caller must consume every pair (and see `Ok(None)`) before trusting any of them.
pub(super) struct SnapshotReader {
    input: BufReader<File>,
    crc: crc32fast::Hasher,
    pub meta: SnapshotMeta,
    /// Ids removed from the cluster, known once the record holding them has been read.
    pub removed: BTreeSet<NodeId>,
    pairs: u64,
}

impl SnapshotReader {
    /// Reads the header from the start of `file`.
    pub fn new(mut file: File) -> io::Result<Self> {
        file.rewind()?;
        let mut reader = SnapshotReader {
            input: BufReader::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            meta: SnapshotMeta::default(),
            removed: BTreeSet::new(),
            pairs: 0,
        };
        let mut magic = [0u8; 8];
        reader.read(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not an ondisk snapshot file"));
        }
        let version = reader.read_u32()?;
        if version != VERSION {
            return Err(invalid(&format!("unsupported snapshot version {version}")));
        }
        let meta_bytes = reader.read_field()?;
        reader.meta = decode(&meta_bytes)?;
        Ok(reader)
    }

    /// The next pair, or `None` at a verified end.
    pub fn next_pair(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut tag = [0u8; 1];
        self.read(&mut tag)?;
        if tag[0] == TAG_REMOVED_IDS {
            self.removed = decode(&self.read_field()?)?;
            self.read(&mut tag)?;
        }
        match tag[0] {
            TAG_PAIR => {
                let key = self.read_field()?;
                let value = self.read_field()?;
                self.pairs += 1;
                Ok(Some((key, value)))
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
                Ok(None)
            }
            other => Err(invalid(&format!("unknown snapshot record tag {other}"))),
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
        let mut bytes = vec![0u8; len as usize];
        self.read(&mut bytes)?;
        Ok(bytes)
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(dir: &Path, pairs: &[(&[u8], &[u8])]) -> PathBuf {
        let meta = SnapshotMeta::default();
        let mut writer = SnapshotWriter::create(dir, &meta).unwrap();
        for (k, v) in pairs {
            writer.add(k, v).unwrap();
        }
        writer.add_removed_ids(&BTreeSet::from([4, 9])).unwrap();
        let path = dir.join(file_name(&meta));
        writer.finish(&path).unwrap();
        path
    }

    fn read_all(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut reader = SnapshotReader::new(File::open(path)?)?;
        let mut pairs = Vec::new();
        while let Some(pair) = reader.next_pair()? {
            pairs.push(pair);
        }
        Ok(pairs)
    }

    #[test]
    fn binary_keys_and_values_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pairs: [(&[u8], &[u8]); 3] = [
            (b"a", b"\xff\xfe\x00"),
            (b"\x00\xff", b""),
            (b"plain", b"value with spaces"),
        ];
        let path = write_sample(dir.path(), &pairs);
        let read = read_all(&path).unwrap();
        let expected: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path(), &[(b"key", b"value")]);
        let mut bytes = fs::read(&path).unwrap();
        let last_value_byte = bytes.len() - 14;
        bytes[last_value_byte] ^= 0x20;
        fs::write(&path, bytes).unwrap();
        assert!(read_all(&path).is_err());
    }

    #[test]
    fn a_truncated_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path(), &[(b"key", b"value")]);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_all(&path).is_err());
    }
}
