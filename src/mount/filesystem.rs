//! The FUSE file system of `bramble mount`: the kernel's requests turned into the storage
//! subsystem's calls. Every request is answered from a task on the mount's runtime, so a
//! slow answer (a read waiting for a block) never holds up the others.
//!
//! Reading streams: an open file keeps one `store.file_get` stream going and serves the
//! kernel's reads from it in order, with a window of recent chunks for reads that arrive
//! out of order (readahead); a read far from the stream's position restarts it there.
//! Writing streams too: a new or truncated file's writes go straight into one
//! `store.file_put` stream, and `close` (flush) returns once the agent has made the whole
//! file durable and visible, with any error (ENOSPC, EIO) reported to the writer.
//!
//! What this mount does not do yet, and answers with EOPNOTSUPP: writing into the middle
//! of an existing file or appending to one (files are written whole, as `cp`, `dd`,
//! `tar` and `rsync` write them), symlinks, hard links, extended attributes; `chmod`,
//! `chown` and `utimes` are accepted and not stored.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bramble_net::mux::ResponseReceiver;
use bramble_net::{BodyReader, BodySender, ErrorKind, MuxError, RpcError};
use bramble_store::admin::*;
use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::inodes::{Inodes, ROOT, child_path};
use super::remote::Remote;

/// How long the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(1);
/// Reads this far ahead of the stream's position are served by reading on.
const READ_AHEAD_WINDOW: u64 = 8 * 1024 * 1024;
/// Recent chunks kept for reads that arrive out of order.
const READ_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// How long `statfs` answers are reused.
const STATFS_TTL: Duration = Duration::from_secs(5);
/// Most entries a directory listing holds in memory.
const MAX_DIRECTORY_ENTRIES: usize = 1_000_000;

/// The errno for an error from the cluster.
fn errno(error: &RpcError) -> Errno {
    match error.kind {
        ErrorKind::NotFound => Errno::ENOENT,
        ErrorKind::AlreadyExists => Errno::EEXIST,
        ErrorKind::NotEmpty => Errno::ENOTEMPTY,
        ErrorKind::WrongType => Errno::ENOTDIR,
        ErrorKind::Full => Errno::ENOSPC,
        ErrorKind::TooLarge => Errno::EFBIG,
        ErrorKind::BadRequest => Errno::EINVAL,
        ErrorKind::Unauthorized | ErrorKind::Refused => Errno::EACCES,
        ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Internal => Errno::EIO,
    }
}

fn stream_errno(error: MuxError) -> Errno {
    match error {
        MuxError::Remote(remote) => errno(&remote),
        _ => Errno::EIO,
    }
}

struct ReadStream {
    position: u64,
    body: BodyReader,
    finished: bool,
}

struct Reader {
    path: String,
    stream: Option<ReadStream>,
    /// Recent chunks, contiguous and in order: (offset, bytes).
    cache: VecDeque<(u64, Bytes)>,
    cached_bytes: usize,
}

struct Upload {
    sender: BodySender,
    response: ResponseReceiver,
}

struct Writer {
    path: String,
    mode: u32,
    upload: Option<Upload>,
    /// The file's size as this handle sees it: where the next write must land.
    position: u64,
    /// Bytes at the start of the file already stored in the cluster (by an earlier flush,
    /// or before this handle opened it), which a new upload first copies through.
    stored_size: u64,
    /// The file exists in the cluster with this handle's content (nothing unflushed).
    stored: bool,
    error: Option<Errno>,
}

impl Writer {
    fn new(path: String, mode: u32, existing_size: u64, exists: bool) -> Writer {
        Writer {
            path,
            mode,
            upload: None,
            position: existing_size,
            stored_size: existing_size,
            stored: exists,
            error: None,
        }
    }
}

enum Handle {
    Read(Reader),
    Write(Writer),
    Directory(Vec<FsEntry>),
}

type SharedHandle = Arc<tokio::sync::Mutex<Handle>>;
/// A `statfs` answer (total, free, available bytes) and when it was fetched.
type StatfsAnswer = (Instant, [u64; 3]);

