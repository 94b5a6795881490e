//! One real node for in-process catalog tests: a data directory, gossip and Raft on redb,
//! bootstrapped as a one-voter group.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;

use bramble_cluster::node_dir::InitOptions;
use bramble_cluster::{Membership, MembershipSettings, NodeDir};
use bramble_meta::{Meta, MetaSettings};
use bramble_util::{ShutdownTrigger, Workers};

fn free_address() -> SocketAddr {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = tcp.local_addr().unwrap();
        if UdpSocket::bind(address).is_ok() {
            return address;
        }
    }
}

pub struct SoloNode {
    pub meta: Arc<Meta>,
    membership: Arc<Membership>,
    trigger: ShutdownTrigger,
    _directory: tempfile::TempDir,
}

impl SoloNode {
    pub async fn start(name: &str) -> SoloNode {
        let directory = tempfile::tempdir().unwrap();
        let address = free_address();
        let (node, _token, _admin) = NodeDir::init(
            directory.path(),
            InitOptions {
                name: name.into(),
                listen: address,
                advertise: Some(address),
                roles: vec![],
                membership: MembershipSettings::default(),
            },
        )
        .unwrap();
        MetaSettings {
            bootstrap: true,
            ..MetaSettings::default()
        }
        .save(directory.path())
        .unwrap();
        let (trigger, shutdown) = ShutdownTrigger::new();
        let workers = Workers::new(shutdown);
        let membership = Membership::start(&node, &workers).await.unwrap();
        let meta = Meta::start(&node, membership.clone(), &workers)
            .await
            .unwrap();
        SoloNode {
            meta,
            membership,
            trigger,
            _directory: directory,
        }
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        self.meta.stop().await;
        self.membership.stop().await;
    }
}
