//! Drills of the monitor (issue 12, first part), on real agents from `bramble up --bare`:
//!
//! - every agent's `/metrics` parses under `promtool check metrics` (Debian's
//!   `prometheus` package), with no lint finding but the camelCase `/proc/meminfo` names
//!   node_exporter itself draws (`node_memory_MemTotal_bytes`, which Grafana's dashboards
//!   need as they are); the balancer's figures are in it on `lb` nodes;
//! - a real Prometheus, started here with a config scraping every agent each second,
//!   answers a query for `node_cpu_seconds_total` with a result per node;
//! - a restarted agent still has its minute history, through the debug-build knob
//!   `BRAMBLE_TEST_MONITOR_STEP_MS` that makes a "minute" half a second;
//! - every node pushes its 1-second samples into a real InfluxDB 1.x (Debian's
//!   `influxdb`, started here), read back with InfluxQL; a password in a file others can
//!   read keeps the push off;
//! - alerts: a backend down and a node down (the webhook's own sender, killed) are listed
//!   by `bramble alerts` and POSTed to a webhook receiver here exactly once when they fire
//!   and once when they resolve.
//!
//! Without promtool or prometheus installed (`apt-get install prometheus`; CI installs
//! it) the drills that need them say so and skip that part; influxd is installed by the
//! drill if missing, which skips only if that fails.

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

/// An HTTP exchange on a fresh connection: the status and the body (chunked bodies are
/// decoded). For InfluxDB's API, which the plain `http_get` above does not cover.
fn http_exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|error| error.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| error.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(32 * 1024 * 1024)
        .read_to_end(&mut answer)
        .map_err(|error| error.to_string())?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut decoded = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| format!("a broken chunk in {body:?}"))?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|error| error.to_string())?;
        if size == 0 {
            break;
        }
        decoded.push_str(after.get(..size).ok_or("a short chunk")?);
        rest = after.get(size + 2..).ok_or("a short chunk")?;
    }
    Ok((status, decoded))
}

