//! The command line: every command, its flags and its `--help` examples.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bramble",
    version,
    about = "One small binary per node that turns a stack of small Linux boards into one self-healing cluster",
    after_help = "Try it on this PC:\n  bramble up            start an emulated 5-node cluster in ./.bramble\n  bramble nodes         list its members\n  bramble chaos kill n3 kill one and watch the others notice\n  bramble down          stop it"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

/// Where commands find the cluster they talk to.
#[derive(Debug, Clone, Args)]
pub struct GlobalOptions {
    /// Directory of an emulated cluster (made by `bramble up`).
    #[arg(long, global = true, env = "BRAMBLE_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A node's data directory.
    #[arg(long, global = true, env = "BRAMBLE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// An admin credential file (admin.credential.toml) to reach a cluster from anywhere.
    #[arg(long, global = true, env = "BRAMBLE_CREDENTIAL", value_name = "FILE")]
    pub credential: Option<PathBuf>,
    /// The agent to talk to (default: the ones the credential or directory names).
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new cluster with this machine as its first node.
    #[command(
        after_help = "Examples:\n  bramble init --name pi1 --listen 0.0.0.0:7946\n  bramble init --data-dir /tmp/n1 --listen 127.0.0.1:7946\n\nPrints the join token other nodes need; start the node with `bramble agent`."
    )]
    Init(InitArgs),
    /// Join an existing cluster through any of its members.
    #[command(
        after_help = "Example:\n  bramble join 192.168.2.11:7946 --token bramble1-<...> --name pi2\n\nThe token is printed by `bramble init`. Start the node afterwards with `bramble agent`."
    )]
    Join(JoinArgs),
    /// Run this node's agent (the long-running process; systemd runs this).
    #[command(
        after_help = "Example:\n  bramble agent --data-dir /var/lib/bramble\n\nA restarted agent resumes its identity from the data directory and rejoins by itself."
    )]
    Agent,
    /// Leave the cluster gracefully (the node shows as `left`, not `dead`); its agent exits.
    #[command(
        after_help = "Examples:\n  bramble leave                    the node of --data-dir\n  bramble leave --node n4          a node of the emulated cluster in ./.bramble"
    )]
    Leave(LeaveArgs),
    /// List the cluster's nodes with their state, roles, address, load and version.
    #[command(
        after_help = "Examples:\n  bramble nodes\n  bramble nodes --json\n  bramble nodes --from n2          as node n2 sees the cluster"
    )]
    Nodes(NodesArgs),
    /// The named background workers of every node: state, errors, restarts, progress.
    #[command(
        after_help = "Examples:\n  bramble workers\n  bramble workers --node n2\n  bramble workers --json\n\nA worker that failed or panicked shows its error count and last error; most are restarted\nwith back-off (1 s, doubling up to 60 s)."
    )]
    Workers(WorkersArgs),
    /// A node's live figures (CPU, load, memory, disks, network, temperature, throttling)
    /// and its history: the last hour at 1 s, the last day at 1 min.
    #[command(
        after_help = "Examples:\n  bramble metrics n1\n  bramble metrics n1 --json\n  bramble metrics n2 --history 1h\n  bramble metrics n2 --history 24h --json\n\nEvery agent also serves its figures in the Prometheus text format (node_exporter's names)\non http://<node address>:9101/metrics; `bramble status` prints where in an emulated cluster.\n<data-dir>/monitor.toml sets the address (metrics_listen) or switches monitoring off\n(enabled = false)."
    )]
    Metrics(MetricsArgs),
    /// The dashboard's picture in the terminal, refreshing each second: every node's health,
    /// CPU, load, memory, network and disk rates, temperature, throttling and agent memory,
    /// the selected node's CPU since `top` started, and the cluster's alerts.
    #[command(
        after_help = "Examples:\n  bramble top\n  bramble top --interval 2s\n  bramble top --once               one plain table, for scripts (no terminal needed)\n  bramble top --json               one snapshot as JSON: the dashboard's live event, with alerts\n\nKeys: up/down select a node (its CPU is drawn under the table); q or Esc quits.\nColours as on the dashboard: red for dead, left or not answering; amber for suspect,\nthrottled now, at or over 80 °C, or / at or over 90 % full; green otherwise.\nWith stdout not a terminal and neither flag, it prints one table as --once does."
    )]
    Top(TopArgs),
    /// Active alerts of the whole cluster: nodes down, balancer backends down, boards
    /// throttled or over 80 °C, filesystems over 90 % full.
    #[command(
        after_help = "Examples:\n  bramble alerts\n  bramble alerts --json\n\nAny node answers for the cluster: it asks every live member and says which did not\nanswer. With alert_webhook = \"http://...\" in <data-dir>/monitor.toml, one node also POSTs\neach alert as JSON when it fires and when it resolves."
    )]
    Alerts(JsonFlag),
    /// Start an emulated cluster on this PC (processes on loopback, no privileges needed;
    /// with --netns, each node in its own network namespace, as root).
    #[command(
        after_help = "Examples:\n  bramble up                       5 nodes in ./.bramble, with the HA website demo\n  bramble up --nodes 20 --dir /tmp/c1 --bare\n  sudo bramble up --netns          each node in its own network namespace, real addresses\n  sudo bramble up --profile pi3b   every node as fast as a Raspberry Pi 3 B (cgroups)\n\nRunning it again on a running cluster says so; on a stopped one, starts it again."
    )]
    Up(UpArgs),
    /// Stop every agent of an emulated cluster (data is kept; `up` starts it again).
    #[command(
        after_help = "Examples:\n  bramble down\n  bramble down --purge             also delete the cluster's directory"
    )]
    Down(DownArgs),
    /// Show the emulated cluster's processes: pid, state, addresses, memory, CPU.
    #[command(after_help = "Examples:\n  bramble status\n  bramble status --json")]
    Status(JsonFlag),
    /// The Raft catalog: leader, term, commit index, voters and their lag; snapshots.
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble cluster status\n  bramble cluster status --json\n  bramble cluster snapshot"
    )]
    Cluster(ClusterCommand),
    /// Read and write the replicated catalog's keys (for operators and tests).
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble kv put demo/greeting hello\n  bramble kv get demo/greeting\n  bramble kv get demo/greeting --stale     from the nearest replica, no quorum round\n  bramble kv ls demo/ --json\n  bramble kv rm demo/greeting"
    )]
    Kv(KvCommand),
    /// HA load balancers (HAProxy + Keepalived in the agent), configured in the catalog.
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble lb create webfarm --listen 127.0.2.100:8080 --backend web1=127.0.0.1:8081 --backend web2=127.0.0.1:8082 --check 'HEAD /lb-check.txt' --sticky-cookie JSESSIONID --priority n2=101 --priority n3=100\n  bramble lb ls\n  bramble lb show webfarm --json\n  bramble lb backend drain webfarm web1"
    )]
    Lb(LbCommand),
    /// Storage volumes over bricks on the nodes (GlusterFS's `gluster volume`).
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble volume create vol0 --replica 2 --stripe 2 n1 n2 n3 n4     the recipe's layout\n  bramble volume create docs --replica 3 n1:/srv/brick n2:/srv/brick n3:/srv/brick\n  bramble volume ls\n  bramble volume status vol0\n  bramble volume stop vol0 && bramble volume rm vol0"
    )]
    Volume(VolumeCommand),
    /// Files in a volume: put, get, cat, ls, stat, mkdir, mv, rm (`vol:/path`).
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble fs put kernel.img vol0:/kernel.img\n  bramble fs get vol0:/kernel.img ./copy.img\n  bramble fs ls vol0:/ --json\n  bramble fs mv vol0:/kernel.img vol0:/boot/kernel.img\n  bramble fs rm -r vol0:/boot"
    )]
    Fs(FsCommand),
    /// S3 access keys for the S3 endpoint (every volume is a bucket).
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble s3 key create backup        prints the access key and secret (shown once)\n  bramble s3 key ls\n  bramble s3 key rm backup\n\nThen, for example:\n  AWS_ACCESS_KEY_ID=BK... AWS_SECRET_ACCESS_KEY=... aws --endpoint-url http://127.0.0.1:3900 s3 cp kernel.img s3://vol0/"
    )]
    S3(S3Command),
    /// API tokens for the HTTP API (`Authorization: Bearer ...`); the token is shown once.
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble token create ci --expires 30d\n  bramble token ls\n  bramble token rm ci\n\nThen: curl --cacert ca.pem -H \"Authorization: Bearer brt_ci_...\" https://<node>:9443/api/v1/nodes\n(bramble api --write-ca ca.pem writes the cluster CA; bramble api lists the URLs)."
    )]
    Token(TokenCommand),
    /// Where every node serves the HTTP API (/api/v1, HTTPS) and how to call it.
    #[command(
        after_help = "Examples:\n  bramble api\n  bramble api --write-ca ca.pem\n  bramble api --json\n\nEvery request needs an admin certificate or a token (bramble token create). The\nendpoints and curl examples are in docs/API.md; GET /api/v1 lists them too.\n<data-dir>/api.toml sets the address (listen) or switches the API off (enabled = false)."
    )]
    Api(ApiArgs),
    /// The web dashboard every node serves: where, how to log in; set its password.
    #[command(
        after_help = "Examples:\n  bramble dashboard                           the URLs and how to log in\n  bramble dashboard --set-password            generates a password, prints it once\n  bramble dashboard --set-password --password-file pw.txt\n\nThere is no default password: `bramble up` generates one into <dir>/dashboard-password\n(mode 0600). Browsers warn about the certificate until the cluster CA is imported\n(bramble api --write-ca ca.pem). Changing the password ends every session."
    )]
    Dashboard(DashboardArgs),
    /// Mount a volume as a directory (FUSE; `mount -t glusterfs` for Bramble volumes).
    #[command(
        after_help = "Examples:\n  bramble mount vol0 /mnt/vol0             returns once mounted; umount /mnt/vol0 ends it\n  bramble mount vol0 /mnt/vol0 --foreground\n  bramble mount vol0 /mnt/vol0 --flush-behind   small files' closes and unlinks return before their commit\n\nInside, cp, ls -l, sha1sum, mkdir, mv, rm, appends, writes in the middle of a file and\ntruncate work as on a local disk. Not supported yet (EOPNOTSUPP): symlinks, hard links,\nextended attributes."
    )]
    Mount(MountArgs),
    /// Run a parallel job: N tasks of a command over the cluster's slots (`srun`, `sbatch`
    /// with --detach, `spark-submit`).
    #[command(
        after_help = "Examples:\n  bramble run -n 24 -- sh -c 'echo $BRAMBLE_TASK_INDEX'\n  bramble run -n 200 --policy roundrobin --reduce sum -- sh -c 'echo $((BRAMBLE_TASK_INDEX * 2))'\n  bramble run -n 8 --retries 2 --timeout 30s --detach -- ./simulate --seed-from-env\n  bramble run -n 4 --after 12 -- ./postprocess\n\nEach task gets BRAMBLE_TASK_INDEX, BRAMBLE_TASK_COUNT, BRAMBLE_JOB_ID, BRAMBLE_ATTEMPT,\nBRAMBLE_TASK_SEED (its own random seed) and BRAMBLE_NODE. With --reduce, the last line a\ntask prints is its value. A task may run more than once (a lost node, a speculative\ncopy); its result counts once. Ctrl-C cancels an attached job; --detach prints its id."
    )]
    Run(RunArgs),
    /// Estimate pi by Monte Carlo over the cluster (the cookbook's Spark recipe, built in).
    #[command(
        after_help = "Examples:\n  bramble pi --samples 1000000000 --partitions 24\n  bramble pi --samples 1e9 --json\n\nPrints the estimate, its error against pi, the wall-clock time, and the same samples on\nthis machine alone (all its cores) for the speed-up. Every partition draws its own\nrandom stream (xoshiro256++ seeded from --seed and its index)."
    )]
    Pi(PiArgs),
    /// List jobs: running and queued, and the latest finished (`squeue`).
    #[command(after_help = "Examples:\n  bramble jobs\n  bramble jobs --all --json")]
    Jobs(JobsArgs),
    /// One job: its tasks (node, state, attempts, duration, exit code) and where they ran.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  bramble job 7\n  bramble job 7 --json\n  bramble job logs 7 --task 3\n  bramble job logs 7 --task 3 --follow"
    )]
    Job(JobArgs),
    /// Run an Open MPI program over the cluster, with Bramble as mpirun's remote launcher
    /// (no ssh, no passwords), the way Slurm runs mpirun under srun.
    #[command(
        after_help = "Examples:\n  bramble mpirun -n 4 -- /usr/bin/python3 examples/mpi/reduce.py\n  bramble mpirun -n 8 --nodes n1,n2 --mca btl=self,tcp -- ./ring\n\nBramble writes the hostfile from the live nodes and their cores, and names itself as\nmpirun's plm_rsh_agent: each node's daemon (orted) is started by that node's agent over\nthe cluster's mutual TLS, as the task user. The program must exist on every node (the\nsame path). Needs Open MPI's mpirun (Debian: apt-get install openmpi-bin). Open MPI's\nown traffic (daemons and ranks) is plain TCP between the nodes, as with ssh."
    )]
    Mpirun(MpirunArgs),
    /// Start a command on a node for mpirun (its plm_rsh_agent; not for people).
    #[command(hide = true)]
    MpiLaunch(MpiLaunchArgs),
    /// Forward loopback ports on the host into a `--netns` cluster's network (started by
    /// `bramble up --netns`; not for people).
    #[command(hide = true)]
    NetnsForward(NetnsForwardArgs),
    /// Delay a `--netns` node's packets where the kernel has no netem (started by
    /// `bramble chaos slow --delay`; not for people).
    #[command(hide = true)]
    NetnsDelay(NetnsDelayArgs),
    /// Replicated services: N supervised copies of a program over the nodes (Docker
    /// Swarm's `docker service`), moved within seconds when a node dies.
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble service create web --replicas 2 --port 8100 -- sh -c 'exec python3 -m http.server $PORT'\n  bramble service create hello --replicas 2 --port 8200 --wasm examples/wasm-web/hello.wasm\n  bramble service ls\n  bramble service ps web\n  bramble service scale web 5\n  bramble service logs web --replica 0\n  bramble service rm web\n\nReplica i gets PORT=<port>+i, BRAMBLE_REPLICA=i, BRAMBLE_SERVICE and BRAMBLE_NODE in its\nenvironment, and runs as `nobody` (when the agent is root) unless --user says otherwise."
    )]
    Service(ServiceCommand),
    /// Measure this host's CPU time per event inside a board's cgroup (started by `bramble
    /// up --profile`; not for people).
    #[command(hide = true)]
    CalibrateBoard(CalibrateBoardArgs),
    /// Runs one WebAssembly task (what a worker starts; not for people).
    #[command(hide = true)]
    WasmTask(WasmTaskArgs),
    /// Cancel a job (`scancel`): its running tasks are stopped.
    #[command(after_help = "Example:\n  bramble cancel 7")]
    Cancel(CancelArgs),
    /// Measure the cluster with the agents' own transport.
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble bench net --from n1 --to n2 --seconds 10\n  bramble bench net --from n1 --to n2 --streams 8 --json"
    )]
    Bench(BenchCommand),
    /// Run a command on many nodes at once and print each node's output and exit code
    /// (Ansible's `all -m shell`); only on nodes that opted in (`--allow-exec` at init or
    /// join, or `enabled = true` in exec.toml), as `nobody` unless the node allows root.
    #[command(
        after_help = "Examples:\n  bramble exec -- uname -n\n  bramble exec --nodes n1,n2 --timeout 30s -- sh -c 'df -h / | tail -1'\n  bramble exec --role lb --one-line -- uptime\n  bramble exec --json -- cat /proc/loadavg\n\nThe exit status is 0 only if every chosen node ran the command and it exited 0."
    )]
    Exec(ExecArgs),
    /// Run the built-in demo web server (the recipe's web1/web2): a page naming the server,
    /// `/lb-check.txt` for health checks, and `/session` for the sticky-session drill. As a
    /// service's replica it takes its name, port and node from the environment the agent
    /// gives it (BRAMBLE_SERVICE, BRAMBLE_REPLICA, PORT, BRAMBLE_NODE).
    #[command(
        name = "demo-web",
        after_help = "Examples:\n  bramble demo-web --name web1 --port 8081\n  bramble demo-web --name web2 --port 8082 --bind 0.0.0.0\n  bramble service create web --replicas 2 --port 8100 --health-http /lb-check.txt -- /proc/self/exe demo-web --bind 0.0.0.0"
    )]
    DemoWeb(DemoWebArgs),
    /// Inject faults into an emulated cluster and measure how fast it notices.
    #[command(
        after_help = "Examples:\n  bramble chaos kill n3             SIGKILL; waits until every other node says dead\n  bramble chaos restart n3          start it again; waits until it is alive everywhere\n  bramble chaos stop n2             SIGSTOP, a hung board\n  bramble chaos cont n2 --json\n  bramble chaos stop web-0          a hung web server: waits until the balancer reports it down\n  bramble chaos kill web-0          waits until its supervisor runs it again\n\nOn a cluster started with `bramble up --netns`:\n  bramble chaos partition n1,n2 n3,n4,n5   the switch drops every frame between the groups\n  bramble chaos slow n3 --delay 100ms --jitter 10ms --loss 1% --rate 100mbit\n  bramble chaos heal                removes every partition and slowdown"
    )]
    Chaos(ChaosArgs),
    /// Drain a node before working on it: its balancers' VIPs go to another node at once,
    /// its service replicas move (each new copy healthy before the old one stops), it gets
    /// no new job tasks; waits until it holds no VIP and no replica.
    #[command(
        after_help = "Examples:\n  bramble drain n3\n  bramble drain n3 --reason 'new SD card' --timeout 2m\n  bramble drain n3 --detach          set the flag and return\n  bramble drain n3 --json\n\nThe node stays a gossip member and a catalog voter. Job tasks already running on it\nfinish there. Storage bricks are not moved (while the node is down, writes to its bricks\nare kept as hints and healed when it returns). `bramble nodes` shows drained nodes;\n`bramble undrain n3` makes it eligible again."
    )]
    Drain(DrainArgs),
    /// Make a drained node eligible again for new replicas, job tasks and its VIPs.
    #[command(
        after_help = "Examples:\n  bramble undrain n3\n  bramble undrain n3 --json\n\nReplicas that moved away stay where they are (none is moved back by force); new\nplacements may use the node. With preemption, a VIP that prefers the node moves back."
    )]
    Undrain(UndrainArgs),
    /// Run a command on nodes one (or --serial N) at a time: drain the node, run the
    /// command there through `bramble exec`, wait until it is back in gossip and the
    /// catalog, undrain it, and go on once the services are healthy again.
    #[command(
        after_help = "Examples:\n  bramble rolling --user root -- sh -c 'apt-get update && apt-get -y upgrade'\n  bramble rolling --nodes n1,n2,n3 -- true\n  bramble rolling --role lb --serial 1 --timeout 5m -- ./maintenance.sh\n  bramble rolling --serial 2 --max-fail 1 --json -- uname -r\n\nEvery chosen node must allow exec (`--allow-exec` at init or join, or `enabled = true`\nin its exec.toml). The first failure beyond --max-fail stops the chore; a node whose\nstep failed stays drained. The exit status is 0 only if every node completed."
    )]
    Rolling(RollingArgs),
    /// Reboot the nodes one (or --serial N) at a time, each drained first and healthy
    /// again before the next (in an emulated cluster: a restart of the node's agent).
    #[command(
        after_help = "Examples:\n  bramble reboot --rolling\n  bramble reboot --rolling --nodes n4,n5 --timeout 15m\n  bramble reboot --rolling --role lb --json\n\nOn real boards the reboot is `systemctl reboot` as root through bramble exec: each node\nmust allow exec as root (`enabled = true` and `allow_root = true` in its exec.toml)."
    )]
    Reboot(RebootArgs),
    /// Move every node onto a new build of bramble, one (or --serial N) at a time: the
    /// executable is copied to each node over the cluster's own streams and checked by
    /// hash, then each agent is drained, restarted as the new build, and healthy again
    /// before the next.
    #[command(
        after_help = "Examples:\n  bramble upgrade --binary ./target/release/bramble\n  bramble upgrade --binary bramble-aarch64 --binary bramble-armv7 --serial 2\n  bramble upgrade --binary ./bramble --nodes n1,n2 --json\n\nA node keeps the new build in <data>/upgrade/ and runs it from then on, also after a\nreboot; a build that never starts healthy three times running is abandoned for the\npackaged one. A build whose wire protocol the running nodes do not speak is refused\nbefore any agent stops (`bramble version` shows a build's protocol)."
    )]
    Upgrade(UpgradeArgs),
    /// This build's version, wire protocol and architecture.
    #[command(after_help = "Examples:\n  bramble version\n  bramble version --json")]
    Version(JsonFlag),
}

