//! What a job is, as submitted and kept in the catalog: the work each task does, how
//! many tasks, the scheduling policy and the limits. Everything here came from a user,
//! so [`JobSpec::validate`] bounds every field before the job is stored.

use serde::{Deserialize, Serialize};

/// Most tasks in one job (Slurm's default `MaxArraySize` is 1,001; Spark jobs of 100,000
/// partitions exist).
pub const MAX_TASKS: u32 = 100_000;
/// Most retries of one task after its first attempt.
pub const MAX_RETRIES: u32 = 10;
/// Most arguments and bytes of a command.
pub const MAX_ARGUMENTS: usize = 256;
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most environment variables a job sets, and their bytes.
pub const MAX_ENVIRONMENT: usize = 64;
/// Longest a task may run (`--timeout`): a week.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most samples of a `bramble pi` job: 10^13 (about eight hours on a Pi 4's four cores).
pub const MAX_PI_SAMPLES: u64 = 10_000_000_000_000;
/// Largest WebAssembly module (it is stored in the catalog).
pub use crate::modules::MAX_MODULE_BYTES;
/// Most linear memory a WebAssembly task may have.
pub const MAX_WASM_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
/// Most cores one task may claim.
pub const MAX_CPUS_PER_TASK: u32 = 256;

/// A job's number, given by the catalog in submission order (like Slurm's job ids).
pub type JobId = u64;

/// What every task of a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    /// A program found on each node's `PATH` (or an absolute path), run directly — not
    /// through a shell; `sh -c '...'` is one way to get one.
    Command { program: String, args: Vec<String> },
    /// The built-in Monte Carlo estimate of π: `samples` points over all tasks.
    Pi { samples: u64 },
    /// A WebAssembly (WASI preview 1) module, the same artifact on every architecture:
    /// stored in the catalog under its BLAKE3 hash, fetched and cached by each worker, run
    /// by the agent's own binary in a child process under fuel and memory limits.
    Wasm {
        module: String,
        module_bytes: u64,
        args: Vec<String>,
        fuel: Option<u64>,
        memory_bytes: u64,
    },
}

impl Work {
    pub fn describe(&self) -> String {
        match self {
            Work::Command { program, args } => {
                let mut text = program.clone();
                for argument in args {
                    text.push(' ');
                    if argument.contains(char::is_whitespace) || argument.is_empty() {
                        text.push_str(&format!("{argument:?}"));
                    } else {
                        text.push_str(argument);
                    }
                }
                text
            }
            Work::Pi { samples } => format!("pi ({samples} samples)"),
            Work::Wasm {
                module,
                module_bytes,
                args,
                ..
            } => format!(
                "wasm {}… ({module_bytes} bytes) {}",
                &module[..module.len().min(12)],
                args.join(" ")
            ),
        }
    }
}

/// How tasks are placed on nodes (the overview article's models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Static: task `i` goes to the `i mod n`-th node (by name).
    RoundRobin,
    /// Static: each task in turn to the node with the lowest load per core, counting the
    /// tasks already given to it.
    LeastLoad,
    /// Static: tasks shared in proportion to each node's speed times its free slots.
    Greedy,
    /// Dynamic: a node takes the next task whenever a slot frees, so fast and slow nodes
    /// both stay busy.
    #[default]
    Dynamic,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "roundrobin",
            Policy::LeastLoad => "leastload",
            Policy::Greedy => "greedy",
            Policy::Dynamic => "dynamic",
        }
    }

    pub fn is_static(self) -> bool {
        self != Policy::Dynamic
    }
}

/// How the numbers the tasks print are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    Sum,
    Min,
    Max,
    /// Every task's output (its first 4 KiB), in task order.
    Concat,
    #[default]
    None,
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// 0 in a submission; the catalog's number once stored.
    pub id: JobId,
    pub work: Work,
    pub tasks: u32,
    pub policy: Policy,
    pub cpus_per_task: u32,
    /// At most this many tasks of the job at once (Slurm's `--array=...%N`).
    pub max_running: Option<u32>,
    /// Attempts after the first, per task.
    pub retries: u32,
    /// Run a copy of a straggler elsewhere; the first result wins.
    pub speculate: bool,
    /// Longest one attempt may run, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Start only once this job has succeeded (Slurm's `--dependency=afterok`).
    pub after: Option<JobId>,
    pub reduce: Reduce,
    /// Mixed with each task's index into `BRAMBLE_TASK_SEED`.
    pub seed: u64,
    /// Extra environment for every task.
    pub env: Vec<(String, String)>,
    /// Set by the node that stored it.
    pub submitted_unix_ms: u64,
    pub submitted_by: String,
}

