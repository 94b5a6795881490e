//! Parallel job drills (issue 10) on real emulated clusters: the cookbook's recipe 3 (π by
//! Monte Carlo over 24 partitions, with the single-machine comparison), 200 shell tasks
//! under every policy (each counted once, the distribution the policy promises, no node
//! over its slots), a job that loses a worker and then its scheduler, a straggler beaten
//! by a speculative copy, a task that always fails, and bad input.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::{TestCluster, wait_until};
use serde_json::Value;

/// `bramble job <id> --json`.
fn job(cluster: &TestCluster, id: u64) -> Value {
    cluster
        .bramble_ok(&["job", &id.to_string(), "--json"])
        .json()
}

fn submit(cluster: &TestCluster, arguments: &[&str]) -> u64 {
    let mut full = vec!["run", "--detach", "--json"];
    full.extend_from_slice(arguments);
    let run = cluster.bramble_ok(&full);
    run.json()["id"].as_u64().expect("a job id")
}

fn wait_final(cluster: &TestCluster, id: u64, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("job {id} ends"), timeout, || {
        let run = cluster.bramble(&["job", &id.to_string(), "--json"]);
        if !run.success {
            return false;
        }
        last = run.json();
        matches!(
            last["record"]["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    });
    last
}

fn done_count(view: &Value) -> u64 {
    view["record"]["done"]["ranges"]
        .as_array()
        .map(|ranges| {
            ranges
                .iter()
                .map(|range| range[1].as_u64().unwrap_or(0) - range[0].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn per_node(report: &Value) -> BTreeMap<String, u64> {
    report["per_node"]
        .as_object()
        .map(|nodes| {
            nodes
                .iter()
                .map(|(node, count)| (node.clone(), count.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_recipe_estimates_pi_over_24_partitions() {
    let cluster = TestCluster::up(4);
    let run = cluster.bramble_ok(&[
        "pi",
        "--samples",
        "1000000000",
        "--partitions",
        "24",
        "--json",
    ]);
    let report = run.json();
    let estimate = report["estimate"].as_f64().expect("an estimate");
    assert!(
        (estimate - std::f64::consts::PI).abs() < 1e-3,
        "pi estimated as {estimate}: {report}"
    );
    assert_eq!(report["samples"].as_u64(), Some(1_000_000_000));
    // Every partition counted once, on the cluster's nodes.
    let spread = per_node(&report);
    assert_eq!(spread.values().sum::<u64>(), 24, "{report}");
    assert!(spread.len() >= 2, "the work stayed on one node: {report}");
    // The single-machine run draws the same points (same seeds, same kernel).
    assert_eq!(report["local_hits_match"].as_bool(), Some(true), "{report}");
    assert!(
        report["local_seconds"]
            .as_f64()
            .is_some_and(|seconds| seconds > 0.0)
    );
    eprintln!(
        "pi {estimate} in {:.2} s on the cluster, {:.2} s on this machine alone",
        report["wall_seconds"].as_f64().unwrap_or(0.0),
        report["local_seconds"].as_f64().unwrap_or(0.0)
    );
}

/// Each task prints "<index> <node> <start ns> <end ns>"; `concat` gathers the lines.
const TIMED_TASK: &str = "s=$(date +%s%N); sleep 0.05; e=$(date +%s%N); echo \"$BRAMBLE_TASK_INDEX $BRAMBLE_NODE $s $e\"";

#[test]
fn every_policy_runs_200_tasks_once_within_each_node_s_slots() {
    let cluster = TestCluster::up(4);
    let slots = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1);
    for policy in ["dynamic", "roundrobin", "leastload", "greedy"] {
        let run = cluster.bramble_ok(&[
            "run", "-n", "200", "--policy", policy, "--reduce", "concat", "--json", "--", "sh",
            "-c", TIMED_TASK,
        ]);
        let report = run.json();
        assert_eq!(report["state"].as_str(), Some("succeeded"), "{report}");
        let lines: Vec<(u32, String, u128, u128)> = report["result"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields.len(), 4, "a task printed {line:?}");
                (
                    fields[0].parse().expect("an index"),
                    fields[1].to_string(),
                    fields[2].parse().expect("a start"),
                    fields[3].parse().expect("an end"),
                )
            })
            .collect();
        // Every task counted exactly once.
        let indices: BTreeSet<u32> = lines.iter().map(|line| line.0).collect();
        assert_eq!(lines.len(), 200, "{policy}: {} results", lines.len());
        assert_eq!(indices, (0..200).collect(), "{policy}");
        // No node ran more tasks at once than its slots.
        let mut by_node: BTreeMap<&str, Vec<(u128, i32)>> = BTreeMap::new();
        for (_, node, start, end) in &lines {
            let events = by_node.entry(node.as_str()).or_default();
            events.push((*start, 1));
            events.push((*end, -1));
        }
        for (node, events) in &mut by_node {
            events.sort();
            let mut running = 0;
            let mut most = 0;
            for (_, change) in events.iter() {
                running += change;
                most = most.max(running);
            }
            assert!(
                most as usize <= slots,
                "{policy}: {node} ran {most} tasks at once with {slots} slots"
            );
        }
        // The distribution the policy promises.
        let spread = per_node(&report);
        assert_eq!(spread.values().sum::<u64>(), 200, "{policy}: {report}");
        match policy {
            "roundrobin" => {
                assert!(
                    spread.values().all(|count| *count == 50),
                    "round robin deals 50 each: {spread:?}"
                );
            }
            "greedy" => {
                // Proportional to the weights the plan recorded (speed x free slots).
                let weights: BTreeMap<String, f64> = report["weights"]
                    .as_object()
                    .map(|nodes| {
                        nodes
                            .iter()
                            .map(|(node, weight)| (node.clone(), weight.as_f64().unwrap_or(0.0)))
                            .collect()
                    })
                    .unwrap_or_default();
                let total: f64 = weights.values().sum();
                for (node, weight) in &weights {
                    let expected = 200.0 * weight / total;
                    let got = spread.get(node).copied().unwrap_or(0) as f64;
                    assert!(
                        (got - expected).abs() <= 1.0,
                        "greedy: {node} ran {got}, its weight asks {expected:.1}: {report}"
                    );
                }
            }
            "leastload" => {
                // Equal idle nodes: least load deals evenly, give or take the load
                // average each reported.
                assert_eq!(spread.len(), 4, "{spread:?}");
                assert!(
                    spread.values().all(|count| (30..=70).contains(count)),
                    "{spread:?}"
                );
            }
            _ => {
                assert_eq!(spread.len(), 4, "dynamic keeps every node busy: {spread:?}");
            }
        }
        eprintln!("{policy}: {spread:?}");
    }
}

#[test]
fn a_job_survives_losing_a_worker_and_then_its_scheduler() {
    let cluster = TestCluster::up(5);
    // 120 tasks of half a second over 10 slots: about six seconds without failures.
    let id = submit(
        &cluster,
        &[
            "-n",
            "120",
            "--reduce",
            "sum",
            "--",
            "sh",
            "-c",
            "sleep 0.5; echo $BRAMBLE_TASK_INDEX",
        ],
    );
    let mut view = Value::Null;
    wait_until("the job is under way", Duration::from_secs(60), || {
        view = job(&cluster, id);
        done_count(&view) >= 10
    });
    let scheduler = view["record"]["scheduler"]
        .as_str()
        .expect("a scheduler")
        .to_string();
    let worker = cluster
        .all()
        .into_iter()
        .find(|node| *node != scheduler && view["running_by_node"][*node].as_u64().unwrap_or(0) > 0)
        .expect("a worker with running tasks")
        .to_string();
    eprintln!("killing worker {worker} (scheduler is {scheduler})");
    cluster.chaos("kill", &worker);
    let after_worker = done_count(&view);
    wait_until(
        "the job progresses without the worker",
        Duration::from_secs(60),
        || {
            view = job(&cluster, id);
            done_count(&view) >= after_worker + 20
        },
    );
    eprintln!(
        "killing the scheduler {scheduler} at {} done",
        done_count(&view)
    );
    let killed = Instant::now();
    let before = done_count(&view);
    cluster.chaos("kill", &scheduler);
    let mut resumed = None;
    let finished = {
        let mut last = Value::Null;
        wait_until(
            "the job ends under a new scheduler",
            Duration::from_secs(120),
            || {
                let run = cluster.bramble(&["job", &id.to_string(), "--json"]);
                if !run.success {
                    return false;
                }
                last = run.json();
                if resumed.is_none()
                    && last["live"].as_bool() == Some(true)
                    && last["record"]["scheduler"].as_str() != Some(scheduler.as_str())
                    && done_count(&last) > before
                {
                    resumed = Some(killed.elapsed());
                }
                matches!(
                    last["record"]["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            },
        );
        last
    };
    let record = &finished["record"];
    assert_eq!(record["state"].as_str(), Some("succeeded"), "{finished}");
    // Every task counted exactly once: the sum of 0..119.
    let result = record["reduction"]["number"]["Integer"].as_i64();
    assert_eq!(result, Some(119 * 120 / 2), "{record}");
    assert_eq!(done_count(&finished), 120);
    assert!(
        record["scheduler_changes"].as_u64().unwrap_or(0) >= 1,
        "{record}"
    );
    assert_ne!(record["scheduler"].as_str(), Some(scheduler.as_str()));
    let counted: u64 = record["per_node"]
        .as_object()
        .map(|nodes| nodes.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(counted, 120, "{record}");
    eprintln!(
        "new scheduler {} made progress {:?} after the kill; {} attempts for 120 tasks",
        record["scheduler"], resumed, record["attempts"]
    );
}

#[test]
fn a_speculative_copy_beats_a_straggler_and_a_failing_task_fails_its_job() {
    let cluster = TestCluster::up(4);
    // n3 is the slow board: its tasks take 30 s, everyone else's 0.3 s.
    let started = Instant::now();
    let run = cluster.bramble_ok(&[
        "run",
        "-n",
        "40",
        "--speculate",
        "--json",
        "--",
        "sh",
        "-c",
        "if [ \"$BRAMBLE_NODE\" = n3 ]; then sleep 30; else sleep 0.3; fi",
    ]);
    let took = started.elapsed();
    let report = run.json();
    assert_eq!(report["state"].as_str(), Some("succeeded"), "{report}");
    assert!(
        report["speculative_copies"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    assert_eq!(
        per_node(&report).get("n3").copied().unwrap_or(0),
        0,
        "n3's copies lost every race: {report}"
    );
    assert!(
        took < Duration::from_secs(25),
        "the job waited for the straggler: {took:?}"
    );
    eprintln!("with a 30 s straggler the job took {took:?}");

    // A task that always fails: bounded retries, the reason kept, the cluster fine.
    let failing = cluster.bramble(&[
        "run",
        "-n",
        "3",
        "--retries",
        "2",
        "--",
        "sh",
        "-c",
        "echo broken disk >&2; exit 3",
    ]);
    assert!(!failing.success, "{}", failing.stdout);
    let text = format!("{}{}", failing.stdout, failing.stderr);
    assert!(
        text.contains("exit code 3") && text.contains("broken disk") && text.contains("3 time"),
        "{text}"
    );
    let after = cluster.bramble_ok(&[
        "run", "-n", "4", "--reduce", "sum", "--json", "--", "echo", "1",
    ]);
    assert_eq!(after.json()["result"].as_str(), Some("4"));
    cluster.assert_all_alive(Duration::from_secs(10));
}

#[test]
fn bad_input_gets_clear_answers_and_leaves_the_cluster_healthy() {
    let cluster = TestCluster::up(3);
    // A program that does not exist.
    let missing = cluster.bramble(&[
        "run",
        "-n",
        "2",
        "--retries",
        "0",
        "--",
        "/nonexistent/prog",
    ]);
    assert!(!missing.success);
    assert!(
        missing.stdout.contains("was not found") || missing.stderr.contains("was not found"),
        "{missing:?}"
    );
    // Bounds are named.
    let too_many = cluster.bramble(&["run", "-n", "100001", "--", "true"]);
    assert!(
        !too_many.success && too_many.stderr.contains("tasks"),
        "{too_many:?}"
    );
    let zero = cluster.bramble(&["run", "-n", "0", "--", "true"]);
    assert!(!zero.success && zero.stderr.contains("tasks"), "{zero:?}");
    let reserved = cluster.bramble(&["run", "-n", "1", "--env", "BRAMBLE_NODE=x", "--", "true"]);
    assert!(
        !reserved.success && reserved.stderr.contains("BRAMBLE_"),
        "{reserved:?}"
    );
    let after = cluster.bramble(&["run", "-n", "1", "--after", "999", "--", "true"]);
    assert!(
        !after.success && after.stderr.contains("no job 999"),
        "{after:?}"
    );
    // A task that runs too long.
    let slow = cluster.bramble(&[
        "run",
        "-n",
        "1",
        "--retries",
        "0",
        "--timeout",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    assert!(!slow.success);
    assert!(
        format!("{}{}", slow.stdout, slow.stderr).contains("timed out"),
        "{slow:?}"
    );
    // A task that writes a gigabyte: the job succeeds, 1 MiB is kept, the rest counted.
    let flood = cluster.bramble_ok(&[
        "run",
        "-n",
        "1",
        "--json",
        "--",
        "head",
        "-c",
        "1073741824",
        "/dev/zero",
    ]);
    let flood_id = flood.json()["id"].as_u64().expect("an id");
    let logs = cluster.bramble_ok(&["job", "logs", &flood_id.to_string(), "--task", "0"]);
    assert_eq!(logs.stdout.len(), 1024 * 1024);
    assert!(
        logs.stderr
            .contains(&format!("{} bytes of stdout", 1073741824u64 - 1024 * 1024)),
        "{}",
        logs.stderr
    );
    // 100,000 tasks are accepted, and a job cancelled mid-flight stops its tasks.
    let big = submit(&cluster, &["-n", "100000", "--", "sleep", "7"]);
    wait_until("tasks of the big job run", Duration::from_secs(60), || {
        job(&cluster, big)["running"].as_u64().unwrap_or(0) > 0
    });
    cluster.bramble_ok(&["cancel", &big.to_string()]);
    let cancelled = wait_final(&cluster, big, Duration::from_secs(30));
    assert_eq!(cancelled["record"]["state"].as_str(), Some("cancelled"));
    wait_until(
        "the cancelled tasks are gone",
        Duration::from_secs(15),
        || !any_process_runs(b"sleep\x007\x00"),
    );
    let listing = cluster.bramble_ok(&["jobs", "--json"]).json();
    assert!(
        listing
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|job| job["id"].as_u64() == Some(big))),
        "{listing}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

#[test]
fn a_webassembly_task_gives_the_native_result_and_bad_modules_are_refused() {
    let Some(module) = harness::wasm_example("wasm-pi") else {
        return;
    };
    let module = module.to_string_lossy().to_string();
    let cluster = TestCluster::up(3);
    // 8 tasks of 250,000 samples, seed 11: the same points as the built-in task.
    let wasm = cluster
        .bramble_ok(&[
            "run", "--wasm", &module, "-n", "8", "--seed", "11", "--reduce", "sum", "--json", "--",
            "250000",
        ])
        .json();
    let native = cluster
        .bramble_ok(&[
            "pi",
            "--samples",
            "2000000",
            "--partitions",
            "8",
            "--seed",
            "11",
            "--no-local",
            "--json",
        ])
        .json();
    assert_eq!(wasm["state"].as_str(), Some("succeeded"), "{wasm}");
    assert_eq!(
        wasm["result"]
            .as_str()
            .and_then(|text| text.parse::<u64>().ok()),
        native["hits"].as_u64(),
        "wasm {wasm}\nnative {native}"
    );
    assert_eq!(wasm["failures"].as_u64(), Some(0), "{wasm}");

    let directory = tempfile::tempdir().expect("a temporary directory");
    let write = |name: &str, text: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, wat::parse_str(text).expect("valid WAT")).expect("writing");
        path.to_string_lossy().to_string()
    };
    // Loops forever: stopped by fuel.
    let spin = write(
        "spin.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "_start") (loop $again (br $again))))"#,
    );
    let run = cluster.bramble(&[
        "run",
        "--wasm",
        &spin,
        "-n",
        "1",
        "--retries",
        "0",
        "--fuel",
        "5000000",
        "--",
        "x",
    ]);
    assert!(!run.success);
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("ran out of fuel"),
        "{run:?}"
    );
    // Grows its memory without bound: stopped at the limit, the agent unharmed.
    let hog = write(
        "hog.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
               unreachable))"#,
    );
    let run = cluster.bramble(&[
        "run",
        "--wasm",
        &hog,
        "-n",
        "1",
        "--retries",
        "0",
        "--memory",
        "16M",
        "--",
        "x",
    ]);
    assert!(!run.success);
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("exit code 137"),
        "{run:?}"
    );
    // Imports what the host lacks: refused before anything runs, naming the import.
    let files = write(
        "files.wasm",
        r#"(module
             (import "wasi_snapshot_preview1" "path_open"
               (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "_start")))"#,
    );
    let run = cluster.bramble(&["run", "--wasm", &files, "-n", "1", "--", "x"]);
    assert!(!run.success && run.stderr.contains("path_open"), "{run:?}");
    // Not WebAssembly at all.
    let text = directory.path().join("notes.txt");
    std::fs::write(&text, "hello").expect("writing");
    let run = cluster.bramble(&[
        "run",
        "--wasm",
        &text.to_string_lossy(),
        "-n",
        "1",
        "--",
        "x",
    ]);
    assert!(
        !run.success && run.stderr.contains("not a WebAssembly module"),
        "{run:?}"
    );
    cluster.assert_all_alive(Duration::from_secs(10));
}

#[test]
fn the_corrected_mpi4py_example_reduces_to_rank_0_over_bramble_s_launcher() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
    };
    if !root
        || !has("mpirun", &["--version"])
        || !has("/usr/bin/python3", &["-c", "import mpi4py, numpy"])
        || !has("unshare", &["--version"])
    {
        eprintln!(
            "SKIPPED the MPI drill: it needs root (a network namespace), Open MPI and Debian's python3-mpi4py and python3-numpy"
        );
        return;
    }
    // Open MPI listens on every address whatever it is told: the whole cluster and the
    // job run in a network namespace that has only loopback.
    let directory = tempfile::tempdir().expect("a temporary directory");
    let cluster = directory.path().join("cluster");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mpi/reduce.py");
    let script = format!(
        "set -e\nip link set lo up\nB='{binary}'\nD='{cluster}'\n\
         $B up --nodes 3 --bare --dir \"$D\" >/dev/null\n\
         trap '$B down --purge --dir \"$D\" >/dev/null 2>&1' EXIT\n\
         $B mpirun --dir \"$D\" -n 99 -- /bin/true 2>&1 || true\n\
         $B mpirun --dir \"$D\" -n 4 -- /usr/bin/python3 '{example}'\n",
        binary = harness::bramble_binary().display(),
        cluster = cluster.display(),
        example = example.display(),
    );
    let output = std::process::Command::new("timeout")
        .args(["180", "unshare", "-n", "sh", "-c", &script])
        .output()
        .expect("running unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ranks: 4"), "{stdout}\n{stderr}");
    assert!(stdout.contains("\nmatch"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("free slot(s)") && stdout.contains("ask for 1 to"),
        "{stdout}"
    );
    eprintln!("{stdout}{stderr}");
}

/// Whether a process with exactly this command line (NUL-separated, as in
/// /proc/PID/cmdline) runs on this machine.
fn any_process_runs(cmdline: &[u8]) -> bool {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries.flatten().any(|entry| {
                std::fs::read(entry.path().join("cmdline")).is_ok_and(|found| found == cmdline)
            })
        })
        .unwrap_or(false)
}
