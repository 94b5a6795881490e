//! A Bramble WebAssembly task: counts Monte Carlo hits inside the quarter circle.
//!
//! Usage: `wasm-pi SAMPLES` with the seed in `BRAMBLE_TASK_SEED` (decimal). Prints the
//! number of hits and a newline; with `--reduce sum` the job's total over its tasks,
//! times 4 and divided by the total samples, estimates pi.

mod pi;

use std::process::ExitCode;

fn main() -> ExitCode {
    let samples = match std::env::args().nth(1) {
        Some(text) => match text.parse::<u64>() {
            Ok(samples) => samples,
            Err(e) => {
                eprintln!("wasm-pi: the sample count {text:?} is not a whole number: {e}");
                return ExitCode::from(2);
            }
        },
        None => {
            eprintln!("wasm-pi: usage: wasm-pi SAMPLES (with BRAMBLE_TASK_SEED set)");
            return ExitCode::from(2);
        }
    };
    let seed = match std::env::var("BRAMBLE_TASK_SEED") {
        Ok(text) => match text.parse::<u64>() {
            Ok(seed) => seed,
            Err(e) => {
                eprintln!("wasm-pi: BRAMBLE_TASK_SEED={text:?} is not a decimal u64: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => {
            eprintln!("wasm-pi: BRAMBLE_TASK_SEED is not set (Bramble sets it for each task)");
            return ExitCode::from(2);
        }
    };
    println!("{}", pi::count_hits(seed, samples));
    ExitCode::SUCCESS
}
