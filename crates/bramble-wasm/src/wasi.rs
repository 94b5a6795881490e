//! Bramble's own WASI preview-1 host: the handful of `wasi_snapshot_preview1` functions a
//! portable compute task needs (arguments, environment, stdout/stderr, clocks, random
//! bytes, exit) and nothing else: no filesystem, no sockets, no polling.
//!
//! Every function is a plain `fn` taking `Caller<Host>`; [`functions`] is the one list of
//! what the host provides, used both to link a module and, by `inspect`, to check a
//! module's imports before it runs. Guest pointers go through [`GuestMemory`], so a bad
//! one is `EFAULT`; errno values are those of the preview-1 specification.

use std::io::{self, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    pub const BADF: Errno = Errno(8);
    pub const FAULT: Errno = Errno(21);
    pub const INVAL: Errno = Errno(28);
    pub const IO: Errno = Errno(29);
    pub const NOTSUP: Errno = Errno(58);
    pub const OVERFLOW: Errno = Errno(61);
    pub const PIPE: Errno = Errno(64);
    pub const SPIPE: Errno = Errno(70);
}

use errno::Errno;

// `filetype`, `rights` and `clockid` values of the specification.
const FILETYPE_UNKNOWN: u8 = 0;
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
}

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
        }
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
        " (no sockets)"
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
    if e.kind() == io::ErrorKind::BrokenPipe {
        errno::PIPE
    } else {
        errno::IO
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
    if !host.is_open(fd) {
        return i32::from(errno::BADF.0);
    }
    host.closed[fd as usize] = true;
    i32::from(errno::SUCCESS.0)
}

fn fd_fdstat_get(mut caller: Caller<'_, Host<'_>>, fd: u32, stat: u32) -> i32 {
    with_memory(&mut caller, |mem, host| {
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
    caller: Caller<'_, Host<'_>>,
    fd: u32,
    _offset: i64,
    _whence: u32,
    _newoffset: u32,
) -> i32 {
    if caller.data().is_open(fd) {
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