#[derive(Debug, Clone, Args)]
pub struct NodeOptions {
    /// Let the cluster's administrator run commands here with `bramble exec` (writes
    /// `enabled = true` to exec.toml; off by default).
    #[arg(long)]
    pub allow_exec: bool,
    /// This node's name (lowercase letters, digits, '-'). Default: the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Address to bind, TCP for RPC and UDP for gossip on the same port.
    #[arg(long, default_value = "0.0.0.0:7946")]
    pub listen: SocketAddr,
    /// Address other nodes use to reach this one (default: the listen address, or this
    /// machine's first network address when listening on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// A role for this node (repeatable), e.g. `--role lb`.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub node: NodeOptions,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Address of any member of the cluster.
    pub member: SocketAddr,
    /// The join token printed by `bramble init`.
    #[arg(long, env = "BRAMBLE_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(flatten)]
    pub node: NodeOptions,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Node of the emulated cluster to make leave.
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct JsonFlag {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub output: JsonFlag,
    /// Ask this member for its view (default: any member that answers).
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Make a volume over bricks: `node` (its <data-dir>/bricks/<volume>) or `node:/dir`.
    /// Bricks are grouped in order into sets of --replica; each file's blocks are spread
    /// over all sets, each block copied on every brick of its set.
    #[command(
        after_help = "Examples:\n  bramble volume create vol0 --replica 2 --stripe 2 n1 n2 n3 n4\n  bramble volume create archive --ec 4+2 n1 n2 n3 n4 n5 n6\n  bramble volume create scratch n1\n  bramble volume create photos --replica 3 --block-size 4M n1 n2 n3"
    )]
    Create(VolumeCreateArgs),
    /// List volumes.
    #[command(after_help = "Examples:\n  bramble volume ls\n  bramble volume ls --json")]
    Ls(JsonFlag),
    /// A volume's layout and bricks.
    #[command(after_help = "Example:\n  bramble volume info vol0 --json")]
    Info(VolumeNameArgs),
    /// Each brick's node state, directory, blocks and free space.
    #[command(after_help = "Example:\n  bramble volume status vol0")]
    Status(VolumeNameArgs),
    /// Block copies owed to bricks that were away, by brick; healing needs no command
    /// (each is delivered as soon as its brick's node is back).
    #[command(
        name = "heal-info",
        after_help = "Examples:\n  bramble volume heal-info vol0\n  bramble volume heal-info vol0 --json\n  bramble volume heal-info vol0 --wait --timeout 5m   return once nothing is owed\n\nWith --wait the exit status is 0 once every node answered and no copy is owed, and 1\nif that did not happen within --timeout."
    )]
    HealInfo(HealInfoArgs),
    /// Add sets of bricks (a multiple of the set width); existing data moves so that each
    /// file is spread over every set, while the volume keeps serving.
    #[command(
        name = "add-brick",
        after_help = "Examples:\n  bramble volume add-brick vol0 n5 n6          a third replica pair\n  bramble workers | grep heal-pass            the move's progress"
    )]
    AddBrick(VolumeBricksArgs),
    /// Remove whole sets of bricks; their data moves to the remaining sets first.
    #[command(
        name = "remove-brick",
        after_help = "Example:\n  bramble volume remove-brick vol0 n1 n2"
    )]
    RemoveBrick(VolumeBricksArgs),
    /// Put a new brick in place of one whose disk or node is lost for good; a full heal
    /// pass (started at once) fills it from the rest of each set.
    #[command(
        name = "replace-brick",
        after_help = "Examples:\n  bramble volume replace-brick vol0 n3 n5\n  bramble volume replace-brick vol0 n3:/srv/b1 n3:/srv/b2"
    )]
    ReplaceBrick(VolumeReplaceBrickArgs),
    /// Start a full heal pass now: every block of every file checked on every brick of
    /// its set and copied where missing (finds what hints cannot: copies owed by a node
    /// that was lost, a brick replaced empty). Runs as the worker store-heal-pass/<vol>.
    #[command(
        after_help = "Examples:\n  bramble volume heal vol0\n  bramble workers | grep heal-pass"
    )]
    Heal(VolumeNameArgs),
    /// Start a scrub pass now on every node of the volume: every block re-read and checked,
    /// corrupt ones rewritten from good copies (the store-scrub worker; it also runs daily).
    #[command(
        after_help = "Examples:\n  bramble volume scrub vol0\n  bramble workers | grep scrub"
    )]
    Scrub(VolumeNameArgs),
    /// Serve a stopped volume again.
    #[command(after_help = "Example:\n  bramble volume start vol0")]
    Start(VolumeNameArgs),
    /// Refuse reads and writes (needed before `rm`).
    #[command(after_help = "Example:\n  bramble volume stop vol0")]
    Stop(VolumeNameArgs),
    /// Remove a stopped volume: its files, and its blocks on every brick that answers.
    #[command(after_help = "Example:\n  bramble volume stop vol0 && bramble volume rm vol0")]
    Rm(VolumeNameArgs),
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Volume name (lowercase letters, digits, '-').
    pub name: String,
    /// Copies of every block (bricks per set).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub replica: u8,
    /// Number of sets each file is striped over; checks that the bricks make that many.
    #[arg(long)]
    pub stripe: Option<u32>,
    /// Erasure coding K+M: each block cut into K data and M parity shards, one per brick
    /// of a set of K+M (any K rebuild it), instead of --replica copies.
    #[arg(long, value_name = "K+M", conflicts_with = "replica")]
    pub ec: Option<String>,
    /// Block size, e.g. 1M (default), 256K, 4M.
    #[arg(long, value_name = "SIZE")]
    pub block_size: Option<String>,
    /// Bricks: `node` or `node:/absolute/dir`, in set order.
    #[arg(required = true, value_name = "BRICK")]
    pub bricks: Vec<String>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct VolumeBricksArgs {
    pub name: String,
    /// Bricks: `node` or `node:/dir`.
    #[arg(required = true, value_name = "BRICK")]
    pub bricks: Vec<String>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct VolumeReplaceBrickArgs {
    pub name: String,
    /// The brick to take out: `node` or `node:/dir`, as `volume info` shows it.
    pub old: String,
    /// The brick to put in its place.
    pub new: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct VolumeNameArgs {
    pub name: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct HealInfoArgs {
    pub name: String,
    /// Ask again every 50 ms until every node answers and no copy is owed, then print
    /// that answer (`gluster volume heal info` has to be run in a loop for this).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 30s or 5m.
    #[arg(long, default_value = "10m", requires = "wait")]
    pub timeout: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for the HTTP API; it is printed once and never again.
    #[command(
        after_help = "Examples:\n  bramble token create ci\n  bramble token create dashboard-phone --expires 90d\n  bramble token create ci --json"
    )]
    Create {
        /// A name for people (lowercase letters, digits, '-'); part of the token.
        name: String,
        /// Lifetime, such as 3600s, 12h or 30d (default: until removed).
        #[arg(long, value_parser = crate::units::parse_lifetime_seconds)]
        expires: Option<u64>,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// List tokens (names, creators, creation and expiry; never secrets).
    #[command(after_help = "Example:\n  bramble token ls --json")]
    Ls(JsonFlag),
    /// Revoke a token by name; requests that carry it fail at once.
    #[command(after_help = "Example:\n  bramble token rm ci")]
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Set a new dashboard password: generated (and printed once) unless --password-file
    /// gives one.
    #[arg(long)]
    pub set_password: bool,
    /// With --set-password: read the password from this file's first line (at least 12
    /// characters).
    #[arg(long, value_name = "PATH", requires = "set_password")]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Write the cluster CA's certificate here, for `curl --cacert` (a browser can
    /// import it too).
    #[arg(long, value_name = "PATH")]
    pub write_ca: Option<PathBuf>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum S3Command {
    /// S3 access keys.
    #[command(subcommand)]
    Key(S3KeyCommand),
    /// Abort multipart uploads started longer ago than --older-than, freeing their parts
    /// (every node's reaper does this by itself after `s3_stale_upload_hours`, 24 h).
    #[command(
        after_help = "Examples:\n  bramble s3 cleanup-uploads --older-than 1d\n  bramble s3 cleanup-uploads --older-than 2h --bucket photos --json"
    )]
    CleanupUploads {
        /// 30s, 10m, 2h, 1d (0s: every upload in progress).
        #[arg(long, value_name = "T")]
        older_than: String,
        /// Only these buckets; repeat or separate with commas.
        #[arg(long = "bucket", value_name = "BUCKET", value_delimiter = ',')]
        buckets: Vec<String>,
        #[command(flatten)]
        output: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum S3KeyCommand {
    /// Make a key; its secret is printed once and never again.
    #[command(
        after_help = "Examples:\n  bramble s3 key create backup\n  bramble s3 key create photos-app --bucket photos\n  bramble s3 key create reader --bucket vol0,photos --read-only --json\n\nWithout --bucket the key reaches every bucket, including ones made later."
    )]
    Create {
        /// A name for people (lowercase letters, digits, '-').
        name: String,
        /// Only these buckets (volumes); repeat or separate with commas.
        #[arg(long = "bucket", value_name = "BUCKET", value_delimiter = ',')]
        buckets: Vec<String>,
        /// Only reading: Get, Head and List requests.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// List keys (names, access key ids, scopes, creation times; never secrets).
    #[command(after_help = "Example:\n  bramble s3 key ls --json")]
    Ls(JsonFlag),
    /// Remove a key by name or access key id; requests signed with it fail at once.
    #[command(after_help = "Example:\n  bramble s3 key rm backup")]
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The volume.
    pub volume: String,
    /// An existing empty directory.
    pub directory: PathBuf,
    /// Stay attached to the terminal (and log there) instead of running in the background.
    #[arg(long)]
    pub foreground: bool,
    /// Let other users than the one who mounted use it (FUSE's allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Let closing a small file (at most 4 KiB, written whole) and unlinking a file
    /// return before their commit, as GlusterFS's performance.flush-behind does for
    /// closes: this mount sees the change at once, other clients a few milliseconds later;
    /// fsync (of the file or its directory) waits for the commits and reports a failure;
    /// unmounting waits for all of them.
    #[arg(long)]
    pub flush_behind: bool,
}

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Copy a local file (or `-` for stdin) into a volume.
    #[command(
        after_help = "Examples:\n  bramble fs put kernel.img vol0:/kernel.img\n  bramble fs put kernel.img vol0:/boot/          keeps the name\n  tar c dir | bramble fs put - vol0:/dir.tar --overwrite"
    )]
    Put(FsPutArgs),
    /// Copy a file out of a volume (to a local path, or `-` for stdout).
    #[command(
        after_help = "Examples:\n  bramble fs get vol0:/kernel.img ./kernel.img\n  bramble fs get vol0:/kernel.img - | sha1sum"
    )]
    Get(FsGetArgs),
    /// Print a file.
    #[command(after_help = "Example:\n  bramble fs cat vol0:/notes.txt")]
    Cat(FsPathArgs),
    /// List a directory.
    #[command(after_help = "Examples:\n  bramble fs ls vol0:/\n  bramble fs ls vol0:/boot --json")]
    Ls(FsPathArgs),
    /// Show a file's or directory's size, time, mode and blocks.
    #[command(after_help = "Example:\n  bramble fs stat vol0:/kernel.img --json")]
    Stat(FsPathArgs),
    /// Make a directory.
    #[command(
        after_help = "Examples:\n  bramble fs mkdir vol0:/boot\n  bramble fs mkdir -p vol0:/a/b/c"
    )]
    Mkdir(FsMkdirArgs),
    /// Rename (atomically) within a volume.
    #[command(after_help = "Example:\n  bramble fs mv vol0:/kernel.img vol0:/boot/kernel.img")]
    Mv(FsMvArgs),
    /// Remove a file, or a directory with -r.
    #[command(
        after_help = "Examples:\n  bramble fs rm vol0:/kernel.img\n  bramble fs rm -r vol0:/boot"
    )]
    Rm(FsRmArgs),
}

