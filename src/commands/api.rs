//! `bramble token ...` (API tokens, bramble-api's `api.token_*` calls), `bramble api`
//! (where each node serves `/api/v1`, and the cluster CA for clients to verify it) and
//! `bramble dashboard` (the page on the same servers; its password).

use anyhow::{Context, Result, anyhow};
use bramble_api::dashboard::password::{SetPassword, validate_new_password};
use bramble_api::service::{
    METHOD_DASHBOARD_PASSWORD_SET, METHOD_TOKEN_CREATE, METHOD_TOKEN_LIST, METHOD_TOKEN_REMOVE,
};
use bramble_api::tokens::{CreateToken, CreatedToken, TokenInfo};
use bramble_cluster::{NodeState, NodeView};
use bramble_platform::service::METHOD_SUBSYSTEMS;
use bramble_util::files::{self, Visibility};
use serde::Serialize;

use crate::cli::{ApiArgs, DashboardArgs, GlobalOptions, TokenCommand};
use crate::client::ClusterClient;
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
    let rows = api_urls(&client).await?;
    if args.output.json {
        return output::print_json(&rows);
    }
    print_urls(&rows, "API");
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

/// The page's address from the API's.
fn page_url(api_url: &str) -> String {
    api_url.trim_end_matches("api/v1").to_string()
}

pub async fn dashboard(global: &GlobalOptions, args: &DashboardArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    if args.set_password {
        let (password, generated) = match &args.password_file {
            Some(path) => {
                let text = files::read_small_text(path)
                    .with_context(|| format!("reading the password from {}", path.display()))?;
                (text.lines().next().unwrap_or_default().to_string(), false)
            }
            None => (bramble_api::dashboard::password::generate()?, true),
        };
        set_dashboard_password(&client, &password).await?;
        if args.output.json {
            return output::print_json(&serde_json::json!({
                "password": generated.then_some(&password),
            }));
        }
        if generated {
            println!("dashboard password (shown once; every open session has ended): {password}");
        } else {
            println!("dashboard password set; every open session has ended");
        }
        return Ok(());
    }
    let rows: Vec<NodeApi> = api_urls(&client)
        .await?
        .into_iter()
        .map(|row| NodeApi {
            url: row.url.as_deref().map(page_url),
            ..row
        })
        .collect();
    let emulated_password = crate::emulator::Emulation::find(global)
        .ok()
        .flatten()
        .map(|emulation| emulation.dashboard_password_path())
        .filter(|path| path.exists());
    if args.output.json {
        return output::print_json(&serde_json::json!({
            "nodes": rows,
            "password_file": emulated_password,
        }));
    }
    print_urls(&rows, "DASHBOARD");
    match emulated_password {
        Some(path) => println!(
            "Log in with the password in {} (mode 0600).",
            path.display()
        ),
        None => println!(
            "Log in with the dashboard password (bramble dashboard --set-password sets a new one)."
        ),
    }
    println!(
        "Browsers warn about the certificate until they trust the cluster CA (bramble api --write-ca ca.pem, then import it)."
    );
    Ok(())
}

/// Hashes `password` here (the password itself never travels) and stores it as the
/// dashboard's; `bramble up` and `bramble dashboard --set-password`.
pub async fn set_dashboard_password(client: &ClusterClient, password: &str) -> Result<()> {
    validate_new_password(password)?;
    let phc = bramble_util::password::hash_password(password)?;
    let (_, ()): (_, ()) = client
        .call_any(METHOD_DASHBOARD_PASSWORD_SET, &SetPassword { phc })
        .await?;
    Ok(())
}

fn print_urls(rows: &[NodeApi], heading: &str) {
    let mut table = output::table(&["node", heading]);
    for row in rows {
        table.add_row(vec![
            row.node.clone(),
            row.url
                .clone()
                .or_else(|| row.problem.clone())
                .unwrap_or_default(),
        ]);
    }
    println!("{table}");
}

/// Every node's API address, from each live node's subsystem statuses.
async fn api_urls(client: &ClusterClient) -> Result<Vec<NodeApi>> {
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
    Ok(rows)
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
