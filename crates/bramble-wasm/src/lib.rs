//! WebAssembly tasks for Bramble's parallel jobs: one `.wasm` artifact that runs the same
//! on armv7, aarch64 and x86_64 boards.
//!
//! The agent runs each task in a child process (its own binary, re-executed); that child
//! calls [`run`] with the module's bytes, the task's arguments and environment, its
//! limits and its stdout/stderr. [`inspect`] checks a module without running it, so a job
//! can be refused before any task is scheduled.
//!
//! The interpreter is `wasmi` (portable, no JIT); the WASI preview-1 host is our own and
//! deliberately small (the `wasi` module): arguments, environment, stdout and stderr, clocks,
//! random bytes and exit; for a service, a preopened listening socket (descriptor 3) and
//! the connections accepted on it. No filesystem, no outgoing connections.
//!
//! - `load`: size and header checks, the interpreter's configuration, import/export checks.
//! - `wasi`: the host functions.
//! - `guest`: bounds-checked access to guest memory.
//! - `limiter`: the memory cap.
//! - `error`: [`WasmError`].

pub mod error;
mod guest;
mod limiter;
mod load;
mod wasi;

#[cfg(test)]
mod tests;

use std::io::Write;

use wasmi::{Linker, Store};

pub use error::WasmError;

/// The largest module [`inspect`] and [`run`] accept.
pub const MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;

/// What [`inspect`] learned about a module it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The size of the binary.
    pub size_bytes: usize,
    /// The host functions it imports, as `module::name`, in the module's order.
    pub imports: Vec<String>,
    /// The linear memory it starts with.
    pub initial_memory_bytes: u64,
    /// The maximum its memory declares, if any.
    pub maximum_memory_bytes: Option<u64>,
}

/// How a task is invoked: its `argv` and environment as the module sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `argv[0]`.
    pub program_name: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The whole environment: the module sees these and nothing of the agent's.
    pub env: Vec<(String, String)>,
}

/// What one run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel budget (roughly one unit per executed instruction); `None` is unlimited.
    pub fuel: Option<u64>,
    /// The most linear memory the module may grow to. Only the guest's memory counts;
    /// the interpreter's own structures are bounded by the child process's limits.
    pub max_memory_bytes: u64,
}

/// How a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The `proc_exit` code, or 0 when `_start` returned.
    pub code: u32,
    /// The fuel the run used (including its start function), with or without a budget.
    pub fuel_consumed: u64,
}

/// Checks a module without running anything: it is WebAssembly, compiles under the
/// interpreter's limits, is a WASI command (`_start` and an exported memory) and imports
/// only functions this host provides.
pub fn inspect(module: &[u8]) -> Result<ModuleInfo, WasmError> {
    let engine = load::engine(load::Translation::Eager);
    let compiled = load::compile(&engine, module)?;
    let mut stdout = std::io::sink();
    let mut stderr = std::io::sink();
    let host = wasi::Host::new(
        Vec::new(),
        Vec::new(),
        &mut stdout,
        &mut stderr,
        limiter::MemoryCap::new(0),
    );
    let mut store = Store::new(&engine, host);
    let functions = wasi::functions(&mut store);
    let provided = load::provided_types(&store, &functions);
    load::check(&compiled, module.len(), &provided)
}

