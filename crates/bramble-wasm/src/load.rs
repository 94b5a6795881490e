//! From bytes to a module Bramble agrees to run: the size bound, the binary header, the
//! interpreter's configuration and limits, and the checks that make it a WASI command
//! our host can link (its imports against [`wasi::functions`], its `_start` and memory).

use std::collections::HashMap;
use std::fmt::Write as _;

use wasmi::{CompilationMode, Config, EnforcedLimits, Engine, ExternType, FuncType, Module};

use crate::error::WasmError;
use crate::wasi::{self, WASI_MODULE};
use crate::{MAX_MODULE_BYTES, ModuleInfo};

/// One WebAssembly page.
const PAGE_BYTES: u64 = 64 * 1024;

/// Calls a module may nest (wasmi's default is 1,000, too few for some recursive
/// programs); frames live on the interpreter's own stacks, not the native one.
const MAX_RECURSION_DEPTH: usize = 20_000;
/// The interpreter's value stack, in bytes (wasmi's default is 1 MB).
const MAX_VALUE_STACK_BYTES: usize = 16 * 1024 * 1024;

/// How much of the module is translated to the interpreter's bytecode up front.
#[derive(Clone, Copy, Debug)]
pub enum Translation {
    /// All of it: `inspect` promises the module compiles, so it checks every function.
    Eager,
    /// On first call: a run starts sooner and skips functions it never calls. Validation
    /// is still eager, so a bad module fails before it runs.
    Lazy,
}

/// The interpreter as every task gets it: fuel metering on (also counts what a run used),
/// deeper call nesting than wasmi's default, and wasmi's strict limits against modules
/// built to make compilation explode.
pub fn engine(translation: Translation) -> Engine {
    let mut config = Config::default();
    config
        .consume_fuel(true)
        .compilation_mode(match translation {
            Translation::Eager => CompilationMode::Eager,
            Translation::Lazy => CompilationMode::LazyTranslation,
        })
        .enforced_limits(EnforcedLimits::strict())
        .set_max_recursion_depth(MAX_RECURSION_DEPTH)
        .set_max_stack_height(MAX_VALUE_STACK_BYTES);
    Engine::new(&config)
}

/// Checks the size and the header, then validates and compiles.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Module, WasmError> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(WasmError::TooLarge {
            size: bytes.len(),
            limit: MAX_MODULE_BYTES,
        });
    }
    check_header(bytes)?;
    Module::new(engine, bytes).map_err(|e| WasmError::Compile(e.to_string()))
}

/// The 8-byte preamble: `\0asm` and version 1. Anything else gets a hint of what it is.
fn check_header(bytes: &[u8]) -> Result<(), WasmError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        let what = if bytes.is_empty() {
            "the file is empty".to_string()
        } else if bytes.starts_with(b"\x7fELF") {
            "it is an ELF executable (a native binary); build for wasm32-wasip1".to_string()
        } else if looks_like_wat(bytes) {
            "it looks like WebAssembly text (.wat); compile it to a binary .wasm first".to_string()
        } else if (bytes.len() < 8 && MAGIC.starts_with(bytes)) || bytes.starts_with(MAGIC) {
            format!("it is truncated ({} bytes)", bytes.len())
        } else {
            let mut first = String::new();
            for b in bytes.iter().take(8) {
                let _ = write!(first, "{b:02x} ");
            }
            format!(
                "it does not start with the \\0asm header (first bytes: {})",
                first.trim_end()
            )
        };
        return Err(WasmError::NotWasm(what));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Ok(()),
        [_, _, 1, 0] => Err(WasmError::NotWasm(
            "it is a WebAssembly component (WASI preview 2), not a core module; \
             build for wasm32-wasip1"
                .to_string(),
        )),
        [a, b, c, d] => Err(WasmError::NotWasm(format!(
            "unknown binary format version {}",
            u32::from_le_bytes([a, b, c, d])
        ))),
        _ => Err(WasmError::NotWasm("it is truncated".to_string())),
    }
}

fn looks_like_wat(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]);
    let text = text.trim_start();
    text.starts_with("(module") || text.starts_with(";;") || text.starts_with("(;")
}

