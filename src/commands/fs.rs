//! `bramble fs ...`: files in a volume. Bodies stream over a bulk mux stream to or from
//! any agent (which acts as the gateway: it cuts, places and checks blocks); nothing is
//! held in memory whole on either side. Names are `volume:/path`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use bramble_net::mux::ResponseReceiver;
use bramble_net::{BodySender, MuxClient, MuxError, Priority};
use bramble_store::admin::*;
use bramble_util::ShutdownTrigger;
use bytes::BytesMut;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::{FsCommand, FsGetArgs, FsPutArgs, GlobalOptions};
use crate::client::ClusterClient;
use crate::commands::volume::human_bytes;
use crate::output;

/// Bytes read from the source per chunk sent.
const CHUNK: usize = 256 * 1024;
/// Files at least this large get a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 8 * 1024 * 1024;

/// `volume:/path` split in two.
pub fn split_volume_path(text: &str) -> Result<(String, String)> {
    let (volume, path) = text.split_once(':').ok_or_else(|| {
        anyhow!("{text:?} names no volume: write volume:/path, such as vol0:/kernel.img")
    })?;
    if volume.is_empty() {
        bail!("{text:?} names no volume: write volume:/path");
    }
    Ok((volume.to_string(), path.to_string()))
}

pub async fn run(global: &GlobalOptions, command: &FsCommand) -> Result<()> {
    let client = crate::target::resolve(global)?;
    match command {
        FsCommand::Put(args) => put(&client, args).await,
        FsCommand::Get(args) => get(&client, args).await,
        FsCommand::Cat(args) => {
            let (volume, path) = split_volume_path(&args.path)?;
            fetch(&client, &volume, &path, Output::Stdout)
                .await
                .map(|_| ())
        }
        FsCommand::Ls(args) => {
            let (volume, path) = split_volume_path(&args.path)?;
            let mut entries = Vec::new();
            let mut start_after = None;
            loop {
                let request = ListRequest {
                    volume: volume.clone(),
                    path: path.clone(),
                    start_after: start_after.take(),
                    limit: MAX_LIST_PAGE,
                };
                let (_, page): (_, Listing) = client.call_any(METHOD_FS_LIST, &request).await?;
                entries.extend(page.entries);
                match page.next_start_after {
                    Some(next) => start_after = Some(next),
                    None => break,
                }
            }
            if args.output.json {
                return output::print_json(&entries);
            }
            let mut table = output::table(&["mode", "size", "modified", "name"]);
            for entry in &entries {
                let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
                let (mode, name) = match entry.kind {
                    EntryKind::Directory => {
                        (format!("d{}", mode_text(entry.mode)), format!("{name}/"))
                    }
                    EntryKind::File => (format!("-{}", mode_text(entry.mode)), name.to_string()),
                };
                table.add_row(vec![
                    mode,
                    if entry.kind == EntryKind::File {
                        entry.size.to_string()
                    } else {
                        "-".to_string()
                    },
                    time_text(entry.modified_ns),
                    name,
                ]);
            }
            println!("{table}");
            Ok(())
        }
        FsCommand::Stat(args) => {
            let (volume, path) = split_volume_path(&args.path)?;
            let request = PathRequest { volume, path };
            let (_, entry): (_, FsEntry) = client.call_any(METHOD_FS_STAT, &request).await?;
            if args.output.json {
                return output::print_json(&entry);
            }
            println!("  File: {}:/{}", request.volume, entry.path);
            println!(
                "  Type: {}",
                match entry.kind {
                    EntryKind::File => "regular file",
                    EntryKind::Directory => "directory",
                }
            );
            println!("  Size: {} ({})", entry.size, human_bytes(entry.size));
            if entry.kind == EntryKind::File && entry.blocks == 0 && entry.size > 0 {
                // Small files keep their bytes in their catalog record.
                println!("Blocks: 0 (the bytes are kept in the file's record)");
            } else {
                println!("Blocks: {}", entry.blocks);
            }
            println!("  Mode: {:o}", entry.mode);
            println!("Modify: {}", time_text(entry.modified_ns));
            for (key, value) in &entry.user_metadata {
                println!("  Meta: {key}={value}");
            }
            Ok(())
        }
        FsCommand::Mkdir(args) => {
            let (volume, path) = split_volume_path(&args.path)?;
            let request = MkdirRequest {
                volume,
                path,
                exist_ok: args.parents,
                mode: 0o755,
            };
            let (_, _entry): (_, FsEntry) = client.call_any(METHOD_FS_MKDIR, &request).await?;
            Ok(())
        }
        FsCommand::Mv(args) => {
            let (volume, from) = split_volume_path(&args.from)?;
            let (to_volume, to) = split_volume_path(&args.to)?;
            if to_volume != volume {
                bail!("mv works within one volume; copy between volumes with fs get and fs put");
            }
            let request = RenameRequest {
                volume,
                from,
                to,
                replace: !args.no_clobber,
            };
            let (_, _entry): (_, FsEntry) = client.call_any(METHOD_FS_RENAME, &request).await?;
            Ok(())
        }
        FsCommand::Rm(args) => {
            let (volume, path) = split_volume_path(&args.path)?;
            let request = RemoveRequest {
                volume,
                path,
                recursive: args.recursive,
                expect: None,
            };
            let (_, _removed): (_, u64) = client.call_any(METHOD_FS_REMOVE, &request).await?;
            Ok(())
        }
    }
}

