//! Tests on real modules, written in WebAssembly text and compiled with `wat`: each one
//! runs through the public `inspect` and `run` exactly as the agent's child will.

use super::*;

const MIB: u64 = 1024 * 1024;

fn wasm(text: &str) -> Vec<u8> {
    match wat::parse_str(text) {
        Ok(bytes) => bytes,
        Err(e) => panic!("test module does not parse: {e}"),
    }
}

fn limits() -> Limits {
    Limits {
        fuel: Some(100_000_000),
        max_memory_bytes: 64 * MIB,
    }
}

/// Runs `module` with `invocation`; returns the result and what it wrote.
fn run_with(
    module: &[u8],
    invocation: &Invocation,
    limits: &Limits,
) -> (Result<Exit, WasmError>, Vec<u8>, Vec<u8>) {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let result = run(module, invocation, limits, &mut stdout, &mut stderr, None);
    (result, stdout, stderr)
}

fn invocation() -> Invocation {
    Invocation {
        program_name: "task".to_string(),
        args: Vec::new(),
        env: Vec::new(),
    }
}

/// The preview-1 function types, from the specification (pointers and sizes are i32,
/// `exitcode` is i32, timestamps and file deltas i64): what a real guest imports.
const WASI_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
"#;

/// A module with every WASI import above, `memory` and `$write(fd, ptr, len)` (one ciovec
/// at 100, traps unless everything was written), around `body`.
fn command(body: &str) -> Vec<u8> {
    wasm(&format!(
        r#"(module
  {WASI_IMPORTS}
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 100) (local.get $ptr))
    (i32.store (i32.const 104) (local.get $len))
    (if (call $fd_write (local.get $fd) (i32.const 100) (i32.const 1) (i32.const 108))
      (then unreachable))
    (if (i32.ne (i32.load (i32.const 108)) (local.get $len)) (then unreachable)))
  {body})"#
    ))
}

#[test]
fn every_host_function_has_its_specified_type() {
    let module = command(r#"(func (export "_start"))"#);
    let info = match inspect(&module) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(info.imports.len(), 16);
    assert!(
        info.imports
            .contains(&"wasi_snapshot_preview1::fd_write".to_string())
    );
    assert_eq!(info.initial_memory_bytes, 64 * 1024);
    assert_eq!(info.maximum_memory_bytes, None);
    assert_eq!(info.size_bytes, module.len());
}

#[test]
fn hello_world_with_args_and_env() {
    let module = command(
        r#"
  (data (i32.const 8) "hello world\n")
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 8) (i32.const 12))
    ;; argc at 200, argv_buf_size at 204, argv at 1024, strings at 2048
    (if (call $args_sizes_get (i32.const 200) (i32.const 204)) (then unreachable))
    (if (call $args_get (i32.const 1024) (i32.const 2048)) (then unreachable))
    (call $write (i32.const 1) (i32.const 2048) (i32.load (i32.const 204)))
    (call $write (i32.const 2) (i32.const 1024) (i32.mul (i32.load (i32.const 200)) (i32.const 4)))
    ;; environ count at 208, size at 212, pointers at 3072, strings at 4096
    (if (call $environ_sizes_get (i32.const 208) (i32.const 212)) (then unreachable))
    (if (call $environ_get (i32.const 3072) (i32.const 4096)) (then unreachable))
    (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 212)))
    (call $write (i32.const 2) (i32.const 3072) (i32.mul (i32.load (i32.const 208)) (i32.const 4))))"#,
    );
    let invocation = Invocation {
        program_name: "prog".to_string(),
        args: vec!["one".to_string(), "two words".to_string()],
        env: vec![
            ("BRAMBLE_TASK_SEED".to_string(), "42".to_string()),
            ("GREETING".to_string(), "héllo".to_string()),
        ],
    };
    let (result, stdout, stderr) = run_with(&module, &invocation, &limits());
    let exit = match result {
        Ok(exit) => exit,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(exit.code, 0);
    assert!(exit.fuel_consumed > 0);
    let expected = "hello world\nprog\0one\0two words\0BRAMBLE_TASK_SEED=42\0GREETING=héllo\0";
    assert_eq!(String::from_utf8_lossy(&stdout), expected);
    // The pointer arrays: argv then environ, each pointing into its string buffer.
    let pointers: Vec<u32> = stderr
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(pointers, vec![2048, 2053, 2057, 4096, 4117]);
}

