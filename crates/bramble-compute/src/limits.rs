//! CPU and memory limits (`--cpus`, `--memory`) for the programs the agent starts, without
//! containers: the kernel's control groups do the enforcing, as they do for Docker and
//! systemd, and this module is the little of a container runtime that this needs.
//!
//! - **Which cgroups.** Hosts differ, so the layout is found at run time from
//!   `/proc/self/mountinfo`: cgroup v2 (one unified tree whose `cgroup.controllers` lists
//!   `cpu` and `memory`: current Raspberry Pi OS and most distributions) or cgroup v1 (a
//!   tree per controller, `/sys/fs/cgroup/cpu` or `cpu,cpuacct` and `/sys/fs/cgroup/memory`:
//!   older and hybrid hosts, where a unified tree may be mounted with no controllers in
//!   it). Each controller is looked for on its own, so a hybrid host is handled too.
//! - **Where.** One cgroup per started program under a parent per cluster and node,
//!   `<tree>/bramble-<cluster>-<node>/<what>` (`service-web-0`), so the emulator's nodes on
//!   one host never share one, and a restarted agent can remove what its previous run left.
//!   On v2 the parent gets the controllers in its `cgroup.subtree_control` (and the tree's
//!   top, where they are not yet enabled).
//! - **No race.** The agent opens the cgroup's `cgroup.procs` before it forks, and the child
//!   writes `0` (itself) to it between fork and exec ([`Confinement::enter`]), so the
//!   program's first instruction already runs limited and nothing it forks escapes. That
//!   code runs in a child of a multi-threaded process: system calls only, no allocation.
//! - **Where a controller is missing** (Pi kernels turn the memory controller off unless
//!   `cgroup_enable=memory` is on the kernel command line; an agent that is not root may
//!   not create cgroups), the limit is not silently dropped: memory falls back to
//!   `RLIMIT_AS` (the address space, a cruder bound) and a CPU limit is reported as not
//!   enforced, both as a warning the replica's status carries.
//! - **OOM kills** are told apart from other deaths by the memory cgroup's own counter
//!   (`oom_kill` in v2 `memory.events`, v1 `memory.oom_control`), read before and after
//!   the run ([`ProcessCgroup::describe_oom`]): a SIGKILL alone says nothing of why.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CFS period the CPU quota is expressed in (the kernel's default, 100 ms).
pub const CPU_PERIOD_MICROSECONDS: u64 = 100_000;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// What a program may use. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Thousandths of a CPU (`--cpus 0.5` is 500).
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.cpu_millis.is_none() && self.memory_bytes.is_none()
    }

    /// `0.5 CPU, 32 MiB`, or an empty string without limits.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(millis) = self.cpu_millis {
            parts.push(describe_cpus(millis));
        }
        if let Some(bytes) = self.memory_bytes {
            parts.push(describe_bytes(bytes));
        }
        parts.join(", ")
    }
}

/// `500` → `0.5 CPU`, `2000` → `2 CPUs`.
pub fn describe_cpus(millis: u32) -> String {
    let whole = millis / 1000;
    let fraction = millis % 1000;
    let number = if fraction == 0 {
        whole.to_string()
    } else {
        let digits = format!("{fraction:03}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    };
    if millis <= 1000 {
        format!("{number} CPU")
    } else {
        format!("{number} CPUs")
    }
}

/// `33554432` → `32 MiB`; sizes that are not a whole number of units get one decimal.
pub fn describe_bytes(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Why a cgroup could not be set up (reported as a warning: the program still runs, with
/// the fallback).
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("creating the cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("this host offers no {controller} controller in any cgroup tree ({layout})")]
    NoController {
        controller: &'static str,
        layout: String,
    },
}

/// Which cgroup interface a tree speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One tree per controller (or a few controllers mounted together).
    V1,
    /// The unified tree.
    V2,
}

/// A mounted cgroup tree that holds a controller the limits need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// Where it is mounted (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// Which cgroup the mount shows at its top (`/` unless the host bind-mounted a subtree
    /// into a container): paths in `/proc/<pid>/cgroup` are relative to the tree's real
    /// top, so this is taken off them.
    pub root: String,
}

impl Hierarchy {
    /// The directory of a cgroup path as `/proc/<pid>/cgroup` writes it, when it lies
    /// under this mount.
    pub fn directory_of(&self, cgroup_path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            cgroup_path
        } else {
            let rest = cgroup_path.strip_prefix(self.root.as_str())?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest
        };
        Some(self.mount.join(relative.trim_start_matches('/')))
    }

    /// The file a process is moved into a cgroup with: `cgroup.procs` (v1 before 3.0 had
    /// only `tasks`, which moves one thread, enough for a child that has one).
    fn procs_file(&self, directory: &Path) -> PathBuf {
        let procs = directory.join("cgroup.procs");
        if self.version == Version::V1 && !procs.exists() {
            return directory.join("tasks");
        }
        procs
    }
}

/// Where this host keeps the controllers the limits need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub cpu: Option<Hierarchy>,
    pub memory: Option<Hierarchy>,
}

impl Layout {
    /// This host's layout, from `/proc/self/mountinfo` and the unified tree's
    /// `cgroup.controllers`.
    pub fn detect() -> Layout {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Layout::from_mountinfo(&mountinfo, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).ok()
        })
    }

    /// The layout described by a mountinfo text; `controllers_of` reads a unified tree's
    /// `cgroup.controllers`.
    pub fn from_mountinfo(
        mountinfo: &str,
        controllers_of: impl Fn(&Path) -> Option<String>,
    ) -> Layout {
        let mounts = parse_mountinfo(mountinfo);
        let mut layout = Layout::default();
        // A controller is bound to one tree at a time: where the unified tree offers it,
        // the v1 tree of the same name cannot also have it, so the order only settles
        // the impossible case of both.
        for mount in mounts.iter().filter(|mount| mount.filesystem == "cgroup2") {
            let Some(controllers) = controllers_of(&mount.point) else {
                continue;
            };
            let hierarchy = Hierarchy {
                version: Version::V2,
                mount: mount.point.clone(),
                root: mount.root.clone(),
            };
            for controller in controllers.split_whitespace() {
                match controller {
                    "cpu" if layout.cpu.is_none() => layout.cpu = Some(hierarchy.clone()),
                    "memory" if layout.memory.is_none() => layout.memory = Some(hierarchy.clone()),
                    _ => {}
                }
            }
        }
        for mount in mounts.iter().filter(|mount| mount.filesystem == "cgroup") {
            let hierarchy = Hierarchy {
                version: Version::V1,
                mount: mount.point.clone(),
                root: mount.root.clone(),
            };
            for option in mount.super_options.split(',') {
                match option {
                    "cpu" if layout.cpu.is_none() => layout.cpu = Some(hierarchy.clone()),
                    "memory" if layout.memory.is_none() => layout.memory = Some(hierarchy.clone()),
                    _ => {}
                }
            }
        }
        layout
    }

    /// One line for the agent's log: `cpu: cgroup v1 at /sys/fs/cgroup/cpu; memory: none`.
    pub fn describe(&self) -> String {
        let one = |hierarchy: &Option<Hierarchy>| match hierarchy {
            Some(hierarchy) => format!(
                "cgroup {} at {}",
                match hierarchy.version {
                    Version::V1 => "v1",
                    Version::V2 => "v2",
                },
                hierarchy.mount.display()
            ),
            None => "no controller".to_string(),
        };
        format!("cpu: {}; memory: {}", one(&self.cpu), one(&self.memory))
    }
}