#[derive(Debug, Args)]
pub struct FsPutArgs {
    /// Local file, or `-` for stdin.
    pub source: PathBuf,
    /// `volume:/path` (a trailing `/` keeps the source's name).
    pub target: String,
    /// Replace an existing file.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct FsGetArgs {
    /// `volume:/path`.
    pub source: String,
    /// Local file (default: the file's name in the current directory), or `-` for stdout.
    pub target: Option<PathBuf>,
    /// Replace an existing local file.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct FsPathArgs {
    /// `volume:/path`.
    pub path: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct FsMkdirArgs {
    /// `volume:/path`.
    pub path: String,
    /// No error if it exists.
    #[arg(short = 'p', long)]
    pub parents: bool,
}

#[derive(Debug, Args)]
pub struct FsMvArgs {
    pub from: String,
    pub to: String,
    /// Do not replace an existing file at the target.
    #[arg(short = 'n', long)]
    pub no_clobber: bool,
}

#[derive(Debug, Args)]
pub struct FsRmArgs {
    pub path: String,
    /// Remove a directory and everything in it.
    #[arg(short = 'r', long)]
    pub recursive: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Node-to-node bulk throughput: `--from` streams to `--to`'s `bench.sink` over the
    /// mux (mutual TLS, flow control, bulk threads), as block copies will.
    Net(BenchNetArgs),
    /// sysbench's CPU test (same algorithm) on each node, one after another, with each
    /// node beside the seeds' Raspberry Pi figures; a run at the default max prime becomes
    /// the node's speed for the jobs scheduler's greedy policy.
    #[command(
        after_help = "Examples:\n  bramble bench cpu\n  bramble bench cpu --nodes n1,n2 --threads 4 --time 5\n  bramble bench cpu --cpu-max-prime 9999 --events 10000 --time 0   # the seeds' run\n  bramble bench cpu --json"
    )]
    Cpu(BenchCpuArgs),
    /// Sequential write and read on each node's data disk, one node after another: `dd
    /// bs=1M conv=fdatasync`, then a cold read of the same file.
    #[command(
        after_help = "Examples:\n  bramble bench disk\n  bramble bench disk --nodes n1 --size 1G\n  bramble bench disk --json\n\nThe file goes in the node's data directory and is removed afterwards; a test that would leave\nless than 256 MiB (or a twentieth of the disk) free is refused."
    )]
    Disk(BenchDiskArgs),
}

