//! The storage subsystem as the agent runs it: on every node (any node can hold bricks
//! and serve as a gateway), with `store.*` as its RPC and stream service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bramble_net::{Handler, StreamHandler};
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};

use crate::node::Storage;
use crate::service::StoreService;

/// The storage subsystem's declaration for the agent's list.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: crate::admin::SERVICE,
    roles: &[],
    start,
    stop_deadline: Duration::from_secs(5),
};

fn start(context: Context) -> StartFuture {
    Box::pin(async move {
        let hints = crate::hints::Hints::open(&context.node.path.join("store-hints.redb"))
            .map_err(|error| error.to_string())?;
        let storage = Arc::new(Storage::new(
            context.node_name(),
            context.node.path.clone(),
            context.meta.clone(),
            context.membership.clone(),
            context.mux.clone(),
            context.rpc.clone(),
            hints,
        ));
        crate::heal::start_worker(&storage, &context.workers);
        crate::scrub::start_worker(&storage, &context.workers);
        crate::reclaim::start_worker(&storage, &context.workers);
        let settings = crate::s3::StoreSettings::load(&context.node.path)
            .map_err(|error| error.to_string())?;
        crate::s3::start(&storage, &settings, &context.workers).await?;
        let service = Arc::new(StoreService::new(storage.clone(), context.workers.clone()));
        Ok(Arc::new(RunningStore { storage, service }) as Arc<dyn Running>)
    })
}

struct RunningStore {
    storage: Arc<Storage>,
    service: Arc<StoreService>,
}

#[async_trait::async_trait]
impl Running for RunningStore {
    fn service(&self) -> Option<Arc<dyn Handler>> {
        Some(self.service.clone())
    }

    fn stream_service(&self) -> Option<Arc<dyn StreamHandler>> {
        Some(self.service.clone())
    }

    fn status(&self) -> serde_json::Value {
        let counters = &self.storage.counters;
        serde_json::json!({
            "corrupt_blocks_found": counters.corrupt_blocks_found.load(Ordering::Relaxed),
            "blocks_repaired": counters.blocks_repaired.load(Ordering::Relaxed),
            "copies_missed": counters.copies_missed.load(Ordering::Relaxed),
            "copies_healed": counters.copies_healed.load(Ordering::Relaxed),
            "blocks_scrubbed": counters.blocks_scrubbed.load(Ordering::Relaxed),
            "orphans_removed": counters.orphans_removed.load(Ordering::Relaxed),
            "block_transfers_free": self.storage.transfers.available_permits(),
        })
    }

    fn prometheus(&self) -> Option<String> {
        use std::fmt::Write as _;
        let counters = &self.storage.counters;
        let families = [
            (
                "bramble_store_corrupt_blocks_found_total",
                "Block copies found corrupt (checksum mismatch) on this node since it started.",
                &counters.corrupt_blocks_found,
            ),
            (
                "bramble_store_blocks_repaired_total",
                "Corrupt or missing block copies rewritten from a good one since it started.",
                &counters.blocks_repaired,
            ),
            (
                "bramble_store_copies_missed_total",
                "Block copies an absent brick missed (recorded as hints) since it started.",
                &counters.copies_missed,
            ),
            (
                "bramble_store_copies_healed_total",
                "Missed block copies delivered by the heal worker since it started.",
                &counters.copies_healed,
            ),
            (
                "bramble_store_blocks_scrubbed_total",
                "Blocks re-read and checked by the scrub worker since it started.",
                &counters.blocks_scrubbed,
            ),
            (
                "bramble_store_orphans_removed_total",
                "Orphaned blocks deleted since it started.",
                &counters.orphans_removed,
            ),
        ];
        let mut text = String::with_capacity(1024);
        for (name, help, counter) in families {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        // The heal queue: absent on a scrape that cannot read it, never a made-up zero.
        if let Ok(pending) = self.storage.hints.pending() {
            let name = "bramble_store_heal_pending";
            let _ = writeln!(
                text,
                "# HELP {name} Block copies this node holds for absent bricks (hints), waiting to be healed.\n# TYPE {name} gauge\n{name} {pending}"
            );
        }
        Some(text)
    }

    async fn stop(&self) {
        // Transfers in flight end with their connections when the agent stops; a write
        // that was cut off commits nothing, so there is nothing to hand over.
    }
}
