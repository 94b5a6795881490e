//! The alert webhook (`alert_webhook` in `monitor.toml`): a JSON POST when an alert fires
//! and when it resolves, sent by exactly one node of the cluster.
//!
//! Every node with a webhook configured runs the `monitor-alert-webhook` worker, and they
//! contend for the platform lease `monitor/alerts` ([`HeldLease`]); only the holder acts.
//! Every two seconds it gathers the cluster's alerts ([`crate::gather`]) and compares them
//! with the alerts the webhook has been told are firing. That list lives in the catalog
//! (`monitor/alerts/notified`), written after each delivery and fenced by the lease's grant
//! version, so a node that takes the lease over carries on where the last holder stopped
//! instead of repeating every firing alert or missing a resolution. An alert missing from
//! a gather resolves only if one of the nodes that reported it answered: a node that is
//! down does not resolve its own full disk by falling silent.
//!
//! Each message is tried at most three times (0.5 s, then 1 s apart), each attempt bounded
//! (1 s to connect, 2.5 s in all), and only while the lease has time enough left for the
//! attempt; a message still undelivered is dropped, counted and logged, and the alert is
//! recorded as told so the worker does not retry forever. Delivery is at least once: a
//! holder that dies between a POST and its catalog write leaves the next holder to send it
//! again.
//!
//! The body (a `text` line too, so chat webhooks that expect one show it):
//!
//! ```json
//! {"status": "firing", "kind": "node_down", "node": "n3", "subject": "",
//!  "message": "n3 (10.0.0.3:7946) is down: no heartbeat for 1.2 s",
//!  "since_unix_ms": 1800000000000, "reported_by": ["n1", "n2"], "sender": "n1",
//!  "sent_unix_ms": 1800000002000, "text": "[FIRING] node_down n3: n3 (...) is down ..."}
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult, Condition, Operation};
use bramble_platform::lease_holder::HeldLease;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::alerts::Alert;
use crate::http_post::{self, HttpTarget, Timeouts};
use crate::service::AlertsResponse;
use crate::subsystem::Monitor;

/// The lease only the sending node holds.
pub const LEASE: &str = "monitor/alerts";
/// The catalog key of the alerts the webhook has been told are firing.
pub const NOTIFIED_KEY: &str = "monitor/alerts/notified";
/// Long enough to cover one attempt with room to spare; a dead holder is replaced after it.
const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the holder compares the cluster's alerts with what it has told.
const ROUND_EVERY: Duration = Duration::from_secs(2);
const ATTEMPTS: u32 = 3;
const FIRST_RETRY_AFTER: Duration = Duration::from_millis(500);
const ATTEMPT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    total: Duration::from_millis(2500),
};
/// An attempt starts only with this much of the lease left, so it ends while this node
/// still holds it.
const HOLD_NEEDED: Duration = Duration::from_secs(3);
/// Told alerts kept at most (the oldest go beyond).
const MAX_NOTIFIED: usize = 1024;

/// Whether an alert began or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// What the webhook has been told, as kept in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notified {
    pub firing: Vec<Alert>,
}

/// The messages a gather calls for.
#[derive(Debug, Clone, PartialEq)]
pub struct Events {
    pub firing: Vec<Alert>,
    pub resolved: Vec<Alert>,
}

/// Compares the told alerts with a gather: new alerts fire; told alerts that are gone
/// resolve only if a node that reported them answered this time.
pub fn events(notified: &Notified, view: &AlertsResponse) -> Events {
    let current: BTreeSet<_> = view.alerts.iter().map(Alert::key).collect();
    let told: BTreeSet<_> = notified.firing.iter().map(Alert::key).collect();
    let silent: BTreeSet<&str> = view
        .unanswered
        .iter()
        .map(|unanswered| unanswered.node.as_str())
        .collect();
    Events {
        firing: view
            .alerts
            .iter()
            .filter(|alert| !told.contains(&alert.key()))
            .cloned()
            .collect(),
        resolved: notified
            .firing
            .iter()
            .filter(|alert| !current.contains(&alert.key()))
            .filter(|alert| {
                alert
                    .reported_by
                    .iter()
                    .any(|reporter| !silent.contains(reporter.as_str()))
            })
            .cloned()
            .collect(),
    }
}