#[test]
fn proc_exit_gives_its_code() {
    let module = command(
        r#"(func (export "_start")
    (call $write (i32.const 1) (i32.const 0) (i32.const 0))
    (call $proc_exit (i32.const 3))
    unreachable)"#,
    );
    let (result, _, _) = run_with(&module, &invocation(), &limits());
    match result {
        Ok(exit) => assert_eq!(exit.code, 3),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let module = command(r#"(func (export "_start") (loop $forever (br $forever)))"#);
    let limits = Limits {
        fuel: Some(1_000_000),
        max_memory_bytes: 16 * MIB,
    };
    let (result, _, _) = run_with(&module, &invocation(), &limits);
    match result {
        Err(WasmError::OutOfFuel { fuel }) => assert_eq!(fuel, 1_000_000),
        other => panic!("expected OutOfFuel, got {other:?}"),
    }
}

#[test]
fn fuel_consumed_grows_with_the_work() {
    let counting = |n: u32| {
        command(&format!(
            r#"(func (export "_start") (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {n})))))"#
        ))
    };
    let fuel = |n| match run_with(&counting(n), &invocation(), &limits()).0 {
        Ok(exit) => exit.fuel_consumed,
        Err(e) => panic!("{e}"),
    };
    let (small, large) = (fuel(1_000), fuel(100_000));
    assert!(large > small * 50, "{small} vs {large}");
    // Without a budget the run is unlimited but still metered.
    let unlimited = Limits {
        fuel: None,
        ..limits()
    };
    match run_with(&counting(1_000), &invocation(), &unlimited).0 {
        Ok(exit) => assert_eq!(exit.fuel_consumed, small),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn growing_memory_past_the_limit_is_a_memory_limit_error() {
    // Grows 1 MiB at a time and traps (like an allocator aborting) once refused.
    let module = command(
        r#"(func (export "_start")
    (loop $more
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
      (br $more)))"#,
    );
    let limits = Limits {
        fuel: None,
        max_memory_bytes: 16 * MIB,
    };
    let (result, _, _) = run_with(&module, &invocation(), &limits);
    match result {
        Err(
            ref e @ WasmError::MemoryLimit {
                limit_bytes,
                requested_bytes,
                ref trap,
            },
        ) => {
            assert_eq!(limit_bytes, 16 * MIB);
            // 64 KiB to start with, 16 pages at a time: 15 grows fit, the 16th is refused.
            assert_eq!(requested_bytes, 16 * MIB + 64 * 1024);
            assert!(trap.contains("unreachable"), "{trap}");
            assert!(e.to_string().contains("limit of 16777216 bytes"), "{e}");
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
}

#[test]
fn a_refused_grow_the_module_handles_is_not_an_error() {
    let module = command(
        r#"(func (export "_start")
    (if (i32.ne (memory.grow (i32.const 1000)) (i32.const -1)) (then unreachable))
    (call $proc_exit (i32.const 7)))"#,
    );
    let limits = Limits {
        fuel: None,
        max_memory_bytes: 16 * MIB,
    };
    match run_with(&module, &invocation(), &limits).0 {
        Ok(exit) => assert_eq!(exit.code, 7),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn initial_memory_over_the_limit_is_refused_at_instantiation() {
    let module = wasm(r#"(module (memory (export "memory") 512) (func (export "_start")))"#);
    let limits = Limits {
        fuel: None,
        max_memory_bytes: 16 * MIB,
    };
    match run_with(&module, &invocation(), &limits).0 {
        Err(WasmError::MemoryLimit {
            requested_bytes, ..
        }) => assert_eq!(requested_bytes, 32 * MIB),
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
}

#[test]
fn a_filesystem_import_is_refused_by_name() {
    let module = wasm(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#,
    );
    let error = match inspect(&module) {
        Ok(info) => panic!("accepted: {info:?}"),
        Err(e) => e,
    };
    assert_eq!(
        error.to_string(),
        "the module imports wasi_snapshot_preview1::path_open, which Bramble's WASI host \
         does not provide (no filesystem)"
    );
    // And `run` refuses it the same way, before running anything.
    assert!(matches!(
        run_with(&module, &invocation(), &limits()).0,
        Err(WasmError::MissingImport { .. })
    ));
}

#[test]
fn imports_from_elsewhere_or_of_the_wrong_type_are_refused() {
    let other_module = wasm(
        r#"(module (import "env" "print" (func (param i32)))
  (memory (export "memory") 1) (func (export "_start")))"#,
    );
    let e = inspect(&other_module).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "the module imports env::print, which Bramble's WASI host does not provide \
             (only wasi_snapshot_preview1 functions are available)"
        )
    );
    let wrong_type = wasm(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))
  (memory (export "memory") 1) (func (export "_start")))"#,
    );
    let e = inspect(&wrong_type).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "the module imports wasi_snapshot_preview1::fd_write as (i32) -> i32, but \
             Bramble's WASI host provides it as (i32, i32, i32, i32) -> i32"
        )
    );
    let memory_import = wasm(
        r#"(module (import "wasi_snapshot_preview1" "memory" (memory 1))
  (func (export "_start")))"#,
    );
    assert!(matches!(
        inspect(&memory_import),
        Err(WasmError::MissingImport { .. })
    ));
}

