//! The example task `examples/wasm-pi`, built for wasm32-wasip1 with cargo and run through
//! `bramble_wasm::run` as the agent's child would run it. Its hit count must equal the
//! native kernel's (the same `pi.rs`, compiled into this test), bit for bit.
//!
//! Skipped, with a message, where the wasm32-wasip1 target is not installed
//! (`rustup target add wasm32-wasip1`).

#[path = "../../../examples/wasm-pi/src/pi.rs"]
mod pi;

use std::path::{Path, PathBuf};
use std::process::Command;

use bramble_wasm::{Invocation, Limits, WasmError, inspect, run};

const TARGET: &str = "wasm32-wasip1";
const SAMPLES: u64 = 1_000_000;

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into())
}

/// Whether the standard library for wasm32-wasip1 is installed for the rustc cargo uses.
fn target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    match output {
        Ok(output) if output.status.success() => {
            let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
            Path::new(&dir).is_dir()
        }
        _ => false,
    }
}

/// Builds the example into a target directory under this test's scratch space.
fn build_example() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wasm-pi/Cargo.toml");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-pi");
    let output = Command::new(cargo())
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build of {} failed:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target_dir.join(TARGET).join("release/wasm-pi.wasm"))
}

fn hits(module: &[u8], seed: u64) -> u64 {
    let invocation = Invocation {
        program_name: "wasm-pi.wasm".to_string(),
        args: vec![SAMPLES.to_string()],
        env: vec![("BRAMBLE_TASK_SEED".to_string(), seed.to_string())],
    };
    let limits = Limits {
        fuel: Some(10_000_000_000),
        max_memory_bytes: 64 * 1024 * 1024,
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let exit = match run(module, &invocation, &limits, &mut stdout, &mut stderr, None) {
        Ok(exit) => exit,
        Err(e) => panic!("seed {seed}: {e}"),
    };
    assert_eq!(
        exit.code,
        0,
        "seed {seed}: stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    let text = String::from_utf8_lossy(&stdout);
    let Some(line) = text.strip_suffix('\n') else {
        panic!("output {text:?} is not one line");
    };
    match line.parse() {
        Ok(hits) => hits,
        Err(e) => panic!("output {text:?} is not an integer: {e}"),
    }
}

#[test]
fn wasm_pi_counts_the_same_hits_as_the_native_kernel() {
    if !target_installed() {
        eprintln!(
            "skipping wasm_pi: the {TARGET} target is not installed (rustup target add {TARGET})"
        );
        return;
    }
    let path = match build_example() {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    };
    let module = match std::fs::read(&path) {
        Ok(module) => module,
        Err(e) => {
            eprintln!("skipping wasm_pi: {} was not built: {e}", path.display());
            return;
        }
    };
    let info = match inspect(&module) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    };
    assert!(
        info.imports
            .iter()
            .all(|i| i.starts_with("wasi_snapshot_preview1::"))
    );

    let first = hits(&module, 42);
    assert!((780_000..=790_000).contains(&first), "{first}");
    assert_eq!(hits(&module, 42), first, "same seed, same count");
    assert_eq!(first, pi::count_hits(42, SAMPLES), "wasm and native differ");
    let other = hits(&module, 43);
    assert_ne!(other, first, "another seed, another count");
    assert!((780_000..=790_000).contains(&other), "{other}");

    // Without the seed the task refuses to run, with exit code 2 and a message.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let invocation = Invocation {
        program_name: "wasm-pi.wasm".to_string(),
        args: vec!["10".to_string()],
        env: Vec::new(),
    };
    let limits = Limits {
        fuel: Some(100_000_000),
        max_memory_bytes: 64 * 1024 * 1024,
    };
    match run(
        &module,
        &invocation,
        &limits,
        &mut stdout,
        &mut stderr,
        None,
    ) {
        Ok(exit) => assert_eq!(exit.code, 2),
        Err(e) => panic!("{e}"),
    }
    assert!(String::from_utf8_lossy(&stderr).contains("BRAMBLE_TASK_SEED"));

    // A budget too small for the work is a clean OutOfFuel.
    let invocation = Invocation {
        args: vec![SAMPLES.to_string()],
        env: vec![("BRAMBLE_TASK_SEED".to_string(), "1".to_string())],
        ..invocation
    };
    let tight = Limits {
        fuel: Some(1_000_000),
        ..limits
    };
    match run(&module, &invocation, &tight, &mut stdout, &mut stderr, None) {
        Err(WasmError::OutOfFuel { fuel }) => assert_eq!(fuel, 1_000_000),
        other => panic!("expected OutOfFuel, got {other:?}"),
    }
}
