//! Bramble's own WASI preview-1 host: the handful of `wasi_snapshot_preview1` functions a
//! portable compute task needs (arguments, environment, stdout/stderr, clocks, random
//! bytes, exit), and for a service one preopened listening socket (fd 3, as `wasmtime run
//! --tcplisten` gives) with the connections it accepts — and nothing else: no filesystem,
//! no outgoing connections, no polling.
//!
//! Every function is a plain `fn` taking `Caller<Host>`; [`functions`] is the one list of
//! what the host provides, used both to link a module and, by `inspect`, to check a
//! module's imports before it runs. Guest pointers go through [`GuestMemory`], so a bad
//! one is `EFAULT`; errno values are those of the preview-1 specification.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use wasmi::{Caller, Extern, Func, Store};

use crate::guest::GuestMemory;
use crate::limiter::MemoryCap;

/// The import module name of WASI preview 1.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// WASI preview-1 `errno` values (the subset this host returns).
pub mod errno {
    /// A WASI `errno`: 0 is success.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Errno(pub u16);

    pub const SUCCESS: Errno = Errno(0);
    pub const AGAIN: Errno = Errno(6);
    pub const BADF: Errno = Errno(8);
    pub const CONNABORTED: Errno = Errno(13);
    pub const CONNRESET: Errno = Errno(15);
    pub const FAULT: Errno = Errno(21);
    pub const INVAL: Errno = Errno(28);
    pub const IO: Errno = Errno(29);
    pub const MFILE: Errno = Errno(33);
    pub const NOTCONN: Errno = Errno(53);
    pub const NOTSOCK: Errno = Errno(57);
    pub const NOTSUP: Errno = Errno(58);
    pub const OVERFLOW: Errno = Errno(61);
    pub const PIPE: Errno = Errno(64);
    pub const SPIPE: Errno = Errno(70);
}

use errno::Errno;

// `filetype`, `rights` and `clockid` values of the specification.
const FILETYPE_UNKNOWN: u8 = 0;
const FILETYPE_SOCKET_STREAM: u8 = 6;
/// `fdflags.nonblock`.
const FDFLAGS_NONBLOCK: u32 = 1 << 2;
/// `sdflags`: shut down reading, writing.
const SDFLAGS_RD: u32 = 1;
const SDFLAGS_WR: u32 = 2;
const RIGHTS_FD_READ: u64 = 1 << 1;
const RIGHTS_FD_WRITE: u64 = 1 << 6;
const CLOCKID_REALTIME: u32 = 0;
const CLOCKID_MONOTONIC: u32 = 1;
const CLOCKID_PROCESS_CPUTIME_ID: u32 = 2;
const CLOCKID_THREAD_CPUTIME_ID: u32 = 3;

/// The state of one run: what the guest can read (arguments, environment), where its
/// output goes, and the memory limiter the store consults.
pub struct Host<'a> {
    /// `argv`, each entry NUL-terminated, `argv[0]` the program name.
    args: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries, each NUL-terminated.
    env: Vec<Vec<u8>>,
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    /// Whether the guest closed fd 0, 1 or 2.
    closed: [bool; 3],
    started: Instant,
    rng: SystemRandom,
    pub memory_cap: MemoryCap,
    /// Descriptors 3 and up: the preopened listener and the connections it accepted.
    sockets: Vec<Option<Socket>>,
}

/// A socket descriptor the guest holds.
enum Socket {
    Listener(TcpListener),
    Stream(TcpStream),
}

/// Most sockets a guest holds at once (the listener included).
const MAX_SOCKETS: usize = 64;
/// How long one read or write on an accepted connection may wait: a client that sends
/// nothing cannot hold a (typically one-connection-at-a-time) guest for longer.
const CONNECTION_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The first socket descriptor.
const FIRST_SOCKET: u32 = 3;

impl<'a> Host<'a> {
    /// `args` and `env` must already be NUL-terminated (see `lib.rs`).
    pub fn new(
        args: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        stdout: &'a mut dyn Write,
        stderr: &'a mut dyn Write,
        memory_cap: MemoryCap,
    ) -> Self {
        Host {
            args,
            env,
            stdout,
            stderr,
            closed: [false; 3],
            started: Instant::now(),
            rng: SystemRandom::new(),
            memory_cap,
            sockets: Vec::new(),
        }
    }

    /// Hands the guest `listener` as descriptor 3.
    pub fn preopen_listener(&mut self, listener: TcpListener) {
        self.sockets = vec![Some(Socket::Listener(listener))];
    }