#[derive(Debug, Args)]
pub struct BenchDiskArgs {
    #[command(flatten)]
    pub output: JsonFlag,
    /// Nodes to measure (default: every node).
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub nodes: Vec<String>,
    /// How much to write and read back: 64M, 256M, 1G (whole MiB, at most 4G).
    #[arg(long, default_value = "256M", value_parser = crate::units::parse_size)]
    pub size: u64,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub output: JsonFlag,
    /// Every node (the default when neither --nodes nor --role is given).
    #[arg(long, conflicts_with_all = ["nodes", "role"])]
    pub all: bool,
    /// These nodes.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NODE,...",
        conflicts_with = "role"
    )]
    pub nodes: Vec<String>,
    /// The nodes with this role.
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// Nodes asked at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub parallel: u32,
    /// Cut the command after this long on each node: 30s, 5m (at most 1h).
    #[arg(long, default_value = "60s", value_name = "T")]
    pub timeout: String,
    /// One line per node: its name, the result and the first line of output.
    #[arg(long)]
    pub one_line: bool,
    /// Run as this user (root only where the node allows it).
    #[arg(long)]
    pub user: Option<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BenchCpuArgs {
    #[command(flatten)]
    pub output: JsonFlag,
    /// Nodes to measure (default: every node).
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub nodes: Vec<String>,
    /// Trial division up to this number per event (sysbench's --cpu-max-prime).
    #[arg(long, default_value_t = 10_000)]
    pub cpu_max_prime: u64,
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Stop after this many events (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub events: u64,
    /// Stop after this many seconds (0: no limit; at most 12).
    #[arg(long, default_value_t = 10.0)]
    pub time: f64,
}

#[derive(Debug, Args)]
pub struct BenchNetArgs {
    #[command(flatten)]
    pub output: JsonFlag,
    /// The sending node.
    #[arg(long, value_name = "NODE")]
    pub from: String,
    /// The receiving node.
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Seconds to stream.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub seconds: u32,
    /// Streams at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub streams: u32,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The node to ask.
    pub node: String,
    /// Print the history instead of the live sample: 1h (a point a second) or 24h (a point
    /// a minute).
    #[arg(long, value_enum, value_name = "SPAN")]
    pub history: Option<HistorySpan>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often to refresh: 1s to 60s (agents take a sample a second).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_top_interval)]
    pub interval: std::time::Duration,
    /// Print one plain table and exit (for scripts; needs no terminal).
    #[arg(long, conflicts_with = "json")]
    pub once: bool,
    /// Print one snapshot as JSON and exit.
    #[arg(long)]
    pub json: bool,
}

