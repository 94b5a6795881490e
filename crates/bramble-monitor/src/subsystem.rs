//! The `monitor` subsystem, on every node: the `monitor-collect` worker samples once a
//! second and feeds the history; the `monitor-metrics` worker serves `/metrics` in plain
//! HTTP (as node_exporter does) through the shared hardened server, bounded in head size,
//! connections and time.
//!
//! Settings live in `<data-dir>/monitor.toml`, as the balancer's in `lb.toml`:
//!
//! ```toml
//! enabled = true                    # false: no collectors, no history, no /metrics
//! metrics_listen = "192.0.2.7:9101" # default: the node's advertised address, port 9101
//! ```
//!
//! `/metrics` has no authentication, like node_exporter's: it tells what any process on
//! the node can read from /proc. Set `metrics_listen` to a loopback address to keep it
//! on the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_http::server::{BoundedRequest, MIN_HEAD_BYTES, SimpleResponse};
use bramble_http::{ServerLimits, serve_http1};
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem, SubsystemFigures};
use bramble_util::{Restart, Shutdown, ShutdownTrigger, WorkerState};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::MonitorError;
use crate::collector::Collector;
use crate::exposition::{CONTENT_TYPE, Exposition, render_sample};
use crate::history::{History, Point, Tier};
use crate::sample::Sample;
use crate::service::MonitorService;

/// node_exporter has 9100; the next port is Bramble's, so both can run side by side.
pub const DEFAULT_METRICS_PORT: u16 = 9101;
/// The settings file in the node's data directory.
pub const SETTINGS_FILE: &str = "monitor.toml";
/// How often the collectors run.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the minute tier is written out (and once more at stop); see [`crate::history`].
const SAVE_EVERY_STEPS: u32 = 10;
/// Test knob, honoured by debug builds only: the minute tier's step in milliseconds, so a
/// drill can gather "minutes" of history in seconds.
pub const TEST_STEP_VARIABLE: &str = "BRAMBLE_TEST_MONITOR_STEP_MS";

/// `<data-dir>/monitor.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// Whether the monitor runs at all.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Where `/metrics` listens; None: the node's advertised address, port 9101.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            enabled: true,
            metrics_listen: None,
        }
    }
}

impl MonitorSettings {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(SETTINGS_FILE)
    }

    pub fn load(data_dir: &Path) -> Result<Self, MonitorError> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(Self::default());
        }
        bramble_util::files::read_toml(&path).map_err(|error| MonitorError::Settings {
            path: path.display().to_string(),
            message: error.to_string(),
        })
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), MonitorError> {
        let path = Self::path(data_dir);
        bramble_util::files::write_toml(&path, self, bramble_util::files::Visibility::Public)
            .map_err(|error| MonitorError::Settings {
                path: path.display().to_string(),
                message: error.to_string(),
            })
    }

    /// Where `/metrics` listens on a node advertised at `advertise`.
    pub fn metrics_address(&self, advertise: SocketAddr) -> SocketAddr {
        self.metrics_listen
            .unwrap_or_else(|| SocketAddr::new(advertise.ip(), DEFAULT_METRICS_PORT))
    }
}

/// The minute tier's step: a minute, or the test knob's value in a debug build.
fn minute_step() -> Duration {
    if cfg!(debug_assertions)
        && let Some(millis) = std::env::var(TEST_STEP_VARIABLE)
            .ok()
            .and_then(|value| value.parse::<u64>().ok())
            .filter(|millis| (100..=60_000).contains(millis))
    {
        warn!(
            millis,
            "{TEST_STEP_VARIABLE} shortens the minute history's step (a test knob)"
        );
        return Duration::from_millis(millis);
    }
    Duration::from_secs(60)
}

/// The monitor's shared state: the latest sample and the history.
pub struct Monitor {
    node: String,
    data_dir: PathBuf,
    latest: Mutex<Option<Sample>>,
    history: Mutex<History>,
    figures: SubsystemFigures,
    metrics_address: Mutex<Option<SocketAddr>>,
}