pub struct VolumeFs {
    volume: String,
    remote: Arc<Remote>,
    runtime: tokio::runtime::Handle,
    inodes: Arc<Mutex<Inodes>>,
    handles: Arc<Mutex<HashMap<u64, SharedHandle>>>,
    next_handle: AtomicU64,
    /// Files being written through this mount: path to bytes written so far.
    writing: Arc<Mutex<HashMap<String, u64>>>,
    statfs_cache: Arc<Mutex<Option<StatfsAnswer>>>,
    uid: u32,
    gid: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn time_of(nanoseconds: i64) -> SystemTime {
    if nanoseconds <= 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_nanos(nanoseconds as u64)
    }
}

impl VolumeFs {
    pub fn new(volume: &str, remote: Arc<Remote>, runtime: tokio::runtime::Handle) -> VolumeFs {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        VolumeFs {
            volume: volume.to_string(),
            remote,
            runtime,
            inodes: Arc::new(Mutex::new(Inodes::new())),
            handles: Arc::new(Mutex::new(HashMap::new())),
            next_handle: AtomicU64::new(1),
            writing: Arc::new(Mutex::new(HashMap::new())),
            statfs_cache: Arc::new(Mutex::new(None)),
            uid,
            gid,
        }
    }

    fn attr(&self, inode: u64, entry: &FsEntry) -> FileAttr {
        self.owner().attr(inode, entry)
    }

    fn path_of(&self, inode: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes).path(inode.0).ok_or(Errno::ENOENT)
    }

    fn child_of(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(child_path(&self.path_of(parent)?, name))
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let number = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(number, Arc::new(tokio::sync::Mutex::new(handle)));
        number
    }

    fn handle(&self, number: FileHandle) -> Option<SharedHandle> {
        lock(&self.handles).get(&number.0).cloned()
    }

    /// A file being written here, as an entry (its record is not in the catalog yet).
    fn writing_entry(&self, path: &str) -> Option<FsEntry> {
        lock(&self.writing)
            .get(path)
            .map(|size| entry_being_written(path, *size))
    }
}

/// A file this mount is writing, as the kernel sees it until its record is committed.
fn entry_being_written(path: &str, size: u64) -> FsEntry {
    FsEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size,
        modified_ns: bramble_store::file::now_ns(),
        mode: 0o644,
        blocks: 0,
        version: 0,
        user_metadata: Vec::new(),
    }
}

/// Everything a request task needs, cloned out of the file system.
#[derive(Clone)]
struct Context {
    volume: String,
    remote: Arc<Remote>,
    inodes: Arc<Mutex<Inodes>>,
    writing: Arc<Mutex<HashMap<String, u64>>>,
}

impl Context {
    async fn stat(&self, path: &str) -> Result<FsEntry, RpcError> {
        if let Some(size) = lock(&self.writing).get(path) {
            return Ok(entry_being_written(path, *size));
        }
        let request = PathRequest {
            volume: self.volume.clone(),
            path: path.to_string(),
        };
        self.remote.call(METHOD_FS_STAT, &request).await
    }

    async fn list_all(&self, path: &str) -> Result<Vec<FsEntry>, RpcError> {
        let mut entries = Vec::new();
        let mut start_after = None;
        loop {
            let request = ListRequest {
                volume: self.volume.clone(),
                path: path.to_string(),
                start_after: start_after.take(),
                limit: MAX_LIST_PAGE,
            };
            let page: Listing = self.remote.call(METHOD_FS_LIST, &request).await?;
            entries.extend(page.entries);
            if entries.len() > MAX_DIRECTORY_ENTRIES {
                return Err(RpcError::new(
                    ErrorKind::TooLarge,
                    "the directory is too large to list through the mount",
                ));
            }
            match page.next_start_after {
                Some(next) => start_after = Some(next),
                None => return Ok(entries),
            }
        }
    }

    /// Stores an empty file at `path` (a truncate to 0, or a file created and closed
    /// without a write).
    async fn store_empty(&self, path: &str, mode: u32) -> Result<(), Errno> {
        let upload = self.start_upload(path, mode).await?;
        finish_upload(upload).await
    }