/// `--interval` of `bramble top`: `1s`, `2500ms`, `1m`; between one second and a minute.
fn parse_top_interval(text: &str) -> anyhow::Result<std::time::Duration> {
    let millis = crate::units::parse_milliseconds(text)?;
    if !(1000..=60_000).contains(&millis) {
        anyhow::bail!("{text:?}: the interval must be between 1s and 60s");
    }
    Ok(std::time::Duration::from_millis(millis))
}

/// How much history `bramble metrics --history` shows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HistorySpan {
    /// The last hour, a point a second.
    #[value(name = "1h")]
    Hour,
    /// The last day, a point a minute.
    #[value(name = "24h")]
    Day,
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub output: JsonFlag,
    /// Only this node (default: every live node).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub nodes: u16,
    /// Seconds to wait for every node to see every other as alive.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Skip the demo (the recipe's web servers, balancer, VIP and stats pages).
    #[arg(long)]
    pub bare: bool,
    /// Seconds a catalog voter may be down before a healthy non-voter replaces it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub voter_grace_secs: u64,
    /// Emulate this board on every node: its CPU speed (a cgroup quota calibrated on this
    /// host against the board's sysbench figure), cores and memory (needs root). Kept by
    /// the cluster for its later starts.
    #[arg(long, value_name = "BOARD")]
    pub profile: Option<crate::emulator::profile::Board>,
    /// Put each node in its own network namespace on a bridge, with a real address from a
    /// private /24 and the default ports (needs root); `chaos partition|heal|slow` work on
    /// such a cluster. Kept by the cluster once made.
    #[arg(long)]
    pub netns: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also delete the emulated cluster's directory.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChaosAction {
    /// SIGKILL the node's agent (power cut), or a replica's processes.
    Kill,
    /// SIGSTOP the node's agent (a hung board), or a replica's processes.
    Stop,
    /// SIGCONT a stopped agent or replica.
    Cont,
    /// Start the node's agent again from its data directory (killing it first if
    /// running); a replica: SIGKILL, and its supervisor starts it again.
    Restart,
    /// Cut the network between two groups of nodes (`partition n1,n2 n3,n4,n5`); each
    /// group still talks within itself (`--netns` clusters).
    Partition,
    /// Remove every partition and slowdown (`--netns` clusters).
    Heal,
    /// Slow a node's cable: `--delay`, `--jitter`, `--loss`, `--rate` (`--netns`
    /// clusters).
    Slow,
}

