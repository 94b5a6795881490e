//! `bramble volume ...`: storage volumes (bramble-store's admin calls, asked of any
//! agent).

use anyhow::{Result, anyhow, bail};
use bramble_store::admin::*;
use bramble_store::volume::{Brick, Layout, VolumeSpec, VolumeState};

use crate::cli::{GlobalOptions, VolumeCommand, VolumeCreateArgs};
use crate::output;

pub async fn run(global: &GlobalOptions, command: &VolumeCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        VolumeCommand::Create(args) => {
            let request = create_request(args)?;
            let (_, spec): (_, VolumeSpec) =
                client.call_any(METHOD_VOLUME_CREATE, &request).await?;
            if args.output.json {
                return output::print_json(&spec);
            }
            println!(
                "created volume {} ({}, {} set(s) of {} brick(s), blocks of {}); it is started",
                spec.name,
                spec.layout.describe(),
                spec.sets(),
                spec.layout.set_width(),
                human_bytes(u64::from(spec.block_size))
            );
            Ok(())
        }
        VolumeCommand::Ls(flag) => {
            let (_, volumes): (_, Vec<VolumeSpec>) =
                client.call_any(METHOD_VOLUME_LIST, &()).await?;
            if flag.json {
                return output::print_json(&volumes);
            }
            if volumes.is_empty() {
                println!("no volumes (bramble volume create --help)");
                return Ok(());
            }
            let mut table = output::table(&["volume", "layout", "sets", "bricks", "state"]);
            for spec in &volumes {
                table.add_row(vec![
                    spec.name.clone(),
                    spec.layout.describe(),
                    spec.sets().to_string(),
                    spec.bricks.len().to_string(),
                    state_name(spec.state).to_string(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        VolumeCommand::Info(args) => {
            let request = VolumeName {
                name: args.name.clone(),
            };
            let (_, spec): (_, VolumeSpec) = client.call_any(METHOD_VOLUME_INFO, &request).await?;
            if args.output.json {
                return output::print_json(&spec);
            }
            println!("Volume Name: {}", spec.name);
            println!("Volume ID: {:016x}", spec.id);
            println!("Status: {}", state_name(spec.state));
            println!(
                "Type: {} over {} set(s) (each file striped over every set)",
                spec.layout.describe(),
                spec.sets()
            );
            println!("Block size: {}", human_bytes(u64::from(spec.block_size)));
            if let Some(old) = &spec.moving_from {
                println!(
                    "Moving data from the previous bricks: {}",
                    old.iter()
                        .map(|brick| brick.describe(&spec.name))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            println!("Bricks:");
            for (index, brick) in spec.bricks.iter().enumerate() {
                println!(
                    "  Brick{} (set {}): {}",
                    index + 1,
                    index / spec.layout.set_width() + 1,
                    brick.describe(&spec.name)
                );
            }
            Ok(())
        }
        VolumeCommand::Status(args) => {
            let request = VolumeName {
                name: args.name.clone(),
            };
            let (_, status): (_, VolumeStatus) =
                client.call_any(METHOD_VOLUME_STATUS, &request).await?;
            if args.output.json {
                return output::print_json(&status);
            }
            println!(
                "volume {} ({}, {})",
                status.spec.name,
                status.spec.layout.describe(),
                state_name(status.spec.state)
            );
            let mut table = output::table(&[
                "brick",
                "set",
                "node",
                "node state",
                "directory",
                "blocks",
                "data",
                "free",
            ]);
            for brick in &status.bricks {
                let (blocks, data, free) = match &brick.usage {
                    Some(usage) => (
                        usage.blocks.to_string(),
                        human_bytes(usage.bytes),
                        human_bytes(usage.free_bytes),
                    ),
                    None => (
                        "-".to_string(),
                        "-".to_string(),
                        brick.error.clone().unwrap_or_default(),
                    ),
                };
                let events = brick
                    .events
                    .map(|events| {
                        format!(
                            "{} / {}",
                            events.corrupt_blocks_found, events.blocks_repaired
                        )
                    })
                    .unwrap_or_else(|| "-".to_string());
                table.add_row(vec![
                    (brick.index + 1).to_string(),
                    (brick.set + 1).to_string(),
                    brick.node.clone(),
                    brick.node_state.clone(),
                    brick.path.clone(),
                    blocks,
                    data,
                    free,
                    events,
                ]);
            }
            println!("{table}");
            Ok(())
        }
        VolumeCommand::HealInfo(args) => {
            let request = VolumeName {
                name: args.name.clone(),
            };
            let deadline = tokio::time::Instant::now()
                + std::time::Duration::from_millis(crate::units::parse_milliseconds(
                    &args.timeout,
                )?);
            let info = loop {
                let info: HealInfo = match client.call_any(METHOD_HEAL_INFO, &request).await {
                    Ok((_, info)) => info,
                    // While waiting, an agent that does not answer yet (restarting) is
                    // asked again; the deadline still holds.
                    Err(_) if args.wait && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                let healed = info.pending.is_empty() && info.unanswered.is_empty();
                if !args.wait || healed {
                    break info;
                }
                if tokio::time::Instant::now() >= deadline {
                    if !args.output.json {
                        eprintln!("still pending after {}:", args.timeout);
                    }
                    print_heal_info(&info, args.output.json)?;
                    bail!(
                        "volume {} was not healed within {}",
                        info.volume,
                        args.timeout
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            print_heal_info(&info, args.output.json)
        }
        VolumeCommand::AddBrick(args) | VolumeCommand::RemoveBrick(args) => {
            let bricks = args
                .bricks
                .iter()
                .map(|text| parse_brick(text))
                .collect::<Result<Vec<_>>>()?;
            let adding = matches!(command, VolumeCommand::AddBrick(_));
            let request = ChangeBricksRequest {
                name: args.name.clone(),
                add: if adding { bricks.clone() } else { Vec::new() },
                remove: if adding { Vec::new() } else { bricks },
            };
            let (_, spec): (_, VolumeSpec) = client
                .call_any(METHOD_VOLUME_CHANGE_BRICKS, &request)
                .await?;
            if args.output.json {
                return output::print_json(&spec);
            }
            println!(
                "{} now has {} set(s) of {}; its data is moving (bramble workers shows store-heal-pass/{}; bramble volume info says when it is done)",
                spec.name,
                spec.sets(),
                spec.layout.set_width(),
                spec.name
            );
            Ok(())
        }
        VolumeCommand::ReplaceBrick(args) => {
            let request = ReplaceBrickRequest {
                name: args.name.clone(),
                old: parse_brick(&args.old)?,
                new: parse_brick(&args.new)?,
            };
            let (_, spec): (_, VolumeSpec) = client
                .call_any(METHOD_VOLUME_REPLACE_BRICK, &request)
                .await?;
            if args.output.json {
                return output::print_json(&spec);
            }
            println!(
                "{} replaced {} with {}; a full heal pass is filling it (bramble workers shows store-heal-pass/{})",
                spec.name, args.old, args.new, spec.name
            );
            Ok(())
        }
        VolumeCommand::Heal(args) => {
            let request = VolumeName {
                name: args.name.clone(),
            };
            let (_, node): (_, String) = client.call_any(METHOD_HEAL_START, &request).await?;
            if args.output.json {
                return output::print_json(
                    &serde_json::json!({ "volume": args.name, "node": node }),
                );
            }
            println!(
                "started a full heal pass of {} on {node}: follow it with `bramble workers --node {node}` (store-heal-pass/{})",
                args.name, args.name
            );
            Ok(())
        }
        VolumeCommand::Scrub(args) => {
            let request = VolumeName {
                name: args.name.clone(),
            };
            let (_, nodes): (_, Vec<String>) =
                client.call_any(METHOD_SCRUB_START, &request).await?;
            if args.output.json {
                return output::print_json(
                    &serde_json::json!({ "volume": args.name, "nodes": nodes }),
                );
            }
            println!(
                "started a scrub pass on {}: follow it with `bramble workers` (store-scrub)",
                nodes.join(", ")
            );
            Ok(())
        }
        VolumeCommand::Start(args) | VolumeCommand::Stop(args) => {
            let state = if matches!(command, VolumeCommand::Start(_)) {
                VolumeState::Started
            } else {
                VolumeState::Stopped
            };
            let request = VolumeSetState {
                name: args.name.clone(),
                state,
            };
            let (_, spec): (_, VolumeSpec) =
                client.call_any(METHOD_VOLUME_SET_STATE, &request).await?;
            if args.output.json {
                return output::print_json(&spec);
            }
            println!("volume {} is {}", spec.name, state_name(spec.state));
            Ok(())
        }
        VolumeCommand::Rm(args) => {
            let request = VolumeName {
                name: args.name.clone(),
            };
            let (_, unclean): (_, Vec<String>) =
                client.call_any(METHOD_VOLUME_REMOVE, &request).await?;
            if args.output.json {
                return output::print_json(&serde_json::json!({
                    "removed": args.name,
                    "bricks_not_cleaned": unclean,
                }));
            }
            println!("removed volume {}", args.name);
            for brick in unclean {
                println!(
                    "  could not clean brick {brick}; its blocks stay until it is removed by hand"
                );
            }
            Ok(())
        }
    }
}

fn state_name(state: VolumeState) -> &'static str {
    match state {
        VolumeState::Started => "started",
        VolumeState::Stopped => "stopped",
    }
}

fn create_request(args: &VolumeCreateArgs) -> Result<VolumeCreateRequest> {
    let layout = match &args.ec {
        Some(text) => {
            let (data, parity) = text
                .split_once('+')
                .ok_or_else(|| anyhow!("--ec wants K+M, such as 4+2, not {text:?}"))?;
            Layout::Erasure {
                data: data
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("--ec: {data:?} is not a number"))?,
                parity: parity
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("--ec: {parity:?} is not a number"))?,
            }
        }
        None => Layout::Replicated {
            replica: args.replica,
        },
    };
    let bricks = args
        .bricks
        .iter()
        .map(|text| parse_brick(text))
        .collect::<Result<Vec<_>>>()?;
    let block_size = match &args.block_size {
        Some(text) => Some(
            u32::try_from(crate::units::parse_size(text)?)
                .map_err(|_| anyhow!("--block-size {text} is too large"))?,
        ),
        None => None,
    };
    Ok(VolumeCreateRequest {
        name: args.name.clone(),
        layout,
        bricks,
        block_size,
        stripe: args.stripe,
    })
}

/// `node` or `node:/dir`.
fn parse_brick(text: &str) -> Result<Brick> {
    match text.split_once(':') {
        Some((node, path)) => Ok(Brick {
            node: node.to_string(),
            path: Some(path.to_string()),
        }),
        None if text.is_empty() => bail!("an empty brick was given"),
        None => Ok(Brick {
            node: text.to_string(),
            path: None,
        }),
    }
}

/// Bytes as a short human figure: "1.5 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints `volume heal-info`'s answer, as a table or as JSON.
fn print_heal_info(info: &HealInfo, json: bool) -> Result<()> {
    if json {
        return output::print_json(info);
    }
    let total: u64 = info.pending.iter().map(|pending| pending.copies).sum();
    println!(
        "volume {}: {total} block cop{} pending heal",
        info.volume,
        if total == 1 { "y" } else { "ies" }
    );
    if !info.pending.is_empty() {
        let mut table = output::table(&["brick", "node", "copies owed", "owed by"]);
        for pending in &info.pending {
            table.add_row(vec![
                (pending.brick + 1).to_string(),
                pending.node.clone(),
                pending.copies.to_string(),
                pending.owed_by.clone(),
            ]);
        }
        println!("{table}");
    }
    if !info.unanswered.is_empty() {
        println!(
            "not asked (away): {}; what they owe is unknown",
            info.unanswered.join(", ")
        );
    }
    Ok(())
}