impl Monitor {
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn latest(&self) -> Option<Sample> {
        self.latest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// A tier's step and points.
    pub fn history(&self, tier: Tier) -> (Duration, Vec<Point>) {
        let history = self
            .history
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let step = match tier {
            Tier::Hour => SAMPLE_EVERY,
            Tier::Day => history.step(),
        };
        (step, history.points(tier))
    }

    /// `/metrics`: the latest sample, then every subsystem's own figures.
    pub fn render_metrics(&self) -> String {
        let mut out = Exposition::with_capacity(32 * 1024);
        if let Some(sample) = self
            .latest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_ref()
        {
            render_sample(sample, &mut out);
        }
        out.append(&self.figures.prometheus());
        out.into_text()
    }

    fn save_history(&self) {
        // Encoded under the lock (75 KB at most), written outside it.
        let encoded = self
            .history
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .encode_minutes();
        if let Err(error) = crate::history::save_encoded(&self.data_dir, &encoded) {
            warn!(%error, "could not save the minute history");
        }
    }

    /// The collect loop: a sample a second, on a blocking thread (statvfs of a hung network
    /// mount blocks, as `df` does; the agent's runtime must not), until `shutdown`; then
    /// the minute tier is saved.
    async fn collect(self: Arc<Self>, worker: bramble_util::WorkerContext, mut shutdown: Shutdown) {
        let mut collector = Some(Collector::new());
        // Two samples, swapped each round: the older one's lists are reused for the next.
        let mut spare = Sample::default();
        let mut steps_since_save = 0u32;
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = ticker.tick() => {}
            }
            let Some(mut running) = collector.take() else {
                break;
            };
            let mut sample = std::mem::take(&mut spare);
            let collected = tokio::task::spawn_blocking(move || {
                running.collect(&mut sample);
                (running, sample)
            })
            .await;
            let (running, sample) = match collected {
                Ok(done) => done,
                Err(error) => {
                    worker.report_error(&format!("the collectors failed: {error}"));
                    collector = Some(Collector::new());
                    continue;
                }
            };
            collector = Some(running);
            // The point is worked out under the lock, so the sample is never copied.
            let (point, taken_unix_millis, previous) = {
                let mut latest = self
                    .latest
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                let previous = latest.replace(sample);
                let Some(current) = latest.as_ref() else {
                    continue;
                };
                (
                    Point::between(previous.as_ref(), current),
                    current.taken_unix_millis,
                    previous,
                )
            };
            if let Some(previous) = previous {
                spare = previous;
            }
            let step_ended = self
                .history
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .record(point, taken_unix_millis);
            if step_ended {
                steps_since_save += 1;
                if steps_since_save >= SAVE_EVERY_STEPS {
                    steps_since_save = 0;
                    let monitor = self.clone();
                    let _ = tokio::task::spawn_blocking(move || monitor.save_history()).await;
                }
            }
            worker.set_state(WorkerState::Idle);
        }
        let monitor = self.clone();
        let _ = tokio::task::spawn_blocking(move || monitor.save_history()).await;
    }

    async fn respond(&self, request: BoundedRequest) -> SimpleResponse {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are allowed\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.render_metrics())));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            "/" => text(StatusCode::OK, "Bramble monitor: see /metrics\n"),
            _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> SimpleResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The bounds of `/metrics`: a scraper or two, small heads, no bodies; a connection that
/// stalls is closed (the shared server answers 408 to a half-sent head).
const METRICS_LIMITS: ServerLimits = ServerLimits {
    max_connections: 16,
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_headers: 32,
    max_head_bytes: MIN_HEAD_BYTES,
    max_body_bytes: 0,
    body_read_timeout: Duration::from_secs(10),
    connection_lifetime: Duration::from_secs(600),
};

/// The subsystem as the agent declares it: every node.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "monitor",
    roles: &[],
    start: start_subsystem,
    stop_deadline: Duration::from_secs(3),
};

struct RunningMonitor {
    /// None when `monitor.toml` switches the monitor off.
    monitor: Option<Arc<Monitor>>,
    stop: ShutdownTrigger,
    finished: Mutex<Option<watch::Receiver<bool>>>,
}