    /// An upload that begins with the first `prefix` bytes of the file as stored now
    /// (an append, or more writes after a flush): the file is always written whole.
    async fn start_upload_after(
        &self,
        path: &str,
        mode: u32,
        prefix: u64,
    ) -> Result<Upload, Errno> {
        let mut upload = self.start_upload(path, mode).await?;
        if prefix > 0 {
            let mut stream = self.open_read_stream(path, 0).await?;
            let mut copied = 0u64;
            while copied < prefix {
                let Some(mut chunk) = stream.body.next_chunk().await.map_err(stream_errno)? else {
                    break;
                };
                let room = (prefix - copied) as usize;
                if chunk.len() > room {
                    chunk.truncate(room);
                }
                copied += chunk.len() as u64;
                upload.sender.send(chunk).await.map_err(stream_errno)?;
            }
            if copied < prefix {
                return Err(Errno::EIO);
            }
        }
        Ok(upload)
    }

    async fn start_upload(&self, path: &str, mode: u32) -> Result<Upload, Errno> {
        let header = FilePutHeader {
            volume: self.volume.clone(),
            path: path.to_string(),
            overwrite: true,
            mode,
            modified_ns: None,
            user_metadata: Vec::new(),
        };
        let header = postcard::to_allocvec(&header).map_err(|_| Errno::EIO)?;
        let (sender, response) = self
            .remote
            .open(METHOD_FILE_PUT, &header)
            .await
            .map_err(|error| errno(&error))?;
        Ok(Upload { sender, response })
    }

    async fn open_read_stream(&self, path: &str, offset: u64) -> Result<ReadStream, Errno> {
        let header = FileGetHeader {
            volume: self.volume.clone(),
            path: path.to_string(),
            offset,
            length: None,
        };
        let header = postcard::to_allocvec(&header).map_err(|_| Errno::EIO)?;
        let (sender, response) = self
            .remote
            .open(METHOD_FILE_GET, &header)
            .await
            .map_err(|error| errno(&error))?;
        sender.finish().await.map_err(stream_errno)?;
        let response = response.wait().await.map_err(stream_errno)?;
        let reply: FileGetReply = postcard::from_bytes(&response.header).map_err(|_| Errno::EIO)?;
        Ok(ReadStream {
            position: reply.offset,
            body: response.body,
            finished: false,
        })
    }
}

/// Ends an upload and waits for the agent's verdict.
async fn finish_upload(upload: Upload) -> Result<(), Errno> {
    let sent = upload.sender.finish().await;
    let answer = upload.response.wait().await;
    match (sent, answer) {
        (_, Ok(_)) => Ok(()),
        (_, Err(error)) => Err(stream_errno(error)),
    }
}

impl Reader {
    /// The bytes of [offset, offset + size) held in the cache, if all of them are.
    fn cached_range(&self, offset: u64, size: usize, file_end: Option<u64>) -> Option<Vec<u8>> {
        let wanted_end = match file_end {
            Some(end) => (offset + size as u64).min(end),
            None => offset + size as u64,
        };
        if wanted_end <= offset {
            return Some(Vec::new());
        }
        let mut data = Vec::with_capacity((wanted_end - offset) as usize);
        let mut cursor = offset;
        for (chunk_offset, chunk) in &self.cache {
            let chunk_end = chunk_offset + chunk.len() as u64;
            if chunk_end <= cursor || *chunk_offset > cursor {
                continue;
            }
            let from = (cursor - chunk_offset) as usize;
            let to = (wanted_end.min(chunk_end) - chunk_offset) as usize;
            data.extend_from_slice(&chunk[from..to]);
            cursor = chunk_offset + to as u64;
            if cursor >= wanted_end {
                return Some(data);
            }
        }
        None
    }

    fn remember(&mut self, offset: u64, chunk: Bytes) {
        self.cached_bytes += chunk.len();
        self.cache.push_back((offset, chunk));
        while self.cached_bytes > READ_CACHE_BYTES {
            match self.cache.pop_front() {
                Some((_, old)) => self.cached_bytes -= old.len(),
                None => break,
            }
        }
    }