#[derive(Debug, Args)]
pub struct ChaosArgs {
    pub action: ChaosAction,
    /// The emulated node, e.g. n3, `leader` for the catalog's current leader, or a
    /// service's replica as the balancer names it (`web-0`, the demo's first web server)
    /// or as `service ps` lists it (`web.0`). For `partition`: the first group (`n1,n2`).
    pub node: Option<String>,
    /// For `partition`: the second group (`n3,n4,n5`).
    pub other_group: Option<String>,
    /// For `slow`: added delay of the node's packets (`100ms`, at most 10 s; needs the
    /// kernel's netem).
    #[arg(long)]
    pub delay: Option<String>,
    /// For `slow`: random variation of the delay (`10ms`, at most the delay).
    #[arg(long)]
    pub jitter: Option<String>,
    /// For `slow`: share of the node's packets lost each way (`1%`).
    #[arg(long)]
    pub loss: Option<String>,
    /// For `slow`: the cable's rate each way (`100mbit`, `1gbit`).
    #[arg(long)]
    pub rate: Option<String>,
    /// Return at once instead of waiting for the cluster to notice.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the cluster to notice.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, commit index, and each voter's and learner's state and lag.
    #[command(after_help = "Example:\n  bramble cluster status --json")]
    Status(JsonFlag),
    /// Take a catalog snapshot now (older log entries are then purged).
    #[command(after_help = "Example:\n  bramble cluster snapshot")]
    Snapshot,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write a key; returns its new version once committed by a quorum.
    #[command(
        after_help = "Examples:\n  bramble kv put app/mode blue\n  bramble kv put app/mode green --if-version 7"
    )]
    Put {
        key: String,
        value: String,
        /// Write only if the key's current version is this (0: only if it does not exist).
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Read a key (linearizable unless --stale).
    #[command(
        after_help = "Examples:\n  bramble kv get app/mode\n  bramble kv get app/mode --stale --json"
    )]
    Get {
        key: String,
        /// Read the answering node's replica without a quorum round.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// List keys under a prefix.
    #[command(
        name = "ls",
        after_help = "Examples:\n  bramble kv ls\n  bramble kv ls app/ --json"
    )]
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        stale: bool,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Remove a key.
    #[command(name = "rm", after_help = "Example:\n  bramble kv rm app/mode")]
    Remove {
        key: String,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Measure committed writes (or reads) per second and their latency (keys under bench/).
    #[command(
        after_help = "Examples:\n  bramble kv bench                       2000 writes, 16 at a time, through every node\n  bramble kv bench --through n2 --json   all through one node (followers forward to the leader)\n  bramble kv bench --reads --through n1  linearizable reads instead (--stale: from the node's replica)"
    )]
    Bench(KvBenchArgs),
}

#[derive(Debug, Args)]
pub struct KvBenchArgs {
    /// Number of writes.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub writes: u64,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// `all` to spread writes over every node, or a node name.
    #[arg(long, default_value = "all")]
    pub through: String,
    /// Bytes per value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub value_size: u64,
    /// Read instead of writing: `--writes` linearizable reads of the keys the run writes
    /// first (one per concurrent reader), answered by the leader.
    #[arg(long)]
    pub reads: bool,
    /// With --reads: stale reads, each answered from the node's own replica.
    #[arg(long, requires = "reads")]
    pub stale: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct DemoWebArgs {
    /// The name the pages show (and the X-Served-By header). Default, as a service's
    /// replica: `<BRAMBLE_SERVICE>-<BRAMBLE_REPLICA>`, the balancer's name for it (web-0).
    #[arg(long)]
    pub name: Option<String>,
    /// Default, as a service's replica: PORT.
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// The node named on the page. Default, as a service's replica: BRAMBLE_NODE.
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// Create a balancer.
    #[command(
        after_help = "Example:\n  bramble lb create webfarm --listen 127.0.2.100:8080 --backend web1=127.0.0.1:8081 --backend web2=127.0.0.1:8082 --check 'HEAD /lb-check.txt'"
    )]
    Create(LbCreateArgs),
    /// List balancers: listen address, mode, balance, backends, VIP holder.
    #[command(name = "ls", after_help = "Example:\n  bramble lb ls --json")]
    List(JsonFlag),
    /// One balancer's configuration and its backends' live state.
    #[command(after_help = "Example:\n  bramble lb show webfarm --json")]
    Show {
        name: String,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Change a balancer (only the options given change; --backend replaces the list).
    #[command(
        after_help = "Examples:\n  bramble lb set webfarm --balance leastconn\n  bramble lb set webfarm --backend web1=127.0.0.1:8081 --backend web3=127.0.0.1:8083"
    )]
    Set(LbSetArgs),
    /// Remove a balancer.
    #[command(name = "rm", after_help = "Example:\n  bramble lb rm webfarm")]
    Remove { name: String },
    /// Runtime changes to one backend.
    #[command(
        subcommand,
        after_help = "Examples:\n  bramble lb backend drain webfarm web1\n  bramble lb backend weight webfarm web2 3"
    )]
    Backend(LbBackendCommand),
}

#[derive(Debug, Args)]
pub struct LbCreateArgs {
    pub name: String,
    /// The VIP and port clients use (in the emulator a 127.x address).
    #[arg(long)]
    pub listen: SocketAddr,
    /// A backend: ADDR or NAME=ADDR, optionally followed by ,weight=N; or service:NAME,
    /// every placed replica of that service (added and removed as it scales and moves).
    /// Repeatable.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    /// Boxed: the options are many, and every other command would carry their size.
    #[command(flatten)]
    pub options: Box<LbOptions>,
}

#[derive(Debug, Args)]
pub struct LbSetArgs {
    pub name: String,
    /// Replaces the backend list.
    #[arg(long = "backend")]
    pub backends: Vec<String>,
    /// Boxed: the options are many, and every other command would carry their size.
    #[command(flatten)]
    pub options: Box<LbOptions>,
}

