//! Remote launch for MPI: `jobs.launch`, a stream on which an admin runs one shell
//! command line on this node — what `ssh host command` does for Open MPI's `mpirun`,
//! whose rsh launcher starts its daemons (`orted`) this way. Bramble is that launcher
//! (`bramble mpi-launch`, named by `bramble mpirun` as `plm_rsh_agent`), so an MPI job
//! needs no ssh keys and no passwords: the cluster's mutual TLS and admin credential
//! stand in for them.
//!
//! The command runs like a job's task: through `sh -c` (as ssh runs it through the
//! remote shell), in its own process group and scratch directory, with a clean
//! environment plus the `OMPI_*`/`PMIX_*` variables the caller passes, at ordinary
//! priority, as the task user when the agent is root. Its stdout and stderr come back as
//! tagged records on the response body, with a heartbeat every few seconds (a daemon can
//! be silent for hours; the stream must not idle out) and the exit code at the end. When
//! the caller goes away (the stream breaks), the process group is killed.

use std::sync::Arc;
use std::time::Duration;

use bramble_net::{
    BodySender, Caller, ErrorKind, IncomingCall, MuxError, ResponseWriter, RpcError,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::runner::Runner;

/// Longest command line.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most environment variables passed.
pub const MAX_ENVIRONMENT: usize = 64;
/// A record's tags on the response body.
pub const TAG_HEARTBEAT: u8 = 0;
pub const TAG_STDOUT: u8 = 1;
pub const TAG_STDERR: u8 = 2;
pub const TAG_EXIT: u8 = 3;
/// How often a silent command's stream carries a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The request header of `jobs.launch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchRequest {
    /// A shell command line.
    pub command: String,
    /// Only `OMPI_*` and `PMIX_*` names are accepted.
    pub env: Vec<(String, String)>,
}

impl LaunchRequest {
    pub fn validate(&self) -> Result<(), String> {
        if self.command.is_empty() || self.command.len() > MAX_COMMAND_BYTES {
            return Err(format!(
                "a launched command has 1 to {MAX_COMMAND_BYTES} bytes, not {}",
                self.command.len()
            ));
        }
        if self.command.contains('\0') {
            return Err("the command holds a NUL byte".to_string());
        }
        if self.env.len() > MAX_ENVIRONMENT {
            return Err(format!("at most {MAX_ENVIRONMENT} environment variables"));
        }
        for (name, value) in &self.env {
            let allowed = (name.starts_with("OMPI_") || name.starts_with("PMIX_"))
                && name.len() <= 128
                && name
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '_');
            if !allowed || value.contains('\0') || value.len() > 4096 {
                return Err(format!(
                    "environment variable {name:?}: only OMPI_* and PMIX_* names are passed to a launch"
                ));
            }
        }
        Ok(())
    }
}

/// One record: tag, length (u32, big-endian), bytes.
pub fn encode_record(tag: u8, bytes: &[u8]) -> Bytes {
    let mut record = Vec::with_capacity(5 + bytes.len());
    record.push(tag);
    record.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    record.extend_from_slice(bytes);
    Bytes::from(record)
}

/// Splits complete records off the front of `buffer`.
pub fn take_record(buffer: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buffer.len() < 5 {
        return None;
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + length {
        return None;
    }
    let tag = buffer[0];
    let bytes = buffer[5..5 + length].to_vec();
    buffer.drain(..5 + length);
    Some((tag, bytes))
}

fn mux_error(error: MuxError) -> RpcError {
    RpcError::new(ErrorKind::Unavailable, error.to_string())
}

/// Serves one `jobs.launch` stream.
pub async fn serve(
    runner: &Arc<Runner>,
    call: IncomingCall,
    response: ResponseWriter,
) -> Result<(), RpcError> {
    if !matches!(call.caller, Caller::Admin(_)) {
        return Err(RpcError::new(
            ErrorKind::Unauthorized,
            "launching a command takes an admin credential",
        ));
    }
    let request: LaunchRequest = call.decode_header()?;
    request.validate().map_err(RpcError::bad_request)?;
    let mut child = runner
        .spawn_shell(&request.command, &request.env)
        .map_err(|reason| RpcError::new(ErrorKind::Internal, reason))?;
    let group = child.process.id().map(|pid| pid as i32);
    let mut sender = response.start(&[]).await.map_err(mux_error)?;
    let (records, mut incoming) = mpsc::channel::<Bytes>(16);
    let pumps = [
        child
            .process
            .stdout
            .take()
            .map(|stream| tokio::spawn(pump(stream, TAG_STDOUT, records.clone()))),
        child
            .process
            .stderr
            .take()
            .map(|stream| tokio::spawn(pump(stream, TAG_STDERR, records.clone()))),
    ];
    drop(records);
    let outcome = forward(&mut child.process, &mut incoming, &mut sender).await;
    // Whatever happened, nothing of the command outlives its stream.
    if let Some(group) = group {
        // SAFETY: signalling the process group this call created.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    let _ = child.process.wait().await;
    for pump in pumps.into_iter().flatten() {
        pump.abort();
    }
    drop(child.scratch);
    let code = outcome?;
    sender
        .send(encode_record(TAG_EXIT, &code.to_be_bytes()))
        .await
        .map_err(mux_error)?;
    sender.finish().await.map_err(mux_error)
}

/// Forwards output records and heartbeats until the command exits; its exit code.
async fn forward(
    process: &mut tokio::process::Child,
    incoming: &mut mpsc::Receiver<Bytes>,
    sender: &mut BodySender,
) -> Result<i32, RpcError> {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let mut streams_open = true;
    loop {
        tokio::select! {
            record = incoming.recv(), if streams_open => match record {
                Some(record) => sender.send(record).await.map_err(mux_error)?,
                None => streams_open = false,
            },
            status = process.wait(), if !streams_open => {
                let status = status.map_err(|error| RpcError::new(ErrorKind::Internal, error.to_string()))?;
                use std::os::unix::process::ExitStatusExt;
                return Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            _ = heartbeat.tick() => {
                sender.send(encode_record(TAG_HEARTBEAT, &[])).await.map_err(mux_error)?;
            }
        }
    }
}

async fn pump(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    tag: u8,
    records: mpsc::Sender<Bytes>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if records
                    .send(encode_record(tag, &buffer[..read]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_requests_are_bounded() {
        let mut buffer = Vec::new();
        buffer.extend_from_slice(&encode_record(TAG_STDOUT, b"hello"));
        buffer.extend_from_slice(&encode_record(TAG_EXIT, &3i32.to_be_bytes()));
        buffer.extend_from_slice(&[TAG_STDERR, 0, 0]);
        assert_eq!(
            take_record(&mut buffer),
            Some((TAG_STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            take_record(&mut buffer),
            Some((TAG_EXIT, 3i32.to_be_bytes().to_vec()))
        );
        assert_eq!(take_record(&mut buffer), None);
        let good = LaunchRequest {
            command: "orted -mca ess env".into(),
            env: vec![("PMIX_MCA_gds".into(), "hash".into())],
        };
        assert!(good.validate().is_ok());
        let sneaky = LaunchRequest {
            env: vec![("LD_PRELOAD".into(), "/tmp/x.so".into())],
            ..good.clone()
        };
        assert!(sneaky.validate().unwrap_err().contains("OMPI_"));
        let empty = LaunchRequest {
            command: String::new(),
            ..good
        };
        assert!(empty.validate().is_err());
    }
}
