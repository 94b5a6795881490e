//! Starting the cluster's users' programs — job tasks, service replicas, MPI daemons — the
//! same careful way: a clean environment, a scratch directory as home and working
//! directory, a process group of their own (so every child can be signalled together), the
//! priority the agent was started with (its own threads run raised, and a child would
//! inherit that, competing with the agent's lease renewals), an unprivileged user when
//! the agent runs as root, and death with the agent (a program outlives no supervisor).

use std::path::Path;

use crate::limits::Confinement;

/// Who a program runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `None`: as the agent's own user. Otherwise uid, gid and the user's name.
    switch_to: Option<(u32, u32, String)>,
}

impl Identity {
    /// As `user` (default `nobody`) when the agent is root; `root` only when named. An
    /// agent that is not root runs everything as itself and refuses another named user.
    pub fn resolve(user: Option<&str>) -> Result<Identity, String> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            return match user {
                None => Ok(Identity { switch_to: None }),
                Some(name) if Some(name) == current_user_name().as_deref() => {
                    Ok(Identity { switch_to: None })
                }
                Some(name) => Err(format!(
                    "the agent does not run as root, so it cannot run programs as {name:?}"
                )),
            };
        }
        let name = user.unwrap_or("nobody");
        if name == "root" {
            return Ok(Identity { switch_to: None });
        }
        let (uid, gid) = lookup_user(name)
            .ok_or_else(|| format!("the user {name:?} does not exist on this node"))?;
        Ok(Identity {
            switch_to: Some((uid, gid, name.to_string())),
        })
    }

    /// The user's name, for status pages.
    pub fn user_name(&self) -> String {
        match &self.switch_to {
            Some((_, _, name)) => name.clone(),
            None => current_user_name().unwrap_or_else(|| "the agent's user".to_string()),
        }
    }

    /// A command for `program` in `work_directory` (which should belong to this
    /// identity: see [`Identity::give`]), with piped output and no input.
    pub fn command(
        &self,
        program: &str,
        args: &[String],
        work_directory: &Path,
    ) -> tokio::process::Command {
        self.confined_command(program, args, work_directory, Confinement::default())
    }

    /// As [`Identity::command`], the program entering its cgroups and taking its
    /// resource limits (see `crate::limits`) before it runs.
    pub fn confined_command(
        &self,
        program: &str,
        args: &[String],
        work_directory: &Path,
        confinement: Confinement,
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH")
                    .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
            )
            .env("HOME", work_directory)
            .env("TMPDIR", work_directory)
            .env("LANG", "C.UTF-8")
            .current_dir(work_directory)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let switch_to = self.switch_to.as_ref().map(|(uid, gid, _)| (*uid, *gid));
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // system calls (setsid, setpriority, write, setrlimit, setgroups, setgid, setuid, prctl),
        // which are async-signal-safe, on data copied into it; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // A session of its own (and so a process group the agent signals as a
                // whole): the program leaves the agent's scheduling group, whose weight
                // the agent raised for its control plane (`bramble_util::scheduling`).
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                bramble_util::scheduling::restore_original_priority();
                // Into the cgroups while still the agent's user: moving a process needs
                // write access to the cgroups' common ancestor, which kernels before 5.16
                // check against the writer's current user, not the one that opened it.
                confinement.enter()?;
                // The user change is made here, not with Command::uid, so that it comes
                // after the cgroup move. As the standard library does: supplementary
                // groups dropped (EPERM only when they cannot be, as for a non-root
                // agent, which never switches), then group, then user.
                if let Some((uid, gid)) = switch_to {
                    if libc::setgroups(0, std::ptr::null()) != 0 {
                        let error = std::io::Error::last_os_error();
                        if error.raw_os_error() != Some(libc::EPERM) {
                            return Err(error);
                        }
                    }
                    if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // If the agent dies, so does the program (as with a power cut): nothing
                // runs unsupervised, and a restarted agent never finds a copy it does not
                // know about. Set after the user change, which would clear it.
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        command
    }

    /// Hands a file or directory the agent created to this identity.
    pub fn give(&self, path: &Path) {
        if let Some((uid, gid, _)) = &self.switch_to {
            let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                return;
            };
            // SAFETY: chown on a path the agent just created; no memory is shared.
            unsafe {
                libc::chown(path.as_ptr(), *uid, *gid);
            }
        }
    }
}

/// Where the agent makes a scratch directory for `what` (a job, a replica, a launch):
/// under the system's temp directory, named by cluster and node, so the emulator's
/// clusters on one machine (whose nodes share names) never share one.
pub fn scratch_directory(cluster_id: &str, node: &str, what: &str) -> std::path::PathBuf {
    let tag = cluster_tag(cluster_id);
    std::env::temp_dir().join(format!("bramble-{tag}-{node}-{what}"))
}

/// A cluster's id as a part of names on the host (scratch directories, cgroups): its
/// first 16 letters and digits.
pub fn cluster_tag(cluster_id: &str) -> String {
    cluster_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect()
}

/// Removes this node's scratch directories of `kind` (`job`, `launch-`, `service-`, or
/// `""` for every kind) left by an earlier run of its agent: nothing of that run is alive
/// (its programs died with it), and a directory that stayed would fill the temp directory
/// over restarts. `bramble down --purge` uses it for the nodes of a deleted cluster.
pub fn remove_stale_scratch(cluster_id: &str, node: &str, kind: &str) {
    let prefix = scratch_directory(cluster_id, node, kind);
    let (Some(parent), Some(start)) = (
        prefix.parent(),
        prefix.file_name().and_then(|name| name.to_str()),
    ) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_ours = name.to_str().is_some_and(|name| name.starts_with(start));
        let is_directory = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_ours && is_directory {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Sends `signal` to a process group the agent created (a group that is gone is ESRCH,
/// harmless).
pub fn signal_group(group: i32, signal: i32) {
    if group > 0 {
        // SAFETY: signalling a process group; no memory is involved.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// The uid and gid of a user name, from the system's user database.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a zeroed passwd is a valid value for getpwnam_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes only into `entry`
    // and `buffer` (whose length it is told) and sets `found`.
    let status = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    (status == 0 && !found.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

fn current_user_name() -> Option<String> {
    std::env::var("USER").ok().filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_scratch_of_this_node_and_kind_is_removed_and_nothing_else() {
        let cluster = format!("ctest{}", std::process::id());
        let ours = scratch_directory(&cluster, "n1", "job7");
        let other_kind = scratch_directory(&cluster, "n1", "service-web-0");
        let other_node = scratch_directory(&cluster, "n2", "job7");
        for directory in [&ours, &other_kind, &other_node] {
            std::fs::create_dir_all(directory.join("inside")).expect("a test directory");
        }
        remove_stale_scratch(&cluster, "n1", "job");
        assert!(!ours.exists());
        assert!(other_kind.exists() && other_node.exists());
        for directory in [&other_kind, &other_node] {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}