/// Runs a WASI command to completion on this thread: checks it as [`inspect`] does,
/// instantiates it (running its start function, if any), then calls `_start`.
///
/// Output goes to `stdout` and `stderr` as the module writes it; both are flushed at the
/// end. `listener`, when given, is the module's descriptor 3 (a server accepts on it). A
/// `proc_exit` with any code is `Ok`; traps, running out of fuel and growing past the
/// memory limit are errors.
pub fn run(
    module: &[u8],
    invocation: &Invocation,
    limits: &Limits,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    listener: Option<std::net::TcpListener>,
) -> Result<Exit, WasmError> {
    let args = wasi_args(invocation)?;
    let env = wasi_env(invocation)?;
    let engine = load::engine(load::Translation::Lazy);
    let compiled = load::compile(&engine, module)?;

    let cap = limiter::MemoryCap::new(limits.max_memory_bytes);
    let mut host = wasi::Host::new(args, env, stdout, stderr, cap);
    if let Some(listener) = listener {
        host.preopen_listener(listener);
    }
    let mut store = Store::new(&engine, host);
    store.limiter(|host| &mut host.memory_cap);
    let functions = wasi::functions(&mut store);
    let provided = load::provided_types(&store, &functions);
    load::check(&compiled, module.len(), &provided)?;

    let mut linker = Linker::new(&engine);
    for (name, func) in functions {
        linker
            .define(wasi::WASI_MODULE, name, func)
            .map_err(|e| WasmError::Compile(format!("linking the host: {e}")))?;
    }

    let budget = limits.fuel.unwrap_or(u64::MAX);
    store
        .set_fuel(budget)
        .map_err(|e| WasmError::Compile(format!("setting the fuel budget: {e}")))?;

    let outcome = linker
        .instantiate_and_start(&mut store, &compiled)
        .and_then(|instance| {
            // `check` saw `_start` as () -> (), so this lookup succeeds.
            instance
                .get_typed_func::<(), ()>(&store, "_start")
                .and_then(|start| start.call(&mut store, ()))
        });
    let fuel_consumed = budget - store.get_fuel().unwrap_or(0).min(budget);
    let flushed = store.data_mut().flush();

    let exit = match outcome {
        Ok(()) => Exit {
            code: 0,
            fuel_consumed,
        },
        Err(error) => {
            classify(&error, limits, budget, store.data().memory_cap.denied).map(|code| Exit {
                code,
                fuel_consumed,
            })?
        }
    };
    flushed?;
    Ok(exit)
}

/// An error out of instantiation or `_start`: an exit code, or what went wrong.
fn classify(
    error: &wasmi::Error,
    limits: &Limits,
    budget: u64,
    denied: Option<u64>,
) -> Result<u32, WasmError> {
    if let Some(status) = error.i32_exit_status() {
        // Back to the WASI u32 exit code, bit for bit.
        return Ok(status as u32);
    }
    if error.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) {
        return Err(WasmError::OutOfFuel { fuel: budget });
    }
    let message = error.to_string().trim_end().to_string();
    if let Some(requested_bytes) = denied {
        return Err(WasmError::MemoryLimit {
            limit_bytes: limits.max_memory_bytes,
            requested_bytes,
            trap: message,
        });
    }
    Err(WasmError::Trap(message))
}

/// `argv` as WASI hands it over: NUL-terminated, so no argument may contain a NUL.
fn wasi_args(invocation: &Invocation) -> Result<Vec<Vec<u8>>, WasmError> {
    std::iter::once(&invocation.program_name)
        .chain(&invocation.args)
        .enumerate()
        .map(|(i, arg)| {
            if arg.contains('\0') {
                return Err(WasmError::Invocation(format!(
                    "argument {i} contains a NUL byte"
                )));
            }
            Ok(nul_terminated(arg))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|list| fits_u32(list, "the arguments"))
}

/// The environment as `KEY=VALUE\0` entries.
fn wasi_env(invocation: &Invocation) -> Result<Vec<Vec<u8>>, WasmError> {
    invocation
        .env
        .iter()
        .map(|(key, value)| {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(WasmError::Invocation(format!(
                    "{key:?} is not a valid environment variable name"
                )));
            }
            if value.contains('\0') {
                return Err(WasmError::Invocation(format!(
                    "the value of {key} contains a NUL byte"
                )));
            }
            Ok(nul_terminated(&format!("{key}={value}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|list| fits_u32(list, "the environment"))
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(0);
    bytes
}

/// WASI sizes are u32: refuse lists the guest could not be told the size of.
fn fits_u32(list: Vec<Vec<u8>>, what: &str) -> Result<Vec<Vec<u8>>, WasmError> {
    let bytes: usize = list.iter().map(Vec::len).sum();
    if u32::try_from(bytes).is_err() || u32::try_from(list.len()).is_err() {
        return Err(WasmError::Invocation(format!("{what} are too large")));
    }
    Ok(list)
}
