//! Drills of the monitor (issue 12, first part), on real agents from `bramble up --bare`:
//!
//! - every agent's `/metrics` parses under `promtool check metrics` (Debian's
//!   `prometheus` package), with no lint finding but the camelCase `/proc/meminfo` names
//!   node_exporter itself draws (`node_memory_MemTotal_bytes`, which Grafana's dashboards
//!   need as they are); the balancer's figures are in it on `lb` nodes;
//! - a real Prometheus, started here with a config scraping every agent each second,
//!   answers a query for `node_cpu_seconds_total` with a result per node;
//! - a restarted agent still has its minute history, through the debug-build knob
//!   `BRAMBLE_TEST_MONITOR_STEP_MS` that makes a "minute" half a second.
//!
//! Without promtool or prometheus installed (`apt-get install prometheus`; CI installs
//! it) the drills that need them say so and skip that part.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::{TestCluster, free_port, wait_until};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// GET `path` over a fresh connection; the status and body.
fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|error| error.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|error| error.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(8 * 1024 * 1024)
        .read_to_end(&mut answer)
        .map_err(|error| error.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    // The monitor answers with a length, never chunked, so the body is as sent.
    Ok((status, body.to_string()))
}

/// Each node's `/metrics` address, from `bramble status --json`.
fn metrics_addresses(cluster: &TestCluster) -> Vec<(String, SocketAddr)> {
    cluster
        .status()
        .iter()
        .map(|row| {
            let name = row["name"].as_str().unwrap_or_default().to_string();
            let url = row["metrics"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no metrics address in bramble status"));
            let address = url
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .parse()
                .unwrap_or_else(|error| panic!("{url}: {error}"));
            (name, address)
        })
        .collect()
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `promtool check metrics` on `text`: its exit code and findings.
fn promtool_findings(text: &str) -> (i32, Vec<String>) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let output = child.wait_with_output().expect("promtool's output");
    let findings = String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .map(str::to_string)
        .filter(|line| !line.trim().is_empty())
        .collect();
    (output.status.code().unwrap_or(-1), findings)
}

/// A finding node_exporter's own names draw: a camelCase /proc/meminfo name.
fn is_node_exporter_camel_case(finding: &str) -> bool {
    finding.starts_with("node_memory_")
        && finding.ends_with("metric names should be written in 'snake_case' not 'camelCase'")
}

/// A Prometheus server this test started; killed when dropped.
struct Prometheus {
    child: Child,
    _data: tempfile::TempDir,
    address: SocketAddr,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let data = tempfile::Builder::new()
            .prefix("bramble-test-prometheus-")
            .tempdir()
            .expect("a temporary directory");
        let target_list: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bramble\n    static_configs:\n      - targets: [{}]\n",
            target_list.join(", ")
        );
        let config_path = data.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing the config");
        let address: SocketAddr = format!("127.0.0.1:{}", free_port([127, 0, 0, 1]))
            .parse()
            .expect("an address");
        let log = std::fs::File::create(data.path().join("prometheus.log")).expect("a log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            _data: data,
            address,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._data.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector, or None while Prometheus cannot answer.
    fn query(&self, query: &str) -> Option<Vec<Value>> {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (byte as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        let (status, body) =
            http_get(self.address, &format!("/api/v1/query?query={encoded}")).ok()?;
        if status != 200 {
            return None;
        }
        let answer: Value = serde_json::from_str(&body).ok()?;
        answer["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_every_agent() {
    let cluster = TestCluster::up(3);
    let addresses = metrics_addresses(&cluster);
    assert_eq!(addresses.len(), 3);

    // A balancer, so the lb nodes' /metrics carry its figures (n2 and n3 have the role).
    let listen = format!(
        "127.0.2.{}:{}",
        20 + std::process::id() % 200,
        free_port([127, 0, 0, 1])
    );
    let backend = format!("web1=127.0.0.1:{}", free_port([127, 0, 0, 1]));
    cluster.bramble_ok(&[
        "lb",
        "create",
        "monitored",
        "--listen",
        &listen,
        "--backend",
        &backend,
    ]);

    let mut texts = Vec::new();
    for (name, address) in &addresses {
        let mut text = String::new();
        wait_until(
            &format!("{name}'s /metrics has its first sample"),
            LONG,
            || match http_get(*address, "/metrics") {
                Ok((200, body)) if body.contains("node_cpu_seconds_total{") => {
                    text = body;
                    true
                }
                _ => false,
            },
        );
        for family in [
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}",
            "node_load1 ",
            "node_memory_MemAvailable_bytes ",
            "node_network_receive_bytes_total{device=\"lo\"}",
            "node_boot_time_seconds ",
            "bramble_agent_resident_memory_bytes ",
            "bramble_agent_cpu_seconds_total ",
            "bramble_jobs_tasks_running ",
            "bramble_services_replicas_running ",
            "bramble_store_copies_healed_total ",
        ] {
            assert!(
                text.contains(family),
                "{name}'s /metrics lacks {family}:\n{text}"
            );
        }
        texts.push((name.clone(), text));
    }
    // The balancer's figures reach the lb nodes' /metrics once they follow the catalog.
    let (_, lb_address) = addresses[1].clone();
    wait_until("n2's /metrics has the balancer's figures", LONG, || {
        http_get(lb_address, "/metrics").is_ok_and(|(_, body)| {
            body.contains("bramble_lb_frontend_sessions_total{balancer=\"monitored\"}")
        })
    });
    texts[1].1 = http_get(lb_address, "/metrics").expect("n2's /metrics").1;

    // Anything but GET or HEAD, or another path, is refused.
    let (status, _) = http_get(addresses[0].1, "/nothing").expect("an answer");
    assert_eq!(status, 404);

    if installed("promtool") {
        for (name, text) in &texts {
            let (code, findings) = promtool_findings(text);
            // 0: clean; 3: lint findings only (1 would be a parse error).
            assert!(
                code == 0 || code == 3,
                "promtool exit {code} on {name}: {findings:?}"
            );
            let unexpected: Vec<&String> = findings
                .iter()
                .filter(|finding| !is_node_exporter_camel_case(finding))
                .collect();
            assert!(
                unexpected.is_empty(),
                "promtool findings on {name}'s /metrics beyond node_exporter's camelCase names: {unexpected:?}"
            );
        }
    } else {
        eprintln!(
            "SKIPPED the promtool check: promtool is not installed (apt-get install prometheus)"
        );
    }

    if !installed("prometheus") {
        eprintln!(
            "SKIPPED the Prometheus scrape: prometheus is not installed (apt-get install prometheus)"
        );
        return;
    }
    let targets: Vec<SocketAddr> = addresses.iter().map(|(_, address)| *address).collect();
    let prometheus = Prometheus::start(&targets);
    let mut instances: Vec<String> = Vec::new();
    wait_until(
        "Prometheus has node_cpu_seconds_total from every agent",
        LONG,
        || {
            let Some(result) = prometheus.query("count by (instance) (node_cpu_seconds_total)")
            else {
                return false;
            };
            instances = result
                .iter()
                .filter_map(|series| series["metric"]["instance"].as_str().map(str::to_string))
                .collect();
            instances.sort();
            instances.len() == targets.len()
        },
    );
    let mut expected: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
    expected.sort();
    assert_eq!(instances, expected, "Prometheus log:\n{}", prometheus.log());
    // Every target is up, and a rate over the scrapes works (counters are counters).
    let up = prometheus.query("sum(up)").expect("an answer to sum(up)");
    assert_eq!(up[0]["value"][1], "3", "{up:?}");
    wait_until("a CPU rate per node", LONG, || {
        prometheus
            .query("sum by (instance) (rate(node_cpu_seconds_total[5s]))")
            .is_some_and(|result| result.len() == targets.len())
    });
}

fn minute_points(cluster: &TestCluster, node: &str) -> Vec<Value> {
    let run = cluster.bramble(&["metrics", node, "--history", "24h", "--json"]);
    if !run.success {
        return Vec::new();
    }
    run.json()["points"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_restarted_agent_keeps_its_minute_history() {
    // Every agent this test starts gathers a "minute" every 500 ms (debug builds only).
    // SAFETY: set before this test process starts any thread that reads the environment.
    unsafe { std::env::set_var("BRAMBLE_TEST_MONITOR_STEP_MS", "500") };
    let cluster = TestCluster::up(3);
    let mut before = Vec::new();
    wait_until("n2 has six minute points", LONG, || {
        before = minute_points(&cluster, "n2");
        before.len() >= 6
    });
    // The points carry real figures: the load, memory and the root filesystem's use.
    let first = &before[0];
    assert!(first["load1"].is_number(), "{first}");
    assert!(
        first["memory_available_bytes"]
            .as_f64()
            .is_some_and(|bytes| bytes > 0.0),
        "{first}"
    );
    assert!(first["root_filesystem_used_percent"].is_number(), "{first}");

    cluster.chaos("restart", "n2");
    assert!(
        Path::new(&cluster.path().join("n2").join("monitor-history.bin")).exists(),
        "no history file in n2's data directory"
    );
    let after = minute_points(&cluster, "n2");
    for point in &before {
        assert!(
            after.contains(point),
            "the point {point} from before the restart is gone; after: {after:?}"
        );
    }
    // And history goes on after the restart.
    let newest_before = before.last().map(|point| point["unix_seconds"].clone());
    wait_until(
        "n2 records new minute points after its restart",
        LONG,
        || {
            minute_points(&cluster, "n2")
                .last()
                .is_some_and(|point| Some(point["unix_seconds"].clone()) != newest_before)
        },
    );
    // Another node's history is its own.
    assert!(!minute_points(&cluster, "n1").is_empty());
}
