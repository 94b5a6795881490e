//! The optional InfluxDB 1.x push (what Telegraf does for the article's Pi cluster): each
//! node sends its own samples — every 1-second sample since the last push, not only the
//! latest — in the line protocol with Telegraf's names ([`crate::line_protocol`]), to
//! `POST /write?db=<database>&precision=s`, every `influx_interval` (10 s by default).
//!
//! The collector never waits for the network: after each sample it encodes the lines
//! (microseconds) and appends them to a [`Backlog`] under a short lock; the
//! `monitor-influx` worker takes batches from it and POSTs them. A push that fails leaves
//! its samples in the backlog, which is bounded — ten minutes of samples and 4 MiB —
//! and drops the oldest beyond that, counting them and saying so in the log. Each POST has
//! a connect timeout (3 s) and a total one (10 s). Points InfluxDB refuses as malformed
//! (400, 413) are dropped and counted rather than retried forever; a missing database,
//! refused credentials or a server error keep them for the next round.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::Serialize;
use tracing::{info, warn};

use crate::http_post::{self, PostError, Timeouts};
use crate::line_protocol::encode_sample;
use crate::sample::Sample;
use crate::settings::InfluxSettings;

/// Samples the backlog keeps at most: ten minutes at one a second.
pub const MAX_BACKLOG_SAMPLES: usize = 600;
/// Bytes of line protocol the backlog keeps at most, whatever the node's size (a host
/// with many cores and mounts writes several KiB a second).
pub const MAX_BACKLOG_BYTES: usize = 4 * 1024 * 1024;
/// Largest body of one POST; a longer backlog goes in several.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(3),
    total: Duration::from_secs(10),
};
/// After the first failure of a run, the log repeats the warning only every this many.
const WARN_EVERY_FAILURES: u64 = 30;

/// One sample's lines.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    text: String,
}

/// Samples waiting to be pushed, oldest first, bounded in count and bytes.
#[derive(Debug)]
pub struct Backlog {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    max_samples: usize,
    max_bytes: usize,
    /// Samples dropped because the backlog was full, since start.
    dropped: u64,
}

