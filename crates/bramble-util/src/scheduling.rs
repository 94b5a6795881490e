//! Which of the agent's threads the kernel should run first when the CPU is saturated.
//!
//! The control plane (gossip, Raft heartbeats and the VIP lease renewals) needs little
//! CPU but needs it on time: a lease renewal delayed by 600 ms hands the VIP to another
//! node. On a board whose CPU is saturated by something else (a busy web server, a
//! benchmark) that happened. So the agent's control-plane threads run at a higher
//! priority (nice [`CONTROL_PLANE_NICE`]) when the agent may raise it (root, or
//! CAP_SYS_NICE, as under systemd), and the data-plane threads go back to the priority
//! the agent was started with, so the proxy competes with other programs as equals.
//!
//! On Linux a nice value belongs to a thread, and new threads inherit their creator's.
//!
//! A thread's nice value only ranks it against threads of its own scheduling group. With
//! the kernel's autogroups (on in Debian's and the Raspberry Pi's kernels), every session
//! is such a group, and a daemon leads a session of its own: its threads compete with the
//! rest of the machine as one group. Measured on this project's 2-core VM (kernel 6.18,
//! wrk driving HAProxy at 60,000 requests/s, a 3-node cluster beside them): the agents'
//! runnable threads waited up to 5-8 s for a CPU, all three agents at once, and the
//! catalog changed term four times in 40 s, whatever the threads' nice value. With
//! autogroups off, or the agents' group at the highest weight, the longest wait was 0.05
//! and 0.2-0.6 s and no election happened. So the agent also raises its session's group
//! ([`raise_session_group`]), and the programs it starts lead sessions of their own so
//! they do not share that weight.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Nice value of the control plane's threads, when permitted.
pub const CONTROL_PLANE_NICE: i32 = -10;

static ORIGINAL_NICE: AtomicI32 = AtomicI32::new(0);
static ORIGINAL_RECORDED: AtomicBool = AtomicBool::new(false);

#[cfg(target_os = "linux")]
fn current_nice() -> i32 {
    // getpriority can return -1 legitimately; errno tells an error apart, but a failure
    // here only means "assume the default".
    // SAFETY: plain system call without pointers.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(target_os = "linux")]
fn set_nice(nice: i32) -> bool {
    // SAFETY: plain system call without pointers; `0` is the calling thread on Linux.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

/// Raises the calling thread to the control plane's priority. Returns false when not
/// permitted (an unprivileged agent keeps its priority; nothing else changes).
pub fn raise_control_plane_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        if !ORIGINAL_RECORDED.swap(true, Ordering::SeqCst) {
            ORIGINAL_NICE.store(current_nice(), Ordering::SeqCst);
        }
        set_nice(CONTROL_PLANE_NICE.min(ORIGINAL_NICE.load(Ordering::SeqCst)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Nice value given to the agent's session group (autogroup) when it leads its session:
/// the highest weight, as measured above (-10 still left one 5.6 s wait in 40 s).
pub const SESSION_GROUP_NICE: i32 = -20;

/// What [`raise_session_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionGroup {
    /// The session's group now has [`SESSION_GROUP_NICE`].
    Raised,
    /// The process does not lead its session (started from a shell, say): raising the
    /// group would raise the whole terminal session with it.
    NotSessionLeader,
    /// The kernel has no autogroups (or they are off), or the raise was refused (no
    /// CAP_SYS_NICE): the group keeps its weight.
    Unavailable,
}

/// Gives the scheduling group of the agent's session the highest weight, when the agent
/// leads that session (as under systemd and `bramble up`) and may raise priorities.
pub fn raise_session_group() -> SessionGroup {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls without pointers.
        let leads_session = unsafe { libc::getsid(0) == libc::getpid() };
        if !leads_session {
            return SessionGroup::NotSessionLeader;
        }
        let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
            .is_ok_and(|value| value.trim() == "1");
        if !enabled {
            return SessionGroup::Unavailable;
        }
        match std::fs::write("/proc/self/autogroup", SESSION_GROUP_NICE.to_string()) {
            Ok(()) => SessionGroup::Raised,
            Err(_) => SessionGroup::Unavailable,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        SessionGroup::Unavailable
    }
}

/// Returns the calling thread to the priority the process started with (for data-plane
/// threads created by a control-plane thread).
pub fn restore_original_priority() {
    #[cfg(target_os = "linux")]
    if ORIGINAL_RECORDED.load(Ordering::SeqCst) {
        set_nice(ORIGINAL_NICE.load(Ordering::SeqCst));
    }
}

/// Runs `work` at the priority the process started with (a benchmark, a calibration: work
/// that must compete with other programs as the node's tasks do) and waits for it without
/// blocking the runtime. On a thread of its own because a nice value belongs to a thread:
/// lowered on a thread of tokio's blocking pool, it would stay with every later task of
/// that pool, the catalog's disk writes among them. None if the thread could not be
/// started or `work` panicked.
pub async fn run_at_original_priority<T, Work>(work: Work) -> Option<T>
where
    T: Send + 'static,
    Work: FnOnce() -> T + Send + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("original-priority".to_string())
        .spawn(move || {
            restore_original_priority();
            let _ = sender.send(work());
        })
        .ok()?;
    receiver.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_be_raised_and_restored_without_touching_others() {
        std::thread::spawn(|| {
            let before = current_nice();
            let raised = raise_control_plane_priority();
            if raised {
                assert_eq!(current_nice(), CONTROL_PLANE_NICE.min(before));
            } else {
                assert_eq!(current_nice(), before, "a refused raise changes nothing");
            }
            let child = std::thread::spawn(|| {
                let inherited = current_nice();
                restore_original_priority();
                (inherited, current_nice())
            })
            .join()
            .unwrap();
            assert_eq!(
                child.0,
                current_nice(),
                "threads inherit their creator's nice"
            );
            assert_eq!(child.1, before);
        })
        .join()
        .unwrap();
    }
}