/// A cgroup mount, from a line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub point: PathBuf,
    /// The cgroup at the mount's top.
    pub root: String,
    /// `cgroup` (v1) or `cgroup2`.
    pub filesystem: String,
    /// For v1, the controllers among them (`rw,cpu,cpuacct`).
    pub super_options: String,
}

/// The cgroup mounts in a mountinfo text (`proc(5)`): `id parent major:minor root point
/// options [optional fields...] - filesystem source super-options`.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = before.split(' ');
        let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let mut after = after.split(' ');
        let (Some(filesystem), Some(_source), Some(super_options)) =
            (after.next(), after.next(), after.next())
        else {
            continue;
        };
        if filesystem == "cgroup" || filesystem == "cgroup2" {
            mounts.push(CgroupMount {
                point: PathBuf::from(bramble_util::mounts::unescape_field(point)),
                root: bramble_util::mounts::unescape_field(root),
                filesystem: filesystem.to_string(),
                super_options: super_options.to_string(),
            });
        }
    }
    mounts
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path` (v2's line is
/// `0::/path`, with no controllers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy_id: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy_id = parts.next()?.parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.to_string();
            Some(Membership {
                hierarchy_id,
                controllers,
                path,
            })
        })
        .collect()
}

/// The directory of the cgroup `pid` belongs to in `hierarchy`, where `controller` lives
/// (`None` when the process is gone or the tree is not there).
pub fn cgroup_directory_of(pid: u32, hierarchy: &Hierarchy, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let memberships = parse_proc_cgroup(&text);
    let entry = match hierarchy.version {
        Version::V2 => memberships
            .iter()
            .find(|entry| entry.hierarchy_id == 0 && entry.controllers.is_empty())?,
        Version::V1 => memberships
            .iter()
            .find(|entry| entry.controllers.iter().any(|name| name == controller))?,
    };
    hierarchy.directory_of(&entry.path)
}

/// The value of `key` in a flat keyed file (`memory.events`, `memory.oom_control`,
/// `cpu.stat`: one `key value` a line; `/proc/meminfo` once its colons are spaces).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(char::is_whitespace)?;
        // The first word after the key: `/proc/meminfo` adds a unit after it.
        (name == key)
            .then(|| value.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

/// This node's cgroups: `bramble-<cluster>-<node>` in each tree that holds a controller.
#[derive(Debug)]
pub struct NodeCgroups {
    layout: Layout,
    /// `bramble-<cluster>-<node>`.
    name: String,
    /// The node's CPUs and memory, to warn of a limit that cannot bind.
    cpus: u32,
    memory_bytes: Option<u64>,
}

impl NodeCgroups {
    pub fn new(cluster_id: &str, node: &str) -> NodeCgroups {
        NodeCgroups::with_layout(cluster_id, node, Layout::detect())
    }

    /// With a given layout (a test's; or a host's found otherwise).
    pub fn with_layout(cluster_id: &str, node: &str, layout: Layout) -> NodeCgroups {
        NodeCgroups {
            layout,
            name: format!("bramble-{}-{node}", crate::process::cluster_tag(cluster_id)),
            cpus: std::thread::available_parallelism()
                .map(|count| count.get() as u32)
                .unwrap_or(1),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| keyed_value(&text.replace(':', " "), "MemTotal"))
                .map(|kib| kib * KIB),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The node's parent cgroup in `hierarchy`.
    pub fn parent(&self, hierarchy: &Hierarchy) -> PathBuf {
        hierarchy.mount.join(&self.name)
    }

    /// Each distinct tree the layout uses, once.
    fn hierarchies(&self) -> Vec<&Hierarchy> {
        let mut found: Vec<&Hierarchy> = Vec::new();
        for hierarchy in [&self.layout.cpu, &self.layout.memory]
            .into_iter()
            .flatten()
        {
            if !found.iter().any(|seen| seen.mount == hierarchy.mount) {
                found.push(hierarchy);
            }
        }
        found
    }

    /// Makes the node's parent in `hierarchy` (on v2 with `controllers` enabled for its
    /// children, and in the tree's top where they are not yet).
    fn ensure_parent(
        &self,
        hierarchy: &Hierarchy,
        controllers: &[&str],
    ) -> Result<PathBuf, LimitsError> {
        let parent = self.parent(hierarchy);
        if hierarchy.version == Version::V2 {
            enable_controllers(&hierarchy.mount, controllers)?;
        }
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(LimitsError::Create {
                    path: parent,
                    source,
                });
            }
        }
        if hierarchy.version == Version::V2 {
            enable_controllers(&parent, controllers)?;
        }
        Ok(parent)
    }

    /// Removes this node's cgroups whose names start with `kind` (`service-`) left by an
    /// earlier run of its agent, killing what is still in them (a program that left its
    /// process group, which the death signal of its parent does not reach), then the
    /// node's parent where it is empty.
    pub fn remove_stale(&self, kind: &str) {
        for hierarchy in self.hierarchies() {
            let parent = self.parent(hierarchy);
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let is_ours = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.starts_with(kind));
                if is_ours && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    remove_blocking(&entry.path(), Duration::from_millis(500));
                }
            }
        }
        self.remove_parents();
    }

    /// Removes the node's parents that are empty (the agent is stopping; a parent still
    /// holding another kind's cgroups stays).
    pub fn remove_parents(&self) {
        for hierarchy in self.hierarchies() {
            let _ = std::fs::remove_dir(self.parent(hierarchy));
        }
    }
}

/// Writes `+controller` to `directory/cgroup.subtree_control` for each not yet enabled.
fn enable_controllers(directory: &Path, controllers: &[&str]) -> Result<(), LimitsError> {
    let path = directory.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&path).unwrap_or_default();
    for controller in controllers {
        if !enabled.split_whitespace().any(|name| name == *controller) {
            write_value(&path, &format!("+{controller}"))?;
        }
    }
    Ok(())
}

fn write_value(path: &Path, value: &str) -> Result<(), LimitsError> {
    use std::io::Write;
    // Truncating as a shell's `>` does (cgroup files ignore it; an ordinary file would
    // keep the tail of a longer old value).
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| LimitsError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// SIGKILLs every process in a cgroup (the file lists them, in v1 and v2 alike).
fn kill_members(directory: &Path) {
    let Ok(text) = std::fs::read_to_string(directory.join("cgroup.procs")) else {
        return;
    };
    for pid in text
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        if pid > 0 {
            // SAFETY: signalling a process; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// One attempt at removing a cgroup: kills its members, then removes the directory
/// (which the kernel refuses while a member is still exiting). True when it is gone.
fn try_remove(directory: &Path) -> bool {
    kill_members(directory);
    match std::fs::remove_dir(directory) {
        Ok(()) => true,
        Err(error) => error.kind() == io::ErrorKind::NotFound,
    }
}

/// Removes a cgroup, retrying while its killed members exit, for at most `patience`.
fn remove_blocking(directory: &Path, patience: Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if try_remove(directory) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a child does between fork and exec to come under its limits: join its cgroups and
/// take the fallback's address-space limit. Plain data (the descriptors stay owned by the
/// [`ProcessCgroup`], which must outlive the spawn), so the child copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct Confinement {
    /// Open `cgroup.procs` files; -1 where unused (a program joins at most a cpu and a
    /// memory cgroup).
    procs: [RawFd; 2],
    address_space_bytes: Option<u64>,
}

impl Default for Confinement {
    fn default() -> Confinement {
        Confinement {
            procs: [-1, -1],
            address_space_bytes: None,
        }
    }
}

impl Confinement {
    /// Moves the calling process into its cgroups and sets its address-space limit. Meant
    /// for the child between fork and exec: only async-signal-safe system calls (write,
    /// setrlimit), nothing allocated, errors as raw OS errors.
    pub fn enter(&self) -> io::Result<()> {
        for descriptor in self.procs {
            if descriptor < 0 {
                continue;
            }
            // "0" is the writing process itself.
            // SAFETY: writes one byte from a static buffer to a descriptor the parent
            // opened and keeps open until the spawn returns.
            let written = unsafe { libc::write(descriptor, b"0".as_ptr().cast(), 1) };
            if written < 0 {
                return Err(io::Error::last_os_error());
            }
            if written != 1 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
        }
        if let Some(bytes) = self.address_space_bytes {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            // SAFETY: setrlimit reads the struct it is given; async-signal-safe.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// One cgroup directory a program joins.
#[derive(Debug)]
struct Joined {
    directory: PathBuf,
    version: Version,
    /// Its `cgroup.procs`, opened before the fork.
    procs: File,
    holds_memory: bool,
}

/// The cgroups of one run of one program (created before each start, removed after it
/// ends), with the limits written, or the fallback and its warning.
#[derive(Debug)]
pub struct ProcessCgroup {
    limits: Limits,
    joined: Vec<Joined>,
    address_space_bytes: Option<u64>,
    /// The memory cgroup's OOM-kill count when it was made.
    oom_kills_at_start: u64,
    warnings: Vec<String>,
    removed: bool,
}

impl ProcessCgroup {
    /// Creates the cgroups named `name` (`service-web-0`) under the node's parents and
    /// writes `limits` into them. Never fails: a controller this host does not offer, or
    /// a cgroup the agent may not create, becomes a warning (and for memory the
    /// `RLIMIT_AS` fallback), so a program with limits still starts, and says why its
    /// limits are weaker than asked.
    pub fn create(node: &NodeCgroups, name: &str, limits: Limits) -> ProcessCgroup {
        let mut cgroup = ProcessCgroup {
            limits,
            joined: Vec::new(),
            address_space_bytes: None,
            oom_kills_at_start: 0,
            warnings: Vec::new(),
            removed: false,
        };
        if let Some(millis) = limits.cpu_millis {
            match &node.layout.cpu {
                None => cgroup.warnings.push(format!(
                    "--cpus {} is not enforced: this node has no cpu controller (cgroup)",
                    cpus_number(millis)
                )),
                Some(hierarchy) => {
                    if let Err(error) = cgroup.join(node, hierarchy, name, "cpu", |directory| {
                        write_cpu_limit(directory, hierarchy.version, millis)
                    }) {
                        cgroup.warnings.push(format!(
                            "--cpus {} is not enforced: {error}",
                            cpus_number(millis)
                        ));
                    }
                }
            }
            if millis > node.cpus.saturating_mul(1000) {
                cgroup.warnings.push(format!(
                    "--cpus {} is more than this node's {} CPU(s): it holds nothing back here",
                    cpus_number(millis),
                    node.cpus
                ));
            }
        }
        if let Some(bytes) = limits.memory_bytes {
            let outcome = match &node.layout.memory {
                None => Err("the memory controller is off".to_string()),
                Some(hierarchy) => cgroup
                    .join(node, hierarchy, name, "memory", |directory| {
                        write_memory_limit(directory, hierarchy.version, bytes)
                    })
                    .map_err(|error| format!("no memory cgroup ({error})")),
            };
            if let Err(reason) = outcome {
                cgroup.address_space_bytes = Some(bytes);
                cgroup.warnings.push(format!(
                    "{reason}: --memory limited by RLIMIT_AS (address space) instead, which counts \
                     mappings, not memory used; add cgroup_enable=memory to the kernel command \
                     line, or run the agent as root"
                ));
            }
            if let Some(total) = node.memory_bytes
                && bytes > total
            {
                cgroup.warnings.push(format!(
                    "--memory {} is more than this node's {} of memory: it holds nothing back here",
                    describe_bytes(bytes),
                    describe_bytes(total)
                ));
            }
        }
        cgroup.oom_kills_at_start = cgroup.oom_kills().unwrap_or(0);
        cgroup
    }

    /// Makes (or reuses, when cpu and memory share a tree) the cgroup `name` in
    /// `hierarchy` and writes one controller's limits into it.
    fn join(
        &mut self,
        node: &NodeCgroups,
        hierarchy: &Hierarchy,
        name: &str,
        controller: &'static str,
        write_limits: impl Fn(&Path) -> Result<(), LimitsError>,
    ) -> Result<(), LimitsError> {
        let parent = node.parent(hierarchy);
        let directory = parent.join(name);
        let existing = self
            .joined
            .iter()
            .position(|joined| joined.directory == directory);
        if existing.is_none() {
            if self.joined.len() >= 2 {
                // A program joins a cpu and a memory cgroup at most.
                return Err(LimitsError::Create {
                    path: directory,
                    source: io::Error::other("more than two cgroup trees"),
                });
            }
            node.ensure_parent(hierarchy, &[controller])?;
            // One left by a run that ended without removing it (an agent killed meanwhile
            // is cleaned at start; this is the same replica restarting).
            if directory.exists() {
                remove_blocking(&directory, Duration::from_millis(500));
            }
            std::fs::create_dir(&directory).map_err(|source| LimitsError::Create {
                path: directory.clone(),
                source,
            })?;
            let procs_path = hierarchy.procs_file(&directory);
            let procs = match std::fs::OpenOptions::new().write(true).open(&procs_path) {
                Ok(procs) => procs,
                Err(source) => {
                    let _ = std::fs::remove_dir(&directory);
                    return Err(LimitsError::Open {
                        path: procs_path,
                        source,
                    });
                }
            };
            self.joined.push(Joined {
                directory: directory.clone(),
                version: hierarchy.version,
                procs,
                holds_memory: false,
            });
        } else if hierarchy.version == Version::V2 {
            node.ensure_parent(hierarchy, &[controller])?;
        }
        let result = write_limits(&directory);
        match result {
            Ok(()) => {
                if controller == "memory"
                    && let Some(joined) = self
                        .joined
                        .iter_mut()
                        .find(|joined| joined.directory == directory)
                {
                    joined.holds_memory = true;
                }
                Ok(())
            }
            Err(error) => {
                // Not joined with half its limits: drop it unless the other controller
                // uses it.
                if existing.is_none()
                    && let Some(position) = self
                        .joined
                        .iter()
                        .position(|joined| joined.directory == directory)
                {
                    let joined = self.joined.remove(position);
                    let _ = std::fs::remove_dir(&joined.directory);
                }
                Err(error)
            }
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the child must do before exec (see [`Confinement::enter`]).
    pub fn confinement(&self) -> Confinement {
        let mut confinement = Confinement {
            address_space_bytes: self.address_space_bytes,
            ..Confinement::default()
        };
        for (slot, joined) in confinement.procs.iter_mut().zip(&self.joined) {
            *slot = joined.procs.as_raw_fd();
        }
        confinement
    }

    /// Why the limits are weaker than asked (`None` when they hold as asked).
    pub fn warning(&self) -> Option<String> {
        (!self.warnings.is_empty()).then(|| self.warnings.join("; "))
    }

    /// The cgroup directories the program joins.
    pub fn directories(&self) -> Vec<PathBuf> {
        self.joined
            .iter()
            .map(|joined| joined.directory.clone())
            .collect()
    }

    /// The memory cgroup's OOM-kill count: v2 `memory.events`, v1 `memory.oom_control`
    /// (kernels from 4.13), or for older v1 kernels the times the limit was hit
    /// (`memory.failcnt`, `memory.memsw.failcnt`), the nearest they tell.
    pub fn oom_kills(&self) -> Option<u64> {
        let joined = self.joined.iter().find(|joined| joined.holds_memory)?;
        let read = |file: &str| std::fs::read_to_string(joined.directory.join(file)).ok();
        match joined.version {
            Version::V2 => keyed_value(&read("memory.events")?, "oom_kill"),
            Version::V1 => read("memory.oom_control")
                .and_then(|text| keyed_value(&text, "oom_kill"))
                .or_else(|| {
                    let count =
                        |file: &str| read(file).and_then(|text| text.trim().parse::<u64>().ok());
                    Some(count("memory.failcnt")? + count("memory.memsw.failcnt").unwrap_or(0))
                }),
        }
    }

    /// How the run ended when the kernel's OOM killer ended it (its cgroup's count grew):
    /// `OOM-killed (memory limit 32 MiB)` when the program itself died of SIGKILL, or a
    /// note to add to its exit when the killer took one of its children. `None` when no
    /// OOM kill happened (or nothing counts them here).
    pub fn describe_oom(&self, killed_by_sigkill: bool) -> Option<String> {
        let kills = self.oom_kills()?.saturating_sub(self.oom_kills_at_start);
        if kills == 0 {
            return None;
        }
        let limit = self
            .limits
            .memory_bytes
            .map(describe_bytes)
            .unwrap_or_else(|| "unknown".to_string());
        Some(if killed_by_sigkill {
            format!("OOM-killed (memory limit {limit})")
        } else {
            format!("a process of it was OOM-killed (memory limit {limit})")
        })
    }

    /// Kills whatever is left in the cgroups and removes them, waiting up to a second for
    /// killed members to finish exiting.
    pub async fn remove(mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            if self.try_remove_all() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    directories = ?self.directories(),
                    "a cgroup could not be removed (a process in it does not exit); the agent's next start removes it"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn try_remove_all(&mut self) -> bool {
        let mut all = true;
        for joined in &self.joined {
            all &= try_remove(&joined.directory);
        }
        self.removed = all;
        all
    }
}

impl Drop for ProcessCgroup {
    /// A cgroup not removed with [`ProcessCgroup::remove`] (its supervisor was cancelled)
    /// gets one attempt here; what stays is removed at the agent's next start.
    fn drop(&mut self) {
        if !self.removed {
            self.try_remove_all();
        }
    }
}

/// `--cpus` as typed: `0.5`, `2`.
fn cpus_number(millis: u32) -> String {
    describe_cpus(millis)
        .trim_end_matches(" CPUs")
        .trim_end_matches(" CPU")
        .to_string()
}

fn write_cpu_limit(directory: &Path, version: Version, millis: u32) -> Result<(), LimitsError> {
    let quota = u64::from(millis) * CPU_PERIOD_MICROSECONDS / 1000;
    match version {
        Version::V2 => write_value(
            &directory.join("cpu.max"),
            &format!("{quota} {CPU_PERIOD_MICROSECONDS}"),
        ),
        Version::V1 => {
            let quota_path = directory.join("cpu.cfs_quota_us");
            if !quota_path.exists() {
                // A kernel built without CFS bandwidth control.
                return Err(LimitsError::Open {
                    path: quota_path,
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            write_value(
                &directory.join("cpu.cfs_period_us"),
                &CPU_PERIOD_MICROSECONDS.to_string(),
            )?;
            write_value(&quota_path, &quota.to_string())
        }
    }
}

fn write_memory_limit(directory: &Path, version: Version, bytes: u64) -> Result<(), LimitsError> {
    let value = bytes.to_string();
    // Where swap is accounted, memory plus swap gets the same bound: the limit is not
    // just pushed out to swap (a Pi's SD card, which it would wear).
    match version {
        Version::V2 => {
            write_value(&directory.join("memory.max"), &value)?;
            let swap = directory.join("memory.swap.max");
            if swap.exists() {
                write_value(&swap, "0")?;
            }
            // An OOM kill takes the whole program (all its processes), as the supervisor
            // treats it as one.
            let group = directory.join("memory.oom.group");
            if group.exists() {
                write_value(&group, "1")?;
            }
            Ok(())
        }
        Version::V1 => {
            write_value(&directory.join("memory.limit_in_bytes"), &value)?;
            // After the memory limit: the kernel keeps memsw at least as large.
            let swap = directory.join("memory.memsw.limit_in_bytes");
            if swap.exists() {
                write_value(&swap, &value)?;
            }
            Ok(())
        }
    }
}

/// A whole node's limits, written on its parent cgroup `bramble-<cluster>-<node>` rather
/// than on one program's: an emulated board (`bramble up --profile`), where the agent and
/// every program it starts (in sibling children of the parent) share the board's CPU and
/// memory, as they share a real board's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// CPU time the whole node may use per period, summed over its threads (CFS bandwidth
    /// control: `cpu.cfs_quota_us` in v1, the first number of `cpu.max` in v2).
    pub cpu_quota_microseconds: u64,
    pub cpu_period_microseconds: u64,
    pub memory_bytes: u64,
}

/// The smallest quota and the period bounds the kernel accepts (v1 and v2 alike: 1 ms to
/// 1 s for the period, at least 1 ms of quota).
pub const MINIMUM_CPU_QUOTA_MICROSECONDS: u64 = 1_000;
pub const MINIMUM_CPU_PERIOD_MICROSECONDS: u64 = 1_000;
pub const MAXIMUM_CPU_PERIOD_MICROSECONDS: u64 = 1_000_000;

/// The leaf under the node's parent that the agent itself runs in: cgroup v2 lets no
/// process sit in a cgroup whose children use controllers, and the services' cgroups are
/// the parent's children.
pub const AGENT_LEAF: &str = "agent";

/// The agent's leaf cgroups, opened for [`Confinement::enter`] (kept open until the agent
/// has been spawned).
#[derive(Debug)]
pub struct AgentCgroup {
    joined: Vec<(PathBuf, File)>,
}

impl AgentCgroup {
    /// What the agent's child process does before exec to start inside the board.
    pub fn confinement(&self) -> Confinement {
        let mut confinement = Confinement::default();
        for (slot, (_, procs)) in confinement.procs.iter_mut().zip(&self.joined) {
            *slot = procs.as_raw_fd();
        }
        confinement
    }

    /// The leaf directories (one per tree).
    pub fn directories(&self) -> Vec<PathBuf> {
        self.joined
            .iter()
            .map(|(directory, _)| directory.clone())
            .collect()
    }
}

impl NodeCgroups {
    /// Writes `limits` on the node's parent cgroups (made if missing) and makes the agent's
    /// leaf under each. Unlike a program's limits this fails rather than degrade: a board
    /// profile that silently ran unlimited would measure the host, not the board.
    pub fn limit_node(&self, limits: &NodeLimits) -> Result<AgentCgroup, LimitsError> {
        let missing = |controller| LimitsError::NoController {
            controller,
            layout: self.layout.describe(),
        };
        let cpu = self.layout.cpu.as_ref().ok_or_else(|| missing("cpu"))?;
        let memory = self
            .layout
            .memory
            .as_ref()
            .ok_or_else(|| missing("memory"))?;
        let cpu_parent = self.ensure_parent(cpu, &["cpu"])?;
        write_node_cpu_quota(&cpu_parent, cpu.version, limits)?;
        let memory_parent = self.ensure_parent(memory, &["memory"])?;
        write_node_memory_limit(&memory_parent, memory.version, limits.memory_bytes)?;
        let mut joined = Vec::new();
        for hierarchy in self.hierarchies() {
            let leaf = self.parent(hierarchy).join(AGENT_LEAF);
            match std::fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(LimitsError::Create { path: leaf, source }),
            }
            let procs_path = hierarchy.procs_file(&leaf);
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(&procs_path)
                .map_err(|source| LimitsError::Open {
                    path: procs_path,
                    source,
                })?;
            joined.push((leaf, procs));
        }
        Ok(AgentCgroup { joined })
    }

    /// Removes every cgroup of this node, the parent last, killing what still runs in them
    /// (`bramble down`: the agents have stopped; a program that outlived its agent goes
    /// with the board). True when nothing is left.
    pub fn remove_node(&self) -> bool {
        let mut all = true;
        for hierarchy in self.hierarchies() {
            let parent = self.parent(hierarchy);
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                        all &= remove_blocking(&entry.path(), Duration::from_secs(2));
                    }
                }
            }
            all &= remove_blocking(&parent, Duration::from_secs(2));
        }
        all
    }
}

/// The node's CPU quota on its parent. v1 checks a parent's quota against its children's
/// at every write, so the old quota is lifted first (a child never exceeds "unlimited")
/// and the period set before the new quota.
fn write_node_cpu_quota(
    directory: &Path,
    version: Version,
    limits: &NodeLimits,
) -> Result<(), LimitsError> {
    let quota = limits.cpu_quota_microseconds;
    let period = limits.cpu_period_microseconds;
    match version {
        Version::V2 => write_value(&directory.join("cpu.max"), &format!("{quota} {period}")),
        Version::V1 => {
            let quota_path = directory.join("cpu.cfs_quota_us");
            if !quota_path.exists() {
                return Err(LimitsError::Open {
                    path: quota_path,
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            write_value(&quota_path, "-1")?;
            write_value(&directory.join("cpu.cfs_period_us"), &period.to_string())?;
            write_value(&quota_path, &quota.to_string())
        }
    }
}

/// The node's memory limit on its parent: RAM and swap together (a board's RAM is its
/// bound). Unlike a program's cgroup, `memory.oom.group` stays off: a board out of memory
/// loses one process to the OOM killer, not everything it runs.
fn write_node_memory_limit(
    directory: &Path,
    version: Version,
    bytes: u64,
) -> Result<(), LimitsError> {
    let value = bytes.to_string();
    match version {
        Version::V2 => {
            write_value(&directory.join("memory.max"), &value)?;
            let swap = directory.join("memory.swap.max");
            if swap.exists() {
                write_value(&swap, "0")?;
            }
            Ok(())
        }
        Version::V1 => {
            // memsw must stay at least the memory limit: lifted first, set after.
            let swap = directory.join("memory.memsw.limit_in_bytes");
            if swap.exists() {
                write_value(&swap, "-1")?;
            }
            write_value(&directory.join("memory.limit_in_bytes"), &value)?;
            if swap.exists() {
                write_value(&swap, &value)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This development host: cgroup v1 per controller, cpu and cpuacct apart, a unified
    /// tree mounted with no controllers.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// Raspberry Pi OS (bookworm): the unified tree only.
    const UNIFIED_MOUNTINFO: &str = "\
22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// Debian 10 style: cpu and cpuacct mounted together, with optional fields.
    const COMOUNTED_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
34 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
38 25 0:34 /docker/abc /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,memory
";

    #[test]
    fn layouts_are_read_from_mountinfo() {
        let hybrid = Layout::from_mountinfo(HYBRID_MOUNTINFO, |_| Some(String::new()));
        assert_eq!(
            hybrid.cpu,
            Some(Hierarchy {
                version: Version::V1,
                mount: "/sys/fs/cgroup/cpu".into(),
                root: "/".into(),
            })
        );
        assert_eq!(
            hybrid.memory.as_ref().map(|memory| memory.mount.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );

        let unified = Layout::from_mountinfo(UNIFIED_MOUNTINFO, |mount| {
            (mount == Path::new("/sys/fs/cgroup")).then(|| "cpuset cpu io memory pids\n".into())
        });
        let expected = Hierarchy {
            version: Version::V2,
            mount: "/sys/fs/cgroup".into(),
            root: "/".into(),
        };
        assert_eq!(unified.cpu, Some(expected.clone()));
        assert_eq!(unified.memory, Some(expected));

        // A Pi kernel without cgroup_enable=memory: the unified tree lacks memory.
        let no_memory = Layout::from_mountinfo(UNIFIED_MOUNTINFO, |_| Some("cpu pids".into()));
        assert!(no_memory.cpu.is_some() && no_memory.memory.is_none());
        assert!(no_memory.describe().contains("memory: no controller"));

        let comounted = Layout::from_mountinfo(COMOUNTED_MOUNTINFO, |_| Some(String::new()));
        assert_eq!(
            comounted.cpu.as_ref().map(|cpu| cpu.mount.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        let memory = comounted.memory.expect("the memory tree");
        assert_eq!(memory.root, "/docker/abc");
        assert_eq!(
            memory.directory_of("/docker/abc/bramble-x-n1/service-web-0"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/bramble-x-n1/service-web-0"
            ))
        );
        assert_eq!(memory.directory_of("/docker/abcdef"), None);
        assert_eq!(memory.directory_of("/elsewhere"), None);
        assert!(Layout::from_mountinfo("", |_| None).cpu.is_none());
    }

    #[test]
    fn mount_points_with_escaped_characters_are_decoded() {
        let text = "40 31 0:37 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].point, PathBuf::from("/mnt/my cgroups"));
        assert_eq!(bramble_util::mounts::unescape_field("a\\134b\\"), "a\\b\\");
        assert!(parse_mountinfo("garbage line\n\n").is_empty());
    }

    #[test]
    fn proc_cgroup_lines_are_parsed() {
        // This development host's /proc/self/cgroup.
        let text = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/d482ef24\n\
                    2:cpuacct:/\n1:cpu:/bramble-x-n1/service-web-0\n0::/\n";
        let entries = parse_proc_cgroup(text);
        assert_eq!(entries.len(), 6);
        assert_eq!(
            entries[2],
            Membership {
                hierarchy_id: 4,
                controllers: vec!["memory".into()],
                path: "/process_api/d482ef24".into(),
            }
        );
        assert_eq!(entries[0].controllers, vec!["name=systemd".to_string()]);
        assert!(entries[5].controllers.is_empty() && entries[5].hierarchy_id == 0);
        // A v2-only host, a path holding ':'.
        let unified = parse_proc_cgroup("0::/system.slice/bramble:agent.service\n");
        assert_eq!(unified[0].path, "/system.slice/bramble:agent.service");
    }

    #[test]
    fn oom_counters_are_read_from_both_versions() {
        // cgroup v2 memory.events after an OOM kill.
        let events = "low 0\nhigh 0\nmax 152\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(1));
        assert_eq!(keyed_value(events, "max"), Some(152));
        // cgroup v1 memory.oom_control, this host, after one.
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(keyed_value(control, "oom_kill"), Some(1));
        assert_eq!(keyed_value(control, "oom_kill_disable"), Some(0));
        // Before kernel 4.13 the line is missing.
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
        let meminfo = "MemTotal:       24683520 kB\nMemFree:  182272 kB\n";
        assert_eq!(
            keyed_value(&meminfo.replace(':', " "), "MemTotal"),
            Some(24683520)
        );
    }

    #[test]
    fn limits_are_described_as_typed() {
        assert_eq!(describe_cpus(500), "0.5 CPU");
        assert_eq!(describe_cpus(1000), "1 CPU");
        assert_eq!(describe_cpus(2000), "2 CPUs");
        assert_eq!(describe_cpus(1250), "1.25 CPUs");
        assert_eq!(describe_cpus(10), "0.01 CPU");
        assert_eq!(cpus_number(1250), "1.25");
        assert_eq!(describe_bytes(32 * MIB), "32 MiB");
        assert_eq!(describe_bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(describe_bytes(1000), "1000 bytes");
        let limits = Limits {
            cpu_millis: Some(500),
            memory_bytes: Some(128 * MIB),
        };
        assert_eq!(limits.describe(), "0.5 CPU, 128 MiB");
        assert!(Limits::default().is_empty() && Limits::default().describe().is_empty());
    }

    /// Runs `program` confined, returning its exit and what it printed.
    fn run_confined(cgroup: &ProcessCgroup, script: &str) -> (std::process::ExitStatus, String) {
        use std::os::unix::process::CommandExt;
        let confinement = cgroup.confinement();
        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        // SAFETY: `enter` only makes async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || confinement.enter());
        }
        let output = command.output().expect("running the test program");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }

    fn python_present() -> bool {
        std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    }

    /// The fallback, for real: a layout without a memory controller makes the program run
    /// under RLIMIT_AS, which a 100 MB allocation exceeds at 64 MiB and not at 512 MiB.
    #[test]
    fn without_a_memory_controller_the_address_space_is_limited_with_a_warning() {
        if !python_present() {
            eprintln!("skipped: python3 is not installed");
            return;
        }
        let node = NodeCgroups::with_layout("unit-fallback", "n1", Layout::default());
        let allocate = "exec python3 -c 'b = bytearray(100 * 1024 * 1024); print(\"allocated\")'";
        let small = ProcessCgroup::create(
            &node,
            "service-fallback-0",
            Limits {
                cpu_millis: Some(500),
                memory_bytes: Some(64 * MIB),
            },
        );
        let warning = small.warning().expect("a warning");
        assert!(
            warning.contains("RLIMIT_AS") && warning.contains("cgroup_enable=memory"),
            "{warning}"
        );
        assert!(warning.contains("--cpus 0.5 is not enforced"), "{warning}");
        assert!(small.directories().is_empty());
        let (exit, output) = run_confined(&small, allocate);
        assert!(
            !exit.success() && output.contains("MemoryError"),
            "{output}"
        );
        let large = ProcessCgroup::create(
            &node,
            "service-fallback-1",
            Limits {
                cpu_millis: None,
                memory_bytes: Some(512 * MIB),
            },
        );
        let (exit, output) = run_confined(&large, allocate);
        assert!(exit.success() && output.contains("allocated"), "{output}");
        assert_eq!(small.describe_oom(true), None);
    }

    /// Where this host has the controllers (and the test runs as root): a real cgroup with
    /// the quota and the limit written, the child inside it from its first instruction, an
    /// OOM kill counted and described, and nothing left after removal.
    #[tokio::test]
    async fn a_real_cgroup_holds_its_program_and_counts_its_oom_kill() {
        let node = NodeCgroups::new(&format!("unit{}", std::process::id()), "n1");
        let (Some(cpu), Some(memory)) = (node.layout().cpu.clone(), node.layout().memory.clone())
        else {
            eprintln!(
                "skipped: this host lacks a cpu or memory controller ({})",
                node.layout().describe()
            );
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !python_present() {
            eprintln!("skipped: needs root (to create cgroups) and python3");
            return;
        }
        let limits = Limits {
            cpu_millis: Some(250),
            memory_bytes: Some(32 * MIB),
        };
        let cgroup = ProcessCgroup::create(&node, "service-unit-0", limits);
        assert_eq!(cgroup.warning(), None);
        let cpu_directory = node.parent(&cpu).join("service-unit-0");
        let memory_directory = node.parent(&memory).join("service-unit-0");
        let quota = match cpu.version {
            Version::V2 => std::fs::read_to_string(cpu_directory.join("cpu.max")),
            Version::V1 => std::fs::read_to_string(cpu_directory.join("cpu.cfs_quota_us")),
        }
        .expect("the quota file");
        assert!(quota.starts_with("25000"), "{quota}");
        let limit = match memory.version {
            Version::V2 => std::fs::read_to_string(memory_directory.join("memory.max")),
            Version::V1 => std::fs::read_to_string(memory_directory.join("memory.limit_in_bytes")),
        }
        .expect("the limit file");
        assert_eq!(limit.trim(), (32 * MIB).to_string());

        // The shell prints its own cgroups: it is in them before it runs a line.
        let (exit, output) = run_confined(&cgroup, "cat /proc/$$/cgroup");
        assert!(exit.success(), "{output}");
        let entries = parse_proc_cgroup(&output);
        let cpu_entry = entries.iter().find(|entry| match cpu.version {
            Version::V2 => entry.hierarchy_id == 0,
            Version::V1 => entry.controllers.iter().any(|name| name == "cpu"),
        });
        assert!(
            cpu_entry
                .and_then(|entry| cpu.directory_of(&entry.path))
                .is_some_and(|directory| directory == cpu_directory),
            "{output}"
        );

        let (exit, output) = run_confined(
            &cgroup,
            "exec python3 -c 'b = bytearray(100 * 1024 * 1024); print(\"allocated\")'",
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit.signal(), Some(libc::SIGKILL), "{output}");
        assert_eq!(
            cgroup.describe_oom(true).as_deref(),
            Some("OOM-killed (memory limit 32 MiB)")
        );
        let directories = cgroup.directories();
        assert_eq!(directories.len(), if cpu == memory { 1 } else { 2 });
        cgroup.remove().await;
        assert!(directories.iter().all(|directory| !directory.exists()));
        node.remove_parents();
        assert!(!node.parent(&cpu).exists() && !node.parent(&memory).exists());
    }

    /// This host has no controller on cgroup v2, so the v2 files are checked as plain
    /// files laid out as the unified tree has them: what is written, and in which.
    #[test]
    fn v2_limits_are_written_as_the_unified_tree_reads_them() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path();
        for file in [
            "cpu.max",
            "memory.max",
            "memory.swap.max",
            "memory.oom.group",
            "cgroup.subtree_control",
        ] {
            std::fs::write(path.join(file), "").expect("a stand-in file");
        }
        let read = |file: &str| std::fs::read_to_string(path.join(file)).unwrap_or_default();
        write_cpu_limit(path, Version::V2, 500).expect("cpu.max");
        assert_eq!(read("cpu.max"), "50000 100000");
        write_cpu_limit(path, Version::V2, 10).expect("cpu.max");
        assert_eq!(read("cpu.max"), "1000 100000");
        write_memory_limit(path, Version::V2, 32 * MIB).expect("memory.max");
        assert_eq!(read("memory.max"), (32 * MIB).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        enable_controllers(path, &["memory"]).expect("subtree_control");
        assert_eq!(read("cgroup.subtree_control"), "+memory");
        // Already enabled: nothing is written.
        std::fs::write(path.join("cgroup.subtree_control"), "cpu memory\n").expect("reset");
        enable_controllers(path, &["cpu", "memory"]).expect("subtree_control");
        assert_eq!(read("cgroup.subtree_control"), "cpu memory\n");
        // A v1 tree without CFS bandwidth control cannot take a quota: said so.
        let error = write_cpu_limit(path, Version::V1, 500).expect_err("no cpu.cfs_quota_us");
        assert!(error.to_string().contains("cpu.cfs_quota_us"), "{error}");
    }

    /// A board's limits as the unified tree (Raspberry Pi OS) and a v1 tree (this host)
    /// read them, on plain files laid out as each has them.
    #[test]
    fn node_limits_are_written_on_the_parent_in_both_versions() {
        let limits = NodeLimits {
            cpu_quota_microseconds: 9_200,
            cpu_period_microseconds: 100_000,
            memory_bytes: GIB,
        };
        let unified = tempfile::tempdir().expect("a temporary directory");
        let path = unified.path();
        for file in ["cpu.max", "memory.max", "memory.swap.max"] {
            std::fs::write(path.join(file), "max").expect("a stand-in file");
        }
        let read = |directory: &Path, file: &str| {
            std::fs::read_to_string(directory.join(file)).unwrap_or_default()
        };
        write_node_cpu_quota(path, Version::V2, &limits).expect("cpu.max");
        assert_eq!(read(path, "cpu.max"), "9200 100000");
        write_node_memory_limit(path, Version::V2, GIB).expect("memory.max");
        assert_eq!(read(path, "memory.max"), GIB.to_string());
        assert_eq!(read(path, "memory.swap.max"), "0");
        assert!(
            !path.join("memory.oom.group").exists(),
            "a board is not one program"
        );

        let separate = tempfile::tempdir().expect("a temporary directory");
        let path = separate.path();
        for file in [
            "cpu.cfs_quota_us",
            "cpu.cfs_period_us",
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
        ] {
            std::fs::write(path.join(file), "-1").expect("a stand-in file");
        }
        let long_period = NodeLimits {
            cpu_quota_microseconds: 1_070,
            cpu_period_microseconds: 110_000,
            memory_bytes: 512 * MIB,
        };
        write_node_cpu_quota(path, Version::V1, &long_period).expect("v1 quota");
        assert_eq!(read(path, "cpu.cfs_quota_us"), "1070");
        assert_eq!(read(path, "cpu.cfs_period_us"), "110000");
        write_node_memory_limit(path, Version::V1, 512 * MIB).expect("v1 memory");
        assert_eq!(read(path, "memory.limit_in_bytes"), (512 * MIB).to_string());
        assert_eq!(
            read(path, "memory.memsw.limit_in_bytes"),
            (512 * MIB).to_string()
        );
        // Without CFS bandwidth control there is no quota to write: an error, not a shrug.
        std::fs::remove_file(path.join("cpu.cfs_quota_us")).expect("removing");
        assert!(write_node_cpu_quota(path, Version::V1, &limits).is_err());

        // No controller at all: a clear error naming it.
        let node = NodeCgroups::with_layout("unit-board", "n1", Layout::default());
        let error = node.limit_node(&limits).expect_err("no controllers");
        assert!(error.to_string().contains("no cpu controller"), "{error}");
    }

    /// The whole v2 path of a board on plain files laid out as the unified tree has them
    /// (this host has no v2 controllers): controllers enabled for the children at the top
    /// and on the parent, the limits on the parent, the agent's one leaf (cpu and memory
    /// share the tree) opened for joining.
    #[test]
    fn a_board_on_the_unified_tree_is_laid_out_as_v2_wants() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let mount = directory.path().to_path_buf();
        let hierarchy = Hierarchy {
            version: Version::V2,
            mount: mount.clone(),
            root: "/".into(),
        };
        let layout = Layout {
            cpu: Some(hierarchy.clone()),
            memory: Some(hierarchy),
        };
        let node = NodeCgroups::with_layout("unit-v2", "n1", layout);
        let parent = mount.join("bramble-unitv2-n1");
        let leaf = parent.join(AGENT_LEAF);
        std::fs::create_dir_all(&leaf).expect("the stand-in cgroups");
        for file in [
            mount.join("cgroup.subtree_control"),
            parent.join("cgroup.subtree_control"),
            parent.join("cpu.max"),
            parent.join("memory.max"),
            parent.join("memory.swap.max"),
            leaf.join("cgroup.procs"),
        ] {
            std::fs::write(&file, "").expect("a stand-in file");
        }
        let agent = node
            .limit_node(&NodeLimits {
                cpu_quota_microseconds: 1_000,
                cpu_period_microseconds: 152_000,
                memory_bytes: 512 * MIB,
            })
            .expect("the board");
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(read(parent.join("cpu.max")), "1000 152000");
        assert_eq!(read(parent.join("memory.max")), (512 * MIB).to_string());
        assert_eq!(read(parent.join("memory.swap.max")), "0");
        // Each `+controller` is its own write (the kernel keeps them all; a plain file keeps
        // the last).
        assert_eq!(read(parent.join("cgroup.subtree_control")), "+memory");
        assert_eq!(read(mount.join("cgroup.subtree_control")), "+memory");
        assert_eq!(agent.directories(), vec![leaf]);
        assert!(agent.confinement().procs[0] >= 0 && agent.confinement().procs[1] < 0);
    }

    /// Where this host has the controllers and the test runs as root: the board's limits on
    /// the parent, the agent in its leaf from its first instruction, a service's cgroup
    /// beside it, and the services' clean-up (`remove_stale`, `remove_parents`) leaving
    /// the board's parent and its limits alone; `remove_node` takes everything.
    #[test]
    fn a_real_board_holds_its_agent_and_outlives_the_services_clean_up() {
        let node = NodeCgroups::new(&format!("board{}", std::process::id()), "n1");
        let (Some(cpu), Some(memory)) = (node.layout().cpu.clone(), node.layout().memory.clone())
        else {
            eprintln!("skipped: this host lacks a cpu or memory controller");
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (to create cgroups)");
            return;
        }
        let limits = NodeLimits {
            cpu_quota_microseconds: 20_000,
            cpu_period_microseconds: 100_000,
            memory_bytes: 256 * MIB,
        };
        let agent = node.limit_node(&limits).expect("the board's cgroups");
        let quota = |directory: &Path| match cpu.version {
            Version::V2 => std::fs::read_to_string(directory.join("cpu.max")),
            Version::V1 => std::fs::read_to_string(directory.join("cpu.cfs_quota_us")),
        };
        let cpu_parent = node.parent(&cpu);
        assert!(quota(&cpu_parent).expect("quota").starts_with("20000"));
        let memory_file = match memory.version {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        };
        let memory_limit = || std::fs::read_to_string(node.parent(&memory).join(memory_file));
        assert_eq!(
            memory_limit().expect("limit").trim(),
            (256 * MIB).to_string()
        );

        use std::os::unix::process::CommandExt;
        let confinement = agent.confinement();
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "cat /proc/$$/cgroup"]);
        // SAFETY: `enter` only makes async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || confinement.enter());
        }
        let output = command.output().expect("running the test program");
        let text = String::from_utf8_lossy(&output.stdout);
        let entries = parse_proc_cgroup(&text);
        let cpu_entry = entries.iter().find(|entry| match cpu.version {
            Version::V2 => entry.hierarchy_id == 0,
            Version::V1 => entry.controllers.iter().any(|name| name == "cpu"),
        });
        assert_eq!(
            cpu_entry.and_then(|entry| cpu.directory_of(&entry.path)),
            Some(cpu_parent.join(AGENT_LEAF)),
            "{text}"
        );

        // A service with a smaller limit nests inside; the services' start-up and stop
        // clean-up leaves the board alone.
        let service = ProcessCgroup::create(
            &node,
            "service-web-0",
            Limits {
                cpu_millis: Some(100),
                memory_bytes: Some(64 * MIB),
            },
        );
        assert_eq!(service.warning(), None);
        drop(service);
        node.remove_stale("service-");
        node.remove_parents();
        assert!(cpu_parent.join(AGENT_LEAF).exists());
        assert!(quota(&cpu_parent).expect("quota").starts_with("20000"));
        assert_eq!(
            memory_limit().expect("limit").trim(),
            (256 * MIB).to_string()
        );
        // Written again (the next start of the agent): the same.
        drop(node.limit_node(&limits).expect("again"));
        drop(agent);
        assert!(node.remove_node());
        assert!(!cpu_parent.exists() && !node.parent(&memory).exists());
    }

    #[test]
    fn stale_cgroups_of_this_node_and_kind_are_removed() {
        let node = NodeCgroups::new(&format!("stale{}", std::process::id()), "n1");
        let Some(cpu) = node.layout().cpu.clone() else {
            eprintln!("skipped: no cpu controller here");
            return;
        };
        let parent = match node.ensure_parent(&cpu, &["cpu"]) {
            Ok(parent) => parent,
            Err(error) => {
                eprintln!("skipped: cannot create cgroups here ({error})");
                return;
            }
        };
        for name in ["service-web-0", "task-7"] {
            std::fs::create_dir(parent.join(name)).expect("a test cgroup");
        }
        // A process left in one (as a daemon that left its process group would be).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        std::fs::write(
            parent.join("service-web-0").join("cgroup.procs"),
            sleeper.id().to_string(),
        )
        .expect("moving the sleeper");
        node.remove_stale("service-");
        assert!(!parent.join("service-web-0").exists());
        assert!(parent.join("task-7").exists(), "another kind is left alone");
        assert!(sleeper.wait().is_ok_and(|exit| !exit.success()));
        let _ = std::fs::remove_dir(parent.join("task-7"));
        node.remove_parents();
        assert!(!parent.exists());
    }
}
