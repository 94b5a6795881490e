//! The jobs subsystem as the agent runs it: on every node, a task runner (its slots
//! from `jobs.toml` or the CPU count) and a standby scheduler that takes over when the
//! `jobs/scheduler` lease is free.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bramble_net::{Handler, StreamHandler};
use bramble_platform::subsystem::StartFuture;
use bramble_platform::{Context, Running, Subsystem};
use bramble_util::Restart;

use super::admin::SERVICE;
use super::record::{SPEC_PREFIX, id_of_key};
use super::runner::{JobSettings, Runner};
use super::scheduler::{Scheduler, scan_all};
use super::service::JobsService;

pub const SUBSYSTEM: Subsystem = Subsystem {
    name: SERVICE,
    roles: &[],
    start,
    stop_deadline: Duration::from_secs(5),
};

fn start(context: Context) -> StartFuture {
    Box::pin(async move {
        let settings = JobSettings::load(&context.node.path)?;
        for kind in ["job", "launch-"] {
            crate::process::remove_stale_scratch(
                &context.node.config.cluster_id,
                context.node_name(),
                kind,
            );
        }
        let scheduler = Scheduler::new(
            context.node_name(),
            context.meta.clone(),
            context.membership.clone(),
        );
        let runner = Runner::new(
            context.node_name(),
            &context.node.config.cluster_id,
            &context.node.path,
            &settings,
            context.meta.clone(),
            context.membership.clone(),
            context.rpc.clone(),
            scheduler.clone(),
        )
        .await?;
        let (stop_trigger, stop_signal) = bramble_util::ShutdownTrigger::new();
        {
            let scheduler = scheduler.clone();
            context.workers.spawn_until(
                "jobs-scheduler",
                Restart::OnFailure,
                stop_signal.clone(),
                move |worker| scheduler.clone().run(worker),
            );
        }
        {
            let runner = runner.clone();
            context.workers.spawn_until(
                "jobs-runner",
                Restart::OnFailure,
                stop_signal.clone(),
                move |worker| runner.clone().run(worker),
            );
        }
        {
            let runner = runner.clone();
            let meta = context.meta.clone();
            context.workers.spawn_until(
                "jobs-outputs",
                Restart::OnFailure,
                stop_signal,
                move |worker| {
                    let runner = runner.clone();
                    let meta = meta.clone();
                    async move {
                        let mut shutdown = worker.shutdown();
                        loop {
                            tokio::select! {
                                _ = shutdown.wait() => return Ok(()),
                                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                            }
                            if let Ok(specs) = scan_all(&meta, SPEC_PREFIX).await {
                                let keep: BTreeSet<u64> = specs
                                    .iter()
                                    .filter_map(|(key, _)| id_of_key(key, SPEC_PREFIX))
                                    .collect();
                                runner.forget_outputs(&keep).await;
                            }
                        }
                    }
                },
            );
        }
        let service = Arc::new(JobsService {
            node: context.node_name().to_string(),
            data_dir: context.node.path.clone(),
            meta: context.meta.clone(),
            membership: context.membership.clone(),
            rpc: context.rpc.clone(),
            scheduler: scheduler.clone(),
            runner: runner.clone(),
        });
        Ok(Arc::new(RunningJobs {
            service,
            scheduler,
            runner,
            stop_trigger,
        }) as Arc<dyn Running>)
    })
}

struct RunningJobs {
    service: Arc<JobsService>,
    scheduler: Arc<Scheduler>,
    runner: Arc<Runner>,
    stop_trigger: bramble_util::ShutdownTrigger,
}

#[async_trait::async_trait]
impl Running for RunningJobs {
    fn service(&self) -> Option<Arc<dyn Handler>> {
        Some(self.service.clone())
    }

    fn stream_service(&self) -> Option<Arc<dyn StreamHandler>> {
        Some(self.service.clone())
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "scheduler": self.scheduler.is_reigning(),
            "slots": self.runner.slots(),
            "speed": self.runner.speed(),
            "running": self.runner.running_count(),
        })
    }

    fn prometheus(&self) -> Option<String> {
        let running = "bramble_jobs_tasks_running";
        let slots = "bramble_jobs_task_slots";
        Some(format!(
            "# HELP {running} Job tasks running on this node.\n# TYPE {running} gauge\n{running} {}\n\
             # HELP {slots} Job tasks this node may run at once.\n# TYPE {slots} gauge\n{slots} {}\n",
            self.runner.running_count(),
            self.runner.slots()
        ))
    }

    async fn stop(&self) {
        // The scheduler checkpoints and releases its lease while the catalog still
        // runs, so another node takes over at once; running tasks are stopped and run
        // elsewhere.
        self.stop_trigger.trigger();
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while (self.scheduler.is_reigning() || self.runner.running_count() > 0)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
