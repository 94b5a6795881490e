//! How a mount reaches the cluster: unary calls on a kept control connection and file
//! bodies on bulk streams, to the first agent that answers; when that agent goes away the
//! next call moves to another one, so a mount survives the loss of any single node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bramble_net::mux::ResponseReceiver;
use bramble_net::{BodySender, ErrorKind, MuxClient, MuxError, Priority, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Remote {
    mux: MuxClient,
    agents: Vec<SocketAddr>,
    /// Index of the agent that answered last.
    current: AtomicUsize,
}

fn unavailable(error: MuxError) -> RpcError {
    match error {
        MuxError::Remote(remote) => remote,
        other => RpcError::new(ErrorKind::Unavailable, other.to_string()),
    }
}

impl Remote {
    pub fn new(mux: MuxClient, agents: Vec<SocketAddr>) -> Remote {
        Remote {
            mux,
            agents,
            current: AtomicUsize::new(0),
        }
    }

    fn order(&self) -> impl Iterator<Item = (usize, SocketAddr)> + '_ {
        let start = self.current.load(Ordering::Relaxed);
        (0..self.agents.len()).map(move |step| {
            let index = (start + step) % self.agents.len();
            (index, self.agents[index])
        })
    }

    /// A unary call (postcard request and reply) on a control stream.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let mut last = RpcError::new(ErrorKind::Unavailable, "no agent to ask");
        for (index, agent) in self.order() {
            match self
                .mux
                .call(agent, method, request, Priority::Control)
                .await
            {
                Ok(reply) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(error)
                    if error.is_connection_failure() || matches!(error, MuxError::Timeout(_)) =>
                {
                    last = unavailable(error);
                }
                Err(error) => return Err(unavailable(error)),
            }
        }
        Err(last)
    }

    /// Opens a bulk stream (a file body in or out).
    pub async fn open(
        &self,
        method: &str,
        header: &[u8],
    ) -> Result<(BodySender, ResponseReceiver), RpcError> {
        let mut last = RpcError::new(ErrorKind::Unavailable, "no agent to ask");
        for (index, agent) in self.order() {
            match self.mux.open(agent, method, header, Priority::Bulk).await {
                Ok(opened) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(opened);
                }
                Err(error) if error.is_connection_failure() => last = unavailable(error),
                Err(error) => return Err(unavailable(error)),
            }
        }
        Err(last)
    }
}