impl Backlog {
    pub fn new(max_samples: usize, max_bytes: usize) -> Backlog {
        Backlog {
            chunks: VecDeque::new(),
            bytes: 0,
            max_samples,
            max_bytes,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Adds one sample's lines (nothing if empty), dropping the oldest beyond the bounds.
    pub fn push(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.bytes += text.len();
        self.chunks.push_back(Chunk { text });
        self.enforce_bounds();
    }

    fn enforce_bounds(&mut self) {
        while self.chunks.len() > self.max_samples || self.bytes > self.max_bytes {
            let Some(oldest) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= oldest.text.len();
            self.dropped += 1;
        }
    }

    /// Takes the oldest samples, at most `max_bytes` of them (at least one sample).
    pub fn take_batch(&mut self, max_bytes: usize) -> Batch {
        let mut batch = Batch::default();
        while let Some(front) = self.chunks.front() {
            if batch.samples > 0 && batch.text.len() + front.text.len() > max_bytes {
                break;
            }
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= chunk.text.len();
            batch.text.push_str(&chunk.text);
            batch.lengths.push(chunk.text.len());
            batch.samples += 1;
        }
        batch
    }

    /// Puts a batch that could not be pushed back in front, then drops the oldest beyond
    /// the bounds (samples that came in meanwhile count too).
    pub fn put_back(&mut self, batch: Batch) {
        let mut end = batch.text.len();
        for length in batch.lengths.iter().rev() {
            let start = end - length;
            self.chunks.push_front(Chunk {
                text: batch.text[start..end].to_string(),
            });
            self.bytes += length;
            end = start;
        }
        self.enforce_bounds();
    }
}

/// Samples taken from the backlog for one POST.
#[derive(Debug, Default)]
pub struct Batch {
    text: String,
    /// Each sample's share of `text`, in order.
    lengths: Vec<usize>,
    samples: usize,
}

impl Batch {
    pub fn samples(&self) -> usize {
        self.samples
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What `bramble status`/`agent.subsystems` shows of the push.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushFigures {
    pub pushed_samples: u64,
    pub waiting_samples: u64,
    /// Dropped because the backlog was full (InfluxDB unreachable too long).
    pub dropped_samples: u64,
    /// Refused by InfluxDB as malformed (400, 413): dropped, not retried.
    pub rejected_samples: u64,
    pub failed_pushes: u64,
    pub last_error: Option<String>,
    pub last_success_unix_ms: Option<u64>,
}

/// The push: the backlog the collector fills and the figures the worker keeps.
pub struct InfluxPush {
    settings: InfluxSettings,
    host: String,
    /// `/…/write?db=…&precision=s`, worked out once.
    write_path: String,
    authorization: Option<HeaderValue>,
    backlog: Mutex<Backlog>,
    figures: Mutex<PushFigures>,
}

impl InfluxPush {
    pub fn new(settings: InfluxSettings, host: &str) -> Result<InfluxPush, String> {
        let base = settings.target.path().trim_end_matches('/');
        let write_path = format!(
            "{base}/write?db={}&precision=s",
            http_post::percent_encode(&settings.database)
        );
        let authorization = match &settings.credentials {
            None => None,
            Some((user, password)) => {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.reveal()));
                let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| "the InfluxDB credentials do not make a header".to_string())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(InfluxPush {
            settings,
            host: host.to_string(),
            write_path,
            authorization,
            backlog: Mutex::new(Backlog::new(MAX_BACKLOG_SAMPLES, MAX_BACKLOG_BYTES)),
            figures: Mutex::new(PushFigures::default()),
        })
    }

    /// Where it pushes, for logs and statuses (no credentials, no secret).
    pub fn describe(&self) -> String {
        format!(
            "{} database {}",
            self.settings.target, self.settings.database
        )
    }

    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// Called by the collector after each sample: encodes and queues, never waits on I/O.
    pub fn enqueue(&self, previous: Option<&Sample>, current: &Sample) {
        let mut text = String::with_capacity(2048);
        encode_sample(previous, current, &self.host, &mut text);
        self.lock_backlog().push(text);
    }

    fn lock_backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_figures(&self) -> std::sync::MutexGuard<'_, PushFigures> {
        self.figures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn figures(&self) -> PushFigures {
        let backlog = self.lock_backlog();
        let (waiting, dropped) = (backlog.len() as u64, backlog.dropped());
        drop(backlog);
        let mut figures = self.lock_figures().clone();
        figures.waiting_samples = waiting;
        figures.dropped_samples = dropped;
        figures
    }

    /// One round: pushes the whole backlog in batches, stopping at the first failure.
    /// Returns the error of a failed push.
    pub async fn push_round(&self) -> Result<(), String> {
        loop {
            let batch = self.lock_backlog().take_batch(MAX_BATCH_BYTES);
            if batch.samples() == 0 {
                return Ok(());
            }
            let body = Bytes::copy_from_slice(batch.text().as_bytes());
            let outcome = http_post::post(
                &self.settings.target,
                &self.write_path,
                "text/plain; charset=utf-8",
                self.authorization.as_ref(),
                body,
                TIMEOUTS,
            )
            .await;
            match outcome {
                Ok(answer) if answer.is_success() => {
                    let mut figures = self.lock_figures();
                    figures.pushed_samples += batch.samples() as u64;
                    figures.last_success_unix_ms = Some(bramble_util::time::unix_millis());
                }
                Ok(answer) if answer.status == 400 || answer.status == 413 => {
                    // Retrying the same points would be refused the same way.
                    let message = format!(
                        "InfluxDB refused {} samples as malformed ({}): {}",
                        batch.samples(),
                        answer.status,
                        answer.body
                    );
                    let mut figures = self.lock_figures();
                    figures.rejected_samples += batch.samples() as u64;
                    figures.last_error = Some(message.clone());
                    return Err(message);
                }
                Ok(answer) => {
                    self.lock_backlog().put_back(batch);
                    let hint = match answer.status {
                        401 | 403 => " (check influx_username and influx_password)",
                        404 => " (does the database exist? CREATE DATABASE ...)",
                        _ => "",
                    };
                    return Err(self.failed(format!(
                        "InfluxDB answered {}{hint}: {}",
                        answer.status, answer.body
                    )));
                }
                Err(error) => {
                    self.lock_backlog().put_back(batch);
                    return Err(self.failed(describe_post_error(&error)));
                }
            }
        }
    }

    fn failed(&self, message: String) -> String {
        let mut figures = self.lock_figures();
        figures.failed_pushes += 1;
        figures.last_error = Some(message.clone());
        message
    }

    /// The worker `monitor-influx`: a round every interval until `shutdown`.
    pub async fn run(&self, worker: &bramble_util::WorkerContext) {
        let mut shutdown = worker.shutdown();
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; the backlog is empty then.
        ticker.tick().await;
        let mut failures_in_a_row = 0u64;
        let mut drops_told = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = ticker.tick() => {}
            }
            worker.set_state(bramble_util::WorkerState::Busy);
            let outcome = self.push_round().await;
            let figures = self.figures();
            worker.set_queue(figures.waiting_samples);
            match outcome {
                Ok(()) => {
                    if failures_in_a_row > 0 {
                        info!(
                            to = %self.describe(),
                            failures = failures_in_a_row,
                            dropped_so_far = figures.dropped_samples,
                            "the InfluxDB push works again"
                        );
                    }
                    failures_in_a_row = 0;
                }
                Err(error) => {
                    failures_in_a_row += 1;
                    // The first failure, now and then while it lasts, and when the
                    // backlog starts dropping samples.
                    let first_drops = figures.dropped_samples > 0 && drops_told == 0;
                    if failures_in_a_row % WARN_EVERY_FAILURES == 1 || first_drops {
                        drops_told = figures.dropped_samples;
                        warn!(
                            to = %self.describe(),
                            %error,
                            waiting = figures.waiting_samples,
                            dropped_so_far = figures.dropped_samples,
                            "the InfluxDB push failed; samples wait in a backlog of at most ten minutes, the oldest dropped beyond"
                        );
                    }
                    worker.report_error(&error);
                }
            }
            worker.set_progress(format!(
                "{} samples pushed, {} dropped",
                figures.pushed_samples,
                figures.dropped_samples + figures.rejected_samples
            ));
            worker.set_state(bramble_util::WorkerState::Idle);
        }
    }
}

fn describe_post_error(error: &PostError) -> String {
    format!("no answer from InfluxDB: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_post::HttpTarget;
    use crate::settings::Password;

    #[test]
    fn the_backlog_is_bounded_and_drops_the_oldest() {
        let mut backlog = Backlog::new(3, 1000);
        for index in 0..5 {
            backlog.push(format!("line {index}\n"));
        }
        assert_eq!((backlog.len(), backlog.dropped()), (3, 2));
        backlog.push(String::new());
        assert_eq!(backlog.len(), 3);

        // Batches keep the order and respect the byte bound (one sample at least).
        let batch = backlog.take_batch(14);
        assert_eq!(batch.text(), "line 2\nline 3\n");
        assert_eq!(batch.samples(), 2);
        assert_eq!(backlog.len(), 1);
        // A failed push puts it back in front; new samples meanwhile may push the
        // oldest out.
        backlog.push("line 5\n".into());
        backlog.push("line 6\n".into());
        backlog.put_back(batch);
        assert_eq!(backlog.len(), 3);
        assert_eq!(backlog.dropped(), 4);
        let all = backlog.take_batch(usize::MAX);
        assert_eq!(all.text(), "line 4\nline 5\nline 6\n");
        assert!(backlog.is_empty());
        assert_eq!(backlog.bytes, 0);

        // The byte bound holds too, whatever the count.
        let mut small = Backlog::new(100, 20);
        for _ in 0..10 {
            small.push("0123456789\n".into());
        }
        assert_eq!((small.len(), small.dropped()), (1, 9));
        let single = small.take_batch(1);
        assert_eq!(
            single.samples(),
            1,
            "one sample even when larger than the bound"
        );
    }

    fn push_to(url: &str) -> InfluxPush {
        InfluxPush::new(
            InfluxSettings {
                target: HttpTarget::parse(url).expect("valid"),
                database: "tele graf".into(),
                credentials: Some(("bramble".into(), Password::new("s3cret:pass"))),
                interval: Duration::from_secs(10),
            },
            "n1",
        )
        .expect("a push")
    }

    #[test]
    fn the_write_path_and_credentials() {
        let push = push_to("http://127.0.0.1:8086/influx/");
        assert_eq!(push.write_path, "/influx/write?db=tele%20graf&precision=s");
        let header = push.authorization.as_ref().expect("basic auth");
        assert!(header.is_sensitive());
        // base64("bramble:s3cret:pass")
        assert_eq!(
            header.to_str().ok(),
            Some("Basic YnJhbWJsZTpzM2NyZXQ6cGFzcw==")
        );
        assert!(!push.describe().contains("s3cret"));
    }

    #[tokio::test]
    async fn a_failed_push_keeps_the_samples_and_counts() {
        // Nothing listens there: the push fails fast and keeps every sample.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let push = push_to(&format!("http://127.0.0.1:{port}"));
        let sample = Sample {
            taken_unix_millis: 1_800_000_000_000,
            load: Some([1.0, 1.0, 1.0]),
            ..Sample::default()
        };
        push.enqueue(None, &sample);
        push.enqueue(Some(&sample), &sample);
        let error = push.push_round().await.expect_err("nothing listens");
        assert!(error.contains("no answer from InfluxDB"), "{error}");
        let figures = push.figures();
        assert_eq!(figures.waiting_samples, 2);
        assert_eq!(figures.failed_pushes, 1);
        assert_eq!(figures.pushed_samples, 0);
        assert!(!error.contains("s3cret"));
    }
}
