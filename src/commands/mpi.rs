//! `bramble mpirun` and its launcher `bramble mpi-launch`: real Open MPI programs over the
//! cluster. `mpirun` gets a hostfile of the live nodes (their cores as slots) and this
//! binary as its `plm_rsh_agent`; for each node, mpirun runs `bramble mpi-launch <node>
//! orted ...`, which asks that node's agent to start the daemon (`jobs.launch`, a stream
//! over the cluster's mutual TLS, admin credential required) and relays its output and
//! exit code, as ssh would.

use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use bramble_cluster::{NodeState, NodeView};
use bramble_compute::jobs::admin::{METHOD_LAUNCH, METHOD_NODES, WorkerSummary};
use bramble_compute::jobs::launch::{
    LaunchRequest, TAG_EXIT, TAG_HEARTBEAT, TAG_STDERR, TAG_STDOUT, take_record,
};
use bramble_net::Priority;

use crate::cli::{GlobalOptions, MpiLaunchArgs, MpirunArgs};

/// The launcher: runs `command` on `node` through its agent; exits with its code.
pub async fn launch(global: &GlobalOptions, args: &MpiLaunchArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let address = client.address_of(&args.node).await?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("OMPI_") || name.starts_with("PMIX_"))
        .take(bramble_compute::jobs::launch::MAX_ENVIRONMENT)
        .collect();
    let request = LaunchRequest {
        command: args.command.join(" "),
        env,
    };
    request.validate().map_err(|error| anyhow!(error))?;
    let header = postcard::to_allocvec(&request)?;
    let (_trigger, shutdown) = bramble_util::ShutdownTrigger::new();
    let mux = client.mux(shutdown);
    let (sender, receiver) = mux
        .open(address, METHOD_LAUNCH, &header, Priority::Bulk)
        .await
        .map_err(|error| anyhow!("launching on {}: {error}", args.node))?;
    sender
        .finish()
        .await
        .map_err(|error| anyhow!("launching on {}: {error}", args.node))?;
    let mut response = receiver
        .wait()
        .await
        .map_err(|error| anyhow!("launching on {}: {error}", args.node))?;
    let mut buffer = Vec::new();
    loop {
        let chunk = response
            .body
            .next_chunk()
            .await
            .map_err(|error| anyhow!("the launch on {} broke: {error}", args.node))?;
        let Some(chunk) = chunk else {
            bail!("the launch on {} ended without an exit code", args.node);
        };
        buffer.extend_from_slice(&chunk);
        if buffer.len() > 16 * 1024 * 1024 {
            bail!("the launch on {} sent a malformed record", args.node);
        }
        while let Some((tag, bytes)) = take_record(&mut buffer) {
            match tag {
                TAG_STDOUT => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                TAG_STDERR => {
                    let mut stderr = std::io::stderr().lock();
                    stderr.write_all(&bytes)?;
                }
                TAG_EXIT => {
                    let code = bytes
                        .get(..4)
                        .map(|raw| i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
                        .unwrap_or(255);
                    std::process::exit(code.clamp(0, 255));
                }
                TAG_HEARTBEAT => {}
                other => bail!("the launch on {} sent an unknown record {other}", args.node),
            }
        }
    }
}

