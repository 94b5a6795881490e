//! `bramble s3 key ...`: access keys for the S3 endpoint (bramble-store's `s3::keys`), and
//! `bramble s3 cleanup-uploads`: aborting multipart uploads left unfinished.

use anyhow::Result;
use bramble_store::admin::{
    CleanupUploads, METHOD_S3_CLEANUP_UPLOADS, METHOD_S3_KEY_MAKE, METHOD_S3_KEY_REMOVE,
    METHOD_S3_KEYS,
};
use bramble_store::s3::keys::{KeyScope, S3KeyDescription, S3KeyInfo, S3KeyRequest, ScopedS3Key};

use crate::cli::{GlobalOptions, S3Command, S3KeyCommand};
use crate::output;

pub async fn run(global: &GlobalOptions, command: &S3Command) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let command = match command {
        S3Command::Key(command) => command,
        S3Command::CleanupUploads {
            older_than,
            buckets,
            output: flag,
        } => {
            let older_than_seconds = crate::units::parse_lifetime_seconds(older_than)?;
            let request = CleanupUploads {
                older_than_seconds,
                volumes: buckets.clone(),
            };
            let (_, aborted): (_, u64) =
                client.call_any(METHOD_S3_CLEANUP_UPLOADS, &request).await?;
            if flag.json {
                return output::print_json(&serde_json::json!({ "aborted": aborted }));
            }
            println!("aborted {aborted} multipart uploads started more than {older_than} ago");
            return Ok(());
        }
    };
    match command {
        S3KeyCommand::Create {
            name,
            buckets,
            read_only,
            output: flag,
        } => {
            let request = S3KeyRequest {
                name: name.clone(),
                scope: KeyScope {
                    buckets: buckets.clone(),
                    read_only: *read_only,
                },
            };
            let (_, key): (_, ScopedS3Key) = client.call_any(METHOD_S3_KEY_MAKE, &request).await?;
            if flag.json {
                return output::print_json(&key);
            }
            println!("S3 key {} (shown once; keep the secret safe):", key.name);
            println!("  access key id:     {}", key.access_key);
            println!("  secret access key: {}", key.secret);
            println!("  may use:           {}", key.scope.describe());
            println!(
                "  for aws-cli: export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=<the secret> AWS_DEFAULT_REGION=us-east-1",
                key.access_key
            );
            Ok(())
        }
        S3KeyCommand::Ls(flag) => {
            let (_, keys): (_, Vec<S3KeyDescription>) =
                client.call_any(METHOD_S3_KEYS, &()).await?;
            if flag.json {
                return output::print_json(&keys);
            }
            if keys.is_empty() {
                println!("no S3 keys (bramble s3 key create <name>)");
                return Ok(());
            }
            let mut table = output::table(&["name", "access key id", "may use", "created (unix)"]);
            for key in &keys {
                table.add_row(vec![
                    key.name.clone(),
                    key.access_key.clone(),
                    key.scope.describe(),
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