#[derive(Debug, Args)]
pub struct LbOptions {
    /// http or tcp.
    #[arg(long)]
    pub mode: Option<String>,
    /// roundrobin, leastconn, random, hash-source, hash-header:<name>, hash-uri.
    #[arg(long)]
    pub balance: Option<String>,
    /// Active health check: `tcp` or `METHOD /path [STATUS]`, e.g. "HEAD /lb-check.txt".
    #[arg(long)]
    pub check: Option<String>,
    /// Prefix this application cookie with the server name (HAProxy `cookie NAME prefix`).
    #[arg(long, value_name = "NAME", conflicts_with = "sticky_insert")]
    pub sticky_cookie: Option<String>,
    /// Insert a cookie of this name naming the server.
    #[arg(long, value_name = "NAME")]
    pub sticky_insert: Option<String>,
    /// VIP priority of a node, NODE=PRIORITY (repeatable; default 100).
    #[arg(long = "priority", value_name = "NODE=PRIORITY")]
    pub priorities: Vec<String>,
    /// Do not take the VIP back when a higher-priority node returns.
    #[arg(long, conflicts_with = "preempt")]
    pub no_preempt: bool,
    /// Take the VIP back when a higher-priority node returns (the default).
    #[arg(long)]
    pub preempt: bool,
    /// Add the VIP to this network interface on the holder, with gratuitous ARP
    /// (Keepalived's real mode; needs root or CAP_NET_ADMIN + CAP_NET_RAW). `none`: the
    /// loopback mode, where the holder only binds the address.
    #[arg(long, value_name = "INTERFACE")]
    pub vip_interface: Option<String>,
    /// Time to connect to a backend, e.g. 5s or 500ms (HAProxy's `timeout connect`).
    #[arg(long, value_name = "DURATION")]
    pub timeout_connect: Option<String>,
    /// Inactivity allowed from a client (HAProxy's `timeout client`).
    #[arg(long, value_name = "DURATION")]
    pub timeout_client: Option<String>,
    /// Inactivity allowed from a backend (HAProxy's `timeout server`).
    #[arg(long, value_name = "DURATION")]
    pub timeout_server: Option<String>,
    /// An idempotent request whose backend has not answered within this time is sent to
    /// another server (HAProxy's `retry-on response-timeout`); `0` turns it off.
    #[arg(long, value_name = "DURATION")]
    pub timeout_retry: Option<String>,
    /// Seconds over which a recovered backend's weight ramps up.
    #[arg(long)]
    pub slow_start: Option<u32>,
    /// Client connections this balancer serves at once (HAProxy's `maxconn`); the node's
    /// data-plane memory budget may allow fewer.
    #[arg(long, value_name = "COUNT")]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum LbBackendCommand {
    /// No new sessions (sticky ones continue); open connections finish.
    Drain { balancer: String, backend: String },
    /// Back into rotation.
    Enable { balancer: String, backend: String },
    /// No traffic at all.
    Disable { balancer: String, backend: String },
    /// Change the weight (0-256).
    Weight {
        balancer: String,
        backend: String,
        weight: u32,
    },
}

/// Scheduling policies of `bramble run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Task i to the (i mod n)-th node.
    Roundrobin,
    /// Each task to the node with the lowest load per slot.
    Leastload,
    /// Tasks in proportion to each node's speed times its free slots.
    Greedy,
    /// Nodes take the next task whenever a slot frees (the default).
    Dynamic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReduceArg {
    Sum,
    Min,
    Max,
    Concat,
    None,
}

#[derive(Debug, Args)]
pub struct JobOptions {
    /// Scheduling policy.
    #[arg(long, value_enum, default_value_t = PolicyArg::Dynamic)]
    pub policy: PolicyArg,
    /// Slots each task takes on its node.
    #[arg(long, default_value_t = 1, value_name = "C")]
    pub cpus_per_task: u32,
    /// At most N tasks of this job at once.
    #[arg(long, value_name = "N")]
    pub max_running: Option<u32>,
    /// Attempts after a task's first failure (0 to 10).
    #[arg(long, default_value_t = 3, value_name = "R")]
    pub retries: u32,
    /// Run a copy of a straggling task elsewhere; the first result wins.
    #[arg(long)]
    pub speculate: bool,
    /// Longest one attempt of a task may run: 500ms, 30s, 10m, 2h.
    #[arg(long, value_name = "T")]
    pub timeout: Option<String>,
    /// Start once job ID has succeeded (Slurm's --dependency=afterok).
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
    /// Random seed of the job (each task's is derived from it and its index).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the job id and return at once.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of tasks.
    #[arg(short = 'n', long = "tasks", value_name = "N")]
    pub tasks: u32,
    /// How to combine the numbers the tasks print (the last line of each).
    #[arg(long, value_enum, default_value_t = ReduceArg::None)]
    pub reduce: ReduceArg,
    /// Extra environment for every task (repeat).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Run this WebAssembly module (WASI preview 1) as every task instead of a command;
    /// the words after `--` are its arguments. The same file runs on every architecture.
    #[arg(long, value_name = "MODULE.wasm")]
    pub wasm: Option<std::path::PathBuf>,
    /// WebAssembly: instructions (fuel) one attempt may execute (default: no limit but --timeout).
    #[arg(long, requires = "wasm")]
    pub fuel: Option<u64>,
    /// WebAssembly: the largest linear memory one task may grow to.
    #[arg(long, requires = "wasm", default_value = "256M", value_name = "SIZE")]
    pub memory: String,
    #[command(flatten)]
    pub options: JobOptions,
    /// The command and its arguments (run directly, not through a shell); with --wasm, the
    /// module's arguments.
    #[arg(last = true, required_unless_present = "wasm", value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `bramble wasm-task`: what a worker runs for one WebAssembly task (internal).
#[derive(Debug, Args)]
pub struct WasmTaskArgs {
    #[arg(long)]
    pub module: std::path::PathBuf,
    #[arg(long)]
    pub fuel: Option<u64>,
    #[arg(long)]
    pub memory: u64,
    /// Bind this TCP port (all addresses) and hand it to the module as descriptor 3.
    #[arg(long)]
    pub listen: Option<u16>,
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PiArgs {
    /// Points to draw in all (1e9, 1000000000).
    #[arg(long, default_value = "1e9")]
    pub samples: String,
    /// Tasks to share them.
    #[arg(long, default_value_t = 24)]
    pub partitions: u32,
    /// Skip the run on this machine alone.
    #[arg(long)]
    pub no_local: bool,
    #[command(flatten)]
    pub options: JobOptions,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Every finished job still kept (a day, at most 1,000), not only the latest.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id.
    pub id: Option<u64>,
    #[command(flatten)]
    pub output: JsonFlag,
    #[command(subcommand)]
    pub command: Option<JobCommand>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// A task's output (its first 1 MiB of stdout and stderr), read from the node that ran it.
    Logs(JobLogsArgs),
}

#[derive(Debug, Args)]
pub struct JobLogsArgs {
    pub id: u64,
    /// The task's index.
    #[arg(long, default_value_t = 0)]
    pub task: u32,
    /// Keep printing while the task runs.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub id: u64,
}

#[derive(Debug, Args)]
pub struct MpirunArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    pub ranks: u32,
    /// Only these nodes (default: every live node).
    #[arg(long, value_delimiter = ',', value_name = "NODES")]
    pub nodes: Vec<String>,
    /// Extra Open MPI parameters, NAME=VALUE (repeat): passed as --mca NAME VALUE.
    #[arg(long = "mca", value_name = "NAME=VALUE")]
    pub mca: Vec<String>,
    /// The MPI program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CalibrateBoardArgs {
    /// Threads running the benchmark's loop at once (the board's cores).
    #[arg(long)]
    pub threads: u32,
    /// How long they run, in milliseconds of wall time.
    #[arg(long)]
    pub milliseconds: u64,
}

#[derive(Debug, Args)]
pub struct NetnsDelayArgs {
    /// The node's network namespace.
    pub namespace: String,
    /// Delay of each packet the node sends, in microseconds.
    #[arg(long)]
    pub delay_us: u64,
    /// Uniform random variation of the delay, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_us: u64,
}

#[derive(Debug, Args)]
pub struct NetnsForwardArgs {
    /// The emulated cluster's directory (its cluster.toml lists the forwards).
    pub cluster_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct MpiLaunchArgs {
    /// The node (as named in the hostfile).
    pub node: String,
    /// The command line mpirun wants run there.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service: its replicas start on the nodes at once.
    #[command(
        after_help = "Examples:\n  bramble service create web --replicas 2 --port 8100 -- sh -c 'exec python3 -m http.server $PORT'\n  bramble service create hello --replicas 2 --port 8200 --wasm examples/wasm-web/hello.wasm\n  bramble service create worker --replicas 4 --max-per-node 1 --restart on-failure -- ./worker --queue jobs\n  bramble service create api --constraint role=web --env MODE=prod -- /opt/api/serve\n  bramble service create thumbnailer --cpus 0.5 --memory 128M -- ./thumbnailer"
    )]
    Create(Box<ServiceCreateArgs>),
    /// List services with their replicas running and wanted.
    Ls(JsonFlag),
    /// Every replica of a service: node, state, pid, port, restarts, last exit, error.
    Ps(ServiceNameArgs),
    /// A service's spec.
    Inspect(ServiceNameArgs),
    /// Change the number of replicas (the running ones keep running).
    Scale(ServiceScaleArgs),
    /// Remove a service: every replica is stopped (SIGTERM, then SIGKILL after the grace).
    Rm(ServiceNameArgs),
    /// A replica's output (stdout and stderr, the last 1 MiB kept, rotated).
    #[command(
        after_help = "Examples:\n  bramble service logs web\n  bramble service logs web --replica 1 --tail 1M\n  bramble service logs web -f      # follow until Ctrl-C"
    )]
    Logs(ServiceLogsArgs),
    /// Change what replicas run: a rolling update, a few replicas at a time, each drained
    /// from the balancers first and watched until healthy.
    #[command(
        after_help = "Examples:\n  bramble service update web --env GREETING=hello\n  bramble service update web --parallelism 2 --delay 5s --on-failure rollback -- ./server --v2\n  bramble service update web --force          # replace every replica with the same version\n  bramble service update web --parallelism 3  # only the policy: no replica is replaced"
    )]
    Update(Box<ServiceUpdateArgs>),
    /// Return a service to its version before the last update (rolling, as an update).
    #[command(
        after_help = "Examples:\n  bramble service rollback web\n  bramble service rollback web --detach"
    )]
    Rollback(ServiceRollbackArgs),
}