    fn socket(&mut self, fd: u32) -> Option<&mut Socket> {
        let index = fd.checked_sub(FIRST_SOCKET)? as usize;
        self.sockets.get_mut(index)?.as_mut()
    }

    fn stream(&mut self, fd: u32) -> Result<&mut TcpStream, Errno> {
        if fd < FIRST_SOCKET && self.is_open(fd) {
            return Err(errno::NOTSOCK);
        }
        match self.socket(fd) {
            Some(Socket::Stream(stream)) => Ok(stream),
            Some(Socket::Listener(_)) => Err(errno::NOTCONN),
            None => Err(errno::BADF),
        }
    }

    /// A free descriptor for a new socket, if the guest holds fewer than the most.
    fn add_socket(&mut self, socket: Socket) -> Result<u32, Errno> {
        let index = match self.sockets.iter().position(Option::is_none) {
            Some(index) => index,
            None if self.sockets.len() < MAX_SOCKETS => {
                self.sockets.push(None);
                self.sockets.len() - 1
            }
            None => return Err(errno::MFILE),
        };
        self.sockets[index] = Some(socket);
        Ok(FIRST_SOCKET + index as u32)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()?;
        self.stderr.flush()
    }

    fn is_open(&self, fd: u32) -> bool {
        fd < 3 && !self.closed[fd as usize]
    }
}

/// Every function the host provides, by name, created in `store`.
pub fn functions(store: &mut Store<Host<'_>>) -> Vec<(&'static str, Func)> {
    vec![
        ("args_get", Func::wrap(&mut *store, args_get)),
        ("args_sizes_get", Func::wrap(&mut *store, args_sizes_get)),
        ("environ_get", Func::wrap(&mut *store, environ_get)),
        (
            "environ_sizes_get",
            Func::wrap(&mut *store, environ_sizes_get),
        ),
        ("fd_write", Func::wrap(&mut *store, fd_write)),
        ("fd_read", Func::wrap(&mut *store, fd_read)),
        ("fd_close", Func::wrap(&mut *store, fd_close)),
        ("fd_fdstat_get", Func::wrap(&mut *store, fd_fdstat_get)),
        ("fd_seek", Func::wrap(&mut *store, fd_seek)),
        ("fd_prestat_get", Func::wrap(&mut *store, fd_prestat_get)),
        (
            "fd_prestat_dir_name",
            Func::wrap(&mut *store, fd_prestat_dir_name),
        ),
        ("clock_time_get", Func::wrap(&mut *store, clock_time_get)),
        ("clock_res_get", Func::wrap(&mut *store, clock_res_get)),
        ("random_get", Func::wrap(&mut *store, random_get)),
        ("proc_exit", Func::wrap(&mut *store, proc_exit)),
        ("sched_yield", Func::wrap(&mut *store, sched_yield)),
        ("sock_accept", Func::wrap(&mut *store, sock_accept)),
        ("sock_recv", Func::wrap(&mut *store, sock_recv)),
        ("sock_send", Func::wrap(&mut *store, sock_send)),
        ("sock_shutdown", Func::wrap(&mut *store, sock_shutdown)),
    ]
}

/// Why a `wasi_snapshot_preview1` function is missing, for the error message.
pub fn why_missing(name: &str) -> &'static str {
    if name.starts_with("path_")
        || name.starts_with("fd_filestat")
        || matches!(
            name,
            "fd_readdir"
                | "fd_pread"
                | "fd_pwrite"
                | "fd_allocate"
                | "fd_advise"
                | "fd_datasync"
                | "fd_sync"
                | "fd_tell"
                | "fd_renumber"
                | "fd_fdstat_set_flags"
                | "fd_fdstat_set_rights"
        )
    {
        " (no filesystem)"
    } else if name.starts_with("sock_") {
        " (no outgoing sockets: only the preopened listener and its connections)"
    } else if name == "poll_oneoff" {
        " (no polling or sleeping)"
    } else if name == "proc_raise" {
        " (no signals)"
    } else {
        ""
    }
}

