//! The FUSE file system of `bramble mount`: the kernel's requests turned into the storage
//! subsystem's calls. Every request is answered from a task on the mount's runtime, so a
//! slow answer (a read waiting for a block) never holds up the others.
//!
//! Reading streams: an open file keeps one `store.file_get` stream going and serves the
//! kernel's reads from it in order, with a window of recent chunks for reads that arrive
//! out of order (readahead); a read far from the stream's position restarts it there.
//! Writing streams too: a new or truncated file's writes go straight into one
//! `store.file_put` stream, and `close` (flush) returns once the agent has made the whole
//! file durable and visible, with any error (ENOSPC, EIO) reported to the writer. While
//! such a file is at most 4 KiB its bytes are held here and stored in one call at the
//! flush (the catalog keeps them in the file's record); with `--flush-behind` that call
//! runs behind the close ([`super::behind`]).
//! Writes anywhere else — into the middle of a file, appends to an existing one, a write
//! that seeks back — are held per open file as merged byte ranges (at most
//! [`DIRTY_LIMIT`]) and sent as `store.file_patch` changes at the next flush, fsync or
//! close, or when the limit fills; the agent rewrites only the blocks they touch.
//! `truncate` to any size is a patch too. A file open for reading and writing stores what
//! was written before it serves a read, so a read sees the handle's own writes. As with
//! NFS, other open files see the changes once they are flushed (close-to-open), except
//! that a small file read within a second of listing its directory is read as the listing
//! brought it ([`super::quick_read`]).
//!
//! What this mount does not do yet, and answers with EOPNOTSUPP: symlinks, hard links,
//! extended attributes; `chmod`, `chown` and `utimes` are accepted and not stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::behind::{BEHIND_MAX_BYTES, FlushBehind};
use super::inodes::{Inodes, ROOT, child_path};
use super::known::{Answer, KnownDirectories};
use super::lock;
use super::quick_read::{Plan, QuickRead, READ_AHEAD_FILES, Ticket};
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
/// Bytes of patches an open file holds before it sends them without waiting for a flush.
const DIRTY_LIMIT: usize = 8 * 1024 * 1024;
/// Bytes of a body sent per chunk.
const CHUNK_BYTES: usize = 1024 * 1024;

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
    stream_errno_of(&error)
}

fn stream_errno_of(error: &MuxError) -> Errno {
    match error {
        MuxError::Remote(remote) => errno(remote),
        _ => Errno::EIO,
    }
}

/// `code` for a read of `path` that failed with `error`: the reader hears only an errno,
/// so the reason of an EIO goes to the mount's log.
fn read_failure(path: &str, error: &dyn std::fmt::Display, code: Errno) -> Errno {
    if code.code() == libc::EIO {
        tracing::warn!(path, %error, "a read failed");
    }
    code
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
    /// The file's size when the cache holds all of it (bytes a listing brought).
    whole: Option<u64>,
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
    /// Bytes written away from the end of an upload stream, merged by offset, held until
    /// they are sent as patches.
    dirty: BTreeMap<u64, Vec<u8>>,
    dirty_bytes: usize,
    /// A size to cut or extend the file to, sent as a patch before the dirty ranges.
    resize: Option<u64>,
    /// Reads through this handle (a file open for reading and writing).
    reader: Option<Reader>,
    /// The bytes of a new or truncated file while it is at most [`BEHIND_MAX_BYTES`]:
    /// stored whole at the flush, in one call (or behind the close with
    /// `--flush-behind`); a file that grows past it streams from then on.
    buffered: Vec<u8>,
    /// Created with O_EXCL and not stored yet: its first store must not replace a file
    /// of the same name, which another client may have made since this mount last
    /// listed the directory ([`super::known`]); the close then reports EEXIST.
    exclusive: bool,
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
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            resize: None,
            reader: None,
            exclusive: false,
            buffered: Vec::new(),
        }
    }

    fn has_patches(&self) -> bool {
        !self.dirty.is_empty() || self.resize.is_some()
    }

    /// Holds `data` for offset `offset`, merged with the ranges it overlaps or touches
    /// (the newest bytes win).
    fn add_dirty(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let touching: Vec<u64> = self
            .dirty
            .range(..=end)
            .filter(|(start, bytes)| *start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let mut merged_start = offset;
        let mut merged_end = end;
        for start in &touching {
            let length = self.dirty.get(start).map_or(0, Vec::len) as u64;
            merged_start = merged_start.min(*start);
            merged_end = merged_end.max(start + length);
        }
        let mut merged = vec![0u8; (merged_end - merged_start) as usize];
        for start in touching {
            if let Some(bytes) = self.dirty.remove(&start) {
                self.dirty_bytes -= bytes.len();
                let from = (start - merged_start) as usize;
                merged[from..from + bytes.len()].copy_from_slice(&bytes);
            }
        }
        let from = (offset - merged_start) as usize;
        merged[from..from + data.len()].copy_from_slice(data);
        self.dirty_bytes += merged.len();
        self.dirty.insert(merged_start, merged);
    }
}

