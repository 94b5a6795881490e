//! The `lb.*` RPC methods: `lb.stats` answers the live statistics of the balancers this
//! node serves (and the VIP holder it knows of), for `bramble lb ls|show`.

use std::sync::Arc;

use bramble_net::rpc::{Request, encode};
use bramble_net::{ErrorKind, Handler, RpcError};

use crate::subsystem::LoadBalancers;

pub struct LbService {
    balancers: Arc<LoadBalancers>,
}

impl LbService {
    pub fn new(balancers: Arc<LoadBalancers>) -> Self {
        LbService { balancers }
    }
}

#[async_trait::async_trait]
impl Handler for LbService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "stats" => encode(&self.balancers.stats()),
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the lb service has no method {other:?}"),
            )),
        }
    }
}
