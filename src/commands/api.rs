//! `bramble token ...` (API tokens, bramble-api's `api.token_*` calls) and `bramble api`
//! (where each node serves `/api/v1`, and the cluster CA for clients to verify it).

use anyhow::{Context, Result, anyhow};
use bramble_api::service::{METHOD_TOKEN_CREATE, METHOD_TOKEN_LIST, METHOD_TOKEN_REMOVE};
use bramble_api::tokens::{CreateToken, CreatedToken, TokenInfo};
use bramble_cluster::{NodeState, NodeView};
use bramble_platform::service::METHOD_SUBSYSTEMS;
use bramble_util::files::{self, Visibility};
use serde::Serialize;

use crate::cli::{ApiArgs, GlobalOptions, TokenCommand};
use crate::output;

pub async fn token(global: &GlobalOptions, command: &TokenCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        TokenCommand::Create {
            name,
            expires,
            output: flag,
        } => {
            let request = CreateToken {
                name: name.clone(),
                expires_in_seconds: *expires,
            };
            let (_, created): (_, CreatedToken) =
                client.call_any(METHOD_TOKEN_CREATE, &request).await?;
            if flag.json {
                return output::print_json(&created);
            }
            println!(
                "API token {} (shown once; keep it safe, it acts as the cluster's administrator):",
                created.info.name
            );
            println!("  {}", created.token);
            if let Some(expires) = created.info.expires_unix_ms {
                println!("  expires {}", output::time_until(expires));
            }
            println!(
                "  for example: curl --cacert ca.pem -H \"Authorization: Bearer $TOKEN\" https://<node>:9443/api/v1/nodes"
            );
            println!("  (bramble api --write-ca ca.pem writes the CA; bramble api lists the URLs)");
            Ok(())
        }
        TokenCommand::Ls(flag) => {
            let (_, tokens): (_, Vec<TokenInfo>) = client.call_any(METHOD_TOKEN_LIST, &()).await?;
            if flag.json {
                return output::print_json(&tokens);
            }
            if tokens.is_empty() {
                println!("no API tokens (bramble token create <name>)");
                return Ok(());
            }
            let mut table = output::table(&["name", "created by", "created", "expires"]);
            for token in &tokens {
                table.add_row(vec![
                    token.name.clone(),
                    token.created_by.clone(),
                    output::age(token.created_unix_ms),
                    match token.expires_unix_ms {
                        None => "never".to_string(),
                        Some(_) if token.expired => "expired".to_string(),
                        Some(expires) => output::time_until(expires),
                    },
                ]);
            }
            println!("{table}");
            Ok(())
        }
        TokenCommand::Rm { name } => {
            let (_, ()): (_, ()) = client.call_any(METHOD_TOKEN_REMOVE, name).await?;
            println!("token {name} revoked; requests that carry it are refused from now on");
            Ok(())
        }
    }
}

/// A row of `bramble api`.
#[derive(Serialize)]
struct NodeApi {
    node: String,
    /// None: switched off, not bound, or the node did not answer (`problem` says which).
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

pub async fn show(global: &GlobalOptions, args: &ApiArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    if let Some(path) = &args.write_ca {
        files::write_atomic(path, client.ca_pem().as_bytes(), Visibility::Public)
            .with_context(|| format!("writing the cluster CA to {}", path.display()))?;
        if !args.output.json {
            println!("wrote the cluster CA's certificate to {}", path.display());
        }
    }
    let (_, nodes): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    let mut rows = Vec::new();
    for node in nodes {
        if !matches!(node.state, NodeState::Alive | NodeState::Suspect) {
            rows.push(NodeApi {
                node: node.name,
                url: None,
                problem: Some(format!("the node is {}", node.state.as_str())),
            });
            continue;
        }
        let row = match client
            .call_at::<_, Vec<(String, String)>>(node.addr, METHOD_SUBSYSTEMS, &())
            .await
        {
            Ok(statuses) => api_url(&statuses),
            Err(error) => Err(format!("did not answer: {error}")),
        };
        rows.push(match row {
            Ok(url) => NodeApi {
                node: node.name,
                url: Some(url),
                problem: None,
            },
            Err(problem) => NodeApi {
                node: node.name,
                url: None,
                problem: Some(problem),
            },
        });
    }
    if args.output.json {
        return output::print_json(&rows);
    }
    let mut table = output::table(&["node", "API"]);
    for row in &rows {
        table.add_row(vec![
            row.node.clone(),
            row.url
                .clone()
                .or_else(|| row.problem.clone())
                .unwrap_or_default(),
        ]);
    }
    println!("{table}");
    let example = rows
        .iter()
        .find_map(|row| row.url.clone())
        .ok_or_else(|| anyhow!("no node serves the HTTP API (see <data-dir>/api.toml)"))?;
    println!("Every request needs a token (bramble token create <name>) or an admin certificate:");
    println!("  curl --cacert ca.pem -H \"Authorization: Bearer $TOKEN\" {example}/nodes");
    if args.write_ca.is_none() {
        println!(
            "(bramble api --write-ca ca.pem writes the cluster CA that verifies these servers)"
        );
    }
    Ok(())
}

/// The API's URL from a node's subsystem statuses (`agent.subsystems`).
fn api_url(statuses: &[(String, String)]) -> Result<String, String> {
    let (_, status) = statuses
        .iter()
        .find(|(name, _)| name == "api")
        .ok_or_else(|| "the agent has no API (an older version)".to_string())?;
    let status: serde_json::Value =
        serde_json::from_str(status).map_err(|error| format!("unreadable status: {error}"))?;
    if status["enabled"] == serde_json::Value::Bool(false) {
        return Err("switched off in api.toml".to_string());
    }
    status["url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "not serving (the address could not be bound; see its log)".to_string())
}
