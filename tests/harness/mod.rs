//! The multi-node test harness every drill uses: it starts a real emulated cluster (real
//! `bramble agent` processes on loopback, in a temporary directory) through the real CLI,
//! injects faults with `bramble chaos`, and waits on conditions with timeouts.
//!
//! Each test file includes it with `mod harness;`. Timeouts here are generous on purpose:
//! they bound a hung test, they are not performance assertions (those are in bench/).

#![allow(dead_code)]

pub mod chromium;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `bramble` binary cargo built for these tests.
pub fn bramble_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bramble"))
}

/// The outcome of one CLI invocation.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `bramble` with `args`, with `dir` as BRAMBLE_DIR when given.
pub fn run_bramble(dir: Option<&Path>, args: &[&str]) -> Run {
    let mut command = Command::new(bramble_binary());
    command
        .args(args)
        .env_remove("BRAMBLE_DIR")
        .env_remove("BRAMBLE_DATA_DIR");
    if let Some(dir) = dir {
        command.env("BRAMBLE_DIR", dir);
    }
    Run::from(command.output().expect("running the bramble binary"))
}

/// A free TCP port on `ip`, below the ephemeral range so that nothing borrows it between
/// the probe and the test's use.
pub fn free_port(ip: [u8; 4]) -> u16 {
    loop {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
            .expect("binding a probe port");
        let port = listener.local_addr().expect("probe address").port();
        if port < 60_000 {
            return port;
        }
    }
}

/// The first of `count` consecutive free TCP ports on 127.0.0.1, below the kernel's
/// ephemeral range (32768 and up), so no outgoing connection takes one of them meanwhile:
/// for services, whose replica i listens on base + i.
pub fn free_port_run(count: u16) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for attempt in 0..2_000u32 {
        let base = 20_000 + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % 12_000) as u16;
        let listeners: Vec<_> = (0..count)
            .map_while(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).ok())
            .collect();
        if listeners.len() == usize::from(count) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports between 20000 and 32000");
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if condition() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running emulated cluster in a temporary directory, stopped when dropped.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub names: Vec<String>,
}

impl TestCluster {
    /// `bramble up --nodes <count> --bare` (no demo website) in a fresh temporary
    /// directory.
    pub fn up(count: usize) -> TestCluster {
        Self::up_with(count, &["--bare"])
    }

    /// `bramble up --nodes <count> <extra flags>` in a fresh temporary directory.
    pub fn up_with(count: usize, extra: &[&str]) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("bramble-test-")
            .tempdir()
            .expect("creating a temporary directory");
        let cluster = TestCluster {
            dir,
            names: (1..=count).map(|index| format!("n{index}")).collect(),
        };
        let count_text = count.to_string();
        let mut arguments = vec!["up", "--nodes", count_text.as_str(), "--json"];
        arguments.extend_from_slice(extra);
        let run = cluster.bramble(&arguments);
        assert!(
            run.success,
            "bramble up failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        let report = run.json();
        assert_eq!(
            report["nodes"].as_array().map(Vec::len),
            Some(count),
            "{report}"
        );
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a CLI command against this cluster.
    pub fn bramble(&self, args: &[&str]) -> Run {
        run_bramble(Some(self.path()), args)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn bramble_ok(&self, args: &[&str]) -> Run {
        let run = self.bramble(args);
        assert!(
            run.success,
            "bramble {} failed:\n{}\n{}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
        run
    }

    /// The node table as `observer` sees it, or None if it does not answer.
    pub fn view_of(&self, observer: &str) -> Option<Vec<Value>> {
        let run = self.bramble(&["nodes", "--json", "--from", observer]);
        if !run.success {
            return None;
        }
        run.json().as_array().cloned()
    }

    /// `target`'s state in `observer`'s table.
    pub fn state_seen_by(&self, observer: &str, target: &str) -> Option<String> {
        self.view_of(observer)?
            .iter()
            .find(|node| node["name"] == target)
            .and_then(|node| node["state"].as_str().map(str::to_string))
    }

    /// Waits until every node in `observers` reports `target` in `state`.
    pub fn wait_seen_as(
        &self,
        observers: &[&str],
        target: &str,
        state: &str,
        timeout: Duration,
    ) -> Duration {
        wait_until(
            &format!("{observers:?} all see {target} {state}"),
            timeout,
            || {
                observers
                    .iter()
                    .all(|observer| self.state_seen_by(observer, target).as_deref() == Some(state))
            },
        )
    }

    /// Every node except `excluded`.
    pub fn others(&self, excluded: &str) -> Vec<&str> {
        self.names
            .iter()
            .map(String::as_str)
            .filter(|name| *name != excluded)
            .collect()
    }

    pub fn all(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// `bramble chaos <action> <node> --json`; returns the report.
    pub fn chaos(&self, action: &str, node: &str) -> Value {
        self.bramble_ok(&["chaos", action, node, "--json", "--timeout", "60"])
            .json()
    }

    /// `bramble status --json` rows by node.
    pub fn status(&self) -> Vec<Value> {
        self.bramble_ok(&["status", "--json"]).json()["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn status_of(&self, node: &str) -> Value {
        self.status()
            .into_iter()
            .find(|row| row["name"] == node)
            .unwrap_or_else(|| panic!("{node} is not in bramble status"))
    }

    /// Whether the node's agent process is running (not stopped, not exited).
    pub fn process_state(&self, node: &str) -> String {
        self.status_of(node)["process"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn addr(&self, node: &str) -> SocketAddr {
        self.status_of(node)["addr"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("{node} has no address in bramble status"))
    }

    /// The agent log of a node.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.path().join(node).join("agent.log")).unwrap_or_default()
    }

    /// Asserts that every node's agent is running and sees all nodes alive.
    pub fn assert_all_alive(&self, timeout: Duration) {
        for name in self.all() {
            assert_eq!(
                self.process_state(name),
                "running",
                "{name}'s agent is not running:\n{}",
                self.log(name)
            );
        }
        for target in self.all() {
            self.wait_seen_as(&self.all(), target, "alive", timeout);
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // --purge also removes the scratch directories a killed node left in /tmp.
        let run = self.bramble(&["down", "--purge"]);
        if !run.success {
            eprintln!("bramble down failed: {}", run.stderr);
        }
    }
}

/// Builds `examples/<name>` for wasm32-wasip1 and returns its module; `None` (with a
/// message) where the target is not installed (`.ci/run` installs it).
pub fn wasm_example(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains("wasm32-wasip1"))
        .unwrap_or(false);
    if !installed {
        eprintln!("SKIPPED the WebAssembly drill: `rustup target add wasm32-wasip1` first");
        return None;
    }
    let target = std::env::temp_dir().join(format!("bramble-test-{name}"));
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(root.join("examples").join(name).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("running cargo");
    assert!(built.success(), "building examples/{name} failed");
    Some(target.join(format!("wasm32-wasip1/release/{name}.wasm")))
}
