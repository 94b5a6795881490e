//! The stats page in HTML: one table per balancer, each backend's status in colour. Every
//! string from the data is escaped; CSS classes come from a fixed list.

use std::fmt::Write as _;

use bramble_http::html::escape_html;

use super::REFRESH_SECONDS;
use super::view::BalancerView;

/// CSS class and label of a backend status. The class comes from this fixed list, never
/// from the data, and unknown statuses show grey.
fn status_style(status: &str) -> (&'static str, &'static str) {
    match status {
        "up" => ("up", "UP"),
        "down" => ("down", "DOWN"),
        "ejected" => ("down", "EJECTED"),
        "drain" => ("drain", "DRAIN"),
        "disabled" => ("disabled", "DISABLED"),
        _ => ("disabled", "UNKNOWN"),
    }
}

const STYLE: &str = "\
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #999; padding: 0.25em 0.6em; text-align: right; }
th { background: #ddd; }
td.text { text-align: left; }
td.status { text-align: center; font-weight: bold; }
td.status.up { background: #4caf50; color: #fff; }
td.status.down { background: #e53935; color: #fff; }
td.status.drain { background: #fb8c00; color: #fff; }
td.status.disabled { background: #9e9e9e; color: #fff; }
p.summary { color: #444; }
";

pub(super) fn render_html(balancers: &[BalancerView]) -> String {
    let mut page = String::with_capacity(4096);
    // Writing to a String cannot fail, so the results of write! are ignored throughout.
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>Bramble statistics</title><style>\n{STYLE}</style></head>\n<body>\n\
         <h1>Bramble load balancer statistics</h1>\n\
         <p class=\"summary\">Refreshes every {REFRESH_SECONDS} s. \
         Also as <a href=\"/stats.json\">JSON</a> and <a href=\"/metrics\">Prometheus metrics</a>.</p>\n"
    );
    if balancers.is_empty() {
        page.push_str("<p>No balancers run on this node.</p>\n");
    }
    for balancer in balancers {
        let vip_holder = balancer.vip_holder.as_deref().unwrap_or("unknown");
        let _ = write!(
            page,
            "<h2>{name}</h2>\n<p class=\"summary\">listen {listen} · mode {mode} · balance {balance} · \
             VIP holder {vip_holder} · frontend: {sessions} sessions, {rate:.1}/s, {errors} errors</p>\n",
            name = escape_html(&balancer.name),
            listen = escape_html(&balancer.listen),
            mode = escape_html(&balancer.mode),
            balance = escape_html(&balancer.balance),
            vip_holder = escape_html(vip_holder),
            sessions = balancer.frontend_sessions,
            rate = balancer.frontend_rate_per_second,
            errors = balancer.frontend_errors,
        );
        page.push_str(
            "<table>\n<tr><th>Backend</th><th>Address</th><th>Status</th><th>Current sessions</th>\
             <th>Total sessions</th><th>Rate /s</th><th>Errors</th><th>Last check</th>\
             <th>Weight (effective)</th></tr>\n",
        );
        for backend in &balancer.backends {
            let stats = &backend.stats;
            let (class, label) = status_style(&stats.status);
            let _ = writeln!(
                page,
                "<tr id=\"backend-{id}\"><td class=\"text\">{name}</td><td class=\"text\">{address}</td>\
                 <td class=\"status {class}\">{label}</td><td>{active}</td><td>{total}</td>\
                 <td>{rate:.1}</td><td>{errors}</td><td class=\"text\">{last_check}</td>\
                 <td>{weight} ({effective})</td></tr>",
                id = escape_html(&stats.name),
                name = escape_html(&stats.name),
                address = escape_html(&stats.addr),
                active = stats.active_sessions,
                total = stats.total_sessions,
                rate = backend.rate_per_second,
                errors = stats.errors,
                last_check = escape_html(&stats.last_check),
                weight = stats.weight,
                effective = stats.effective_weight,
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("</body></html>\n");
    page
}