/// Runs `f` on the guest's exported memory and the host state; the `errno` as an `i32`.
fn with_memory(
    caller: &mut Caller<'_, Host<'_>>,
    f: impl FnOnce(&mut GuestMemory<'_>, &mut Host<'_>) -> Result<(), Errno>,
) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        // `inspect` refuses modules without an exported memory; a module that calls a
        // host function from its start function gets here before it can be checked.
        return i32::from(errno::FAULT.0);
    };
    let (bytes, host) = memory.data_and_store_mut(caller);
    let mut guest = GuestMemory::new(bytes);
    match f(&mut guest, host) {
        Ok(()) => i32::from(errno::SUCCESS.0),
        Err(e) => i32::from(e.0),
    }
}

fn io_errno(e: &io::Error) -> Errno {
    match e.kind() {
        io::ErrorKind::BrokenPipe => errno::PIPE,
        io::ErrorKind::ConnectionReset => errno::CONNRESET,
        io::ErrorKind::ConnectionAborted => errno::CONNABORTED,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => errno::AGAIN,
        _ => errno::IO,
    }
}

/// `(count, total bytes)` of a NUL-terminated string list, as WASI `size`s.
fn sizes(list: &[Vec<u8>]) -> Result<(u32, u32), Errno> {
    let count = u32::try_from(list.len()).map_err(|_| errno::OVERFLOW)?;
    let bytes: usize = list.iter().map(Vec::len).sum();
    let bytes = u32::try_from(bytes).map_err(|_| errno::OVERFLOW)?;
    Ok((count, bytes))
}

/// Writes a string list the way `args_get` and `environ_get` do: `count` pointers at
/// `ptrs`, the strings back to back at `buf`.
fn write_list(
    mem: &mut GuestMemory<'_>,
    list: &[Vec<u8>],
    ptrs: u32,
    buf: u32,
) -> Result<(), Errno> {
    let (count, bytes) = sizes(list)?;
    mem.check(ptrs, u64::from(count) * 4)?;
    mem.check(buf, u64::from(bytes))?;
    let mut offset = 0u32;
    for (i, item) in list.iter().enumerate() {
        // In range: both areas were checked above, and i < count, offset < bytes.
        let at = buf + offset;
        mem.write_u32(ptrs + (i as u32) * 4, at)?;
        mem.write_bytes(at, item)?;
        offset += item.len() as u32;
    }
    Ok(())
}

fn args_get(mut caller: Caller<'_, Host<'_>>, argv: u32, argv_buf: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        write_list(mem, &host.args, argv, argv_buf)
    })
}

fn args_sizes_get(mut caller: Caller<'_, Host<'_>>, argc_ptr: u32, size_ptr: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        let (count, bytes) = sizes(&host.args)?;
        mem.check(argc_ptr, 4)?;
        mem.check(size_ptr, 4)?;
        mem.write_u32(argc_ptr, count)?;
        mem.write_u32(size_ptr, bytes)
    })
}

fn environ_get(mut caller: Caller<'_, Host<'_>>, environ: u32, environ_buf: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        write_list(mem, &host.env, environ, environ_buf)
    })
}

fn environ_sizes_get(mut caller: Caller<'_, Host<'_>>, count_ptr: u32, size_ptr: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        let (count, bytes) = sizes(&host.env)?;
        mem.check(count_ptr, 4)?;
        mem.check(size_ptr, 4)?;
        mem.write_u32(count_ptr, count)?;
        mem.write_u32(size_ptr, bytes)
    })
}

fn fd_write(
    mut caller: Caller<'_, Host<'_>>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    nwritten: u32,
) -> i32 {
    with_memory(&mut caller, |mem, host| {
        if fd >= FIRST_SOCKET {
            let written = send(mem, host.stream(fd)?, iovs, iovs_len)?;
            return mem.write_u32(nwritten, written);
        }
        if fd == 0 || !host.is_open(fd) {
            return Err(errno::BADF);
        }
        // Check every pointer before the first byte goes out.
        let iovs = mem.iovecs(iovs, iovs_len)?;
        mem.check(nwritten, 4)?;
        let total: u64 = iovs.iter().map(|&(_, len)| u64::from(len)).sum();
        let total = u32::try_from(total).map_err(|_| errno::INVAL)?;
        let out: &mut dyn Write = if fd == 1 {
            &mut *host.stdout
        } else {
            &mut *host.stderr
        };
        for (buf, len) in iovs {
            out.write_all(mem.slice(buf, len)?)
                .map_err(|e| io_errno(&e))?;
        }
        mem.write_u32(nwritten, total)
    })
}

