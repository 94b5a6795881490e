//! The `monitor` subsystem, on every node: the `monitor-collect` worker samples once a
//! second, feeds the history, queues the sample for the InfluxDB push and evaluates the
//! node's alerts; the `monitor-metrics` worker serves `/metrics` in plain HTTP (as
//! node_exporter does) through the shared hardened server, bounded in head size,
//! connections and time; `monitor-influx` pushes to InfluxDB and `monitor-alert-webhook`
//! takes part in sending alerts, when `monitor.toml` ([`crate::settings`]) asks for them.
//!
//! `/metrics` has no authentication, like node_exporter's: it tells what any process on
//! the node can read from /proc. Set `metrics_listen` to a loopback address to keep it
//! on the node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_cluster::{Membership, NodeState};
use bramble_http::server::{BoundedRequest, MIN_HEAD_BYTES, SimpleResponse};
use bramble_http::{ServerLimits, serve_http1};
use bramble_net::RpcClient;
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem, SubsystemFigures};
use bramble_util::{Restart, Shutdown, ShutdownTrigger, WorkerState};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::alerts::{Alert, AlertBook, Change, MemberState};
use crate::collector::Collector;
use crate::exposition::{CONTENT_TYPE, Exposition, render_sample};
use crate::history::{History, Point, Tier};
use crate::influx::InfluxPush;
use crate::sample::Sample;
use crate::service::MonitorService;
pub use crate::settings::{DEFAULT_METRICS_PORT, MonitorSettings, SETTINGS_FILE};
use crate::webhook::Webhook;

/// How often the collectors run.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the minute tier is written out (and once more at stop); see [`crate::history`].
const SAVE_EVERY_STEPS: u32 = 10;
/// Test knob, honoured by debug builds only: the minute tier's step in milliseconds, so a
/// drill can gather "minutes" of history in seconds.
pub const TEST_STEP_VARIABLE: &str = "BRAMBLE_TEST_MONITOR_STEP_MS";
/// A node that just started does not yet know who is alive: the members it has not heard
/// from would look down. The node-down condition waits this long after start.
const NODE_DOWN_GRACE: Duration = Duration::from_secs(10);

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

/// The monitor's shared state: the latest sample, the history, the alerts.
pub struct Monitor {
    node: String,
    data_dir: PathBuf,
    latest: Mutex<Option<Sample>>,
    history: Mutex<History>,
    figures: SubsystemFigures,
    metrics_address: Mutex<Option<SocketAddr>>,
    membership: Arc<Membership>,
    /// This node's client, for asking the others for their alerts.
    rpc: RpcClient,
    alerts: Mutex<AlertBook>,
    started: Instant,
    influx: Option<Arc<InfluxPush>>,
    /// Why the configured push does not run (a password in a file others can read).
    influx_refused: Option<String>,
    webhook: Option<Arc<Webhook>>,
}

impl Monitor {
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// The alerts this node evaluates, active now.
    pub fn local_alerts(&self) -> Vec<Alert> {
        self.lock_alerts().active()
    }

    fn lock_alerts(&self) -> std::sync::MutexGuard<'_, AlertBook> {
        self.alerts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// One round of this node's alert conditions: its sample, its subsystems' alarms and
    /// the members it sees down; logs what fired and resolved.
    async fn evaluate_alerts(&self) {
        let mut observations = Vec::new();
        if self.started.elapsed() >= NODE_DOWN_GRACE {
            let members: Vec<MemberState> = self
                .membership
                .nodes()
                .await
                .into_iter()
                .map(|node| MemberState {
                    dead: node.state == NodeState::Dead,
                    address: node.addr.to_string(),
                    heartbeat_age_ms: node.heartbeat_age_ms,
                    name: node.name,
                })
                .collect();
            crate::alerts::observe_members(&self.node, &members, &mut observations);
        }
        crate::alerts::observe_alarms(&self.node, &self.figures.alarms(), &mut observations);
        let changes = {
            let latest = self
                .latest
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let mut book = self.lock_alerts();
            if let Some(sample) = latest.as_ref() {
                crate::alerts::observe_sample(
                    &self.node,
                    sample,
                    |key| book.is_active(key),
                    &mut observations,
                );
            }
            book.update(bramble_util::time::unix_millis(), observations)
        };
        for change in changes {
            match change {
                Change::Fired(alert) => warn!(
                    kind = %alert.kind,
                    node = %alert.node,
                    subject = %alert.subject,
                    message = %alert.message,
                    "alert fired"
                ),
                Change::Resolved(alert) => info!(
                    kind = %alert.kind,
                    node = %alert.node,
                    subject = %alert.subject,
                    "alert resolved"
                ),
            }
        }
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
        self.render_own_figures(&mut out);
        out.append(&self.figures.prometheus());
        out.into_text()
    }

