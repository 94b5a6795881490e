//! `bramble alerts`: the cluster's active alerts (`monitor.alerts` for the cluster, asked
//! of any member, which asks the others), as a table or `--json`; and the lines `bramble
//! nodes` prints under its table.

use anyhow::{Context as _, Result};
use bramble_monitor::alerts::Alert;
use bramble_monitor::service::{AlertScope, AlertsResponse, METHOD_ALERTS};

use crate::cli::{GlobalOptions, JsonFlag};
use crate::client::ClusterClient;
use crate::output;

pub async fn run(global: &GlobalOptions, args: &JsonFlag) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let answer = ask(&client).await?;
    if args.json {
        return output::print_json(&answer);
    }
    let now = bramble_util::time::unix_millis();
    if answer.alerts.is_empty() {
        println!("No active alerts (asked {}).", answer.asked);
    } else {
        let mut table = output::table(&["KIND", "NODE", "SUBJECT", "SINCE", "MESSAGE"]);
        for alert in &answer.alerts {
            table.add_row(vec![
                alert.kind.clone(),
                alert.node.clone(),
                if alert.subject.is_empty() {
                    "-".to_string()
                } else {
                    alert.subject.clone()
                },
                age(now, alert.since_unix_ms),
                alert.message.clone(),
            ]);
        }
        println!("{table}");
        println!(
            "{} active alert{} (asked {}).",
            answer.alerts.len(),
            if answer.alerts.len() == 1 { "" } else { "s" },
            answer.asked
        );
    }
    print_unanswered(&answer);
    Ok(())
}

async fn ask(client: &ClusterClient) -> Result<AlertsResponse> {
    let (_, answer) = client
        .call_any(METHOD_ALERTS, &AlertScope::Cluster)
        .await
        .context("asking for the cluster's alerts")?;
    Ok(answer)
}

fn print_unanswered(answer: &AlertsResponse) {
    for missing in &answer.unanswered {
        println!(
            "Not included: {}'s own conditions ({}).",
            missing.node, missing.reason
        );
    }
}

/// For `bramble nodes`: the alerts under the node table, one line each.
pub async fn print_under_nodes(client: &ClusterClient) {
    let answer = match ask(client).await {
        Ok(answer) => answer,
        Err(error) => {
            println!("Alerts: unavailable ({error:#})");
            return;
        }
    };
    if answer.alerts.is_empty() {
        println!("No active alerts.");
    } else {
        let now = bramble_util::time::unix_millis();
        println!("Alerts ({}):", answer.alerts.len());
        for alert in &answer.alerts {
            println!("  {}", line(alert, now));
        }
    }
    print_unanswered(&answer);
}

/// One alert as a line for people (`bramble alerts`, `bramble nodes`, `bramble top`).
pub(crate) fn line(alert: &Alert, now_ms: u64) -> String {
    format!(
        "{} {}{}: {} (since {})",
        alert.kind,
        alert.node,
        if alert.subject.is_empty() {
            String::new()
        } else {
            format!(" {}", alert.subject)
        },
        alert.message,
        age(now_ms, alert.since_unix_ms)
    )
}

/// How long ago, for people: "42 s ago", "3 min ago", "2 h ago", "4 d ago".
fn age(now_ms: u64, since_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(since_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        7200..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_lines_read_well() {
        assert_eq!(age(10_000, 10_000), "0 s ago");
        assert_eq!(age(100_000, 10_000), "90 s ago");
        assert_eq!(age(1_000_000, 10_000), "16 min ago");
        assert_eq!(age(20_000_000, 0), "5 h ago");
        assert_eq!(age(900_000_000, 0), "10 d ago");
        // A clock behind the node's is not a negative age.
        assert_eq!(age(0, 10_000), "0 s ago");
        let alert = Alert {
            kind: "filesystem_full".into(),
            node: "n2".into(),
            subject: "/var".into(),
            since_unix_ms: 0,
            message: "n2's /var is 93.0 % full".into(),
            reported_by: vec!["n2".into()],
        };
        assert_eq!(
            line(&alert, 30_000),
            "filesystem_full n2 /var: n2's /var is 93.0 % full (since 30 s ago)"
        );
    }
}