fn fd_read(mut caller: Caller<'_, Host<'_>>, fd: u32, iovs: u32, iovs_len: u32, nread: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        if fd >= FIRST_SOCKET {
            let read = receive(mem, host.stream(fd)?, iovs, iovs_len)?;
            return mem.write_u32(nread, read);
        }
        if fd != 0 || !host.is_open(fd) {
            return Err(errno::BADF);
        }
        mem.iovecs(iovs, iovs_len)?;
        // Standard input is always at its end.
        mem.write_u32(nread, 0)
    })
}

fn fd_close(mut caller: Caller<'_, Host<'_>>, fd: u32) -> i32 {
    let host = caller.data_mut();
    if fd >= FIRST_SOCKET {
        let index = (fd - FIRST_SOCKET) as usize;
        return match host.sockets.get_mut(index).and_then(Option::take) {
            Some(_) => i32::from(errno::SUCCESS.0),
            None => i32::from(errno::BADF.0),
        };
    }
    if !host.is_open(fd) {
        return i32::from(errno::BADF.0);
    }
    host.closed[fd as usize] = true;
    i32::from(errno::SUCCESS.0)
}

fn fd_fdstat_get(mut caller: Caller<'_, Host<'_>>, fd: u32, stat: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        if host.socket(fd).is_some() {
            let mut record = [0u8; 24];
            record[0] = FILETYPE_SOCKET_STREAM;
            record[8..16].copy_from_slice(&(RIGHTS_FD_READ | RIGHTS_FD_WRITE).to_le_bytes());
            return mem.write_bytes(stat, &record);
        }
        if !host.is_open(fd) {
            return Err(errno::BADF);
        }
        // struct fdstat { u8 filetype; u16 flags (at 2); u64 rights_base (at 8);
        // u64 rights_inheriting (at 16) }: 24 bytes. The type is "unknown" (a pipe or a
        // log, not a terminal) and there are no seek rights.
        let rights = if fd == 0 {
            RIGHTS_FD_READ
        } else {
            RIGHTS_FD_WRITE
        };
        let mut record = [0u8; 24];
        record[0] = FILETYPE_UNKNOWN;
        record[8..16].copy_from_slice(&rights.to_le_bytes());
        mem.write_bytes(stat, &record)
    })
}

fn fd_seek(
    mut caller: Caller<'_, Host<'_>>,
    fd: u32,
    _offset: i64,
    _whence: u32,
    _newoffset: u32,
) -> i32 {
    if caller.data().is_open(fd) || caller.data_mut().socket(fd).is_some() {
        i32::from(errno::SPIPE.0)
    } else {
        i32::from(errno::BADF.0)
    }
}

/// No preopened directories: `EBADF` for every descriptor, which is how a guest's libc
/// learns that the list has ended.
fn fd_prestat_get(_caller: Caller<'_, Host<'_>>, _fd: u32, _prestat: u32) -> i32 {
    i32::from(errno::BADF.0)
}

fn fd_prestat_dir_name(_caller: Caller<'_, Host<'_>>, _fd: u32, _path: u32, _len: u32) -> i32 {
    i32::from(errno::BADF.0)
}

fn clock_time_get(mut caller: Caller<'_, Host<'_>>, id: u32, _precision: u64, time: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        let nanos = match id {
            CLOCKID_REALTIME => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| errno::IO)?
                .as_nanos(),
            CLOCKID_MONOTONIC => host.started.elapsed().as_nanos(),
            CLOCKID_PROCESS_CPUTIME_ID | CLOCKID_THREAD_CPUTIME_ID => {
                return Err(errno::NOTSUP);
            }
            _ => return Err(errno::INVAL),
        };
        let nanos = u64::try_from(nanos).map_err(|_| errno::OVERFLOW)?;
        mem.write_u64(time, nanos)
    })
}

fn clock_res_get(mut caller: Caller<'_, Host<'_>>, id: u32, resolution: u32) -> i32 {
    with_memory(&mut caller, |mem, _host| match id {
        CLOCKID_REALTIME | CLOCKID_MONOTONIC => mem.write_u64(resolution, 1),
        CLOCKID_PROCESS_CPUTIME_ID | CLOCKID_THREAD_CPUTIME_ID => Err(errno::NOTSUP),
        _ => Err(errno::INVAL),
    })
}

fn random_get(mut caller: Caller<'_, Host<'_>>, buf: u32, len: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        let out = mem.slice_mut(buf, len)?;
        host.rng.fill(out).map_err(|_| errno::IO)
    })
}