pub async fn mpirun(global: &GlobalOptions, args: &MpirunArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let found = std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if !found {
        bail!(
            "Open MPI's mpirun is not installed on this machine (Debian: apt-get install openmpi-bin)"
        );
    }
    let (_, nodes): (_, Vec<NodeView>) = client.call_any("cluster.nodes", &()).await?;
    // Drained nodes (`bramble drain`) take no new work, ranks included, unless named.
    let drained = crate::commands::drain::drained_nodes(&client).await?;
    let mut chosen: Vec<&NodeView> = nodes
        .iter()
        .filter(|node| node.state == NodeState::Alive)
        .filter(|node| {
            if args.nodes.is_empty() {
                !drained.contains_key(&node.name)
            } else {
                args.nodes.contains(&node.name)
            }
        })
        .collect();
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    for wanted in &args.nodes {
        if !chosen.iter().any(|node| &node.name == wanted) {
            bail!("--nodes: {wanted} is not a live member");
        }
    }
    if chosen.is_empty() {
        bail!("no live node to run on");
    }
    let directory = Scratch::create()?;
    // Free slots as the jobs scheduler sees them (slots minus tasks running there); a
    // node it has not heard from yet offers its cores.
    let workers: Vec<WorkerSummary> = client
        .call_any::<_, Vec<WorkerSummary>>(METHOD_NODES, &false)
        .await
        .map(|(_, workers)| workers)
        .unwrap_or_default();
    let free_slots = |node: &NodeView| -> u32 {
        match workers.iter().find(|worker| worker.node == node.name) {
            Some(worker) => worker.slots.saturating_sub(worker.used),
            None => node.load.as_ref().map(|load| load.cpus).unwrap_or(1),
        }
    };
    let mut hostfile = String::new();
    let mut slots_total = 0u32;
    let mut offered = Vec::new();
    for node in &chosen {
        let slots = free_slots(node);
        offered.push(format!("{} ({slots} slot(s))", node.name));
        if slots == 0 {
            continue;
        }
        slots_total += slots;
        hostfile.push_str(&format!("{} slots={slots}\n", node.name));
    }
    if args.ranks == 0 || args.ranks > slots_total {
        bail!(
            "-n {}: the chosen nodes have {slots_total} free slot(s) ({}); ask for 1 to {slots_total}",
            args.ranks,
            offered.join(", ")
        );
    }
    let hostfile_path = directory.0.join("hostfile");
    std::fs::write(&hostfile_path, &hostfile)?;
    // mpirun runs its agent as `<agent> <node> <command...>`: a one-line wrapper around
    // this binary, so the agent needs no arguments of its own.
    let exe = std::env::current_exe().context("finding this binary")?;
    let wrapper = directory.0.join("bramble-launch");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' mpi-launch \"$@\"\n",
            exe.display().to_string().replace('\'', "'\\''")
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let mut command = std::process::Command::new("mpirun");
    command
        .arg("--hostfile")
        .arg(&hostfile_path)
        .arg("-n")
        .arg(args.ranks.to_string())
        .args(["--mca", "plm_rsh_agent"])
        .arg(&wrapper)
        // Every daemon is started by its node's agent, not by another daemon.
        .args(["--mca", "plm_rsh_no_tree_spawn", "1"]);
    let loopback = chosen.iter().all(|node| node.addr.ip().is_loopback());
    if loopback {
        // An emulated cluster: every node is this machine's loopback.
        command.args([
            "--mca",
            "oob_tcp_if_include",
            "lo",
            "--mca",
            "btl",
            "self,tcp",
            "--mca",
            "btl_tcp_if_include",
            "lo",
        ]);
    }
    for pair in &args.mca {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--mca {pair:?}: write NAME=VALUE"))?;
        command.args(["--mca", name, value]);
    }
    command.args(&args.program);
    // Several daemons on one machine (the emulator) must not share PMIx's shared-memory
    // store; the hash store works everywhere.
    command.env("PMIX_MCA_gds", "hash");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // The daemons run as the nodes' task user; mpirun itself refuses root without this.
        command
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    if let Some(dir) = &global.dir {
        command.env("BRAMBLE_DIR", dir);
    }
    if let Some(data_dir) = &global.data_dir {
        command.env("BRAMBLE_DATA_DIR", data_dir);
    }
    if let Some(credential) = &global.credential {
        command.env("BRAMBLE_CREDENTIAL", credential);
    }
    eprintln!("mpirun: {} rank(s) over {}", args.ranks, offered.join(", "));
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || command.status())
        .await
        .context("waiting for mpirun")?
        .context("starting mpirun")?;
    drop(directory);
    eprintln!(
        "mpirun: {} after {:.2} s wall clock",
        match status.code() {
            Some(0) => "done".to_string(),
            Some(code) => format!("exit code {code}"),
            None => "killed".to_string(),
        },
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("the MPI program failed ({status})");
    }
    Ok(())
}

/// This run's hostfile and launcher wrapper, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn create() -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!("bramble-mpirun-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