/// A health check's flags, for `create` and `update`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Health check: GET PATH on 127.0.0.1:PORT answers 2xx/3xx (needs --port).
    #[arg(long, value_name = "PATH", conflicts_with = "health_cmd")]
    pub health_http: Option<String>,
    /// Health check: a shell command line that exits 0 (run like the replica, with PORT).
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks [default: 2s].
    #[arg(long, value_name = "T")]
    pub health_interval: Option<String>,
    /// Longest one check may take [default: 1s].
    #[arg(long, value_name = "T")]
    pub health_timeout: Option<String>,
    /// Failed checks in a row before the replica is restarted [default: 3].
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Time after a start before checks count [default: 2s].
    #[arg(long, value_name = "T")]
    pub health_start_period: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureActionArg {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Args)]
pub struct ServiceUpdateArgs {
    pub name: String,
    /// Add or replace an environment variable (repeat).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Remove an environment variable (repeat).
    #[arg(long = "env-rm", value_name = "K")]
    pub env_remove: Vec<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long, value_name = "T")]
    pub stop_grace: Option<String>,
    #[arg(long, value_enum)]
    pub restart: Option<RestartArg>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Remove the health check.
    #[arg(long, conflicts_with_all = ["health_http", "health_cmd"])]
    pub no_health: bool,
    /// CPUs each replica may use (0.5, 2), or `none` to lift the limit.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Memory each replica may use (128M, 1G), or `none` to lift the limit.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Replicas replaced at a time (0: all at once) [default: 1, then as last set].
    #[arg(long, value_name = "N")]
    pub parallelism: Option<u32>,
    /// Wait between batches: 10s, 500ms [default: 0s].
    #[arg(long, value_name = "T")]
    pub delay: Option<String>,
    /// When a new replica fails: pause, continue, or roll back [default: pause].
    #[arg(long, value_enum)]
    pub on_failure: Option<FailureActionArg>,
    /// How long a new replica must run (and be healthy) to count as updated [default: 5s].
    #[arg(long, value_name = "T")]
    pub monitor: Option<String>,
    /// Replace every replica even if nothing they run changes.
    #[arg(long)]
    pub force: bool,
    /// A new WebAssembly module for a service that runs one (what follows -- is then its
    /// arguments).
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<std::path::PathBuf>,
    /// Return at once instead of following the update.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// A new program and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServiceRollbackArgs {
    pub name: String,
    /// Return at once instead of following the rollback.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct ServiceCreateArgs {
    /// Service name (lowercase letters, digits, '-').
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Replica i gets PORT=<port>+i.
    #[arg(long)]
    pub port: Option<u16>,
    /// Environment for every replica (repeat).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// A file of K=V lines (# comments allowed).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<std::path::PathBuf>,
    /// When a replica's process is started again after it ends.
    #[arg(long, value_enum, default_value_t = RestartArg::Always)]
    pub restart: RestartArg,
    /// At most this many replicas on one node (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_per_node: u32,
    /// Placement rule: role=NAME, node=NAME, node!=NAME (repeat: all must hold).
    #[arg(long = "constraint", value_name = "RULE")]
    pub constraints: Vec<String>,
    /// The user replicas run as (default nobody when the agent is root; root only if named).
    #[arg(long)]
    pub user: Option<String>,
    /// Time between SIGTERM and SIGKILL when a replica stops: 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_name = "T")]
    pub stop_grace: String,
    #[command(flatten)]
    pub health: HealthArgs,
    /// CPUs each replica may use: 0.5, 2, 1.25 (a cgroup CPU quota; 0.01 to 1024).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Memory each replica may use: 128M, 1G (a cgroup limit, OOM-killed past it; where
    /// the node's memory controller is off, RLIMIT_AS instead, with a warning in ps).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Run this WebAssembly module (wasm32-wasip1) instead of a program on the nodes: the
    /// same file on every architecture; with --port it accepts on descriptor 3. What
    /// follows -- is then its arguments.
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub output: JsonFlag,
    /// The program and its arguments (with --wasm: the module's arguments).
    #[arg(last = true, required_unless_present = "wasm", value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Args)]
pub struct ServiceNameArgs {
    pub name: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ServiceScaleArgs {
    pub name: String,
    pub replicas: u32,
}

#[derive(Debug, Args)]
pub struct ServiceLogsArgs {
    pub name: String,
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// Only the last bytes: 64K, 1M.
    #[arg(long, default_value = "64K")]
    pub tail: String,
    /// Keep printing what the replica writes (following it if it moves) until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node to drain.
    pub node: String,
    /// Why, kept with the flag and shown by `bramble nodes` (one line, at most 200 bytes).
    #[arg(long)]
    pub reason: Option<String>,
    /// Longest wait until the node holds no VIP and no replica: 30s, 5m, 1h (at most 24h).
    #[arg(long, default_value = "5m", value_name = "T")]
    pub timeout: String,
    /// Set the flag and return at once, without waiting.
    #[arg(long, short = 'd')]
    pub detach: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// The node to make eligible again.
    pub node: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

/// Which nodes a rolling chore goes over, how many at a time, and when it stops.
#[derive(Debug, Clone, Args)]
pub struct RollingOptions {
    /// Nodes worked on at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub serial: u32,
    /// Failed nodes tolerated before the chore stops (0: stop at the first).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_fail: u32,
    /// These nodes, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NODE,...",
        conflicts_with_all = ["role", "all"]
    )]
    pub nodes: Vec<String>,
    /// The nodes with this role, by name.
    #[arg(long, value_name = "ROLE", conflicts_with = "all")]
    pub role: Option<String>,
    /// Every node, by name (the default).
    #[arg(long)]
    pub all: bool,
    /// Longest each step of one node may take — the drain, the command, coming back,
    /// healthy again: 30s, 10m, 1h (at most 24h; the command itself at most 1h).
    #[arg(long, default_value = "10m", value_name = "T")]
    pub timeout: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RollingArgs {
    #[command(flatten)]
    pub options: RollingOptions,
    /// Run the command as this user (root only where the node allows it).
    #[arg(long)]
    pub user: Option<String>,
    /// The program and its arguments (a shell line: sh -c '...').
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The new executable; give one per architecture for a cluster of mixed boards (each
    /// node gets the one built for it).
    #[arg(long = "binary", value_name = "PATH", required = true)]
    pub binaries: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub options: RollingOptions,
}

#[derive(Debug, Args)]
pub struct RebootArgs {
    /// One batch of nodes at a time (the only way Bramble reboots).
    #[arg(long)]
    pub rolling: bool,
    #[command(flatten)]
    pub options: RollingOptions,
}