/// Opens a bulk stream on the first agent that takes the connection.
async fn open_stream(
    client: &ClusterClient,
    mux: &MuxClient,
    method: &str,
    header: &[u8],
) -> Result<(BodySender, ResponseReceiver, SocketAddr)> {
    let mut failures = Vec::new();
    for agent in client.agents() {
        match mux.open(*agent, method, header, Priority::Bulk).await {
            Ok((sender, response)) => return Ok((sender, response, *agent)),
            Err(error) if error.is_connection_failure() => {
                failures.push(format!("{agent}: {error}"))
            }
            Err(error) => return Err(anyhow!("{agent}: {error}")),
        }
    }
    Err(anyhow!(
        "no agent of the {} answered:\n  {}",
        client.source,
        failures.join("\n  ")
    ))
}

fn stream_error(error: MuxError) -> anyhow::Error {
    match error {
        MuxError::Remote(remote) => anyhow!(remote.message),
        other => anyhow!(other),
    }
}

fn progress_bar(length: Option<u64>) -> ProgressBar {
    let show =
        std::io::stderr().is_terminal() && length.is_none_or(|length| length >= PROGRESS_FROM);
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => ProgressBar::new(length),
        None => ProgressBar::no_length(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

async fn put(client: &ClusterClient, args: &FsPutArgs) -> Result<()> {
    let (volume, mut path) = split_volume_path(&args.target)?;
    let path_shown = path.trim_start_matches('/').to_string();
    let from_stdin = args.source.as_os_str() == "-";
    if path.ends_with('/') || path.is_empty() {
        if from_stdin {
            bail!("give the file's name in the volume when reading stdin (vol0:/name)");
        }
        let name = args
            .source
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", args.source.display()))?;
        path.push_str(&name.to_string_lossy());
    }
    let (mut source, length, modified_ns, mode): (Box<dyn AsyncRead + Unpin + Send>, _, _, _) =
        if from_stdin {
            (Box::new(tokio::io::stdin()), None, None, 0o644)
        } else {
            let file = tokio::fs::File::open(&args.source)
                .await
                .with_context(|| format!("opening {}", args.source.display()))?;
            let metadata = file
                .metadata()
                .await
                .with_context(|| format!("reading {}", args.source.display()))?;
            if metadata.is_dir() {
                bail!("{} is a directory; put copies files", args.source.display());
            }
            let modified_ns = metadata
                .modified()
                .ok()
                .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|elapsed| i64::try_from(elapsed.as_nanos()).ok());
            use std::os::unix::fs::PermissionsExt;
            (
                Box::new(file),
                Some(metadata.len()),
                modified_ns,
                metadata.permissions().mode() & 0o7777,
            )
        };
    let header = FilePutHeader {
        volume: volume.clone(),
        path: path.clone(),
        overwrite: args.overwrite,
        mode,
        modified_ns,
        user_metadata: Vec::new(),
    };
    let header = postcard::to_allocvec(&header).context("encoding the request")?;
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let mux = client.mux(shutdown);
    let started = Instant::now();
    let (mut sender, response, agent) = open_stream(client, &mux, METHOD_FILE_PUT, &header).await?;
    let bar = progress_bar(length);
    let mut sent = 0u64;
    let mut send_failure = None;
    loop {
        let mut buffer = BytesMut::with_capacity(CHUNK);
        let read = source
            .read_buf(&mut buffer)
            .await
            .with_context(|| format!("reading {}", args.source.display()))?;
        if read == 0 {
            break;
        }
        if let Err(error) = sender.send(buffer.freeze()).await {
            send_failure = Some(error);
            break;
        }
        sent += read as u64;
        bar.set_position(sent);
    }
    if send_failure.is_none()
        && let Err(error) = sender.finish().await
    {
        send_failure = Some(error);
    }
    bar.finish_and_clear();
    // The agent's answer says what happened, including why it stopped reading.
    let answer = match response.wait().await {
        Ok(answer) => answer,
        Err(error) => {
            // The agent's own reason comes first; a failed send says less.
            let reason = match (error, send_failure) {
                (remote @ MuxError::Remote(_), _) => remote,
                (_, Some(send)) => send,
                (other, None) => other,
            };
            return Err(stream_error(reason))
                .with_context(|| format!("storing {volume}:/{path_shown} through {agent}"));
        }
    };
    let reply: FilePutReply =
        postcard::from_bytes(&answer.header).context("decoding the agent's answer")?;
    let seconds = started.elapsed().as_secs_f64();
    if args.output.json {
        return output::print_json(&serde_json::json!({
            "entry": reply.entry,
            "missed_copies": reply.missed_copies,
            "seconds": seconds,
        }));
    }
    println!(
        "stored {volume}:/{} ({}, {} block(s)) in {seconds:.2} s, {}/s",
        reply.entry.path,
        human_bytes(reply.entry.size),
        reply.entry.blocks,
        human_bytes((reply.entry.size as f64 / seconds.max(1e-6)) as u64)
    );
    if reply.missed_copies > 0 {
        eprintln!(
            "warning: {} block copies could not be written (bricks away); the write quorum held",
            reply.missed_copies
        );
    }
    Ok(())
}

enum Output {
    Stdout,
    File(PathBuf),
}

async fn get(client: &ClusterClient, args: &FsGetArgs) -> Result<()> {
    let (volume, path) = split_volume_path(&args.source)?;
    let target = match &args.target {
        Some(target) if target.as_os_str() == "-" => Output::Stdout,
        Some(target) if target.is_dir() => Output::File(target.join(file_name_of(&path)?)),
        Some(target) => Output::File(target.clone()),
        None => Output::File(PathBuf::from(file_name_of(&path)?)),
    };
    if let Output::File(file) = &target
        && file.exists()
        && !args.overwrite
    {
        bail!("{} exists (pass --overwrite to replace it)", file.display());
    }
    let started = Instant::now();
    let entry = fetch(client, &volume, &path, target).await?;
    if args
        .target
        .as_ref()
        .is_none_or(|target| target.as_os_str() != "-")
    {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "fetched {volume}:/{} ({}) in {seconds:.2} s, {}/s",
            entry.path,
            human_bytes(entry.size),
            human_bytes((entry.size as f64 / seconds.max(1e-6)) as u64)
        );
    }
    Ok(())
}