    async fn read(
        &mut self,
        context: &Context,
        offset: u64,
        size: usize,
    ) -> Result<Vec<u8>, Errno> {
        if let Some(data) = self.cached_range(offset, size, self.end()) {
            return Ok(data);
        }
        let usable = self.stream.as_ref().is_some_and(|stream| {
            stream.position <= offset && offset <= stream.position + READ_AHEAD_WINDOW
        });
        if !usable {
            self.cache.clear();
            self.cached_bytes = 0;
            self.stream = Some(context.open_read_stream(&self.path, offset).await?);
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(Errno::EIO);
            };
            if stream.finished || stream.position >= offset + size as u64 {
                break;
            }
            match stream.body.next_chunk().await.map_err(stream_errno)? {
                Some(chunk) => {
                    let at = stream.position;
                    stream.position += chunk.len() as u64;
                    self.remember(at, chunk);
                }
                None => stream.finished = true,
            }
        }
        Ok(self
            .cached_range(offset, size, self.end())
            .unwrap_or_default())
    }

    /// The end of the file, once the stream has reached it.
    fn end(&self) -> Option<u64> {
        self.stream
            .as_ref()
            .filter(|stream| stream.finished)
            .map(|stream| stream.position)
    }
}

impl Writer {
    async fn write(&mut self, context: &Context, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if offset != self.position {
            tracing::warn!(
                path = %self.path,
                offset,
                position = self.position,
                "a write that is not at the end of the file is not supported by the mount yet"
            );
            return Err(Errno::EOPNOTSUPP);
        }
        if self.upload.is_none() {
            self.upload = Some(
                context
                    .start_upload_after(&self.path, self.mode, self.stored_size)
                    .await?,
            );
            self.stored = false;
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(Errno::EIO);
        };
        if let Err(error) = upload.sender.send(Bytes::copy_from_slice(data)).await {
            // The agent stopped reading: its answer says why.
            let failed = match self.upload.take() {
                Some(upload) => match upload.response.wait().await {
                    Err(answer) => stream_errno(answer),
                    Ok(_) => stream_errno(error),
                },
                None => Errno::EIO,
            };
            self.error = Some(failed);
            return Err(failed);
        }
        self.position += data.len() as u64;
        lock(&context.writing).insert(self.path.clone(), self.position);
        Ok(data.len() as u32)
    }

    /// Makes the file durable and visible (on flush, fsync and release).
    async fn store(&mut self, context: &Context) -> Result<(), Errno> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let outcome = match self.upload.take() {
            Some(upload) => finish_upload(upload).await,
            None if !self.stored => context.store_empty(&self.path, self.mode).await,
            None => Ok(()),
        };
        match outcome {
            Ok(()) => {
                self.stored = true;
                self.stored_size = self.position;
                lock(&context.writing).remove(&self.path);
                Ok(())
            }
            Err(error) => {
                self.error = Some(error);
                lock(&context.writing).remove(&self.path);
                Err(error)
            }
        }
    }
}

impl VolumeFs {
    fn context(&self) -> Context {
        Context {
            volume: self.volume.clone(),
            remote: self.remote.clone(),
            inodes: self.inodes.clone(),
            writing: self.writing.clone(),
        }
    }
}

/// Attribute maker usable from tasks (it needs only the ids).
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    fn attr(&self, inode: u64, entry: &FsEntry) -> FileAttr {
        let time = time_of(entry.modified_ns);
        let (kind, nlink) = match entry.kind {
            EntryKind::File => (FileType::RegularFile, 1),
            EntryKind::Directory => (FileType::Directory, 2),
        };
        FileAttr {
            ino: INodeNo(inode),
            size: entry.size,
            blocks: entry.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: (entry.mode & 0o7777) as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 128 * 1024,
        }
    }
}