/// The JSON body for one message.
pub fn payload(status: Status, alert: &Alert, sender: &str, now_ms: u64) -> serde_json::Value {
    let about = if alert.subject.is_empty() {
        alert.node.clone()
    } else {
        format!("{} {}", alert.node, alert.subject)
    };
    let mut body = json!({
        "status": status.as_str(),
        "kind": alert.kind,
        "node": alert.node,
        "subject": alert.subject,
        "message": alert.message,
        "since_unix_ms": alert.since_unix_ms,
        "reported_by": alert.reported_by,
        "sender": sender,
        "sent_unix_ms": now_ms,
        "text": format!(
            "[{}] {} {about}: {}",
            status.as_str().to_uppercase(),
            alert.kind,
            alert.message
        ),
    });
    if status == Status::Resolved {
        body["resolved_unix_ms"] = json!(now_ms);
    }
    body
}

/// What the status shows of the webhook.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookFigures {
    /// Whether this node holds the lease (and so is the one that sends).
    pub sending: bool,
    pub delivered: u64,
    /// Messages dropped after every attempt failed.
    pub undelivered: u64,
    pub last_error: Option<String>,
}

/// This node's side of the webhook.
pub struct Webhook {
    target: HttpTarget,
    figures: Mutex<WebhookFigures>,
}

impl Webhook {
    pub fn new(target: HttpTarget) -> Webhook {
        Webhook {
            target,
            figures: Mutex::new(WebhookFigures::default()),
        }
    }

    /// Scheme, host and port (the path may be a secret).
    pub fn describe(&self) -> String {
        self.target.to_string()
    }