    /// The monitor's own families: active alerts by kind, and the push's counters.
    fn render_own_figures(&self, out: &mut Exposition) {
        out.family(
            "bramble_monitor_alerts",
            "gauge",
            "Active alerts this node evaluates, by kind (node_down counts the members it sees down).",
        );
        for (kind, count) in self.lock_alerts().counts_by_kind() {
            out.sample("bramble_monitor_alerts", &[("kind", &kind)], count as f64);
        }
        if let Some(push) = &self.influx {
            let figures = push.figures();
            out.single(
                "bramble_monitor_influx_pushed_samples_total",
                "counter",
                "Samples pushed to InfluxDB.",
                figures.pushed_samples as f64,
            );
            out.single(
                "bramble_monitor_influx_dropped_samples_total",
                "counter",
                "Samples dropped from a full backlog or refused by InfluxDB as malformed.",
                (figures.dropped_samples + figures.rejected_samples) as f64,
            );
            out.single(
                "bramble_monitor_influx_waiting_samples",
                "gauge",
                "Samples waiting in the backlog for the next push.",
                figures.waiting_samples as f64,
            );
        }
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
                if let Some(push) = &self.influx {
                    push.enqueue(previous.as_ref(), current);
                }
                (
                    Point::between(previous.as_ref(), current),
                    current.taken_unix_millis,
                    previous,
                )
            };
            if let Some(previous) = previous {
                spare = previous;
            }
            self.evaluate_alerts().await;
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
    /// Workers that must end before the agent moves on (the collector, the webhook).
    finished: Mutex<Vec<watch::Receiver<bool>>>,
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
                finished: Mutex::new(Vec::new()),
            }) as Arc<dyn Running>);
        }
        let (influx, influx_refused) = influx_push(&settings, &data_dir, context.node_name());
        // Checked when the settings loaded; an error here cannot happen.
        let webhook = settings
            .webhook()
            .map_err(|error| format!("{SETTINGS_FILE}: {error}"))?
            .map(|target| Arc::new(Webhook::new(target)));
        let mut history = History::new(minute_step());
        history.load(&data_dir);
        let monitor = Arc::new(Monitor {
            node: context.node_name().to_string(),
            data_dir,
            latest: Mutex::new(None),
            history: Mutex::new(history),
            figures: context.figures.clone(),
            metrics_address: Mutex::new(None),
            membership: context.membership.clone(),
            rpc: context.rpc.clone(),
            alerts: Mutex::new(AlertBook::new(context.node_name())),
            started: Instant::now(),
            influx: influx.clone(),
            influx_refused,
            webhook: webhook.clone(),
        });
        let mut workers_finished = Vec::new();
        let (finished_sender, finished) = watch::channel(false);
        workers_finished.push(finished);
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

        if let Some(push) = influx {
            info!(to = %push.describe(), every_secs = push.interval().as_secs_f64(), "pushing samples to InfluxDB");
            context.workers.spawn_until(
                "monitor-influx",
                Restart::OnFailure,
                stop_signal.clone(),
                move |worker| {
                    let push = push.clone();
                    async move {
                        push.run(&worker).await;
                        Ok(())
                    }
                },
            );
        }
        if let Some(webhook) = webhook {
            info!(webhook = %webhook.describe(), "alerts go to a webhook (from the node holding the lease {})", crate::webhook::LEASE);
            let (sender, finished) = watch::channel(false);
            workers_finished.push(finished);
            let sender = Arc::new(sender);
            let monitor = monitor.clone();
            let meta = context.meta.clone();
            context.workers.spawn_until(
                "monitor-alert-webhook",
                Restart::OnFailure,
                stop_signal.clone(),
                move |worker| {
                    let (webhook, monitor, meta) = (webhook.clone(), monitor.clone(), meta.clone());
                    let finished = sender.clone();
                    async move {
                        webhook.run(monitor, meta, worker).await;
                        finished.send_replace(true);
                        Ok(())
                    }
                },
            );
        }

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
            finished: Mutex::new(workers_finished),
        }) as Arc<dyn Running>)
    })
}

/// The InfluxDB push `monitor.toml` asks for, or why it does not start.
fn influx_push(
    settings: &MonitorSettings,
    data_dir: &std::path::Path,
    node: &str,
) -> (Option<Arc<InfluxPush>>, Option<String>) {
    let influx = match settings.influx() {
        Ok(Some(influx)) => influx,
        Ok(None) => return (None, None),
        Err(error) => return (None, Some(error)),
    };
    if influx.credentials.is_some() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = MonitorSettings::path(data_dir);
        let checked = std::fs::metadata(&path)
            .map_err(|error| format!("{}: {error}", path.display()))
            .and_then(|metadata| settings.check_password_protection(metadata.permissions().mode()));
        if let Err(reason) = checked {
            warn!("{reason}");
            return (None, Some(reason));
        }
    }
    match InfluxPush::new(influx, node) {
        Ok(push) => (Some(Arc::new(push)), None),
        Err(reason) => {
            warn!("the InfluxDB push does not start: {reason}");
            (None, Some(reason))
        }
    }
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
        let influx = match (&monitor.influx, &monitor.influx_refused) {
            (Some(push), _) => serde_json::json!({
                "to": push.describe(),
                "interval_secs": push.interval().as_secs_f64(),
                "figures": push.figures(),
            }),
            (None, Some(reason)) => serde_json::json!({ "refused": reason }),
            (None, None) => serde_json::Value::Null,
        };
        let webhook = monitor.webhook.as_ref().map(
            |webhook| serde_json::json!({ "to": webhook.describe(), "figures": webhook.figures() }),
        );
        serde_json::json!({
            "enabled": true,
            "metrics": address.map(|address| format!("http://{address}/metrics")),
            "alerts": monitor.local_alerts().len(),
            "influx": influx,
            "alert_webhook": webhook,
        })
    }

    async fn stop(&self) {
        self.stop.trigger();
        let finished = std::mem::take(
            &mut *self
                .finished
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        // The collect worker saves the minute tier as it ends, the webhook worker releases
        // its lease; the agent's deadline bounds the wait.
        for mut finished in finished {
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
