//! `bramble s3 key ...`: access keys for the S3 endpoint (bramble-store's `s3::keys`).

use anyhow::Result;
use bramble_store::admin::{METHOD_S3_KEY_CREATE, METHOD_S3_KEY_LIST, METHOD_S3_KEY_REMOVE};
use bramble_store::s3::keys::{S3Key, S3KeyInfo};

use crate::cli::{GlobalOptions, S3Command, S3KeyCommand};
use crate::output;

pub async fn run(global: &GlobalOptions, command: &S3Command) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let S3Command::Key(command) = command;
    match command {
        S3KeyCommand::Create { name, output: flag } => {
            let (_, key): (_, S3Key) = client.call_any(METHOD_S3_KEY_CREATE, name).await?;
            if flag.json {
                return output::print_json(&key);
            }
            println!("S3 key {} (shown once; keep the secret safe):", key.name);
            println!("  access key id:     {}", key.access_key);
            println!("  secret access key: {}", key.secret);
            println!(
                "  for aws-cli: export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=<the secret> AWS_DEFAULT_REGION=us-east-1",
                key.access_key
            );
            Ok(())
        }
        S3KeyCommand::Ls(flag) => {
            let (_, keys): (_, Vec<S3KeyInfo>) = client.call_any(METHOD_S3_KEY_LIST, &()).await?;
            if flag.json {
                return output::print_json(&keys);
            }
            if keys.is_empty() {
                println!("no S3 keys (bramble s3 key create <name>)");
                return Ok(());
            }
            let mut table = output::table(&["name", "access key id", "created (unix)"]);
            for key in &keys {
                table.add_row(vec![
                    key.name.clone(),
                    key.access_key.clone(),
                    key.created_unix.to_string(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        S3KeyCommand::Rm { name } => {
            let (_, key): (_, S3KeyInfo) = client.call_any(METHOD_S3_KEY_REMOVE, name).await?;
            println!("removed S3 key {} ({})", key.name, key.access_key);
            Ok(())
        }
    }
}