    pub fn figures(&self) -> WebhookFigures {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WebhookFigures> {
        self.figures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The worker `monitor-alert-webhook`: takes part in the lease until `shutdown`, and
    /// while holding it sends what changed. Releases the lease as it ends.
    pub async fn run(
        self: Arc<Self>,
        monitor: Arc<Monitor>,
        meta: Arc<Meta>,
        worker: bramble_util::WorkerContext,
    ) {
        let mut shutdown = worker.shutdown();
        let mut lease = HeldLease::new(meta.clone(), LEASE, monitor.node(), LEASE_TTL);
        // Loaded from the catalog each time this node takes the lease.
        let mut notified: Option<Notified> = None;
        let mut next_step = Instant::now();
        let mut next_round = Instant::now();
        loop {
            if Instant::now() >= next_step {
                next_step = Instant::now() + lease.step_every();
                let holding = lease.step().await.is_some();
                if holding != self.lock().sending {
                    if holding {
                        info!(webhook = %self.target, "this node sends the cluster's alerts to the webhook");
                    }
                    self.lock().sending = holding;
                    worker.set_progress(if holding { "sending" } else { "standby" });
                }
                if !holding {
                    notified = None;
                }
            }
            if lease.hold().is_some() && Instant::now() >= next_round {
                next_round = Instant::now() + ROUND_EVERY;
                worker.set_state(bramble_util::WorkerState::Busy);
                if let Err(error) = self.round(&monitor, &meta, &mut lease, &mut notified).await {
                    // Read it again from the catalog next time: what was recorded is the
                    // truth, not what this node believed.
                    notified = None;
                    worker.report_error(&error);
                }
                worker.set_state(bramble_util::WorkerState::Idle);
            }
            let wake = if lease.hold().is_some() {
                next_step.min(next_round)
            } else {
                next_step
            };
            tokio::select! {
                _ = shutdown.wait() => {
                    if lease.hold().is_some() {
                        lease.release().await;
                    }
                    self.lock().sending = false;
                    return;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
    }

    /// One comparison and the messages it calls for.
    async fn round(
        &self,
        monitor: &Monitor,
        meta: &Meta,
        lease: &mut HeldLease,
        notified: &mut Option<Notified>,
    ) -> Result<(), String> {
        let told = match notified {
            Some(told) => told,
            None => notified.insert(load_notified(meta).await?),
        };
        let view = crate::gather::cluster_alerts(monitor).await;
        let events = events(told, &view);
        let messages = events
            .firing
            .into_iter()
            .map(|alert| (Status::Firing, alert))
            .chain(
                events
                    .resolved
                    .into_iter()
                    .map(|alert| (Status::Resolved, alert)),
            );
        for (status, alert) in messages {
            let body = payload(
                status,
                &alert,
                monitor.node(),
                bramble_util::time::unix_millis(),
            );
            let body = Bytes::from(serde_json::to_vec(&body).map_err(|error| error.to_string())?);
            match self.deliver(lease, body).await {
                Ok(()) => {
                    self.lock().delivered += 1;
                    info!(status = status.as_str(), kind = %alert.kind, node = %alert.node, subject = %alert.subject, "alert sent to the webhook");
                }
                Err(Undelivered::LostLease) => {
                    return Err(
                        "lost the webhook lease while sending; the next holder carries on"
                            .to_string(),
                    );
                }
                Err(Undelivered::Failed(error)) => {
                    let mut figures = self.lock();
                    figures.undelivered += 1;
                    figures.last_error = Some(error.clone());
                    drop(figures);
                    warn!(webhook = %self.target, status = status.as_str(), kind = %alert.kind, node = %alert.node, subject = %alert.subject, %error, "could not deliver an alert to the webhook after {ATTEMPTS} attempts; dropped");
                }
            }
            let key = alert.key();
            match status {
                Status::Firing => {
                    told.firing.push(alert);
                    if told.firing.len() > MAX_NOTIFIED {
                        told.firing.sort_by_key(|alert| alert.since_unix_ms);
                        let excess = told.firing.len() - MAX_NOTIFIED;
                        told.firing.drain(..excess);
                    }
                }
                Status::Resolved => told.firing.retain(|kept| kept.key() != key),
            }
            let version = lease
                .grant_version()
                .ok_or("lost the webhook lease before recording a delivery")?;
            save_notified(meta, version, told).await?;
        }
        Ok(())
    }

    /// Up to [`ATTEMPTS`] POSTs, each only while the lease has [`HOLD_NEEDED`] left.
    async fn deliver(&self, lease: &mut HeldLease, body: Bytes) -> Result<(), Undelivered> {
        let mut wait = FIRST_RETRY_AFTER;
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            let left = |lease: &HeldLease| {
                lease
                    .hold()
                    .map(|hold| hold.until.saturating_duration_since(Instant::now()))
            };
            if left(lease).is_none_or(|left| left < HOLD_NEEDED) {
                lease.step().await;
                if left(lease).is_none_or(|left| left < HOLD_NEEDED) {
                    return Err(Undelivered::LostLease);
                }
            }
            let outcome = http_post::post(
                &self.target,
                self.target.path(),
                "application/json",
                None,
                body.clone(),
                ATTEMPT_TIMEOUTS,
            )
            .await;
            match outcome {
                Ok(answer) if answer.is_success() => return Ok(()),
                Ok(answer) => {
                    last_error = format!("the webhook answered {}: {}", answer.status, answer.body);
                    // A refusal other than "later" will not change on a retry.
                    if (400..500).contains(&answer.status) && ![408, 429].contains(&answer.status) {
                        break;
                    }
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        Err(Undelivered::Failed(last_error))
    }
}

enum Undelivered {
    /// This node no longer (or not long enough) holds the lease: it must not send.
    LostLease,
    Failed(String),
}

async fn load_notified(meta: &Meta) -> Result<Notified, String> {
    let value = meta
        .read(NOTIFIED_KEY, Consistency::Linearizable, false)
        .await
        .map_err(|error| format!("reading {NOTIFIED_KEY}: {error}"))?;
    let Some(value) = value else {
        return Ok(Notified::default());
    };
    match serde_json::from_slice::<Notified>(&value.value) {
        Ok(notified) => Ok(notified),
        Err(error) => {
            // Starting afresh repeats the firing alerts once, which beats never sending.
            warn!(%error, "{NOTIFIED_KEY} is unreadable; starting from an empty list");
            Ok(Notified::default())
        }
    }
}

async fn save_notified(meta: &Meta, grant_version: u64, notified: &Notified) -> Result<(), String> {
    let value = serde_json::to_vec(notified).map_err(|error| error.to_string())?;
    let command = Command::Batch {
        conditions: vec![Condition {
            key: bramble_meta::lease::lease_key(LEASE),
            version: grant_version,
        }],
        operations: vec![Operation::Put {
            key: NOTIFIED_KEY.to_string(),
            value,
        }],
    };
    match meta.write(command, false).await {
        Ok(CommandResult::BatchApplied { .. }) => Ok(()),
        Ok(CommandResult::ConditionFailed { .. }) => {
            Err("the webhook lease moved on; this node stops sending".to_string())
        }
        Ok(other) => Err(format!("recording the told alerts: {other:?}")),
        Err(error) => Err(format!("recording the told alerts: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Unanswered;

    fn alert(kind: &str, node: &str, reporters: &[&str]) -> Alert {
        Alert {
            kind: kind.into(),
            node: node.into(),
            subject: String::new(),
            since_unix_ms: 1_800_000_000_000,
            message: format!("{node} {kind}"),
            reported_by: reporters.iter().map(|name| name.to_string()).collect(),
        }
    }

    fn view(alerts: Vec<Alert>, silent: &[&str]) -> AlertsResponse {
        AlertsResponse {
            asked: "n1".into(),
            alerts,
            unanswered: silent
                .iter()
                .map(|node| Unanswered {
                    node: node.to_string(),
                    reason: "down: not asked".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn new_alerts_fire_once_and_gone_ones_resolve_only_when_their_reporters_answer() {
        let down = alert("node_down", "n3", &["n1", "n2"]);
        let hot = alert("over_temperature", "n3", &["n3"]);
        let mut told = Notified::default();

        let first = events(&told, &view(vec![down.clone()], &["n3"]));
        assert_eq!(first.firing, vec![down.clone()]);
        assert!(first.resolved.is_empty());
        told.firing.push(down.clone());
        told.firing.push(hot.clone());
        // The same view again: nothing new to say.
        let again = events(&told, &view(vec![down.clone()], &["n3"]));
        assert!(again.firing.is_empty());
        // n3's own alert is missing only because n3 is down: not resolved.
        assert!(again.resolved.is_empty());
        // n3 is back and answers without either alert: both resolve.
        let back = events(&told, &view(Vec::new(), &[]));
        assert!(back.firing.is_empty());
        assert_eq!(back.resolved, vec![down, hot]);
    }

    #[test]
    fn the_payload_says_what_and_when() {
        let down = alert("node_down", "n3", &["n1"]);
        let body = payload(Status::Firing, &down, "n1", 1_800_000_002_000);
        assert_eq!(body["status"], "firing");
        assert_eq!(body["kind"], "node_down");
        assert_eq!(body["node"], "n3");
        assert_eq!(body["sender"], "n1");
        assert_eq!(body["text"], "[FIRING] node_down n3: n3 node_down");
        assert!(body.get("resolved_unix_ms").is_none());
        let body = payload(Status::Resolved, &down, "n2", 1_800_000_009_000);
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["resolved_unix_ms"], 1_800_000_009_000u64);
    }
}
