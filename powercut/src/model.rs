//! The file system's state and its page-cache model, independent of FUSE.
//!
//! Every change lands at once (reads see it), but only what was made durable survives a
//! [`Model::cut`]:
//! - a regular file's bytes live in `BACKING/objects/<ino>`; before a write or truncation
//!   destroys bytes that were there at the file's last fsync, the old bytes are appended to
//!   `BACKING/undo/<ino>` (an undo log), so a cut can restore the file as it was at that fsync;
//! - a directory keeps its live entries and the entries it had at its last fsync (its durable
//!   entries); a cut puts the durable entries back, recursively from the root, and drops every
//!   inode that is no longer reachable.
//!
//! Attributes other than a file's size (mode, owner, times) are not rolled back: nothing the
//! tests rely on depends on them surviving or not.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The root directory's inode number, as FUSE expects.
pub const ROOT: u64 = 1;

/// A failed operation, as the errno the kernel passes on to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<io::Error> for Errno {
    /// The backing file system's own error, so the caller sees e.g. `ENOSPC` unchanged.
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// What a model operation returns.
pub type Result<T> = std::result::Result<T, Errno>;

/// The two kinds of inode the fixture supports (enough for RocksDB and `std::fs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// An inode's attributes, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only (no file type bits).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// The changes `setattr` may ask for; `None` leaves an attribute as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// How `rename` treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target, as `rename(2)` does.
    Replace,
    /// Fail with `EEXIST` if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
}

/// What a power cut threw away, for the control protocol's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Bytes of file data restored to their last fsynced content or cut off past the last
    /// fsynced size.
    pub bytes: u64,
    /// Directory entries created, removed or re-pointed since their directory's last fsync.
    pub entries: u64,
}

/// A range of bytes saved before it was destroyed: `len` bytes that were at `offset` in the
/// object, stored at `at` in the inode's undo file.
#[derive(Debug, Clone, Copy)]
struct Saved {
    offset: u64,
    len: u64,
    at: u64,
}

/// A regular file's data and its undo log since its last fsync.
#[derive(Debug, Default)]
struct FileData {
    size: u64,
    /// The size at the last fsync: bytes past it need no saving, a cut truncates them.
    synced_len: u64,
    undo: Vec<Saved>,
    /// Bytes in the undo file so far (where the next saved range goes).
    undo_len: u64,
    /// The object file, opened on first use and kept open while the inode lives.
    object: Option<File>,
    /// The undo file, opened on first use.
    undo_file: Option<File>,
}

/// A directory's entries as they are and as they were at its last fsync.
#[derive(Debug, Default)]
struct DirData {
    /// The directory containing this one (for `..`).
    parent: u64,
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Content {
    File(FileData),
    Dir(DirData),
}

/// One inode and what keeps it alive.
#[derive(Debug)]
struct Inode {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    content: Content,
    /// Live directory entries naming this inode.
    live_links: u32,
    /// Durable directory entries naming this inode: while there is one, a cut may bring the
    /// inode back, so its object must stay.
    durable_links: u32,
    /// Open file and directory handles.
    open: u32,
}

impl Inode {
    fn new(perm: u16, uid: u32, gid: u32, content: Content) -> Inode {
        let now = SystemTime::now();
        Inode {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            content,
            live_links: 0,
            durable_links: 0,
            open: 0,
        }
    }

