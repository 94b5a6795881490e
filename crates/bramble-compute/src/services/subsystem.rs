//! The services subsystem as the agent runs it: on every node, a replica supervisor and a
//! standby reconciler that places replicas while it holds the `services/reconciler` lease.

use std::sync::Arc;
use std::time::Duration;

use bramble_net::Handler;
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};
use bramble_util::Restart;

use super::admin::SERVICE;
use super::reconciler::Reconciler;
use super::service::ServicesService;
use super::supervisor::Supervisor;
use crate::limits::NodeCgroups;

pub const SUBSYSTEM: Subsystem = Subsystem {
    name: SERVICE,
    roles: &[],
    start,
    // Replicas get their stop grace (10 s by default) before SIGKILL.
    stop_deadline: Duration::from_secs(12),
};

fn start(context: Context) -> StartFuture {
    Box::pin(async move {
        crate::process::remove_stale_scratch(
            &context.node.config.cluster_id,
            context.node_name(),
            "service-",
        );
        // Replicas' cgroups of an earlier run of this agent go too (what a program that
        // left its process group still runs in them is killed).
        let cgroups = Arc::new(NodeCgroups::new(
            &context.node.config.cluster_id,
            context.node_name(),
        ));
        cgroups.remove_stale("service-");
        tracing::info!(layout = %cgroups.layout().describe(), "resource limits (--cpus, --memory)");
        let supervisor = Supervisor::new(
            context.node_name(),
            &context.node.config.cluster_id,
            &context.node.path,
            context.meta.clone(),
            cgroups,
        );
        let reconciler = Reconciler::new(
            context.node_name(),
            context.meta.clone(),
            context.membership.clone(),
            context.rpc.clone(),
            supervisor.clone(),
        );
        let (stop_trigger, stop_signal) = bramble_util::ShutdownTrigger::new();
        {
            let supervisor = supervisor.clone();
            context.workers.spawn_until(
                "services-supervisor",
                Restart::OnFailure,
                stop_signal.clone(),
                move |worker| supervisor.clone().run(worker),
            );
        }
        {
            let reconciler = reconciler.clone();
            context.workers.spawn_until(
                "services-reconciler",
                Restart::OnFailure,
                stop_signal,
                move |worker| reconciler.clone().run(worker),
            );
        }
        let service = Arc::new(ServicesService {
            node: context.node_name().to_string(),
            meta: context.meta.clone(),
            membership: context.membership.clone(),
            rpc: context.rpc.clone(),
            supervisor: supervisor.clone(),
        });
        Ok(Arc::new(RunningServices {
            service,
            supervisor,
            reconciler,
            stop_trigger,
        }) as Arc<dyn Running>)
    })
}

struct RunningServices {
    service: Arc<ServicesService>,
    supervisor: Arc<Supervisor>,
    reconciler: Arc<Reconciler>,
    stop_trigger: bramble_util::ShutdownTrigger,
}

#[async_trait::async_trait]
impl Running for RunningServices {
    fn service(&self) -> Option<Arc<dyn Handler>> {
        Some(self.service.clone())
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "reconciler": self.reconciler.is_holding(),
            "replicas": self.supervisor.running_count(),
        })
    }

    fn prometheus(&self) -> Option<String> {
        let name = "bramble_services_replicas_running";
        Some(format!(
            "# HELP {name} Service replicas running on this node.\n# TYPE {name} gauge\n{name} {}\n",
            self.supervisor.running_count()
        ))
    }

    async fn stop(&self) {
        // Replicas are stopped (SIGTERM, then SIGKILL after their grace) and the lease
        // released while the catalog still runs; the reconciler on another node moves
        // them once gossip says this node has left or died.
        self.stop_trigger.trigger();
        let deadline = std::time::Instant::now() + Duration::from_secs(11);
        while (self.supervisor.running_count() > 0 || !self.supervisor.statuses(None).is_empty())
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