/// Ends the run: the code travels up as wasmi's exit status and `run` returns it.
fn proc_exit(_caller: Caller<'_, Host<'_>>, code: u32) -> Result<(), wasmi::Error> {
    // The WASI `exitcode` is a u32; wasmi carries it as an i32, bit for bit.
    Err(wasmi::Error::i32_exit(code as i32))
}

/// One task per process: there is no one to yield to.
fn sched_yield(_caller: Caller<'_, Host<'_>>) -> i32 {
    i32::from(errno::SUCCESS.0)
}

/// Reads what one `recv` gives into the first non-empty buffer (as a short read).
fn receive(
    mem: &mut GuestMemory<'_>,
    stream: &mut TcpStream,
    iovs: u32,
    iovs_len: u32,
) -> Result<u32, Errno> {
    let iovs = mem.iovecs(iovs, iovs_len)?;
    let Some(&(buf, len)) = iovs.iter().find(|&&(_, len)| len > 0) else {
        return Ok(0);
    };
    let target = mem.slice_mut(buf, len)?;
    let read = stream.read(target).map_err(|e| io_errno(&e))?;
    Ok(read as u32)
}

/// Writes every buffer in full (or fails).
fn send(
    mem: &mut GuestMemory<'_>,
    stream: &mut TcpStream,
    iovs: u32,
    iovs_len: u32,
) -> Result<u32, Errno> {
    let iovs = mem.iovecs(iovs, iovs_len)?;
    let mut total = 0u32;
    for (buf, len) in iovs {
        stream
            .write_all(mem.slice(buf, len)?)
            .map_err(|e| io_errno(&e))?;
        total = total.checked_add(len).ok_or(errno::OVERFLOW)?;
    }
    Ok(total)
}

/// Accepts a connection on the preopened listener: blocking, unless the guest asks for
/// `nonblock` (then `EAGAIN` when none waits).
fn sock_accept(mut caller: Caller<'_, Host<'_>>, fd: u32, flags: u32, result_fd: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
        mem.check(result_fd, 4)?;
        let listener = match host.socket(fd) {
            Some(Socket::Listener(listener)) => listener,
            Some(Socket::Stream(_)) => return Err(errno::INVAL),
            None => return Err(errno::BADF),
        };
        let nonblocking = flags & FDFLAGS_NONBLOCK != 0;
        listener
            .set_nonblocking(nonblocking)
            .map_err(|e| io_errno(&e))?;
        let (stream, _) = listener.accept().map_err(|e| io_errno(&e))?;
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(CONNECTION_IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(CONNECTION_IO_TIMEOUT)))
            .map_err(|e| io_errno(&e))?;
        let new_fd = host.add_socket(Socket::Stream(stream))?;
        mem.write_u32(result_fd, new_fd)
    })
}

fn sock_recv(
    mut caller: Caller<'_, Host<'_>>,
    fd: u32,
    ri_data: u32,
    ri_data_len: u32,
    _ri_flags: u32,
    ro_datalen: u32,
    ro_flags: u32,
) -> i32 {
    with_memory(&mut caller, |mem, host| {
        mem.check(ro_datalen, 4)?;
        mem.check(ro_flags, 2)?;
        let read = receive(mem, host.stream(fd)?, ri_data, ri_data_len)?;
        mem.write_bytes(ro_flags, &[0, 0])?;
        mem.write_u32(ro_datalen, read)
    })
}

fn sock_send(
    mut caller: Caller<'_, Host<'_>>,
    fd: u32,
    si_data: u32,
    si_data_len: u32,
    _si_flags: u32,
    so_datalen: u32,
) -> i32 {
    with_memory(&mut caller, |mem, host| {
        mem.check(so_datalen, 4)?;
        let sent = send(mem, host.stream(fd)?, si_data, si_data_len)?;
        mem.write_u32(so_datalen, sent)
    })
}

fn sock_shutdown(mut caller: Caller<'_, Host<'_>>, fd: u32, how: u32) -> i32 {
    let host = caller.data_mut();
    let direction = match how & (SDFLAGS_RD | SDFLAGS_WR) {
        SDFLAGS_RD => Shutdown::Read,
        SDFLAGS_WR => Shutdown::Write,
        0 => return i32::from(errno::INVAL.0),
        _ => Shutdown::Both,
    };
    match host.stream(fd) {
        Ok(stream) => match stream.shutdown(direction) {
            Ok(()) => i32::from(errno::SUCCESS.0),
            Err(e) => i32::from(io_errno(&e).0),
        },
        Err(e) => i32::from(e.0),
    }
}