    fn kind(&self) -> Kind {
        match self.content {
            Content::File(_) => Kind::File,
            Content::Dir(_) => Kind::Dir,
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: OsString,
}

/// What an open handle refers to.
#[derive(Debug)]
enum Handle {
    File(u64),
    /// A directory, with its listing taken at `opendir` so that changes during a listing do not
    /// shift the offsets the kernel resumes from.
    Dir(u64, Vec<DirEntry>),
}

/// The whole file system: inodes, handles and the backing directory.
#[derive(Debug)]
pub struct Model {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_handle: u64,
}

impl Model {
    /// An empty file system over `backing`, which must be empty or absent: the fixture's state is
    /// in memory, so old objects there would mean nothing.
    pub fn new(backing: &Path) -> io::Result<Model> {
        if fs::read_dir(backing).is_ok_and(|mut d| d.next().is_some()) {
            return Err(io::Error::other(format!(
                "the backing directory {} is not empty",
                backing.display()
            )));
        }
        fs::create_dir_all(backing.join("objects"))?;
        fs::create_dir_all(backing.join("undo"))?;
        let mut root = Inode::new(0o755, 0, 0, Content::Dir(DirData::default()));
        if let Content::Dir(dir) = &mut root.content {
            dir.parent = ROOT;
        }
        root.live_links = 1;
        root.durable_links = 1;
        Ok(Model {
            backing: backing.to_path_buf(),
            inodes: HashMap::from([(ROOT, root)]),
            handles: HashMap::new(),
            next_ino: ROOT + 1,
            next_handle: 1,
        })
    }

    /// The backing directory (for `statfs`).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    fn object_path(&self, ino: u64) -> PathBuf {
        self.backing.join("objects").join(ino.to_string())
    }

    fn undo_path(&self, ino: u64) -> PathBuf {
        self.backing.join("undo").join(ino.to_string())
    }

    fn inode(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno(libc::ENOENT))
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno(libc::ENOENT))
    }

    fn dir(&self, ino: u64) -> Result<&DirData> {
        match &self.inode(ino)?.content {
            Content::Dir(dir) => Ok(dir),
            Content::File(_) => Err(Errno(libc::ENOTDIR)),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirData> {
        match &mut self.inode_mut(ino)?.content {
            Content::Dir(dir) => Ok(dir),
            Content::File(_) => Err(Errno(libc::ENOTDIR)),
        }
    }

    /// A file's data with its object file open; `EISDIR` for a directory.
    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData> {
        let path = self.object_path(ino);
        let file = match &mut self.inode_mut(ino)?.content {
            Content::File(file) => file,
            Content::Dir(_) => return Err(Errno(libc::EISDIR)),
        };
        if file.object.is_none() {
            file.object = Some(OpenOptions::new().read(true).write(true).open(path)?);
        }
        Ok(file)
    }

    /// An inode's attributes.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let inode = self.inode(ino)?;
        let (size, nlink) = match &inode.content {
            Content::File(file) => (file.size, inode.live_links),
            Content::Dir(_) => (4096, 2),
        };
        Ok(Attr {
            ino,
            kind: inode.kind(),
            size,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
        })
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let ino = *self
            .dir(parent)?
            .live
            .get(name)
            .ok_or(Errno(libc::ENOENT))?;
        self.getattr(ino)
    }

    /// Changes attributes; a size change is a truncation (recorded in the undo log).
    pub fn setattr(&mut self, ino: u64, change: AttrChange) -> Result<Attr> {
        if let Some(size) = change.size {
            self.truncate(ino, size)?;
        }
        let inode = self.inode_mut(ino)?;
        if let Some(mode) = change.mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = change.uid {
            inode.uid = uid;
        }
        if let Some(gid) = change.gid {
            inode.gid = gid;
        }
        if let Some(atime) = change.atime {
            inode.atime = atime;
        }
        if let Some(mtime) = change.mtime {
            inode.mtime = mtime;
        }
        inode.ctime = SystemTime::now();
        self.getattr(ino)
    }

    /// Saves the bytes in `[start, end)` that existed at the last fsync and still exist, before
    /// they are overwritten or cut off.
    fn save(&mut self, ino: u64, start: u64, end: u64) -> Result<()> {
        let undo_path = self.undo_path(ino);
        let file = self.file_mut(ino)?;
        let end = end.min(file.size).min(file.synced_len);
        if start >= end {
            return Ok(());
        }
        let len = end - start;
        let mut old = vec![0; len as usize];
        if let Some(object) = &file.object {
            object.read_exact_at(&mut old, start)?;
        }
        if file.undo_file.is_none() {
            file.undo_file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(undo_path)?,
            );
        }
        if let Some(undo) = &file.undo_file {
            undo.write_all_at(&old, file.undo_len)?;
        }
        file.undo.push(Saved {
            offset: start,
            len,
            at: file.undo_len,
        });
        file.undo_len += len;
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        let current = self.file_mut(ino)?.size;
        self.save(ino, size, current)?;
        let file = self.file_mut(ino)?;
        if let Some(object) = &file.object {
            object.set_len(size)?;
        }
        file.size = size;
        Ok(())
    }