enum Handle {
    Read(Reader),
    Write(Box<Writer>),
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
    behind: Arc<FlushBehind>,
    /// Directories whose names this mount knows, for lookups of absent names.
    known: Arc<KnownDirectories>,
    /// Small files' bytes from recent listings.
    quick: Arc<QuickRead>,
    uid: u32,
    gid: u32,
}

fn time_of(nanoseconds: i64) -> SystemTime {
    if nanoseconds <= 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_nanos(nanoseconds as u64)
    }
}

impl VolumeFs {
    pub fn new(
        volume: &str,
        remote: Arc<Remote>,
        runtime: tokio::runtime::Handle,
        behind: Arc<FlushBehind>,
    ) -> VolumeFs {
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
            behind,
            known: Arc::new(KnownDirectories::default()),
            quick: Arc::new(QuickRead::default()),
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

/// An entry's own name, the last part of its path.
fn name_of(entry: &FsEntry) -> String {
    bramble_store::paths::file_name(&entry.path).to_string()
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
    behind: Arc<FlushBehind>,
    known: Arc<KnownDirectories>,
    quick: Arc<QuickRead>,
}

impl Context {
    /// This mount is writing `path` and holds `size` bytes of it so far.
    fn writing_at(&self, path: &str, size: u64) {
        lock(&self.writing).insert(path.to_string(), size);
        self.quick.forget(path);
    }

    /// This mount has stored what it wrote to `path`: the cluster answers for it again.
    fn done_writing(&self, path: &str) {
        lock(&self.writing).remove(path);
        self.quick.forget(path);
    }

    /// Whether `name` (at `path`) in `directory` is known absent without asking the
    /// cluster ([`super::known`]); a directory whose names are no longer fresh is listed
    /// again first, once the commits running behind closes in it have landed.
    async fn known_absent(&self, directory: &str, name: &str, path: &str) -> bool {
        if lock(&self.writing).contains_key(path) {
            return false;
        }
        match self.known.answer(directory, name) {
            Answer::Absent => true,
            Answer::Ask => false,
            Answer::Refresh => {
                self.behind.settle_within(directory).await;
                let asked = Instant::now();
                match self.list_all(directory).await {
                    Ok(entries) => {
                        self.known
                            .learn(directory, asked, entries.iter().map(name_of));
                        self.known.answer(directory, name) == Answer::Absent
                    }
                    Err(_) => false,
                }
            }
        }
    }

    async fn stat(&self, path: &str) -> Result<FsEntry, RpcError> {
        if let Some(size) = lock(&self.writing).get(path) {
            return Ok(entry_being_written(path, *size));
        }
        // A removal running behind an unlink: the answer is the cluster's once it lands.
        self.behind.settle(path).await;
        let request = PathRequest {
            volume: self.volume.clone(),
            path: path.to_string(),
        };
        let entry: FsEntry = self.remote.call(METHOD_FS_STAT, &request).await?;
        self.quick.seen(path, entry.version);
        Ok(entry)
    }

    /// Every entry of a directory, page by page.
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

    /// Asks for the page of `directory` after `start_after` with its small files' bytes,
    /// and keeps them. A failure only means the files are read one by one.
    async fn read_ahead(&self, directory: String, start_after: String, ticket: Ticket) {
        let request = ListRequest {
            volume: self.volume.clone(),
            path: directory.clone(),
            start_after: Some(start_after),
            limit: READ_AHEAD_FILES,
        };
        let page: ContentListing = match self.remote.call(METHOD_FS_LIST_CONTENT, &request).await {
            Ok(page) => page,
            Err(error) => {
                if error.kind == ErrorKind::NotFound && error.message.contains("has no method") {
                    tracing::info!(%error, "the agent sends no file bytes with listings");
                    self.quick.agent_lacks_content();
                }
                return;
            }
        };
        let entries = &page.listing.entries;
        let covered_until = page
            .listing
            .next_start_after
            .as_deref()
            .map(|next| bramble_store::paths::file_name(next).to_string());
        let files = page.contents.into_iter().filter_map(|content| {
            let entry = entries.get(content.entry as usize)?;
            (entry.kind == EntryKind::File && entry.size == content.bytes.len() as u64).then(|| {
                (
                    entry.path.clone(),
                    entry.version,
                    Bytes::from(content.bytes),
                )
            })
        });
        let held = self.quick.learn(ticket, &directory, covered_until, files);
        tracing::debug!(directory, held, "read ahead");
    }

    /// Stores `bytes` as the whole file at `path` (a small file, a truncate to 0, a file
    /// created and closed without a write). Does not wait for a commit behind a close of
    /// the same path: the callers that may follow one wait first.
    async fn put_bytes(
        &self,
        path: &str,
        mode: u32,
        bytes: Vec<u8>,
        overwrite: bool,
    ) -> Result<(), Errno> {
        let mut upload = self.start_upload(path, mode, overwrite).await?;
        if !bytes.is_empty() && upload.sender.send(Bytes::from(bytes)).await.is_err() {
            // The agent stopped reading: its answer says why.
            return finish_upload(path, upload).await.and(Err(Errno::EIO));
        }
        finish_upload(path, upload).await
    }

    /// Changes part of the stored file: first cut or extended to `resize`, then `data`
    /// written at `offset`.
    async fn patch(
        &self,
        path: &str,
        offset: u64,
        data: &[u8],
        resize: Option<u64>,
    ) -> Result<(), Errno> {
        self.behind.settle(path).await;
        let header = FilePatchHeader {
            volume: self.volume.clone(),
            path: path.to_string(),
            offset,
            resize,
            forwarded: false,
        };
        let header = postcard::to_allocvec(&header).map_err(|_| Errno::EIO)?;
        let (mut sender, response) = self
            .remote
            .open(METHOD_FILE_PATCH, &header)
            .await
            .map_err(|error| errno(&error))?;
        for chunk in data.chunks(CHUNK_BYTES) {
            // A refusal ends the stream early; the answer says why.
            if sender.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
        }
        finish_upload(path, Upload { sender, response }).await
    }

    /// An upload that begins with the first `prefix` bytes of the file as stored now
    /// (an append, or more writes after a flush): the file is always written whole.
    async fn start_upload_after(
        &self,
        path: &str,
        mode: u32,
        prefix: u64,
        overwrite: bool,
    ) -> Result<Upload, Errno> {
        self.behind.settle(path).await;
        let mut upload = self.start_upload(path, mode, overwrite).await?;
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

    async fn start_upload(&self, path: &str, mode: u32, overwrite: bool) -> Result<Upload, Errno> {
        let header = FilePutHeader {
            volume: self.volume.clone(),
            path: path.to_string(),
            overwrite,
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
        self.behind.settle(path).await;
        let header = FileGetHeader {
            volume: self.volume.clone(),
            path: path.to_string(),
            offset,
            length: None,
        };
        let header = postcard::to_allocvec(&header).map_err(|_| Errno::EIO)?;
        let failed = |error: &dyn std::fmt::Display, code: Errno| read_failure(path, error, code);
        let (sender, response) = self
            .remote
            .open(METHOD_FILE_GET, &header)
            .await
            .map_err(|error| failed(&error, errno(&error)))?;
        sender
            .finish()
            .await
            .map_err(|error| failed(&error, stream_errno_of(&error)))?;
        let response = response
            .wait()
            .await
            .map_err(|error| failed(&error, stream_errno_of(&error)))?;
        let reply: FileGetReply = postcard::from_bytes(&response.header).map_err(|_| Errno::EIO)?;
        Ok(ReadStream {
            position: reply.offset,
            body: response.body,
            finished: false,
        })
    }
}

/// Ends an upload and waits for the agent's verdict.
async fn finish_upload(path: &str, upload: Upload) -> Result<(), Errno> {
    let sent = upload.sender.finish().await;
    let answer = upload.response.wait().await;
    match (sent, answer) {
        (_, Ok(_)) => Ok(()),
        (_, Err(error)) => {
            // The writer hears only an errno: the reason goes to the mount's log.
            tracing::warn!(path, %error, "a write was not stored");
            Err(stream_errno(error))
        }
    }
}

impl Reader {
    fn new(path: String) -> Reader {
        Reader {
            path,
            stream: None,
            cache: VecDeque::new(),
            cached_bytes: 0,
            whole: None,
        }
    }

    /// Serves every read from `bytes`, the whole file (brought by a listing).
    fn hold_whole(&mut self, bytes: Bytes) {
        self.whole = Some(bytes.len() as u64);
        self.cached_bytes = bytes.len();
        self.cache.push_back((0, bytes));
    }

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
            self.whole = None;
            self.stream = Some(context.open_read_stream(&self.path, offset).await?);
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(Errno::EIO);
            };
            if stream.finished || stream.position >= offset + size as u64 {
                break;
            }
            let next = stream
                .body
                .next_chunk()
                .await
                .map_err(|error| read_failure(&self.path, &error, stream_errno_of(&error)))?;
            match next {
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
        if self.whole.is_some() {
            return self.whole;
        }
        self.stream
            .as_ref()
            .filter(|stream| stream.finished)
            .map(|stream| stream.position)
    }
}

impl Writer {
    /// Holds `data` when it extends a small new file held whole here (no call needed);
    /// `None` when the write needs [`Writer::write`].
    fn buffer_small(&mut self, context: &Context, offset: u64, data: &[u8]) -> Option<u32> {
        let fits = self.error.is_none()
            && offset == self.position
            && self.holds_whole_file()
            && self.buffered.len() + data.len() <= BEHIND_MAX_BYTES;
        if !fits {
            return None;
        }
        self.reader = None;
        self.buffered.extend_from_slice(data);
        self.position += data.len() as u64;
        context.writing_at(&self.path, self.position);
        Some(data.len() as u32)
    }

    /// At a release: a handle whose content is stored already has nothing left to do but
    /// hand the file back to the cluster's answers. `false` when it needs
    /// [`Writer::store_at_flush`].
    fn release_stored(&mut self, context: &Context) -> bool {
        let stored = self.error.is_none()
            && self.upload.is_none()
            && self.stored
            && !self.has_patches()
            && self.buffered.is_empty();
        if stored && !context.behind.is_pending(&self.path) {
            context.done_writing(&self.path);
        }
        stored
    }

    async fn write(&mut self, context: &Context, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if let Some(written) = self.buffer_small(context, offset, data) {
            return Ok(written);
        }
        self.reader = None;
        // A new or truncated file written front to back streams; anything else is a patch.
        let streaming = (self.upload.is_some() || self.stored_size == 0)
            && !self.has_patches()
            && offset == self.position;
        if !streaming {
            // What the stream carried so far is stored first: patches change a stored file.
            self.finish_stream(context).await?;
            self.add_dirty(offset, data);
            self.position = self.position.max(offset + data.len() as u64);
            context.writing_at(&self.path, self.position);
            if self.dirty_bytes >= DIRTY_LIMIT {
                self.send_patches(context).await?;
            }
            return Ok(data.len() as u32);
        }
        if self.holds_whole_file() && self.buffered.len() + data.len() <= BEHIND_MAX_BYTES {
            // Still small: held until the flush, which stores it in one call.
            self.buffered.extend_from_slice(data);
            self.position += data.len() as u64;
            context.writing_at(&self.path, self.position);
            return Ok(data.len() as u32);
        }
        if self.upload.is_none() {
            self.upload = Some(
                context
                    .start_upload_after(&self.path, self.mode, self.stored_size, !self.exclusive)
                    .await?,
            );
            self.stored = false;
            // A small start held so far goes first (the stream begins at stored_size 0).
            let held = std::mem::take(&mut self.buffered);
            if !held.is_empty() {
                self.send_to_upload(Bytes::from(held)).await?;
            }
        }
        self.send_to_upload(Bytes::copy_from_slice(data)).await?;
        self.position += data.len() as u64;
        context.writing_at(&self.path, self.position);
        Ok(data.len() as u32)
    }

    /// Whether all of the file is in [`Writer::buffered`]: a new or truncated file with no
    /// upload, no patch and nothing stored by this handle yet.
    fn holds_whole_file(&self) -> bool {
        self.upload.is_none()
            && !self.stored
            && self.stored_size == 0
            && !self.has_patches()
            && self.position == self.buffered.len() as u64
    }

    /// Sends `bytes` down the open upload; if the agent has stopped reading, its answer
    /// becomes this handle's error.
    async fn send_to_upload(&mut self, bytes: Bytes) -> Result<(), Errno> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(Errno::EIO);
        };
        if let Err(error) = upload.sender.send(bytes).await {
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
        Ok(())
    }

    /// Makes the file durable and visible (on flush, fsync and release, and before a
    /// read through this handle).
    async fn store(&mut self, context: &Context) -> Result<(), Errno> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.finish_stream(context).await?;
        self.send_patches(context).await?;
        // While a commit behind an earlier close runs, the mount still answers for the
        // file; that commit hands it over when it lands.
        if !context.behind.is_pending(&self.path) {
            context.done_writing(&self.path);
        }
        Ok(())
    }

    /// At a flush (or release): with `--flush-behind`, a small file held whole here is
    /// handed to a commit behind the close ([`FlushBehind`]); anything else is stored now.
    async fn store_at_flush(&mut self, context: &Context) -> Result<(), Errno> {
        if !context.behind.enabled() || self.error.is_some() || !self.holds_whole_file() {
            return self.store(context).await;
        }
        let bytes = std::mem::take(&mut self.buffered);
        let size = self.position;
        self.stored = true;
        self.stored_size = size;
        let overwrite = !std::mem::take(&mut self.exclusive);
        let path = self.path.clone();
        let mode = self.mode;
        let committer = context.clone();
        let writing = context.writing.clone();
        let quick = context.quick.clone();
        let finished_path = path.clone();
        context
            .behind
            .commit(
                "store",
                path.clone(),
                async move { committer.put_bytes(&path, mode, bytes, overwrite).await },
                move || {
                    // Until now the mount answered for the file; from here the cluster
                    // does (unless this handle wrote more since, and still answers).
                    let mut writing = lock(&writing);
                    if writing.get(&finished_path) == Some(&size) {
                        writing.remove(&finished_path);
                    }
                    quick.forget(&finished_path);
                },
            )
            .await;
        Ok(())
    }

    /// Ends the upload stream (or stores the small or empty file held here), so that
    /// the file exists in the cluster as this handle wrote it.
    async fn finish_stream(&mut self, context: &Context) -> Result<(), Errno> {
        let outcome = match self.upload.take() {
            Some(upload) => finish_upload(&self.path, upload).await,
            None if !self.stored => {
                context.behind.settle(&self.path).await;
                let bytes = std::mem::take(&mut self.buffered);
                context
                    .put_bytes(&self.path, self.mode, bytes, !self.exclusive)
                    .await
            }
            None => return Ok(()),
        };
        self.fail_on(context, outcome)?;
        self.exclusive = false;
        self.stored = true;
        self.stored_size = self.position;
        Ok(())
    }

    /// Sends the resize and the dirty ranges as patches, in order of offset.
    async fn send_patches(&mut self, context: &Context) -> Result<(), Errno> {
        if !self.has_patches() {
            return Ok(());
        }
        let mut resize = self.resize.take();
        let dirty = std::mem::take(&mut self.dirty);
        self.dirty_bytes = 0;
        let mut pieces: Vec<(u64, &[u8])> = Vec::new();
        for (start, bytes) in &dirty {
            let mut offset = *start;
            for piece in bytes.chunks(bramble_store::patch::MAX_PATCH_BYTES) {
                pieces.push((offset, piece));
                offset += piece.len() as u64;
            }
        }
        if pieces.is_empty() {
            pieces.push((0, &[]));
        }
        for (offset, piece) in pieces {
            let outcome = context
                .patch(&self.path, offset, piece, resize.take())
                .await;
            self.fail_on(context, outcome)?;
        }
        self.stored_size = self.position;
        Ok(())
    }

    /// A failed store makes every later call on this handle fail the same way (the data
    /// it held is lost, and the writer must hear of it).
    fn fail_on(&mut self, context: &Context, outcome: Result<(), Errno>) -> Result<(), Errno> {
        if let Err(error) = outcome {
            self.error = Some(error);
            context.done_writing(&self.path);
            return Err(error);
        }
        Ok(())
    }
}

impl VolumeFs {
    fn context(&self) -> Context {
        Context {
            volume: self.volume.clone(),
            remote: self.remote.clone(),
            inodes: self.inodes.clone(),
            writing: self.writing.clone(),
            behind: self.behind.clone(),
            known: self.known.clone(),
            quick: self.quick.clone(),
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
        // Listings carry every entry's attributes (readdirplus), so `ls -l`, `cp -r` and
        // `rm -r` need no lookup round trip per entry.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (directory, name) = match (self.path_of(parent), name.to_str()) {
            (Ok(directory), Some(name)) => (directory, name.to_string()),
            (Err(error), _) => return reply.error(error),
            (_, None) => return reply.error(Errno::EINVAL),
        };
        let path = child_path(&directory, &name);
        // A name known absent (the common lookup before a create) is answered here.
        if !lock(&self.writing).contains_key(&path)
            && self.known.answer(&directory, &name) == Answer::Absent
        {
            return reply.error(Errno::ENOENT);
        }
        let context = self.context();
        let owner = self.owner();
        self.runtime.spawn(async move {
            if context.known_absent(&directory, &name, &path).await {
                return reply.error(Errno::ENOENT);
            }
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
            context.behind.settle(&path).await;
            if let Some(size) = size {
                // A truncate: to the current end is nothing to do; to zero replaces the
                // file with an empty one; any other size is a patch.
                if let Some(open) = &open
                    && let Handle::Write(writer) = &mut *open.lock().await
                {
                    writer.reader = None;
                    if size == 0 && (writer.position != 0 || writer.has_patches()) {
                        // Start the file afresh: the upload in flight (if any) is dropped,
                        // which cancels it on the agent, and held patches with it.
                        writer.upload = None;
                        writer.buffered.clear();
                        writer.dirty.clear();
                        writer.dirty_bytes = 0;
                        writer.resize = None;
                        writer.position = 0;
                        writer.stored_size = 0;
                        writer.stored = false;
                        context.writing_at(&path, 0);
                    } else if size != writer.position {
                        // What the handle holds is stored first, then the resize.
                        if let Err(error) = writer.store(&context).await {
                            return reply.error(error);
                        }
                        writer.resize = Some(size);
                        writer.position = size;
                        if let Err(error) = writer.store(&context).await {
                            return reply.error(error);
                        }
                    }
                } else if let Some(position) = lock(&context.writing).get(&path).copied() {
                    // Another open file is writing it: its writes would race the resize.
                    if position != size {
                        return reply.error(Errno::EBUSY);
                    }
                } else if size == 0 {
                    if let Err(error) = context.put_bytes(&path, 0o644, Vec::new(), true).await {
                        return reply.error(error);
                    }
                } else {
                    match context.stat(&path).await {
                        Ok(entry) if entry.size == size => {}
                        Ok(_) => {
                            if let Err(error) = context.patch(&path, 0, &[], Some(size)).await {
                                return reply.error(error);
                            }
                        }
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
            let asked = Instant::now();
            match context
                .remote
                .call::<_, FsEntry>(METHOD_FS_MKDIR, &request)
                .await
            {
                Ok(entry) => {
                    // Made here, so empty when the request was sent.
                    context.known.learn(&path, asked, Vec::new());
                    context.known.added(&path);
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
            context.behind.settle_within(&from).await;
            context.behind.settle_within(&to).await;
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
                    context.known.forget_all();
                    context.quick.forget_all();
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
            // Answered here unless a read-ahead page must be asked for first: a hand-off
            // to the runtime costs more than a small file's whole read.
            let next = self.next_handle.fetch_add(1, Ordering::Relaxed);
            let mut reader = Reader::new(path);
            let plan = if lock(&self.writing).contains_key(&reader.path) {
                Plan::Ask
            } else {
                self.quick.open(&reader.path)
            };
            let read_ahead = match plan {
                Plan::Hit(bytes) => {
                    reader.hold_whole(bytes);
                    None
                }
                Plan::Ask => None,
                Plan::ReadAhead {
                    directory,
                    start_after,
                    ticket,
                } => Some((directory, start_after, ticket)),
            };
            let handles = self.handles.clone();
            let Some((directory, start_after, ticket)) = read_ahead else {
                return open_handle(&handles, next, Handle::Read(reader), reply);
            };
            let context = self.context();
            self.runtime.spawn(async move {
                context.read_ahead(directory, start_after, ticket).await;
                if let Some(bytes) = context.quick.bytes(&reader.path) {
                    reader.hold_whole(bytes);
                }
                open_handle(&handles, next, Handle::Read(reader), reply);
            });
            return;
        }
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let context = self.context();
        let handles = self.handles.clone();
        let next = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.runtime.spawn(async move {
            // A truncating open starts the file afresh; any other keeps its content, and
            // writes may extend it at its end (an append re-sends the file whole).
            context.behind.settle(&path).await;
            let writer = if truncate {
                Writer::new(path, 0o644, 0, false)
            } else {
                match context.stat(&path).await {
                    Ok(entry) => Writer::new(path, entry.mode, entry.size, true),
                    Err(error) => return reply.error(errno(&error)),
                }
            };
            open_handle(&handles, next, Handle::Write(Box::new(writer)), reply);
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
        // Bytes already held (a small file, a window of the stream) are answered here.
        if let Ok(held) = handle.try_lock()
            && let Handle::Read(reader) = &*held
            && let Some(data) = reader.cached_range(offset, size as usize, reader.end())
        {
            return reply.data(&data);
        }
        let context = self.context();
        self.runtime.spawn(async move {
            let mut handle = handle.lock().await;
            let reader = match &mut *handle {
                Handle::Read(reader) => reader,
                Handle::Write(writer) => {
                    // Open for reading and writing: what this handle wrote is stored
                    // first, so the read sees it.
                    if let Err(error) = writer.store(&context).await {
                        return reply.error(error);
                    }
                    let path = writer.path.clone();
                    writer.reader.get_or_insert_with(|| Reader::new(path))
                }
                Handle::Directory(_) => return reply.error(Errno::EISDIR),
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
        // A small file's bytes are only held: answered here.
        if let Ok(mut held) = handle.try_lock()
            && let Handle::Write(writer) = &mut *held
            && let Some(written) = writer.buffer_small(&context, offset, data)
        {
            return reply.written(written);
        }
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
        self.store(handle, StoreWhen::AtFlush, reply);
    }

    fn fsync(
        &self,
        _request: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.store(handle, StoreWhen::Durably, reply);
    }

    fn fsyncdir(
        &self,
        _request: &Request,
        inode: INodeNo,
        _handle: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let path = match self.path_of(inode) {
            Ok(path) => path,
            Err(error) => return reply.error(error),
        };
        let behind = self.behind.clone();
        self.runtime.spawn(async move {
            behind.settle_within(&path).await;
            match behind.take_failure_within(&path) {
                Some(error) => reply.error(error),
                None => reply.ok(),
            }
        });
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
        let nothing_to_store = removed.as_ref().is_none_or(|handle| {
            handle.try_lock().is_ok_and(|mut held| match &mut *held {
                Handle::Write(writer) => writer.release_stored(&context),
                _ => true,
            })
        });
        if nothing_to_store {
            return reply.ok();
        }
        self.runtime.spawn(async move {
            if let Some(handle) = removed
                && let Handle::Write(writer) = &mut *handle.lock().await
            {
                // Normally flushed already; a last chance for an unflushed writer.
                let _ = writer.store_at_flush(&context).await;
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
            // Files closed here whose commit is still running are listed once it lands.
            context.behind.settle_within(&path).await;
            let asked = Instant::now();
            match context.list_all(&path).await {
                Ok(entries) => {
                    context
                        .known
                        .learn(&path, asked, entries.iter().map(name_of));
                    open_handle(&handles, next, Handle::Directory(entries), reply);
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

    /// `readdir` with each entry's attributes. Every entry but `.` and `..` counts as a
    /// kernel lookup of its inode (the kernel forgets it later), as `lookup` does.
    fn readdirplus(
        &self,
        _request: &Request,
        inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(handle) = self.handle(handle) else {
            return reply.error(Errno::EBADF);
        };
        let context = self.context();
        let owner = self.owner();
        self.runtime.spawn(async move {
            let handle = handle.lock().await;
            let Handle::Directory(entries) = &*handle else {
                return reply.error(Errno::EBADF);
            };
            // The kernel takes neither attributes nor a lookup from `.` and `..`.
            let directory = FsEntry::bare_directory("");
            let mut index = offset as usize;
            if index == 0 {
                let attr = owner.attr(inode.0, &directory);
                if reply.add(inode, 1, ".", &Duration::ZERO, &attr, Generation(0)) {
                    return reply.ok();
                }
                index = 1;
            }
            if index == 1 {
                let attr = owner.attr(ROOT, &directory);
                if reply.add(
                    INodeNo(ROOT),
                    2,
                    "..",
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    return reply.ok();
                }
                index = 2;
            }
            for (position, entry) in entries.iter().enumerate().skip(index - 2) {
                let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
                // A file this mount is still writing is shown as it is here, uncached.
                let (entry, ttl) = match lock(&context.writing).get(&entry.path) {
                    Some(size) => (entry_being_written(&entry.path, *size), Duration::ZERO),
                    None => (entry.clone(), TTL),
                };
                let number = lock(&context.inodes).remember(&entry.path);
                let attr = owner.attr(number, &entry);
                let full = reply.add(
                    INodeNo(number),
                    (position + 3) as u64,
                    name,
                    &ttl,
                    &attr,
                    Generation(0),
                );
                if full {
                    // Not sent: not a lookup the kernel will forget.
                    lock(&context.inodes).forget(number, 1);
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
        let exclusive = flags & libc::O_EXCL != 0;
        // Nothing to wait for (no commit of this path running behind a close): answered
        // here.
        if !self.behind.is_pending(&path) {
            return start_new_file(
                &context, &owner, &handles, next, path, mode, exclusive, reply,
            );
        }
        self.runtime.spawn(async move {
            context.behind.settle(&path).await;
            start_new_file(
                &context, &owner, &handles, next, path, mode, exclusive, reply,
            );
        });
    }
}

/// Keeps an open file or directory under `number`.
fn keep_handle(handles: &Mutex<HashMap<u64, SharedHandle>>, number: u64, handle: Handle) {
    lock(handles).insert(number, Arc::new(tokio::sync::Mutex::new(handle)));
}

/// Keeps `handle` under `number` and answers the kernel's open with it.
fn open_handle(
    handles: &Mutex<HashMap<u64, SharedHandle>>,
    number: u64,
    handle: Handle,
    reply: ReplyOpen,
) {
    keep_handle(handles, number, handle);
    reply.opened(FileHandle(number), FopenFlags::empty());
}

/// Opens a new, empty file at `path` for writing under handle `next` and answers the
/// kernel's create.
#[allow(clippy::too_many_arguments)]
fn start_new_file(
    context: &Context,
    owner: &Owner,
    handles: &Mutex<HashMap<u64, SharedHandle>>,
    next: u64,
    path: String,
    mode: u32,
    exclusive: bool,
    reply: ReplyCreate,
) {
    // O_EXCL needs no question here: the kernel creates only a name its lookup
    // found absent, within the entry's timeout (a name this mount is writing has
    // a timeout of zero, so its lookup is answered from `writing`: EEXIST), and
    // with O_EXCL FUSE looks the name up afresh even when it holds it as absent.
    // That lookup may be answered from what this mount last listed of the
    // directory (`super::known`, up to a second old), so an O_EXCL file's first
    // store refuses to replace one of the same name: the close reports EEXIST.
    let mut writer = Writer::new(path.clone(), mode, 0, false);
    writer.exclusive = exclusive;
    context.writing_at(&path, 0);
    context.known.added(&path);
    keep_handle(handles, next, Handle::Write(Box::new(writer)));
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
}

impl VolumeFs {
    fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }

    fn store(&self, handle: FileHandle, when: StoreWhen, reply: ReplyEmpty) {
        let Some(handle) = self.handle(handle) else {
            return reply.error(Errno::EBADF);
        };
        // Only a writer has anything to store.
        if handle
            .try_lock()
            .is_ok_and(|held| !matches!(&*held, Handle::Write(_)))
        {
            return reply.ok();
        }
        let context = self.context();
        self.runtime.spawn(async move {
            let mut handle = handle.lock().await;
            let Handle::Write(writer) = &mut *handle else {
                return reply.ok();
            };
            let outcome = match when {
                StoreWhen::AtFlush => writer.store_at_flush(&context).await,
                StoreWhen::Durably => {
                    // An earlier flush of this file may have gone behind: it must have
                    // landed, and its failure is this fsync's.
                    let stored = writer.store(&context).await;
                    context.behind.settle(&writer.path).await;
                    match context.behind.take_failure_within(&writer.path) {
                        Some(error) => Err(error),
                        None => stored,
                    }
                }
            };
            match outcome {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(error),
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
            context.behind.settle_within(&path).await;
            let request = RemoveRequest {
                volume: context.volume.clone(),
                path: path.clone(),
                recursive: false,
                expect: Some(if directory {
                    EntryKind::Directory
                } else {
                    EntryKind::File
                }),
            };
            if context.behind.enabled() && !directory {
                // The kernel asks to unlink only what its lookup found to be a file, so
                // the answer is known; the removal lands behind (see `behind`).
                let remote = context.remote.clone();
                let removal = async move {
                    match remote.call::<_, u64>(METHOD_FS_REMOVE, &request).await {
                        // Removed meanwhile by another client: gone either way.
                        Ok(_) => Ok(()),
                        Err(error) if error.kind == ErrorKind::NotFound => Ok(()),
                        Err(error) => Err(errno(&error)),
                    }
                };
                context.known.removed(&path);
                context.quick.forget(&path);
                context.behind.commit("remove", path, removal, || {}).await;
                return reply.ok();
            }
            match context
                .remote
                .call::<_, u64>(METHOD_FS_REMOVE, &request)
                .await
            {
                Ok(_) => {
                    context.known.removed(&path);
                    context.quick.forget(&path);
                    reply.ok()
                }
                Err(error) if error.kind == ErrorKind::WrongType && !directory => {
                    reply.error(Errno::EISDIR)
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }
}

/// Whether a store may go behind the close (a flush with `--flush-behind`) or must be
/// durable before the answer (fsync).
#[derive(Clone, Copy)]
enum StoreWhen {
    AtFlush,
    Durably,
}

/// A stable inode number for an entry the kernel has not looked up yet (high bit set, so
/// it never collides with the numbers [`Inodes`] hands out).
fn stand_in_inode(path: &str) -> u64 {
    let digest = blake3::hash(path.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(bytes) | (1 << 63)
}
