//! `bramble kv ...` and `bramble cluster status|snapshot`: the Raft catalog from the
//! command line. Any member answers; it forwards to the leader where needed.

use anyhow::{Result, bail};
use bramble_meta::api::{
    ClusterStatus, Consistency, ListRequest, ListResponse, METHOD_LIST, METHOD_READ,
    METHOD_SNAPSHOT_NOW, METHOD_STATUS, METHOD_WRITE, ReadRequest, StatusRequest, WriteRequest,
};
use bramble_meta::types::{Command, CommandResult, VersionedValue};

use crate::cli::{ClusterCommand, GlobalOptions, KvCommand};
use crate::client::ClusterClient;
use crate::output;

/// Values are shown as text when they are UTF-8, as hex otherwise.
fn display_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "0x{}",
            value
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        ),
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn report_write(result: CommandResult, key: &str, json: bool) -> Result<()> {
    if json {
        return output::print_json(
            &serde_json::json!({ "key": key, "result": format!("{result:?}"), "version": match &result {
                CommandResult::Written { version } => Some(*version),
                _ => None,
            }}),
        );
    }
    match result {
        CommandResult::Written { version } => println!("{key} written at version {version}"),
        CommandResult::Deleted { existed: true } => println!("{key} removed"),
        CommandResult::Deleted { existed: false } => println!("{key} did not exist"),
        CommandResult::VersionMismatch { current_version } => {
            bail!(
                "{key} was not written: its version is {current_version}, not the one given with --if-version"
            )
        }
        CommandResult::Rejected { reason } => bail!("{key} was not written: {reason}"),
        CommandResult::Nothing => println!("nothing to do"),
    }
    Ok(())
}

pub async fn kv(global: &GlobalOptions, command: &KvCommand) -> Result<()> {
    let client = ClusterClient::resolve(global)?;
    match command {
        KvCommand::Put {
            key,
            value,
            if_version,
            output,
        } => {
            let command = match if_version {
                Some(expected_version) => Command::PutIfVersion {
                    key: key.clone(),
                    value: value.as_bytes().to_vec(),
                    expected_version: *expected_version,
                },
                None => Command::Put {
                    key: key.clone(),
                    value: value.as_bytes().to_vec(),
                },
            };
            let (_, result): (_, CommandResult) = client
                .call_any(
                    METHOD_WRITE,
                    &WriteRequest {
                        command,
                        forwarded: false,
                    },
                )
                .await?;
            report_write(result, key, output.json)
        }
        KvCommand::Remove { key, output } => {
            let command = Command::Delete { key: key.clone() };
            let (_, result): (_, CommandResult) = client
                .call_any(
                    METHOD_WRITE,
                    &WriteRequest {
                        command,
                        forwarded: false,
                    },
                )
                .await?;
            report_write(result, key, output.json)
        }
        KvCommand::Get { key, stale, output } => {
            let request = ReadRequest {
                key: key.clone(),
                consistency: consistency(*stale),
                forwarded: false,
            };
            let (_, value): (_, Option<VersionedValue>) =
                client.call_any(METHOD_READ, &request).await?;
            let Some(value) = value else {
                if output.json {
                    output::print_json(&serde_json::Value::Null)?;
                }
                bail!("{key} does not exist");
            };
            if output.json {
                return output::print_json(&serde_json::json!({
                    "key": key, "value": display_value(&value.value), "version": value.version,
                }));
            }
            println!("{}", display_value(&value.value));
            Ok(())
        }
        KvCommand::List {
            prefix,
            stale,
            limit,
            output,
        } => {
            let request = ListRequest {
                prefix: prefix.clone(),
                limit: *limit,
                consistency: consistency(*stale),
                forwarded: false,
            };
            let (_, entries): (_, ListResponse) = client.call_any(METHOD_LIST, &request).await?;
            if output.json {
                let rows: Vec<_> = entries
                    .iter()
                    .map(|(key, value)| serde_json::json!({ "key": key, "value": display_value(&value.value), "version": value.version }))
                    .collect();
                return output::print_json(&rows);
            }
            let mut table = output::table(&["KEY", "VERSION", "VALUE"]);
            for (key, value) in &entries {
                let mut shown = display_value(&value.value);
                if shown.len() > 60 {
                    shown = format!("{}…", shown.chars().take(60).collect::<String>());
                }
                table.add_row(vec![key.clone(), value.version.to_string(), shown]);
            }
            println!("{table}");
            println!("{} key(s)", entries.len());
            Ok(())
        }
    }
}

pub async fn cluster(global: &GlobalOptions, command: &ClusterCommand) -> Result<()> {
    let client = ClusterClient::resolve(global)?;
    match command {
        ClusterCommand::Snapshot => {
            let (address, ()) = client.call_any(METHOD_SNAPSHOT_NOW, &()).await?;
            println!("snapshot taken on {address}");
            Ok(())
        }
        ClusterCommand::Status(flags) => {
            let (_, status): (_, ClusterStatus) = client
                .call_any(METHOD_STATUS, &StatusRequest { forwarded: false })
                .await?;
            if flags.json {
                return output::print_json(&status);
            }
            println!(
                "leader: {}   term: {}   last log index: {}   commit index: {}   snapshot: {}   keys: {}   (reported by {}, {})",
                status.leader.as_deref().unwrap_or("none (no quorum?)"),
                status.term,
                status.last_log_index,
                status.commit_index,
                status
                    .snapshot_index
                    .map(|index| index.to_string())
                    .unwrap_or_else(|| "-".into()),
                status.keys,
                status.reporter,
                status.role,
            );
            let mut table = output::table(&["NODE", "ROLE", "STATE", "ADDRESS", "MATCHED", "LAG"]);
            for member in &status.members {
                let role = if Some(&member.name) == status.leader.as_ref() {
                    "leader"
                } else if member.voter {
                    "voter"
                } else {
                    "learner"
                };
                table.add_row(vec![
                    member.name.clone(),
                    role.to_string(),
                    member.state.clone(),
                    member.addr.clone(),
                    member
                        .matched_index
                        .map(|index| index.to_string())
                        .unwrap_or_else(|| "-".into()),
                    member
                        .lag
                        .map(|lag| lag.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{table}");
            Ok(())
        }
    }
}