fn start_subsystem(context: Context) -> StartFuture {
    Box::pin(async move {
        let data_dir = context.node.path.clone();
        let settings = MonitorSettings::load(&data_dir).map_err(|error| error.to_string())?;
        let (stop, stop_signal) = ShutdownTrigger::new();
        if !settings.enabled {
            info!("monitoring is switched off in {SETTINGS_FILE}");
            return Ok(Arc::new(RunningMonitor {
                monitor: None,
                stop,
                finished: Mutex::new(None),
            }) as Arc<dyn Running>);
        }
        let mut history = History::new(minute_step());
        history.load(&data_dir);
        let monitor = Arc::new(Monitor {
            node: context.node_name().to_string(),
            data_dir,
            latest: Mutex::new(None),
            history: Mutex::new(history),
            figures: context.figures.clone(),
            metrics_address: Mutex::new(None),
        });
        let (finished_sender, finished) = watch::channel(false);
        let finished_sender = Arc::new(finished_sender);
        let collecting = monitor.clone();
        let collect_stop = stop_signal.clone();
        context.workers.spawn_until(
            "monitor-collect",
            Restart::OnFailure,
            stop_signal.clone(),
            move |worker| {
                let monitor = collecting.clone();
                let shutdown = collect_stop.clone();
                let finished = finished_sender.clone();
                async move {
                    monitor.collect(worker, shutdown).await;
                    finished.send_replace(true);
                    Ok(())
                }
            },
        );

        let address = settings.metrics_address(context.node.config.advertise);
        match TcpListener::bind(address).await {
            Ok(listener) => {
                let bound = listener.local_addr().unwrap_or(address);
                *monitor
                    .metrics_address
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(bound);
                // The listener cannot be rebound by a restart: one run only.
                let listener = Arc::new(Mutex::new(Some(listener)));
                let serving = monitor.clone();
                context.workers.spawn_until(
                    "monitor-metrics",
                    Restart::Never,
                    stop_signal,
                    move |worker| {
                        let listener = listener
                            .lock()
                            .unwrap_or_else(|poison| poison.into_inner())
                            .take();
                        let monitor = serving.clone();
                        async move {
                            let listener = listener.ok_or("the metrics listener is gone")?;
                            let handler = move |request: BoundedRequest, _peer: SocketAddr| {
                                let monitor = monitor.clone();
                                async move { monitor.respond(request).await }
                            };
                            serve_http1(
                                "metrics",
                                listener,
                                METRICS_LIMITS,
                                handler,
                                worker.shutdown(),
                            )
                            .await;
                            Ok(())
                        }
                    },
                );
                info!(address = %bound, "serving /metrics");
            }
            // Monitoring and its history still run; `bramble status` shows no address.
            Err(error) => warn!(%address, %error, "could not serve /metrics"),
        }
        Ok(Arc::new(RunningMonitor {
            monitor: Some(monitor),
            stop,
            finished: Mutex::new(Some(finished)),
        }) as Arc<dyn Running>)
    })
}

#[async_trait::async_trait]
impl Running for RunningMonitor {
    fn service(&self) -> Option<Arc<dyn bramble_net::Handler>> {
        match &self.monitor {
            Some(monitor) => Some(Arc::new(MonitorService::new(monitor.clone()))),
            None => Some(Arc::new(SwitchedOff)),
        }
    }

    fn status(&self) -> serde_json::Value {
        let Some(monitor) = &self.monitor else {
            return serde_json::json!({ "enabled": false });
        };
        let address = *monitor
            .metrics_address
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        serde_json::json!({
            "enabled": true,
            "metrics": address.map(|address| format!("http://{address}/metrics")),
        })
    }

    async fn stop(&self) {
        self.stop.trigger();
        let finished = self
            .finished
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        // The collect worker saves the minute tier as it ends; the agent's deadline bounds
        // the wait.
        if let Some(mut finished) = finished {
            let _ = finished.wait_for(|done| *done).await;
        }
    }
}

/// `monitor.*` on a node whose `monitor.toml` switches monitoring off.
struct SwitchedOff;

#[async_trait::async_trait]
impl bramble_net::Handler for SwitchedOff {
    async fn handle(
        &self,
        request: bramble_net::rpc::Request<'_>,
    ) -> Result<Vec<u8>, bramble_net::RpcError> {
        request.require_authenticated()?;
        Err(bramble_net::RpcError::new(
            bramble_net::ErrorKind::NotFound,
            format!("monitoring is switched off on this node ({SETTINGS_FILE})"),
        ))
    }
}