    /// Reads up to `size` bytes at `offset` (fewer at the end of the file).
    pub fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = self.file_mut(ino)?;
        let end = file.size.min(offset.saturating_add(u64::from(size)));
        let mut data = vec![0; end.saturating_sub(offset) as usize];
        if let Some(object) = &file.object {
            object.read_exact_at(&mut data, offset)?;
        }
        Ok(data)
    }

    /// Writes `data` at `offset`, saving the bytes it overwrites first.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let end = offset.saturating_add(data.len() as u64);
        self.save(ino, offset, end)?;
        let file = self.file_mut(ino)?;
        if let Some(object) = &file.object {
            object.write_all_at(data, offset)?;
        }
        file.size = file.size.max(end);
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        inode.ctime = inode.mtime;
        u32::try_from(data.len()).map_err(|_| Errno(libc::EINVAL))
    }

    /// `fallocate`: mode 0 grows the file to cover the range; `FALLOC_FL_KEEP_SIZE` only
    /// reserves space, which the model does not track. Other modes are not supported.
    pub fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        match mode {
            0 => {
                let end = offset.saturating_add(length);
                if end > self.file_mut(ino)?.size {
                    self.truncate(ino, end)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => self.file_mut(ino).map(|_| ()),
            _ => Err(Errno(libc::EOPNOTSUPP)),
        }
    }

    /// `fsync`/`fdatasync` of a file: its data and size become durable.
    pub fn fsync(&mut self, ino: u64) -> Result<()> {
        let undo_path = self.undo_path(ino);
        let file = match &mut self.inode_mut(ino)?.content {
            Content::File(file) => file,
            Content::Dir(_) => return self.fsyncdir(ino),
        };
        file.synced_len = file.size;
        file.undo.clear();
        file.undo_len = 0;
        if file.undo_file.take().is_some() {
            fs::remove_file(undo_path)?;
        }
        Ok(())
    }

    /// `fsync` of a directory: its current entries become durable (and so do the creations,
    /// renames, links and removals they reflect).
    pub fn fsyncdir(&mut self, ino: u64) -> Result<()> {
        let dir = self.dir_mut(ino)?;
        let old = std::mem::replace(&mut dir.durable, dir.live.clone());
        let new: Vec<u64> = dir.durable.values().copied().collect();
        for child in new {
            self.inode_mut(child)?.durable_links += 1;
        }
        for child in old.into_values() {
            self.unlink_durable(child);
        }
        Ok(())
    }

    /// Drops one durable reference to `ino`, forgetting it if nothing else keeps it.
    fn unlink_durable(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.durable_links = inode.durable_links.saturating_sub(1);
        }
        self.forget_if_unused(ino);
    }

    /// Removes `ino` once no live entry, durable entry or handle refers to it; a forgotten
    /// directory releases its durable entries in turn.
    fn forget_if_unused(&mut self, ino: u64) {
        let mut pending = vec![ino];
        while let Some(ino) = pending.pop() {
            let unused = self.inodes.get(&ino).is_some_and(|inode| {
                ino != ROOT && inode.live_links == 0 && inode.durable_links == 0 && inode.open == 0
            });
            if !unused {
                continue;
            }
            if let Some(inode) = self.inodes.remove(&ino) {
                match inode.content {
                    Content::File(_) => {
                        let _ = fs::remove_file(self.object_path(ino));
                        let _ = fs::remove_file(self.undo_path(ino));
                    }
                    Content::Dir(dir) => {
                        for child in dir.durable.into_values() {
                            if let Some(inode) = self.inodes.get_mut(&child) {
                                inode.durable_links = inode.durable_links.saturating_sub(1);
                            }
                            pending.push(child);
                        }
                    }
                }
            }
        }
    }

    fn check_free(&self, parent: u64, name: &OsStr) -> Result<()> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno(libc::EEXIST));
        }
        Ok(())
    }

    /// Adds a new inode under `parent` as `name`.
    fn add(&mut self, parent: u64, name: &OsStr, mut inode: Inode) -> Result<Attr> {
        self.check_free(parent, name)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        if let Content::File(_) = inode.content {
            File::create(self.object_path(ino))?;
        }
        inode.live_links = 1;
        self.inodes.insert(ino, inode);
        let dir = self.dir_mut(parent)?;
        dir.live.insert(name.to_os_string(), ino);
        self.touch(parent);
        self.getattr(ino)
    }

    fn touch(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.mtime = SystemTime::now();
            inode.ctime = inode.mtime;
        }
    }

    /// `mkdir`.
    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let dir = DirData {
            parent,
            ..DirData::default()
        };
        self.add(
            parent,
            name,
            Inode::new((mode & 0o7777) as u16, uid, gid, Content::Dir(dir)),
        )
    }

    /// `create`: a new empty regular file, opened; returns its attributes and handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64)> {
        let inode = Inode::new(
            (mode & 0o7777) as u16,
            uid,
            gid,
            Content::File(FileData::default()),
        );
        let attr = self.add(parent, name, inode)?;
        let handle = self.open(attr.ino)?;
        Ok((attr, handle))
    }

    /// `unlink` of a file (a directory is `EISDIR`).
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?.ino;
        if self.inode(ino)?.kind() == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        self.remove_entry(parent, name, ino)
    }

    /// `rmdir` of an empty directory.
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.lookup(parent, name)?.ino;
        if !self.dir(ino)?.live.is_empty() {
            return Err(Errno(libc::ENOTEMPTY));
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<()> {
        self.dir_mut(parent)?.live.remove(name);
        self.touch(parent);
        let inode = self.inode_mut(ino)?;
        inode.live_links = inode.live_links.saturating_sub(1);
        inode.ctime = SystemTime::now();
        self.forget_if_unused(ino);
        Ok(())
    }

    /// `link`: a second name for a file.
    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<Attr> {
        if self.inode(ino)?.kind() == Kind::Dir {
            return Err(Errno(libc::EPERM));
        }
        self.check_free(parent, name)?;
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch(parent);
        let inode = self.inode_mut(ino)?;
        inode.live_links += 1;
        inode.ctime = SystemTime::now();
        self.getattr(ino)
    }

    /// `rename`, replacing an existing target unless told not to.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        mode: RenameMode,
    ) -> Result<()> {
        let ino = self.lookup(parent, name)?.ino;
        let kind = self.inode(ino)?.kind();
        if kind == Kind::Dir && self.is_within(new_parent, ino)? {
            return Err(Errno(libc::EINVAL));
        }
        if let Some(&target) = self.dir(new_parent)?.live.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if mode == RenameMode::NoReplace {
                return Err(Errno(libc::EEXIST));
            }
            match (kind, self.inode(target)?.kind()) {
                (Kind::File, Kind::Dir) => return Err(Errno(libc::EISDIR)),
                (Kind::Dir, Kind::File) => return Err(Errno(libc::ENOTDIR)),
                (Kind::Dir, Kind::Dir) if !self.dir(target)?.live.is_empty() => {
                    return Err(Errno(libc::ENOTEMPTY))
                }
                _ => {}
            }
            self.remove_entry(new_parent, new_name, target)?;
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?
            .live
            .insert(new_name.to_os_string(), ino);
        if let Content::Dir(dir) = &mut self.inode_mut(ino)?.content {
            dir.parent = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    /// Whether directory `dir` is `ancestor` or lies below it (a directory cannot move there).
    fn is_within(&self, mut dir: u64, ancestor: u64) -> Result<bool> {
        for _ in 0..self.inodes.len() {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT {
                return Ok(false);
            }
            dir = self.dir(dir)?.parent;
        }
        Ok(false)
    }

    fn new_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, handle);
        fh
    }

    /// `open` of a file: the inode stays alive while the handle is open.
    pub fn open(&mut self, ino: u64) -> Result<u64> {
        self.file_mut(ino)?;
        self.inode_mut(ino)?.open += 1;
        Ok(self.new_handle(Handle::File(ino)))
    }

    /// `opendir`: takes the listing the handle will return.
    pub fn opendir(&mut self, ino: u64) -> Result<u64> {
        let dir = self.dir(ino)?;
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, &child) in &dir.live {
            entries.push(DirEntry {
                ino: child,
                kind: self.inode(child)?.kind(),
                name: name.clone(),
            });
        }
        self.inode_mut(ino)?.open += 1;
        Ok(self.new_handle(Handle::Dir(ino, entries)))
    }

    /// The listing of an open directory handle from position `offset` on.
    pub fn readdir(&self, handle: u64, offset: u64) -> Result<&[DirEntry]> {
        match self.handles.get(&handle) {
            Some(Handle::Dir(_, entries)) => Ok(entries.get(offset as usize..).unwrap_or(&[])),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    /// Closes a file or directory handle.
    pub fn release(&mut self, handle: u64) {
        let ino = match self.handles.remove(&handle) {
            Some(Handle::File(ino) | Handle::Dir(ino, _)) => ino,
            None => return,
        };
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.forget_if_unused(ino);
    }

    /// The power cut: every directory gets its durable entries back (from the root down; what is
    /// no longer reachable is dropped), every file its content at its last fsync. Handles are
    /// gone, as after a reboot.
    pub fn cut(&mut self) -> Result<CutReport> {
        let mut report = CutReport::default();
        self.handles.clear();
        let reachable = self.durable_tree();
        let unreachable: Vec<u64> = self
            .inodes
            .keys()
            .copied()
            .filter(|ino| !reachable.contains_key(ino))
            .collect();
        for ino in unreachable {
            if let Some(Inode {
                content: Content::File(file),
                ..
            }) = self.inodes.remove(&ino)
            {
                report.bytes += file.size;
                let _ = fs::remove_file(self.object_path(ino));
                let _ = fs::remove_file(self.undo_path(ino));
            }
        }
        let mut links: HashMap<u64, u32> = HashMap::new();
        for (&ino, &parent) in &reachable {
            if let Ok(dir) = self.dir_mut(ino) {
                let changed = dir
                    .live
                    .iter()
                    .filter(|(name, child)| dir.durable.get(*name) != Some(child))
                    .count()
                    + dir
                        .durable
                        .iter()
                        .filter(|(name, child)| dir.live.get(*name) != Some(child))
                        .count();
                report.entries += changed as u64;
                dir.live = dir.durable.clone();
                dir.parent = parent;
                for &child in dir.durable.values() {
                    *links.entry(child).or_default() += 1;
                }
            }
        }
        let files: Vec<u64> = reachable.keys().copied().collect();
        for ino in files {
            report.bytes += self.roll_back(ino)?;
            let inode = self.inode_mut(ino)?;
            inode.open = 0;
            if ino != ROOT {
                inode.live_links = links.get(&ino).copied().unwrap_or(0);
                inode.durable_links = inode.live_links;
            }
        }
        Ok(report)
    }

    /// Every inode reachable from the root through durable entries, with the directory it was
    /// reached from. A directory reachable twice (moved between two directories that were both
    /// fsynced at different times) keeps only the first entry found, so the tree stays a tree.
    fn durable_tree(&mut self) -> HashMap<u64, u64> {
        let mut reached = HashMap::from([(ROOT, ROOT)]);
        let mut queue = VecDeque::from([ROOT]);
        let mut duplicates: Vec<(u64, OsString)> = Vec::new();
        while let Some(ino) = queue.pop_front() {
            let Ok(dir) = self.dir(ino) else { continue };
            for (name, &child) in &dir.durable {
                let is_dir = self
                    .inodes
                    .get(&child)
                    .is_some_and(|c| c.kind() == Kind::Dir);
                if reached.contains_key(&child) {
                    if is_dir {
                        duplicates.push((ino, name.clone()));
                    }
                    continue;
                }
                if !self.inodes.contains_key(&child) {
                    duplicates.push((ino, name.clone()));
                    continue;
                }
                reached.insert(child, ino);
                if is_dir {
                    queue.push_back(child);
                }
            }
        }
        for (dir, name) in duplicates {
            if let Ok(dir) = self.dir_mut(dir) {
                dir.durable.remove(&name);
            }
        }
        reached
    }

    /// Restores a file's content at its last fsync from its undo log; returns the bytes changed.
    fn roll_back(&mut self, ino: u64) -> Result<u64> {
        if self.inode(ino)?.kind() == Kind::Dir {
            return Ok(0);
        }
        let undo_path = self.undo_path(ino);
        let file = self.file_mut(ino)?;
        if file.undo.is_empty() && file.size == file.synced_len {
            return Ok(0);
        }
        let mut changed = file.size.saturating_sub(file.synced_len);
        if let (Some(object), Some(undo_file)) = (&file.object, &file.undo_file) {
            for saved in file.undo.iter().rev() {
                let mut old = vec![0; saved.len as usize];
                undo_file.read_exact_at(&mut old, saved.at)?;
                object.write_all_at(&old, saved.offset)?;
                changed += saved.len;
            }
        }
        if let Some(object) = &file.object {
            object.set_len(file.synced_len)?;
        }
        file.undo.clear();
        file.undo_len = 0;
        file.size = file.synced_len;
        if file.undo_file.take().is_some() {
            fs::remove_file(undo_path)?;
        }
        Ok(changed)
    }

    /// How many inodes exist (for the fixture's own tests: nothing leaks).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Names of the object files in the backing directory (for the fixture's own tests).
    pub fn object_names(&self) -> io::Result<HashSet<String>> {
        fs::read_dir(self.backing.join("objects"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::new(&dir.path().join("backing")).unwrap();
        (dir, model)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_cut_restores_the_last_fsync_of_data_and_entries() {
        let (_dir, mut m) = model();
        let (file, fh) = m.create(ROOT, name("f"), 0o644, 0, 0).unwrap();
        m.write(file.ino, 0, b"hello world").unwrap();
        m.fsync(file.ino).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.write(file.ino, 6, b"there, and more").unwrap();
        m.create(ROOT, name("new"), 0o644, 0, 0).unwrap();
        m.release(fh);

        let report = m.cut().unwrap();
        assert_eq!(m.read(file.ino, 0, 100).unwrap(), b"hello world");
        assert!(m.lookup(ROOT, name("new")).is_err());
        assert_eq!(report.entries, 1);
        assert_eq!(report.bytes, 10 + 5);
        assert_eq!(m.inode_count(), 2);
        assert_eq!(
            m.object_names().unwrap(),
            HashSet::from([file.ino.to_string()])
        );
    }

    #[test]
    fn an_inode_lives_while_a_handle_or_a_durable_entry_names_it() {
        let (_dir, mut m) = model();
        let (file, fh) = m.create(ROOT, name("f"), 0o644, 0, 0).unwrap();
        m.unlink(ROOT, name("f")).unwrap();
        assert_eq!(m.inode_count(), 2, "open");
        m.release(fh);
        assert_eq!(m.inode_count(), 1, "gone once closed");

        let (file2, fh) = m.create(ROOT, name("g"), 0o644, 0, 0).unwrap();
        m.release(fh);
        m.fsyncdir(ROOT).unwrap();
        m.unlink(ROOT, name("g")).unwrap();
        assert_eq!(m.inode_count(), 2, "a durable entry keeps it");
        m.cut().unwrap();
        assert_eq!(m.lookup(ROOT, name("g")).unwrap().ino, file2.ino);
        assert!(file.ino != file2.ino);
    }

    #[test]
    fn a_directory_durable_in_two_places_comes_back_once() {
        let (_dir, mut m) = model();
        let a = m.mkdir(ROOT, name("a"), 0o755, 0, 0).unwrap().ino;
        let b = m.mkdir(ROOT, name("b"), 0o755, 0, 0).unwrap().ino;
        let d = m.mkdir(a, name("d"), 0o755, 0, 0).unwrap().ino;
        m.fsyncdir(ROOT).unwrap();
        m.fsyncdir(a).unwrap();
        m.rename(a, name("d"), b, name("d"), RenameMode::Replace)
            .unwrap();
        m.fsyncdir(b).unwrap();
        m.cut().unwrap();
        assert_eq!(m.lookup(a, name("d")).unwrap().ino, d);
        assert!(m.lookup(b, name("d")).is_err());
    }

    #[test]
    fn a_directory_cannot_move_below_itself() {
        let (_dir, mut m) = model();
        let a = m.mkdir(ROOT, name("a"), 0o755, 0, 0).unwrap().ino;
        m.mkdir(a, name("b"), 0o755, 0, 0).unwrap();
        let b = m.lookup(a, name("b")).unwrap().ino;
        let moved = m.rename(ROOT, name("a"), b, name("a"), RenameMode::Replace);
        assert_eq!(moved, Err(Errno(libc::EINVAL)));
    }
}