impl JobSpec {
    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.tasks == 0 || self.tasks > MAX_TASKS {
            return Err(format!(
                "a job has 1 to {MAX_TASKS} tasks, not {}",
                self.tasks
            ));
        }
        if self.cpus_per_task == 0 || self.cpus_per_task > MAX_CPUS_PER_TASK {
            return Err(format!(
                "--cpus-per-task is 1 to {MAX_CPUS_PER_TASK}, not {}",
                self.cpus_per_task
            ));
        }
        if self.max_running == Some(0) {
            return Err("--max-running must be at least 1".to_string());
        }
        if self.retries > MAX_RETRIES {
            return Err(format!(
                "--retries is 0 to {MAX_RETRIES}, not {}",
                self.retries
            ));
        }
        if let Some(timeout) = self.timeout_ms
            && (timeout == 0 || timeout > MAX_TIMEOUT_MS)
        {
            return Err("--timeout is between 1 ms and 7 days".to_string());
        }
        if self.env.len() > MAX_ENVIRONMENT {
            return Err(format!(
                "at most {MAX_ENVIRONMENT} environment variables, not {}",
                self.env.len()
            ));
        }
        let mut bytes = 0usize;
        for (name, value) in &self.env {
            let valid_name = !name.is_empty()
                && name.len() <= 128
                && !name.starts_with("BRAMBLE_")
                && name
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '_')
                && !name.starts_with(|character: char| character.is_ascii_digit());
            if !valid_name {
                return Err(format!(
                    "environment variable {name:?}: names are letters, digits and '_', not starting with a digit or BRAMBLE_"
                ));
            }
            if value.contains('\0') {
                return Err(format!("environment variable {name} holds a NUL byte"));
            }
            bytes += name.len() + value.len();
        }
        match &self.work {
            Work::Command { program, args } => {
                if program.is_empty() {
                    return Err("the command is empty".to_string());
                }
                if args.len() > MAX_ARGUMENTS {
                    return Err(format!(
                        "a command has at most {MAX_ARGUMENTS} arguments, not {}",
                        args.len()
                    ));
                }
                bytes += program.len() + args.iter().map(String::len).sum::<usize>();
                if program.contains('\0') || args.iter().any(|argument| argument.contains('\0')) {
                    return Err("the command holds a NUL byte".to_string());
                }
            }
            Work::Pi { samples } => {
                if *samples == 0 || *samples > MAX_PI_SAMPLES {
                    return Err(format!("--samples is 1 to {MAX_PI_SAMPLES}, not {samples}"));
                }
                if *samples < u64::from(self.tasks) {
                    return Err(format!(
                        "{samples} samples cannot be shared by {} partitions",
                        self.tasks
                    ));
                }
            }
            Work::Wasm { .. } => {}
        }
        if let Work::Wasm {
            module,
            module_bytes,
            args,
            fuel,
            memory_bytes,
        } = &self.work
        {
            if module.len() != 64
                || !module
                    .chars()
                    .all(|character| character.is_ascii_hexdigit())
            {
                return Err("a module is named by its BLAKE3 hash (64 hex digits)".to_string());
            }
            if *module_bytes == 0 || *module_bytes > MAX_MODULE_BYTES {
                return Err(format!(
                    "a WebAssembly module has 1 byte to {} MiB, not {module_bytes} bytes",
                    MAX_MODULE_BYTES >> 20
                ));
            }
            if *fuel == Some(0) {
                return Err("--fuel must be at least 1".to_string());
            }
            if *memory_bytes < 65536 || *memory_bytes > MAX_WASM_MEMORY {
                return Err("--memory is 64K to 4G".to_string());
            }
            if args.len() > MAX_ARGUMENTS {
                return Err(format!("at most {MAX_ARGUMENTS} arguments"));
            }
            bytes += args.iter().map(String::len).sum::<usize>();
        }
        if bytes > MAX_COMMAND_BYTES {
            return Err(format!(
                "the command and environment hold {bytes} bytes; at most {MAX_COMMAND_BYTES}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            id: 0,
            work: Work::Command {
                program: "true".into(),
                args: vec![],
            },
            tasks: 4,
            policy: Policy::Dynamic,
            cpus_per_task: 1,
            max_running: None,
            retries: 3,
            speculate: false,
            timeout_ms: None,
            after: None,
            reduce: Reduce::None,
            seed: 1,
            env: vec![],
            submitted_unix_ms: 0,
            submitted_by: "admin".into(),
        }
    }

    #[test]
    fn bounds_name_the_field() {
        assert!(spec().validate().is_ok());
        let too_many = JobSpec {
            tasks: MAX_TASKS + 1,
            ..spec()
        };
        assert!(too_many.validate().unwrap_err().contains("tasks"));
        let reserved = JobSpec {
            env: vec![("BRAMBLE_TASK_INDEX".into(), "1".into())],
            ..spec()
        };
        assert!(reserved.validate().unwrap_err().contains("BRAMBLE_"));
        let pi = JobSpec {
            work: Work::Pi { samples: 3 },
            ..spec()
        };
        assert!(pi.validate().unwrap_err().contains("partitions"));
        let retries = JobSpec {
            retries: 99,
            ..spec()
        };
        assert!(retries.validate().unwrap_err().contains("--retries"));
    }
}
