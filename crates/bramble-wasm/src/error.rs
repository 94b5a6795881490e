//! What can go wrong with a WebAssembly task, worded for the person who submitted it:
//! a file that is not a module, a module Bramble cannot run, or a run that ended badly.

/// Every failure of [`inspect`](crate::inspect) and [`run`](crate::run).
///
/// A module calling `proc_exit` with a non-zero code is not an error: that is an
/// [`Exit`](crate::Exit) with its code.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The bytes are not a WebAssembly binary at all (no `\0asm` header, text format, a
    /// component instead of a core module).
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),

    /// The module is larger than [`MAX_MODULE_BYTES`](crate::MAX_MODULE_BYTES).
    #[error("the module is {size} bytes, more than the {limit} bytes Bramble accepts")]
    TooLarge { size: usize, limit: usize },

    /// The binary does not validate, uses a feature the interpreter does not enable, or
    /// exceeds the interpreter's limits on functions, globals, tables and the like.
    #[error("the WebAssembly module does not compile: {0}")]
    Compile(String),

    /// An import the host does not define; `import` is `module::name`.
    #[error("the module imports {import}, which Bramble's WASI host does not provide{why}")]
    MissingImport { import: String, why: String },

    /// An import the host defines, but with another type.
    #[error(
        "the module imports {import} as {found}, but Bramble's WASI host provides it as {expected}"
    )]
    ImportType {
        import: String,
        expected: String,
        found: String,
    },

    /// The module is not a WASI command (no `_start`, or no exported memory).
    #[error("not a WASI command: {0}")]
    NotCommand(String),

    /// An argument or environment variable that cannot be passed through WASI.
    #[error("cannot pass the task's invocation to the module: {0}")]
    Invocation(String),

    /// The run used up its fuel budget.
    #[error("the module ran out of fuel (its budget was {fuel})")]
    OutOfFuel { fuel: u64 },

    /// The module asked for more linear memory than the task may have and then stopped
    /// (a trap, usually its allocator aborting), or its initial memory is already too big.
    #[error(
        "the module needed {requested_bytes} bytes of linear memory, more than the task's \
         limit of {limit_bytes} bytes (it stopped with: {trap})"
    )]
    MemoryLimit {
        limit_bytes: u64,
        requested_bytes: u64,
        trap: String,
    },

    /// The module trapped: `unreachable` (a Rust panic or abort), an out-of-bounds access,
    /// a division by zero, exhausted call stack and so on.
    #[error("the module trapped: {0}")]
    Trap(String),

    /// Flushing the task's standard output or error failed after the run.
    #[error("writing the task's output: {0}")]
    Output(#[from] std::io::Error),
}