/// `value` for a URL's query.
fn query_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Appends `lines` to a node's monitor.toml (the emulator wrote its /metrics port there).
fn add_monitor_settings(cluster: &TestCluster, node: &str, lines: &str) -> std::path::PathBuf {
    let path = cluster.path().join(node).join("monitor.toml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(lines);
    std::fs::write(&path, text).expect("writing monitor.toml");
    path
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A real InfluxDB 1.x (Debian's `influxdb`), on free loopback ports with its data in a
/// temporary directory, authentication on; killed when dropped.
struct Influx {
    child: Child,
    dir: tempfile::TempDir,
    address: SocketAddr,
}

const INFLUX_USER: &str = "bramble";
/// With a space and a colon: the basic-auth header must carry them as they are.
const INFLUX_PASSWORD: &str = "pa ss:w0rd-7f3a";

impl Influx {
    /// Starts influxd, installing Debian's package first if it is missing. None (the
    /// caller skips, saying why) only when it cannot be installed.
    fn start() -> Option<Influx> {
        if Command::new("influxd").arg("version").output().is_err() {
            eprintln!("influxd is missing: apt-get install influxdb");
            let installed = Command::new("apt-get")
                .args(["install", "-y", "-qq", "influxdb"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|status| status.success());
            if !installed || Command::new("influxd").arg("version").output().is_err() {
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("bramble-test-influx-")
            .tempdir()
            .expect("a temporary directory");
        let address: SocketAddr = format!("127.0.0.1:{}", free_port([127, 0, 0, 1]))
            .parse()
            .expect("an address");
        let rpc_port = free_port([127, 0, 0, 1]);
        let root = dir.path().display();
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\n[meta]\n  dir = \"{root}/meta\"\n\n[data]\n  dir = \"{root}/data\"\n  wal-dir = \"{root}/wal\"\n  query-log-enabled = false\n\n[monitor]\n  store-enabled = false\n\n[http]\n  bind-address = \"{address}\"\n  auth-enabled = true\n  log-enabled = false\n  pprof-enabled = false\n"
        );
        let config_path = dir.path().join("influxdb.conf");
        std::fs::write(&config_path, config).expect("writing the config");
        let log = std::fs::File::create(dir.path().join("influxd.log")).expect("a log file");
        let child = Command::new("influxd")
            .arg("-config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting influxd");
        let influx = Influx {
            child,
            dir,
            address,
        };
        wait_until("influxd answers /ping", LONG, || {
            http_get(influx.address, "/ping").is_ok_and(|(status, _)| status == 204)
        });
        // With no user yet, InfluxDB lets the first admin be created without one.
        let create = format!(
            "q={}",
            query_encode(&format!(
                "CREATE USER {INFLUX_USER} WITH PASSWORD '{INFLUX_PASSWORD}' WITH ALL PRIVILEGES"
            ))
        );
        let (status, body) = influx.post_query(&create, false);
        assert_eq!(status, 200, "creating the user: {body}\n{}", influx.log());
        let (status, body) = influx.post_query("q=CREATE%20DATABASE%20telegraf", true);
        assert_eq!(
            status,
            200,
            "creating the database: {body}\n{}",
            influx.log()
        );
        Some(influx)
    }

    fn credentials() -> String {
        format!(
            "u={}&p={}",
            query_encode(INFLUX_USER),
            query_encode(INFLUX_PASSWORD)
        )
    }

    fn post_query(&self, form: &str, authenticated: bool) -> (u16, String) {
        let path = if authenticated {
            format!("/query?{}", Influx::credentials())
        } else {
            "/query".to_string()
        };
        http_exchange(
            self.address,
            "POST",
            &path,
            "application/x-www-form-urlencoded",
            form,
        )
        .unwrap_or_else(|error| panic!("POST /query: {error}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// An InfluxQL query's first series: its columns and rows (none while empty).
    fn select(&self, query: &str) -> (Vec<String>, Vec<Vec<Value>>) {
        let path = format!(
            "/query?db=telegraf&epoch=s&{}&q={}",
            Influx::credentials(),
            query_encode(query)
        );
        let (status, body) = http_exchange(self.address, "GET", &path, "text/plain", "")
            .unwrap_or_else(|error| panic!("{query}: {error}"));
        assert_eq!(status, 200, "{query}: {body}");
        let answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|error| panic!("{query}: {error}: {body}"));
        let series = &answer["results"][0]["series"][0];
        let columns = series["columns"]
            .as_array()
            .map(|columns| {
                columns
                    .iter()
                    .filter_map(|column| column.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let rows = series["values"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|row| row.as_array().cloned())
                    .collect()
            })
            .unwrap_or_default();
        (columns, rows)
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A row's value in `column`, as a number.
fn number(columns: &[String], row: &[Value], column: &str) -> f64 {
    let index = columns
        .iter()
        .position(|name| name == column)
        .unwrap_or_else(|| panic!("no column {column} in {columns:?}"));
    row[index]
        .as_f64()
        .unwrap_or_else(|| panic!("{column} is not a number in {row:?}"))
}

#[test]
fn every_node_pushes_its_samples_into_a_real_influxdb() {
    let Some(influx) = Influx::start() else {
        eprintln!(
            "SKIPPED the InfluxDB drill: influxd is not installed and `apt-get install influxdb` failed"
        );
        return;
    };
    let cluster = TestCluster::up(3);
    let settings = format!(
        "influx_url = \"http://{}\"\ninflux_database = \"telegraf\"\ninflux_username = \"{INFLUX_USER}\"\ninflux_password = \"{INFLUX_PASSWORD}\"\ninflux_interval = \"2s\"\n",
        influx.address
    );
    // n1's file stays readable by others at first: its push must refuse to start.
    let mut files = Vec::new();
    for node in cluster.all() {
        let path = add_monitor_settings(&cluster, node, &settings);
        set_mode(&path, if node == "n1" { 0o644 } else { 0o600 });
        files.push(path);
        cluster.chaos("restart", node);
    }
    let count_for = |host: &str| -> usize {
        let (_, rows) = influx.select(&format!(
            "SELECT usage_idle FROM cpu WHERE host='{host}' AND cpu='cpu-total'"
        ));
        rows.len()
    };
    wait_until("n2 and n3 have pushed 8 seconds of samples", LONG, || {
        count_for("n2") >= 8 && count_for("n3") >= 8
    });
    assert_eq!(
        count_for("n1"),
        0,
        "n1 pushed with a password in a 0644 file"
    );
    let n1_log = cluster.log("n1");
    assert!(
        n1_log.contains("holds influx_password but its mode is 0644")
            && n1_log.contains("chmod 600"),
        "n1's log does not say why its push is off:\n{n1_log}"
    );
    set_mode(&files[0], 0o600);
    cluster.chaos("restart", "n1");
    wait_until("n1 has pushed 8 seconds of samples", LONG, || {
        count_for("n1") >= 8
    });

    for node in cluster.all() {
        // CPU: each 1-second sample, not only the latest of each 2-second push.
        let (columns, rows) = influx.select(&format!(
            "SELECT usage_idle, usage_user, usage_system, usage_iowait FROM cpu WHERE host='{node}' AND cpu='cpu-total'"
        ));
        let times: Vec<f64> = rows
            .iter()
            .map(|row| number(&columns, row, "time"))
            .collect();
        assert!(
            times.windows(2).all(|pair| pair[1] > pair[0]),
            "{node}: {times:?}"
        );
        let one_second_gaps = times
            .windows(2)
            .filter(|pair| pair[1] - pair[0] == 1.0)
            .count();
        assert!(
            one_second_gaps * 2 >= times.len(),
            "{node}'s points are not a second apart: {times:?}"
        );
        for row in &rows {
            let shares: Vec<f64> = ["usage_idle", "usage_user", "usage_system", "usage_iowait"]
                .iter()
                .map(|column| number(&columns, row, column))
                .collect();
            assert!(
                shares.iter().all(|share| (0.0..=100.0).contains(share))
                    && shares.iter().sum::<f64>() <= 100.5,
                "{node}: implausible CPU shares {row:?}"
            );
        }
        // A row per core too.
        let (_, cores) = influx.select(&format!(
            "SELECT usage_idle FROM cpu WHERE host='{node}' AND cpu='cpu0'"
        ));
        assert!(!cores.is_empty(), "{node} has no cpu0 points");

        let (columns, rows) = influx.select(&format!(
            "SELECT total, available, used_percent FROM mem WHERE host='{node}'"
        ));
        assert!(!rows.is_empty(), "{node} has no mem points");
        for row in &rows {
            let total = number(&columns, row, "total");
            let available = number(&columns, row, "available");
            let used = number(&columns, row, "used_percent");
            assert!(
                total > 0.0 && available > 0.0 && available <= total && used > 0.0 && used < 100.0,
                "{node}: implausible memory {row:?}"
            );
        }
        let (columns, rows) = influx.select(&format!(
            "SELECT load1, n_cpus, uptime FROM system WHERE host='{node}'"
        ));
        let last = rows
            .last()
            .unwrap_or_else(|| panic!("{node} has no system points"));
        assert!(number(&columns, last, "load1") >= 0.0);
        assert!(number(&columns, last, "n_cpus") >= 1.0);
        assert!(number(&columns, last, "uptime") > 0.0);

        // The sensors this node has, it pushes; the ones it lacks stay absent.
        let sample = cluster.bramble_ok(&["metrics", node, "--json"]).json()["sample"].clone();
        let has = |list: &str| {
            sample[list]
                .as_array()
                .is_some_and(|items| !items.is_empty())
        };
        let has_external_interface = sample["interfaces"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["device"] != "lo"));
        for (measurement, field, present) in [
            ("disk", "used_percent", has("filesystems")),
            ("diskio", "read_bytes", has("disks")),
            ("net", "bytes_recv", has_external_interface),
            ("temp", "temp", has("thermal_zones")),
        ] {
            let (_, rows) = influx.select(&format!(
                "SELECT {field} FROM {measurement} WHERE host='{node}'"
            ));
            assert_eq!(
                !rows.is_empty(),
                present,
                "{node}: {measurement} points {} but the sample {}",
                rows.len(),
                if present { "has them" } else { "has none" }
            );
        }
    }
    // The password never reaches a log.
    for node in cluster.all() {
        assert!(
            !cluster.log(node).contains(INFLUX_PASSWORD),
            "{node}'s log holds the InfluxDB password"
        );
    }
}

/// A webhook receiver on loopback: keeps each POSTed JSON body, answers 200.
struct WebhookReceiver {
    address: SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    fn start() -> WebhookReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the receiver");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let address = listener.local_addr().expect("its address");
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (keep, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(body) = WebhookReceiver::serve(stream) {
                            keep.lock().expect("the received list").push(body);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        WebhookReceiver {
            address,
            received,
            stop,
        }
    }

    /// Reads one request (head, then the body its Content-Length gives) and answers.
    fn serve(mut stream: TcpStream) -> Option<Value> {
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        let body = loop {
            let read = stream.read(&mut buffer).ok()?;
            if read == 0 {
                return None;
            }
            data.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&data).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let lower = line.to_ascii_lowercase();
                        lower
                            .strip_prefix("content-length:")
                            .and_then(|value| value.trim().parse().ok())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    assert!(
                        head.starts_with("POST /hooks/bramble?token=s3cr3t HTTP/1.1"),
                        "{head}"
                    );
                    break body.to_string();
                }
            }
        };
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        serde_json::from_str(&body).ok()
    }

    /// The messages received about `kind` on `node`, with `status`.
    fn count(&self, status: &str, kind: &str, node: &str) -> usize {
        self.received
            .lock()
            .expect("the received list")
            .iter()
            .filter(|body| body["status"] == status && body["kind"] == kind && body["node"] == node)
            .count()
    }

    fn all(&self) -> Vec<Value> {
        self.received.lock().expect("the received list").clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The node holding the webhook's lease, from the catalog's lease record.
fn webhook_sender(cluster: &TestCluster) -> Option<String> {
    let run = cluster.bramble(&["kv", "get", "leases/monitor/alerts", "--stale"]);
    if !run.success {
        return None;
    }
    let record: Value = serde_json::from_str(run.stdout.trim()).ok()?;
    record["holder"].as_str().map(str::to_string)
}

fn node_down_listed(cluster: &TestCluster, node: &str) -> bool {
    let run = cluster.bramble(&["alerts", "--json"]);
    run.success
        && run.json()["alerts"].as_array().is_some_and(|alerts| {
            alerts
                .iter()
                .any(|alert| alert["kind"] == "node_down" && alert["node"] == node)
        })
}

#[test]
fn alerts_are_listed_and_sent_to_the_webhook_once_as_they_fire_and_resolve() {
    let receiver = WebhookReceiver::start();
    let cluster = TestCluster::up(3);
    // Every node has the webhook, so all three contend for sending: exactly one may.
    let webhook = format!(
        "alert_webhook = \"http://{}/hooks/bramble?token=s3cr3t\"\n",
        receiver.address
    );
    for node in cluster.all() {
        add_monitor_settings(&cluster, node, &webhook);
        cluster.chaos("restart", node);
    }
    let mut sender = String::new();
    wait_until("a node holds the webhook's lease", LONG, || {
        webhook_sender(&cluster).is_some_and(|holder| {
            sender = holder;
            true
        })
    });
    // Past every node's start-up grace for the node-down condition, nothing is down.
    std::thread::sleep(Duration::from_secs(10));
    let quiet = cluster.bramble_ok(&["alerts", "--json"]).json();
    assert!(
        !quiet["alerts"]
            .as_array()
            .is_some_and(|alerts| alerts.iter().any(|alert| alert["kind"] == "node_down")),
        "a node is down before the drill: {quiet}"
    );

    // A balancer whose only backend has nothing behind it: its health check fails, and
    // the node serving it reports the backend down; removing the balancer resolves it.
    let listen = format!(
        "127.0.2.{}:{}",
        30 + std::process::id() % 200,
        free_port([127, 0, 0, 1])
    );
    let backend = format!("web1=127.0.0.1:{}", free_port([127, 0, 0, 1]));
    cluster.bramble_ok(&[
        "lb",
        "create",
        "guarded",
        "--listen",
        &listen,
        "--backend",
        &backend,
        "--check",
        "tcp",
    ]);
    let backend_down = |cluster: &TestCluster| {
        let run = cluster.bramble(&["alerts", "--json"]);
        run.success
            && run.json()["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|alert| {
                    alert["kind"] == "backend_down" && alert["subject"] == "guarded/web1"
                })
            })
    };
    wait_until("bramble alerts lists the backend down", LONG, || {
        backend_down(&cluster)
    });
    let backend_messages = |status: &str| {
        receiver
            .all()
            .iter()
            .filter(|body| {
                body["status"] == status
                    && body["kind"] == "backend_down"
                    && body["subject"] == "guarded/web1"
            })
            .count()
    };
    wait_until("the webhook hears the backend is down", LONG, || {
        backend_messages("firing") >= 1
    });
    cluster.bramble_ok(&["lb", "rm", "guarded"]);
    wait_until(
        "the backend's alert resolves with its balancer",
        LONG,
        || !backend_down(&cluster) && backend_messages("resolved") >= 1,
    );
    assert_eq!(backend_messages("firing"), 1, "{:#?}", receiver.all());

    // Kill the sender itself: another node must take the lease over and send.
    let down = sender.clone();
    let survivor = cluster.others(&down)[0].to_string();
    cluster.chaos("kill", &down);
    let listed_after = wait_until(&format!("bramble alerts lists {down} down"), LONG, || {
        node_down_listed(&cluster, &down)
    });
    eprintln!("{down} was listed down {listed_after:?} after every node saw it dead");
    assert!(
        listed_after < Duration::from_secs(10),
        "{down} took {listed_after:?} to be listed down"
    );
    wait_until(&format!("the webhook hears {down} is down"), LONG, || {
        receiver.count("firing", "node_down", &down) >= 1
    });
    // Later rounds, and the other would-be senders, must not repeat it.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        receiver.count("firing", "node_down", &down),
        1,
        "{:#?}",
        receiver.all()
    );
    let firing = receiver
        .all()
        .into_iter()
        .find(|body| {
            body["status"] == "firing"
                && body["kind"] == "node_down"
                && body["node"] == down.as_str()
        })
        .expect("the firing message");
    assert_ne!(firing["sender"], down.as_str(), "{firing}");
    assert!(
        firing["text"]
            .as_str()
            .is_some_and(|text| text.starts_with(&format!("[FIRING] node_down {down}"))),
        "{firing}"
    );

    // `bramble alerts` and `bramble nodes` show it, saying whose conditions are missing.
    let table = cluster.bramble_ok(&["alerts"]).stdout;
    assert!(
        table.contains("node_down")
            && table.contains(&format!("Not included: {down}'s own conditions")),
        "{table}"
    );
    let nodes = cluster.bramble_ok(&["nodes"]).stdout;
    assert!(nodes.contains(&format!("node_down {down}")), "{nodes}");
    // And /metrics counts it on a node that sees it.
    let (_, survivor_metrics) = metrics_addresses(&cluster)
        .into_iter()
        .find(|(name, _)| *name == survivor)
        .expect("the survivor's /metrics");
    let text = http_get(survivor_metrics, "/metrics").expect("/metrics").1;
    assert!(
        text.contains("bramble_monitor_alerts{kind=\"node_down\"} 1\n"),
        "{text}"
    );

    cluster.chaos("restart", &down);
    wait_until(
        &format!("bramble alerts no longer lists {down}"),
        LONG,
        || !node_down_listed(&cluster, &down),
    );
    wait_until(&format!("the webhook hears {down} is back"), LONG, || {
        receiver.count("resolved", "node_down", &down) >= 1
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        receiver.count("resolved", "node_down", &down),
        1,
        "{:#?}",
        receiver.all()
    );
    assert_eq!(
        receiver.count("firing", "node_down", &down),
        1,
        "{:#?}",
        receiver.all()
    );
    // The webhook's path is a secret: no log holds it.
    for node in cluster.all() {
        assert!(
            !cluster.log(node).contains("s3cr3t"),
            "{node}'s log holds the webhook's path"
        );
    }
}
