//! The stats in the Prometheus text exposition format (0.0.4), for scraping.

use std::fmt::Write as _;

use super::view::{BackendView, BalancerView};

/// Escapes a Prometheus label value (backslash, double quote and newline).
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The Prometheus text exposition format 0.0.4: each family's HELP and TYPE, then all its
/// samples together (the format requires a family's samples to be contiguous).
pub(super) fn render_metrics(balancers: &[BalancerView]) -> String {
    type BackendValue = fn(&BackendView) -> u64;
    const BACKEND_FAMILIES: [(&str, &str, &str, BackendValue); 5] = [
        (
            "bramble_lb_backend_up",
            "gauge",
            "1 when the backend passes its health checks and is not ejected (up or draining).",
            |backend| u64::from(matches!(backend.stats.status.as_str(), "up" | "drain")),
        ),
        (
            "bramble_lb_backend_active_sessions",
            "gauge",
            "Sessions (HTTP requests in flight or TCP connections) open to the backend now.",
            |backend| backend.stats.active_sessions as u64,
        ),
        (
            "bramble_lb_backend_sessions_total",
            "counter",
            "Sessions sent to the backend since the balancer started.",
            |backend| backend.stats.total_sessions,
        ),
        (
            "bramble_lb_backend_errors_total",
            "counter",
            "Connection and response errors with the backend since the balancer started.",
            |backend| backend.stats.errors,
        ),
        (
            "bramble_lb_backend_effective_weight",
            "gauge",
            "The backend's weight now (lower than configured during slow start).",
            |backend| u64::from(backend.stats.effective_weight),
        ),
    ];
    type FrontendValue = fn(&BalancerView) -> u64;
    const FRONTEND_FAMILIES: [(&str, &str, &str, FrontendValue); 2] = [
        (
            "bramble_lb_frontend_sessions_total",
            "counter",
            "Requests (HTTP) or connections (TCP) accepted from clients since the balancer started.",
            |balancer| balancer.frontend_sessions,
        ),
        (
            "bramble_lb_frontend_errors_total",
            "counter",
            "Requests the balancer itself answered with an error since it started.",
            |balancer| balancer.frontend_errors,
        ),
    ];
    const STATES: [&str; 5] = ["up", "down", "ejected", "drain", "disabled"];

    let mut text = String::with_capacity(4096);
    for (name, kind, help, value_of) in FRONTEND_FAMILIES {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for balancer in balancers {
            let _ = writeln!(
                text,
                "{name}{{balancer=\"{}\"}} {}",
                escape_label(&balancer.name),
                value_of(balancer)
            );
        }
    }
    for (name, kind, help, value_of) in BACKEND_FAMILIES {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for balancer in balancers {
            for backend in &balancer.backends {
                let _ = writeln!(
                    text,
                    "{name}{{balancer=\"{}\",backend=\"{}\"}} {}",
                    escape_label(&balancer.name),
                    escape_label(&backend.stats.name),
                    value_of(backend)
                );
            }
        }
    }
    let name = "bramble_lb_backend_state";
    let _ = writeln!(
        text,
        "# HELP {name} 1 for the backend's current state (up, down, ejected, drain, disabled), 0 for the others.\n# TYPE {name} gauge"
    );
    for balancer in balancers {
        for backend in &balancer.backends {
            for state in STATES {
                let _ = writeln!(
                    text,
                    "{name}{{balancer=\"{}\",backend=\"{}\",state=\"{state}\"}} {}",
                    escape_label(&balancer.name),
                    escape_label(&backend.stats.name),
                    u64::from(backend.stats.status == state)
                );
            }
        }
    }
    text
}