#[test]
fn a_module_must_be_a_wasi_command() {
    let no_start = wasm(r#"(module (memory (export "memory") 1) (func (export "main")))"#);
    assert!(matches!(inspect(&no_start), Err(WasmError::NotCommand(_))));
    let reactor = wasm(r#"(module (memory (export "memory") 1) (func (export "_initialize")))"#);
    let e = inspect(&reactor).err().map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("reactor")), "{e:?}");
    let no_memory = wasm(r#"(module (func (export "_start")))"#);
    let e = inspect(&no_memory).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("not a WASI command: it exports no linear memory named \"memory\"")
    );
    let start_with_params =
        wasm(r#"(module (memory (export "memory") 1) (func (export "_start") (param i32)))"#);
    assert!(matches!(
        inspect(&start_with_params),
        Err(WasmError::NotCommand(_))
    ));
}

#[test]
fn random_bytes_are_not_a_module() {
    // splitmix64 from a fixed seed: reproducible noise.
    let mut state = 0x1234_5678_u64;
    let mut noise = Vec::new();
    while noise.len() < 4096 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        noise.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    assert_ne!(&noise[..4], b"\0asm");
    let e = match inspect(&noise) {
        Ok(info) => panic!("accepted noise: {info:?}"),
        Err(e) => e,
    };
    assert!(matches!(e, WasmError::NotWasm(_)));
    assert!(
        e.to_string().starts_with("not a WebAssembly module: "),
        "{e}"
    );
    assert!(matches!(
        run_with(&noise, &invocation(), &limits()).0,
        Err(WasmError::NotWasm(_))
    ));
    // A valid header followed by garbage is a compile error, not a panic.
    let mut garbage = b"\0asm\x01\0\0\0".to_vec();
    garbage.extend_from_slice(&noise[..256]);
    assert!(matches!(inspect(&garbage), Err(WasmError::Compile(_))));
}

#[test]
fn oversized_modules_are_refused_before_parsing() {
    let mut big = b"\0asm\x01\0\0\0".to_vec();
    big.resize(MAX_MODULE_BYTES + 1, 0);
    match inspect(&big) {
        Err(WasmError::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (MAX_MODULE_BYTES + 1, MAX_MODULE_BYTES));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn bad_pointers_get_efault_and_write_nothing() {
    // Three fd_write calls with a bad pointer each: the iovec array outside memory, an
    // iovec whose buffer runs past the end, nwritten outside memory. The module exits
    // with the three errnos packed one per byte.
    let module = command(
        r#"
  (data (i32.const 8) "must not appear")
  (func (export "_start") (local $a i32) (local $b i32) (local $c i32)
    (local.set $a (call $fd_write (i32.const 1) (i32.const 0xFFFFFFF0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 200) (i32.const 65530))
    (i32.store (i32.const 204) (i32.const 100))
    (local.set $b (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 200) (i32.const 8))
    (i32.store (i32.const 204) (i32.const 15))
    (local.set $c (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 65535)))
    (call $proc_exit
      (i32.or (local.get $a)
        (i32.or (i32.shl (local.get $b) (i32.const 8)) (i32.shl (local.get $c) (i32.const 16))))))"#,
    );
    let (result, stdout, _) = run_with(&module, &invocation(), &limits());
    match result {
        Ok(exit) => assert_eq!(exit.code, 21 | (21 << 8) | (21 << 16), "{:#x}", exit.code),
        Err(e) => panic!("{e}"),
    }
    assert!(stdout.is_empty(), "{stdout:?}");
}

#[test]
fn descriptors_other_than_stdio_do_not_exist() {
    // Packs: fd_write(3) (EBADF 8), fd_seek(1) (ESPIPE 70), fd_prestat_get(3) (EBADF),
    // fd_read(0) errno (0) + nread (0) -> exit code bytes 8, 70, 8, 0.
    let module = command(
        r#"
  (func (export "_start") (local $r i32)
    (i32.store (i32.const 200) (i32.const 0))
    (i32.store (i32.const 204) (i32.const 4))
    (local.set $r (call $fd_write (i32.const 3) (i32.const 200) (i32.const 1) (i32.const 16)))
    (local.set $r (i32.or (local.get $r) (i32.shl
      (call $fd_seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 16)) (i32.const 8))))
    (local.set $r (i32.or (local.get $r) (i32.shl
      (call $fd_prestat_get (i32.const 3) (i32.const 16)) (i32.const 16))))
    (i32.store (i32.const 16) (i32.const 99))
    (local.set $r (i32.or (local.get $r) (i32.shl
      (i32.add (call $fd_read (i32.const 0) (i32.const 200) (i32.const 1) (i32.const 16))
               (i32.load (i32.const 16)))
      (i32.const 24))))
    (call $proc_exit (local.get $r)))"#,
    );
    match run_with(&module, &invocation(), &limits()).0 {
        Ok(exit) => assert_eq!(exit.code, 8 | (70 << 8) | (8 << 16), "{:#x}", exit.code),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn closed_stdout_is_ebadf() {
    let module = command(
        r#"(func (export "_start")
    (if (call $fd_close (i32.const 1)) (then unreachable))
    (i32.store (i32.const 200) (i32.const 0))
    (i32.store (i32.const 204) (i32.const 1))
    (call $proc_exit (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 16))))"#,
    );
    match run_with(&module, &invocation(), &limits()).0 {
        Ok(exit) => assert_eq!(exit.code, 8),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn fdstat_says_stdout_is_writable_and_not_seekable() {
    let module = command(
        r#"(func (export "_start")
    (if (call $fd_fdstat_get (i32.const 1) (i32.const 200)) (then unreachable))
    (call $write (i32.const 1) (i32.const 200) (i32.const 24))
    (call $proc_exit (call $fd_fdstat_get (i32.const 5) (i32.const 200))))"#,
    );
    let (result, stdout, _) = run_with(&module, &invocation(), &limits());
    match result {
        Ok(exit) => assert_eq!(exit.code, 8),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(stdout.len(), 24);
    let rights = u64::from_le_bytes(stdout[8..16].try_into().unwrap_or_default());
    assert_eq!(rights, 1 << 6, "FD_WRITE only");
}

#[test]
fn random_and_clocks() {
    let module = command(
        r#"(func (export "_start")
    (if (call $random_get (i32.const 1000) (i32.const 32)) (then unreachable))
    (if (call $random_get (i32.const 1032) (i32.const 32)) (then unreachable))
    (call $write (i32.const 1) (i32.const 1000) (i32.const 64))
    (if (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 2000)) (then unreachable))
    (if (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 2008)) (then unreachable))
    (if (call $clock_res_get (i32.const 1) (i32.const 2016)) (then unreachable))
    (call $write (i32.const 1) (i32.const 2000) (i32.const 24))
    (if (i32.ne (call $random_get (i32.const 65530) (i32.const 7)) (i32.const 21)) (then unreachable))
    (if (i32.ne (call $clock_time_get (i32.const 9) (i64.const 1) (i32.const 2000)) (i32.const 28))
      (then unreachable))
    (if (call $sched_yield) (then unreachable)))"#,
    );
    let (result, stdout, _) = run_with(&module, &invocation(), &limits());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(stdout.len(), 88);
    let (first, second) = (&stdout[..32], &stdout[32..64]);
    assert_ne!(first, second);
    assert!(first.iter().any(|&b| b != 0));
    let word = |i: usize| {
        u64::from_le_bytes(
            stdout[64 + i * 8..72 + i * 8]
                .try_into()
                .unwrap_or_default(),
        )
    };
    // 2020-01-01 in nanoseconds since the epoch.
    assert!(word(0) > 1_577_836_800_000_000_000, "{}", word(0));
    assert!(
        word(1) < 60_000_000_000,
        "monotonic since the run started: {}",
        word(1)
    );
    assert_eq!(word(2), 1);
}

#[test]
fn a_trap_is_reported_with_its_reason() {
    let module =
        command(r#"(func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0))))"#);
    match run_with(&module, &invocation(), &limits()).0 {
        Err(WasmError::Trap(message)) => {
            assert!(message.contains("divi"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // A trap in the start function, before `_start`, too.
    let module = wasm(
        r#"(module (memory (export "memory") 1) (func $init unreachable) (start $init)
  (func (export "_start")))"#,
    );
    assert!(matches!(
        run_with(&module, &invocation(), &limits()).0,
        Err(WasmError::Trap(_))
    ));
}

#[test]
fn output_written_before_a_trap_is_kept() {
    let module = command(
        r#"(data (i32.const 8) "partial")
  (func (export "_start") (call $write (i32.const 2) (i32.const 8) (i32.const 7)) unreachable)"#,
    );
    let (result, _, stderr) = run_with(&module, &invocation(), &limits());
    assert!(matches!(result, Err(WasmError::Trap(_))));
    assert_eq!(stderr, b"partial");
}

#[test]
fn a_failing_stdout_is_epipe_to_the_module() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let module = command(
        r#"(data (i32.const 8) "x")
  (func (export "_start")
    (i32.store (i32.const 200) (i32.const 8))
    (i32.store (i32.const 204) (i32.const 1))
    (call $proc_exit (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 16))))"#,
    );
    let mut stderr = Vec::new();
    match run(
        &module,
        &invocation(),
        &limits(),
        &mut Closed,
        &mut stderr,
        None,
    ) {
        Ok(exit) => assert_eq!(exit.code, 64),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn invocations_wasi_cannot_carry_are_refused() {
    let module = command(r#"(func (export "_start"))"#);
    let mut bad = invocation();
    bad.args.push("a\0b".to_string());
    assert!(matches!(
        run_with(&module, &bad, &limits()).0,
        Err(WasmError::Invocation(_))
    ));
    let mut bad = invocation();
    bad.env.push(("A=B".to_string(), "c".to_string()));
    assert!(matches!(
        run_with(&module, &bad, &limits()).0,
        Err(WasmError::Invocation(_))
    ));
}

#[test]
fn deep_recursion_works_and_runaway_recursion_traps_cleanly() {
    // $down(n) calls itself n times; exits with 0 if it came back.
    let recursive = |depth: u32| {
        command(&format!(
            r#"(func $down (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 0))
      (else (i32.add (call $down (i32.sub (local.get $n) (i32.const 1))) (i32.const 0)))))
  (func (export "_start") (call $proc_exit (call $down (i32.const {depth}))))"#
        ))
    };
    match run_with(&recursive(10_000), &invocation(), &limits()).0 {
        Ok(exit) => assert_eq!(exit.code, 0),
        Err(e) => panic!("{e}"),
    }
    match run_with(&recursive(1_000_000), &invocation(), &limits()).0 {
        Err(WasmError::Trap(message)) => assert!(message.contains("stack"), "{message}"),
        other => panic!("expected a stack trap, got {other:?}"),
    }
}

/// A server in WebAssembly text: accepts one connection on the preopened descriptor 3,
/// reads what the client sent, answers "hi " and the first byte back, closes. Exit code:
/// the accepted descriptor.
#[test]
fn a_preopened_listener_accepts_and_serves_a_connection() {
    let module = wasm(&format!(
        r#"(module
  {WASI_IMPORTS}
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $sock_recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 300) "hi ")
  (func (export "_start") (local $fd i32)
    (if (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 16)) (then unreachable))
    (local.set $fd (i32.load (i32.const 16)))
    ;; read into 303 (one iovec at 200), then write "hi " plus that first byte
    (i32.store (i32.const 200) (i32.const 303))
    (i32.store (i32.const 204) (i32.const 64))
    (if (call $fd_read (local.get $fd) (i32.const 200) (i32.const 1) (i32.const 20)) (then unreachable))
    (if (i32.eqz (i32.load (i32.const 20))) (then unreachable))
    (i32.store (i32.const 200) (i32.const 300))
    (i32.store (i32.const 204) (i32.const 4))
    (if (call $fd_write (local.get $fd) (i32.const 200) (i32.const 1) (i32.const 20)) (then unreachable))
    (if (call $sock_shutdown (local.get $fd) (i32.const 2)) (then unreachable))
    (if (call $fd_close (local.get $fd)) (then unreachable))
    ;; closed: writing again is EBADF (8)
    (if (i32.ne (call $fd_write (local.get $fd) (i32.const 200) (i32.const 1) (i32.const 20)) (i32.const 8))
      (then unreachable))
    (call $proc_exit (local.get $fd)))
)"#
    ));
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(e) => panic!("binding: {e}"),
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => panic!("{e}"),
    };
    let server = std::thread::spawn(move || {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        run(
            &module,
            &invocation(),
            &limits(),
            &mut stdout,
            &mut stderr,
            Some(listener),
        )
        .map(|exit| exit.code)
        .map_err(|e| e.to_string())
    });
    use std::io::{Read, Write};
    let mut client = match std::net::TcpStream::connect(address) {
        Ok(client) => client,
        Err(e) => panic!("connecting: {e}"),
    };
    assert!(client.write_all(b"x").is_ok());
    let mut answer = String::new();
    assert!(client.read_to_string(&mut answer).is_ok());
    assert_eq!(answer, "hi x");
    match server.join() {
        Ok(result) => assert_eq!(result, Ok(4), "the first accepted descriptor is 4"),
        Err(_) => panic!("the server thread panicked"),
    }
}