fn file_name_of(path: &str) -> Result<String> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{path:?} names no file"))
}

/// Streams a file into `output`; a local file is written under a temporary name and
/// renamed when complete, so an interrupted get leaves no half file behind.
async fn fetch(
    client: &ClusterClient,
    volume: &str,
    path: &str,
    output: Output,
) -> Result<FsEntry> {
    let shown = path.trim_start_matches('/');
    let header = FileGetHeader {
        volume: volume.to_string(),
        path: path.to_string(),
        offset: 0,
        length: None,
    };
    let header = postcard::to_allocvec(&header).context("encoding the request")?;
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let mux = client.mux(shutdown);
    let (sender, response, agent) = open_stream(client, &mux, METHOD_FILE_GET, &header).await?;
    sender.finish().await.map_err(stream_error)?;
    let mut response = response
        .wait()
        .await
        .map_err(stream_error)
        .with_context(|| format!("reading {volume}:/{shown} through {agent}"))?;
    let reply: FileGetReply =
        postcard::from_bytes(&response.header).context("decoding the agent's answer")?;
    let bar = progress_bar(Some(reply.length));
    let (mut writer, temporary): (
        Box<dyn AsyncWrite + Unpin + Send>,
        Option<(PathBuf, PathBuf)>,
    ) = match &output {
        Output::Stdout => (Box::new(tokio::io::stdout()), None),
        Output::File(file) => {
            let temporary = partial_name(file);
            let handle = tokio::fs::File::create(&temporary)
                .await
                .with_context(|| format!("creating {}", temporary.display()))?;
            (Box::new(handle), Some((temporary, file.clone())))
        }
    };
    let copied = async {
        let mut received = 0u64;
        while let Some(chunk) = response.body.next_chunk().await.map_err(stream_error)? {
            writer
                .write_all(&chunk)
                .await
                .context("writing the output")?;
            received += chunk.len() as u64;
            bar.set_position(received);
        }
        writer.flush().await.context("writing the output")?;
        if received != reply.length {
            bail!(
                "the transfer ended after {received} of {} bytes",
                reply.length
            );
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    drop(writer);
    match (copied, temporary) {
        (Ok(()), Some((temporary, file))) => {
            tokio::fs::rename(&temporary, &file)
                .await
                .with_context(|| {
                    format!("renaming {} to {}", temporary.display(), file.display())
                })?;
        }
        (Ok(()), None) => {}
        (Err(error), temporary) => {
            if let Some((temporary, _)) = temporary {
                let _ = tokio::fs::remove_file(&temporary).await;
            }
            return Err(error.context(format!("reading {volume}:/{shown}")));
        }
    }
    Ok(reply.entry)
}

fn partial_name(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    file.with_file_name(format!(".{name}.part"))
}

fn mode_text(mode: u32) -> String {
    let mut text = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// Nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn time_text(nanoseconds: i64) -> String {
    if nanoseconds <= 0 {
        return "-".to_string();
    }
    let seconds = nanoseconds / 1_000_000_000;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_and_times_are_read_and_shown() {
        assert_eq!(
            split_volume_path("vol0:/a/b").unwrap(),
            ("vol0".to_string(), "/a/b".to_string())
        );
        assert!(split_volume_path("/a/b").is_err());
        assert!(split_volume_path(":/a").is_err());
        assert_eq!(time_text(0), "-");
        assert_eq!(
            time_text(1_700_000_000 * 1_000_000_000),
            "2023-11-14 22:13:20"
        );
        assert_eq!(mode_text(0o754), "rwxr-xr--");
    }
}