/// Checks that `module` is a WASI command the host can link, and describes it.
/// `provided` maps each host function name to its type.
pub fn check(
    module: &Module,
    size: usize,
    provided: &HashMap<&str, FuncType>,
) -> Result<ModuleInfo, WasmError> {
    let mut imports = Vec::new();
    for import in module.imports() {
        let name = format!("{}::{}", import.module(), import.name());
        if import.module() != WASI_MODULE {
            let why = if import.module() == "wasi_unstable" {
                " (it targets the old wasi_unstable snapshot; build for wasm32-wasip1)".to_string()
            } else {
                format!(" (only {WASI_MODULE} functions are available)")
            };
            return Err(WasmError::MissingImport { import: name, why });
        }
        let found = match import.ty() {
            ExternType::Func(ty) => ty,
            other => {
                return Err(WasmError::MissingImport {
                    import: name,
                    why: format!(
                        " (it imports a {}; the host provides only functions)",
                        kind(other)
                    ),
                });
            }
        };
        let Some(expected) = provided.get(import.name()) else {
            return Err(WasmError::MissingImport {
                import: name,
                why: wasi::why_missing(import.name()).to_string(),
            });
        };
        if expected != found {
            return Err(WasmError::ImportType {
                import: name,
                expected: signature(expected),
                found: signature(found),
            });
        }
        imports.push(name);
    }

    match module.get_export("_start") {
        Some(ExternType::Func(ty)) if ty.params().is_empty() && ty.results().is_empty() => {}
        Some(ExternType::Func(ty)) => {
            return Err(WasmError::NotCommand(format!(
                "its _start is {}, not () -> ()",
                signature(&ty)
            )));
        }
        Some(other) => {
            return Err(WasmError::NotCommand(format!(
                "its _start export is a {}, not a function",
                kind(&other)
            )));
        }
        None => {
            let hint = if module.get_export("_initialize").is_some() {
                " (it is a WASI reactor, a library; build a binary)"
            } else {
                ""
            };
            return Err(WasmError::NotCommand(format!(
                "it exports no _start function{hint}"
            )));
        }
    }
    let memory = match module.get_export("memory") {
        Some(ExternType::Memory(memory)) => memory,
        _ => {
            return Err(WasmError::NotCommand(
                "it exports no linear memory named \"memory\"".to_string(),
            ));
        }
    };
    Ok(ModuleInfo {
        size_bytes: size,
        imports,
        initial_memory_bytes: memory.minimum().saturating_mul(PAGE_BYTES),
        maximum_memory_bytes: memory.maximum().map(|m| m.saturating_mul(PAGE_BYTES)),
    })
}

/// The types of the host's functions, by name.
pub fn provided_types(
    store: &wasmi::Store<wasi::Host<'_>>,
    functions: &[(&'static str, wasmi::Func)],
) -> HashMap<&'static str, FuncType> {
    functions
        .iter()
        .map(|(name, func)| (*name, func.ty(store)))
        .collect()
}

fn kind(ty: &ExternType) -> &'static str {
    match ty {
        ExternType::Func(_) => "function",
        ExternType::Memory(_) => "memory",
        ExternType::Table(_) => "table",
        ExternType::Global(_) => "global",
    }
}

/// `(i32, i64) -> i32`
fn signature(ty: &FuncType) -> String {
    let list = |types: &[wasmi::ValType]| {
        types
            .iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let results = ty.results();
    let results = match results.len() {
        0 => "()".to_string(),
        1 => list(results),
        _ => format!("({})", list(results)),
    };
    format!("({}) -> {}", list(ty.params()), results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_say_what_the_file_is() {
        let e = |b: &[u8]| {
            check_header(b)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e(b"").contains("empty"), "{}", e(b""));
        assert!(e(b"\x7fELF\x02\x01\x01\0").contains("ELF"));
        assert!(e(b"(module (func))").contains("text"));
        assert!(e(b"\0as").contains("truncated"));
        assert!(e(b"\0asm\x0d\0\x01\0").contains("component"));
        assert!(e(b"\0asm\x02\0\0\0").contains("version 2"));
        assert!(e(b"hello, world").contains("68 65 6c"));
        assert!(check_header(b"\0asm\x01\0\0\0").is_ok());
    }
}
