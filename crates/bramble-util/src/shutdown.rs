//! The shutdown signal every background task takes (the mini-redis pattern): the agent
//! holds one [`ShutdownTrigger`]; each task holds a cloned [`Shutdown`] and selects on
//! [`Shutdown::wait`] beside its work, so one call ends them all cleanly.

use tokio::sync::watch;

/// Fires the shutdown of every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// A task's view of the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// Asks every task to stop. Idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once shutdown is triggered (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_the_trigger() {
        let (trigger, first) = ShutdownTrigger::new();
        let second = trigger.subscribe();
        let waiters: Vec<_> = [first, second]
            .into_iter()
            .map(|mut shutdown| tokio::spawn(async move { shutdown.wait().await }))
            .collect();
        trigger.trigger();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert!(trigger.subscribe().is_triggered());
    }
}