impl Filesystem for VolumeFs {
    fn init(
        &mut self,
        _request: &Request,
        config: &mut fuser::KernelConfig,
    ) -> std::io::Result<()> {
        // O_TRUNC arrives with the open, so a truncating open starts a fresh upload
        // instead of a separate truncate racing it; writes of up to 1 MiB per request
        // (one block) instead of 128 KiB.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child_of(parent, name) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let context = self.context();
        let owner = self.owner();
        self.runtime.spawn(async move {
            match context.stat(&path).await {
                Ok(entry) => {
                    let inode = lock(&context.inodes).remember(&path);
                    reply.entry(&TTL, &owner.attr(inode, &entry), Generation(0));
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn forget(&self, _request: &Request, inode: INodeNo, lookups: u64) {
        lock(&self.inodes).forget(inode.0, lookups);
    }

    fn getattr(
        &self,
        _request: &Request,
        inode: INodeNo,
        _handle: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        let path = match self.path_of(inode) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        if let Some(entry) = self.writing_entry(&path) {
            return reply.attr(&Duration::ZERO, &self.attr(inode.0, &entry));
        }
        let context = self.context();
        let owner = self.owner();
        self.runtime.spawn(async move {
            match context.stat(&path).await {
                Ok(entry) => reply.attr(&TTL, &owner.attr(inode.0, &entry)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn setattr(
        &self,
        _request: &Request,
        inode: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        handle: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let path = match self.path_of(inode) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let context = self.context();
        let owner = self.owner();
        let open = handle.and_then(|handle| self.handle(handle));
        self.runtime.spawn(async move {
            if let Some(size) = size {
                // A truncate: to the current end of a file being written is nothing to do;
                // to zero replaces the file with an empty one; anything else is not
                // supported yet.
                if let Some(open) = &open
                    && let Handle::Write(writer) = &mut *open.lock().await
                {
                    if size == 0 && writer.position != 0 {
                        // Start the file afresh: the upload in flight (if any) is dropped,
                        // which cancels it on the agent.
                        writer.upload = None;
                        writer.position = 0;
                        writer.stored_size = 0;
                        writer.stored = false;
                        lock(&context.writing).insert(path.clone(), 0);
                    } else if size != writer.position {
                        return reply.error(Errno::EOPNOTSUPP);
                    }
                } else if let Some(position) = lock(&context.writing).get(&path).copied() {
                    if position != size {
                        return reply.error(Errno::EOPNOTSUPP);
                    }
                } else if size == 0 {
                    if let Err(error) = context.store_empty(&path, 0o644).await {
                        return reply.error(error);
                    }
                } else {
                    match context.stat(&path).await {
                        Ok(entry) if entry.size == size => {}
                        Ok(_) => return reply.error(Errno::EOPNOTSUPP),
                        Err(error) => return reply.error(errno(&error)),
                    }
                }
            }
            match context.stat(&path).await {
                Ok(entry) => reply.attr(&Duration::ZERO, &owner.attr(inode.0, &entry)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn mkdir(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.child_of(parent, name) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let context = self.context();
        let owner = self.owner();
        self.runtime.spawn(async move {
            let request = MkdirRequest {
                volume: context.volume.clone(),
                path: path.clone(),
                exist_ok: false,
                mode: mode & !umask & 0o7777,
            };
            match context
                .remote
                .call::<_, FsEntry>(METHOD_FS_MKDIR, &request)
                .await
            {
                Ok(entry) => {
                    let inode = lock(&context.inodes).remember(&path);
                    reply.entry(&TTL, &owner.attr(inode, &entry), Generation(0));
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (from, to) = match (
            self.child_of(parent, name),
            self.child_of(new_parent, new_name),
        ) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(error), _) | (_, Err(error)) => return reply.error(error),
        };
        let context = self.context();
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.runtime.spawn(async move {
            let request = RenameRequest {
                volume: context.volume.clone(),
                from: from.clone(),
                to: to.clone(),
                replace: !no_replace,
            };
            match context
                .remote
                .call::<_, FsEntry>(METHOD_FS_RENAME, &request)
                .await
            {
                Ok(_) => {
                    lock(&context.inodes).rename(&from, &to);
                    reply.ok();
                }
                // Too large to move at once: `mv` copies instead when told EXDEV.
                Err(error) if error.kind == ErrorKind::TooLarge => reply.error(Errno::EXDEV),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn open(&self, _request: &Request, inode: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(inode) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let access = flags.0 & libc::O_ACCMODE;
        if access == libc::O_RDONLY {
            let handle = self.add_handle(Handle::Read(Reader {
                path,
                stream: None,
                cache: VecDeque::new(),
                cached_bytes: 0,
            }));
            return reply.opened(FileHandle(handle), FopenFlags::empty());
        }
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let context = self.context();
        let handles = self.handles.clone();
        let next = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.runtime.spawn(async move {
            // A truncating open starts the file afresh; any other keeps its content, and
            // writes may extend it at its end (an append re-sends the file whole).
            let writer = if truncate {
                Writer::new(path, 0o644, 0, false)
            } else {
                match context.stat(&path).await {
                    Ok(entry) => Writer::new(path, entry.mode, entry.size, true),
                    Err(error) => return reply.error(errno(&error)),
                }
            };
            lock(&handles).insert(
                next,
                Arc::new(tokio::sync::Mutex::new(Handle::Write(writer))),
            );
            reply.opened(FileHandle(next), FopenFlags::empty());
        });
    }

    fn read(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.handle(handle) else {
            return reply.error(Errno::EBADF);
        };
        let context = self.context();
        self.runtime.spawn(async move {
            let mut handle = handle.lock().await;
            let Handle::Read(reader) = &mut *handle else {
                return reply.error(Errno::EBADF);
            };
            match reader.read(&context, offset, size as usize).await {
                Ok(data) => reply.data(&data),
                Err(error) => reply.error(error),
            }
        });
    }

    fn write(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(handle) = self.handle(handle) else {
            return reply.error(Errno::EBADF);
        };
        let context = self.context();
        let data = data.to_vec();
        self.runtime.spawn(async move {
            let mut handle = handle.lock().await;
            let Handle::Write(writer) = &mut *handle else {
                return reply.error(Errno::EBADF);
            };
            match writer.write(&context, offset, &data).await {
                Ok(written) => reply.written(written),
                Err(error) => reply.error(error),
            }
        });
    }

    fn flush(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.store(handle, reply);
    }

    fn fsync(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.store(handle, reply);
    }

    fn release(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let removed = lock(&self.handles).remove(&handle.0);
        let context = self.context();
        self.runtime.spawn(async move {
            if let Some(handle) = removed
                && let Handle::Write(writer) = &mut *handle.lock().await
            {
                // Normally flushed already; a last chance for an unflushed writer.
                let _ = writer.store(&context).await;
            }
            reply.ok();
        });
    }

    fn opendir(&self, _request: &Request, inode: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(inode) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let context = self.context();
        let handles = self.handles.clone();
        let next = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.runtime.spawn(async move {
            match context.list_all(&path).await {
                Ok(entries) => {
                    lock(&handles).insert(
                        next,
                        Arc::new(tokio::sync::Mutex::new(Handle::Directory(entries))),
                    );
                    reply.opened(FileHandle(next), FopenFlags::empty());
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn readdir(
        &self,
        _request: &Request,
        inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(handle) = self.handle(handle) else {
            return reply.error(Errno::EBADF);
        };
        let inodes = self.inodes.clone();
        self.runtime.spawn(async move {
            let handle = handle.lock().await;
            let Handle::Directory(entries) = &*handle else {
                return reply.error(Errno::EBADF);
            };
            let mut index = offset as usize;
            if index == 0 {
                if reply.add(inode, 1, FileType::Directory, ".") {
                    return reply.ok();
                }
                index = 1;
            }
            if index == 1 {
                if reply.add(INodeNo(ROOT), 2, FileType::Directory, "..") {
                    return reply.ok();
                }
                index = 2;
            }
            for (position, entry) in entries.iter().enumerate().skip(index - 2) {
                let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
                let kind = match entry.kind {
                    EntryKind::File => FileType::RegularFile,
                    EntryKind::Directory => FileType::Directory,
                };
                // A known inode keeps its number; others get a stable stand-in (the
                // kernel asks with lookup before it uses an entry).
                let known = lock(&inodes).known(&entry.path);
                let number = known.unwrap_or_else(|| stand_in_inode(&entry.path));
                if reply.add(INodeNo(number), (position + 3) as u64, kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&handle.0);
        reply.ok();
    }

    fn statfs(&self, _request: &Request, _inode: INodeNo, reply: ReplyStatfs) {
        const BLOCK: u64 = 4096;
        if let Some((at, [total, free, available])) = *lock(&self.statfs_cache)
            && at.elapsed() < STATFS_TTL
        {
            return reply.statfs(
                total / BLOCK,
                free / BLOCK,
                available / BLOCK,
                0,
                0,
                BLOCK as u32,
                255,
                BLOCK as u32,
            );
        }
        let context = self.context();
        let cache = self.statfs_cache.clone();
        self.runtime.spawn(async move {
            let request = VolumeName {
                name: context.volume.clone(),
            };
            match context
                .remote
                .call::<_, VolumeStatus>(METHOD_VOLUME_STATUS, &request)
                .await
            {
                Ok(status) => {
                    // Each byte stored takes one copy on every brick of a set.
                    let copies = status.spec.layout.set_width().max(1) as u64;
                    let total: u64 = status
                        .bricks
                        .iter()
                        .filter_map(|brick| brick.usage)
                        .map(|usage| usage.total_bytes)
                        .sum::<u64>()
                        / copies;
                    let free: u64 = status
                        .bricks
                        .iter()
                        .filter_map(|brick| brick.usage)
                        .map(|usage| usage.free_bytes)
                        .sum::<u64>()
                        / copies;
                    *lock(&cache) = Some((Instant::now(), [total, free, free]));
                    reply.statfs(
                        total / BLOCK,
                        free / BLOCK,
                        free / BLOCK,
                        0,
                        0,
                        BLOCK as u32,
                        255,
                        BLOCK as u32,
                    );
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn create(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child_of(parent, name) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let context = self.context();
        let owner = self.owner();
        let handles = self.handles.clone();
        let next = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let mode = mode & !umask & 0o7777;
        self.runtime.spawn(async move {
            if flags & libc::O_EXCL != 0 {
                match context.stat(&path).await {
                    Ok(_) => return reply.error(Errno::EEXIST),
                    Err(error) if error.kind == ErrorKind::NotFound => {}
                    Err(error) => return reply.error(errno(&error)),
                }
            }
            let writer = Writer::new(path.clone(), mode, 0, false);
            lock(&context.writing).insert(path.clone(), 0);
            lock(&handles).insert(
                next,
                Arc::new(tokio::sync::Mutex::new(Handle::Write(writer))),
            );
            let inode = lock(&context.inodes).remember(&path);
            let entry = FsEntry {
                path,
                kind: EntryKind::File,
                size: 0,
                modified_ns: bramble_store::file::now_ns(),
                mode,
                blocks: 0,
                version: 0,
                user_metadata: Vec::new(),
            };
            reply.created(
                &Duration::ZERO,
                &owner.attr(inode, &entry),
                Generation(0),
                FileHandle(next),
                FopenFlags::empty(),
            );
        });
    }
}

impl VolumeFs {
    fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }

    fn store(&self, handle: FileHandle, reply: ReplyEmpty) {
        let Some(handle) = self.handle(handle) else {
            return reply.error(Errno::EBADF);
        };
        let context = self.context();
        self.runtime.spawn(async move {
            let mut handle = handle.lock().await;
            match &mut *handle {
                Handle::Write(writer) => match writer.store(&context).await {
                    Ok(()) => reply.ok(),
                    Err(error) => reply.error(error),
                },
                _ => reply.ok(),
            }
        });
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, directory: bool, reply: ReplyEmpty) {
        let path = match self.child_of(parent, name) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let context = self.context();
        self.runtime.spawn(async move {
            let request = RemoveRequest {
                volume: context.volume.clone(),
                path,
                recursive: false,
                expect: Some(if directory {
                    EntryKind::Directory
                } else {
                    EntryKind::File
                }),
            };
            match context
                .remote
                .call::<_, u64>(METHOD_FS_REMOVE, &request)
                .await
            {
                Ok(_) => reply.ok(),
                Err(error) if error.kind == ErrorKind::WrongType && !directory => {
                    reply.error(Errno::EISDIR)
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }
}

/// A stable inode number for an entry the kernel has not looked up yet (high bit set, so
/// it never collides with the numbers [`Inodes`] hands out).
fn stand_in_inode(path: &str) -> u64 {
    let digest = blake3::hash(path.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(bytes) | (1 << 63)
}
