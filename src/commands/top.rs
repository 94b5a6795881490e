//! `bramble top`: the dashboard's picture in the terminal. Each interval it asks an agent
//! for gossip's node table, turns it into the monitor's [`LiveSnapshot`] (the same one the
//! dashboard's event stream sends: every alive node's last second, or `reachable: false`
//! when it does not answer within 800 ms), and every few seconds the cluster's alerts.
//!
//! On a terminal it draws them with ratatui: a table of nodes coloured by the dashboard's
//! health rule, the selected node's gauges and its CPU since `top` started, the alerts at
//! the bottom; ↑/↓ select, q or Esc quits, and the terminal is restored on exit and on a
//! panic. `--once` prints one plain table and `--json` one snapshot, for scripts; with
//! stdout not a terminal and neither flag, it behaves as `--once`.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Stdout};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bramble_cluster::{NodeState, NodeView};
use bramble_monitor::live::{Health, Live, LiveNode, LiveSnapshot};
use bramble_monitor::sample::{THROTTLE_CONDITIONS, throttle_flags};
use bramble_monitor::service::{AlertScope, AlertsResponse, METHOD_ALERTS};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Gauge, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState,
};
use ratatui::{Frame, Terminal};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::{GlobalOptions, TopArgs};
use crate::client::ClusterClient;
use crate::output;

const METHOD_NODES: &str = "cluster.nodes";
/// How long one agent may take to give gossip's table before the next is asked.
const NODES_WAIT: Duration = Duration::from_secs(1);
/// Agents asked for the table in one refresh, at most.
const NODES_TRIES: usize = 4;
/// How long the cluster's alerts may take (the asked node gives each member 2 s).
const ALERTS_WAIT: Duration = Duration::from_secs(5);
/// How often the alerts are asked (the dashboard's pace).
const ALERTS_EVERY: Duration = Duration::from_secs(3);
/// The shortest gap between the two snapshots of `--once` and `--json`: the CPU's busy
/// share and the rates need two samples, and agents take one a second.
const ONCE_GAP: Duration = Duration::from_millis(1250);
/// CPU points kept per node for the sparkline: an hour at one a second.
const CPU_POINTS: usize = 3600;
/// How long the screen waits for a key before looking for a new picture.
const KEY_POLL: Duration = Duration::from_millis(100);
/// Width of the CPU column's bar, in characters.
const BAR_WIDTH: usize = 10;
/// Alert lines the screen shows at most.
const ALERT_LINES: usize = 6;
/// The alert kinds drawn red (the dashboard's); the others amber.
const RED_ALERTS: [&str; 2] = ["node_down", "backend_down"];

/// The columns of a node row, in [`NodeRow::cells`]' order.
const COLUMNS: [&str; 13] = [
    "NODE",
    "STATE",
    "CPU",
    "LOAD/CPUS",
    "MEM",
    "NET RX/s",
    "NET TX/s",
    "DISK R/s",
    "DISK W/s",
    "TEMP",
    "ROOT FS",
    "THROTTLING",
    "AGENT RSS",
];

pub async fn run(global: &GlobalOptions, args: &TopArgs) -> Result<()> {
    let client = Arc::new(crate::target::resolve(global)?);
    let on_terminal = std::io::stdout().is_terminal();
    if args.once || args.json || !on_terminal {
        if !args.once && !args.json {
            eprintln!(
                "Note: stdout is not a terminal, so `bramble top` prints one table (as with --once)."
            );
        }
        return print_once(&client, args).await;
    }
    let (sender, updates) = mpsc::channel(4);
    let interval = args.interval;
    let refresher = tokio::spawn(refresh(client, interval, sender));
    let screen = tokio::task::spawn_blocking(move || interact(updates, interval));
    let outcome = screen.await;
    refresher.abort();
    match outcome {
        Ok(result) => result,
        Err(error) if error.is_panic() => Err(anyhow!("the screen stopped with a panic")),
        Err(error) => Err(anyhow!("the screen stopped: {error}")),
    }
}

// ---------- asking the cluster ----------

/// Where gossip's table comes from: the agent that answered last first, then the members
/// the last table had alive, then the client's agents. A stopped agent costs
/// [`NODES_WAIT`], a dead one nothing (refused at once).
struct NodeSource {
    client: Arc<ClusterClient>,
    preferred: Vec<SocketAddr>,
}

impl NodeSource {
    fn new(client: Arc<ClusterClient>) -> NodeSource {
        NodeSource {
            client,
            preferred: Vec::new(),
        }
    }

    /// The agent that answered last.
    fn last_answered(&self) -> Option<SocketAddr> {
        self.preferred.first().copied()
    }

    async fn nodes(&mut self) -> Result<Vec<NodeView>> {
        let mut order = self.preferred.clone();
        order.extend_from_slice(self.client.agents());
        let mut seen = std::collections::HashSet::new();
        order.retain(|address| seen.insert(*address));
        let mut failures = Vec::new();
        for address in order.into_iter().take(NODES_TRIES) {
            let answer = tokio::time::timeout(
                NODES_WAIT,
                self.client
                    .call_at::<_, Vec<NodeView>>(address, METHOD_NODES, &()),
            )
            .await;
            match answer {
                Ok(Ok(nodes)) => {
                    self.preferred = std::iter::once(address)
                        .chain(
                            nodes
                                .iter()
                                .filter(|node| node.state == NodeState::Alive)
                                .map(|node| node.addr)
                                .filter(|other| *other != address),
                        )
                        .collect();
                    return Ok(nodes);
                }
                Ok(Err(error)) => failures.push(format!("{address}: {error:#}")),
                Err(_) => failures.push(format!(
                    "{address}: no answer within {} s",
                    NODES_WAIT.as_secs()
                )),
            }
        }
        Err(anyhow!(
            "no agent of the {} gave the node table: {}",
            self.client.source,
            failures.join("; ")
        ))
    }
}

/// The cluster's alerts, asked of `agent` when known, else of any agent.
async fn ask_alerts(client: &ClusterClient, agent: Option<SocketAddr>) -> Result<AlertsResponse> {
    let asking = async {
        match agent {
            Some(address) => {
                client
                    .call_at(address, METHOD_ALERTS, &AlertScope::Cluster)
                    .await
            }
            None => client
                .call_any(METHOD_ALERTS, &AlertScope::Cluster)
                .await
                .map(|(_, answer)| answer),
        }
    };
    tokio::time::timeout(ALERTS_WAIT, asking)
        .await
        .map_err(|_| anyhow!("no answer within {} s", ALERTS_WAIT.as_secs()))?
        .context("asking for the cluster's alerts")
}

/// `--json`: the snapshot (the dashboard's event) with the cluster's alerts.
#[derive(Serialize)]
struct OnceJson {
    #[serde(flatten)]
    snapshot: LiveSnapshot,
    alerts: Option<AlertsResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alerts_problem: Option<String>,
}

/// `--once` and `--json`: two snapshots [`ONCE_GAP`] or an interval apart (rates need
/// both), the second printed.
async fn print_once(client: &Arc<ClusterClient>, args: &TopArgs) -> Result<()> {
    let mut source = NodeSource::new(client.clone());
    let mut live = Live::new();
    let nodes = source.nodes().await?;
    live.snapshot(nodes, client.rpc()).await;
    tokio::time::sleep(args.interval.max(ONCE_GAP)).await;
    let nodes = source.nodes().await?;
    let (snapshot, alerts) = tokio::join!(
        live.snapshot(nodes, client.rpc()),
        ask_alerts(client, source.last_answered())
    );
    if args.json {
        let (alerts, alerts_problem) = match alerts {
            Ok(alerts) => (Some(alerts), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        return output::print_json(&OnceJson {
            snapshot,
            alerts,
            alerts_problem,
        });
    }
    let mut headers = vec!["HEALTH"];
    headers.extend(COLUMNS);
    let mut table = output::table(&headers);
    for node in &snapshot.nodes {
        let row = NodeRow::of(node);
        let mut cells = vec![health_word(row.health).to_string()];
        cells.extend(row.cells());
        table.add_row(cells);
    }
    println!("{table}");
    println!("{}.", summary(&snapshot));
    for node in &snapshot.nodes {
        if let Some(problem) = &node.problem {
            println!("{} did not answer: {problem}", node.view.name);
        }
    }
    match alerts {
        Ok(alerts) if alerts.alerts.is_empty() => println!("No active alerts."),
        Ok(alerts) => {
            println!("Alerts ({}):", alerts.alerts.len());
            for alert in &alerts.alerts {
                println!(
                    "  {}",
                    crate::commands::alerts::line(alert, bramble_util::time::unix_millis())
                );
            }
        }
        Err(error) => println!("Alerts: unavailable ({error:#})"),
    }
    Ok(())
}

// ---------- one row per node ----------

/// One node's figures as text, for the plain table and the screen alike.
#[derive(Debug, Clone, PartialEq)]
struct NodeRow {
    health: Health,
    /// The CPU's busy share over the last second, for the bar and the gauge.
    cpu_percent: Option<f32>,
    memory_percent: Option<f32>,
    root_percent: Option<f32>,
    name: String,
    state: String,
    cpu: String,
    load: String,
    memory: String,
    received: String,
    sent: String,
    read: String,
    written: String,
    temperature: String,
    root: String,
    throttling: String,
    agent: String,
}

impl NodeRow {
    fn of(node: &LiveNode) -> NodeRow {
        let gossip = node.view.load;
        let cpu_percent = node.figure("cpu_busy_percent");
        // The last second's figures where the node answered, gossip's (a few seconds old)
        // where it did not.
        let memory_percent = match (
            node.figure("memory_used_bytes"),
            node.figure("memory_available_bytes"),
        ) {
            (Some(used), Some(available)) if used + available > 0.0 => {
                Some(used * 100.0 / (used + available))
            }
            _ => gossip.map(|load| load.memory_used_percent),
        };
        let load1 = node
            .figure("load1")
            .or_else(|| gossip.map(|load| load.load1));
        let root_percent = node.figure("root_filesystem_used_percent");
        NodeRow {
            health: node.health(),
            cpu_percent,
            memory_percent,
            root_percent,
            name: node.view.name.clone(),
            state: node.state_text().to_string(),
            cpu: percent(cpu_percent),
            load: match (load1, gossip.map(|load| load.cpus)) {
                (Some(load1), Some(cpus)) if cpus > 0 => format!("{load1:.2}/{cpus}"),
                (Some(load1), _) => format!("{load1:.2}"),
                (None, _) => "-".into(),
            },
            memory: percent(memory_percent),
            received: rate(node.figure("network_receive_bytes_per_second")),
            sent: rate(node.figure("network_transmit_bytes_per_second")),
            read: rate(node.figure("disk_read_bytes_per_second")),
            written: rate(node.figure("disk_write_bytes_per_second")),
            temperature: node
                .figure("temperature_celsius")
                .map_or("-".into(), |celsius| format!("{celsius:.1} °C")),
            root: percent(root_percent),
            throttling: node
                .figure("throttled_bits")
                .map_or("-".into(), |bits| throttling(bits as u32)),
            agent: gossip
                .map(|load| load.agent_rss_kib)
                .filter(|kib| *kib > 0)
                .map_or("-".into(), output::kib),
        }
    }

    /// The texts of [`COLUMNS`], in order.
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.state.clone(),
            self.cpu.clone(),
            self.load.clone(),
            self.memory.clone(),
            self.received.clone(),
            self.sent.clone(),
            self.read.clone(),
            self.written.clone(),
            self.temperature.clone(),
            self.root.clone(),
            self.throttling.clone(),
            self.agent.clone(),
        ]
    }
}

fn percent(value: Option<f32>) -> String {
    value.map_or("-".into(), |value| format!("{value:.0} %"))
}

/// Bytes a second, short: "512 B/s", "1.5 KiB/s", "12.0 MiB/s".
fn rate(bytes_per_second: Option<f32>) -> String {
    const UNITS: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let Some(mut value) = bytes_per_second.map(f64::from) else {
        return "-".into();
    };
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The Pi's throttling word: the conditions holding now, else those seen since boot, else
/// "none".
fn throttling(word: u32) -> String {
    let now: Vec<&str> = THROTTLE_CONDITIONS
        .iter()
        .filter(|(bit, _)| throttle_flags(word, *bit).0)
        .map(|(_, condition)| *condition)
        .collect();
    if !now.is_empty() {
        return now.join(", ");
    }
    let earlier: Vec<&str> = THROTTLE_CONDITIONS
        .iter()
        .filter(|(bit, _)| throttle_flags(word, *bit).1)
        .map(|(_, condition)| *condition)
        .collect();
    if earlier.is_empty() {
        "none".into()
    } else {
        format!("since boot: {}", earlier.join(", "))
    }
}

/// A share as a bar of [`BAR_WIDTH`] characters, in eighths: "█████▌    ".
fn bar(percent: Option<f32>) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let share = percent.map_or(0.0, |percent| percent.clamp(0.0, 100.0) / 100.0);
    let eighths = (share * (BAR_WIDTH * 8) as f32).round() as usize;
    let mut text: String = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        text.push(EIGHTHS[eighths % 8]);
    }
    let filled = text.chars().count();
    text.extend(std::iter::repeat_n(' ', BAR_WIDTH.saturating_sub(filled)));
    text
}

fn health_word(health: Health) -> &'static str {
    match health {
        Health::Ok => "ok",
        Health::Warn => "warn",
        Health::Down => "down",
    }
}

fn health_colour(health: Health) -> Color {
    match health {
        Health::Ok => Color::Green,
        Health::Warn => Color::Yellow,
        Health::Down => Color::Red,
    }
}

/// "2 of 3 nodes up".
fn summary(snapshot: &LiveSnapshot) -> String {
    let up = snapshot
        .nodes
        .iter()
        .filter(|node| node.health() != Health::Down)
        .count();
    format!("{up} of {} nodes up", snapshot.nodes.len())
}

/// `HH:MM:SS` in UTC.
fn clock(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60
    )
}

// ---------- the screen ----------

/// What the refresher hands the screen.
enum Update {
    Snapshot(LiveSnapshot),
    Alerts(Result<AlertsResponse, String>),
    /// This refresh got no node table.
    Problem(String),
}

/// Each interval a snapshot; every [`ALERTS_EVERY`] the alerts, asked on the side so a
/// slow gather never holds the picture. Ends when the screen has gone.
async fn refresh(client: Arc<ClusterClient>, interval: Duration, updates: mpsc::Sender<Update>) {
    let mut source = NodeSource::new(client.clone());
    let mut live = Live::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alerts_due = tokio::time::Instant::now();
    let mut alerts_asking: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        ticker.tick().await;
        let now = tokio::time::Instant::now();
        let idle = alerts_asking
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished);
        if now >= alerts_due && idle {
            alerts_due = now + ALERTS_EVERY;
            let (client, sender, agent) = (client.clone(), updates.clone(), source.last_answered());
            alerts_asking = Some(tokio::spawn(async move {
                let alerts = ask_alerts(&client, agent)
                    .await
                    .map_err(|error| format!("{error:#}"));
                let _ = sender.send(Update::Alerts(alerts)).await;
            }));
        }
        let update = match source.nodes().await {
            Ok(nodes) => Update::Snapshot(live.snapshot(nodes, client.rpc()).await),
            Err(error) => Update::Problem(format!("{error:#}")),
        };
        if updates.send(update).await.is_err() {
            break;
        }
    }
    if let Some(asking) = alerts_asking {
        asking.abort();
    }
}

/// What the screen shows, kept between pictures.
#[derive(Default)]
struct Screen {
    snapshot: Option<LiveSnapshot>,
    alerts: Option<Result<AlertsResponse, String>>,
    /// Why the last refresh got no table, until one does.
    problem: Option<String>,
    /// Each node's CPU busy share per refresh since `top` started (None: no figure).
    cpu: HashMap<String, VecDeque<Option<u64>>>,
    selected: usize,
    interval: Duration,
}

impl Screen {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Snapshot(snapshot) => {
                self.cpu
                    .retain(|name, _| snapshot.nodes.iter().any(|node| &node.view.name == name));
                for node in &snapshot.nodes {
                    let points = self.cpu.entry(node.view.name.clone()).or_default();
                    if points.len() == CPU_POINTS {
                        points.pop_front();
                    }
                    points.push_back(
                        node.figure("cpu_busy_percent")
                            .map(|percent| percent.round() as u64),
                    );
                }
                self.selected = self.selected.min(snapshot.nodes.len().saturating_sub(1));
                self.snapshot = Some(snapshot);
                self.problem = None;
            }
            Update::Alerts(alerts) => self.alerts = Some(alerts),
            Update::Problem(problem) => self.problem = Some(problem),
        }
    }

    fn node_count(&self) -> usize {
        self.snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.nodes.len())
    }

    fn select_next(&mut self) {
        if self.selected + 1 < self.node_count() {
            self.selected += 1;
        }
    }

    fn select_previous(&mut self) {
        self.selected = self.selected.saturating_sub(1);
    }

    fn selected_node(&self) -> Option<&LiveNode> {
        self.snapshot.as_ref()?.nodes.get(self.selected)
    }
}

/// Whether the terminal is in raw mode on the alternate screen, for the restorer.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Raw mode off, the main screen back, the cursor shown; once, whoever calls first.
fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(
            std::io::stdout(),
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
    }
}

/// The terminal in raw mode on the alternate screen, restored when dropped and, through
/// a panic hook installed first, on a panic.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn take() -> Result<TerminalGuard> {
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous_hook(info);
        }));
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        let entered = terminal::enable_raw_mode()
            .and_then(|()| execute!(std::io::stdout(), terminal::EnterAlternateScreen))
            .context("preparing the terminal")
            .and_then(|()| {
                Terminal::new(CrosstermBackend::new(std::io::stdout()))
                    .context("opening the terminal")
            });
        match entered {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(error) => {
                restore_terminal();
                Err(error)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The screen's loop, on a blocking thread: take pictures as they come, redraw when
/// something changed, answer keys.
fn interact(mut updates: mpsc::Receiver<Update>, interval: Duration) -> Result<()> {
    let mut guard = TerminalGuard::take()?;
    let mut screen = Screen {
        interval,
        ..Screen::default()
    };
    let mut changed = true;
    loop {
        loop {
            match updates.try_recv() {
                Ok(update) => {
                    screen.apply(update);
                    changed = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(anyhow!("the refresh stopped"));
                }
            }
        }
        if changed {
            guard
                .terminal
                .draw(|frame| draw(frame, &screen))
                .context("drawing the screen")?;
            changed = false;
        }
        if !event::poll(KEY_POLL).context("reading the keyboard")? {
            continue;
        }
        match event::read().context("reading the keyboard")? {
            Event::Key(key) if key.kind == KeyEventKind::Press => match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(());
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    screen.select_previous();
                    changed = true;
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    screen.select_next();
                    changed = true;
                }
                _ => {}
            },
            Event::Resize(..) => changed = true,
            _ => {}
        }
    }
}

fn draw(frame: &mut Frame, screen: &Screen) {
    let alert_lines = match &screen.alerts {
        Some(Ok(alerts)) => (alerts.alerts.len() + alerts.unanswered.len()).clamp(1, ALERT_LINES),
        _ => 1,
    };
    let [header, table, detail, alerts] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(screen.node_count() as u16 + 3),
        Constraint::Min(5),
        Constraint::Length(alert_lines as u16 + 2),
    ])
    .areas(frame.area());
    draw_header(frame, header, screen);
    draw_nodes(frame, table, screen);
    draw_selected(frame, detail, screen);
    draw_alerts(frame, alerts, screen);
}

fn draw_header(frame: &mut Frame, area: Rect, screen: &Screen) {
    let mut spans = vec![Span::styled(
        "bramble top",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    match &screen.snapshot {
        Some(snapshot) => spans.push(Span::raw(format!(
            " · {} · updated {} UTC",
            summary(snapshot),
            clock(snapshot.unix_ms)
        ))),
        None if screen.problem.is_none() => spans.push(Span::raw(" · asking the cluster…")),
        None => {}
    }
    if let Some(problem) = &screen.problem {
        spans.push(Span::styled(
            format!(" · {problem}"),
            Style::default().fg(Color::Red),
        ));
    }
    spans.push(Span::styled(
        " · ↑/↓ select · q quit",
        Style::default().add_modifier(Modifier::DIM),
    ));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_nodes(frame: &mut Frame, area: Rect, screen: &Screen) {
    let nodes: &[LiveNode] = screen
        .snapshot
        .as_ref()
        .map_or(&[], |snapshot| &snapshot.nodes);
    let rows: Vec<NodeRow> = nodes.iter().map(NodeRow::of).collect();
    let name_width = rows
        .iter()
        .map(|row| row.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4) as u16;
    let widths = [
        Constraint::Length(name_width),
        Constraint::Length(11),
        Constraint::Length(BAR_WIDTH as u16 + 7),
        Constraint::Length(9),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Min(10),
        Constraint::Length(9),
    ];
    let header = Row::new(COLUMNS).style(Style::default().add_modifier(Modifier::BOLD));
    let table_rows = rows.iter().map(|row| {
        let colour = Style::default().fg(health_colour(row.health));
        let mut cells = row.cells().into_iter().map(Cell::from).collect::<Vec<_>>();
        cells[0] = Cell::from(row.name.clone()).style(colour);
        cells[1] = Cell::from(row.state.clone()).style(colour);
        cells[2] = Cell::from(Line::from(vec![
            Span::styled(bar(row.cpu_percent), Style::default().fg(Color::Cyan)),
            Span::raw(format!(" {:>5}", row.cpu)),
        ]));
        Row::new(cells)
    });
    let table = Table::new(table_rows, widths)
        .header(header)
        .block(Block::bordered().title(" nodes "))
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state =
        TableState::default().with_selected((!rows.is_empty()).then_some(screen.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_selected(frame: &mut Frame, area: Rect, screen: &Screen) {
    let Some(node) = screen.selected_node() else {
        frame.render_widget(Block::bordered().title(" no node "), area);
        return;
    };
    let row = NodeRow::of(node);
    let [gauges, chart] =
        Layout::horizontal([Constraint::Percentage(35), Constraint::Percentage(65)]).areas(area);
    let title = format!(
        " {} · {} · {} · version {} ",
        row.name,
        row.state,
        if node.view.roles.is_empty() {
            "no roles".to_string()
        } else {
            node.view.roles.join(", ")
        },
        node.view.version
    );
    let block = Block::bordered()
        .title(title)
        .border_style(Style::default().fg(health_colour(row.health)));
    let inner = block.inner(gauges);
    frame.render_widget(block, gauges);
    let lines = Layout::vertical([Constraint::Length(1); 4]).split(inner);
    let gauge = |label: &str, value: Option<f32>, colour: Color| {
        Gauge::default()
            .ratio(value.map_or(0.0, |value| f64::from(value.clamp(0.0, 100.0)) / 100.0))
            .label(format!("{label} {}", percent(value)))
            .gauge_style(Style::default().fg(colour))
    };
    frame.render_widget(gauge("CPU", row.cpu_percent, Color::Cyan), lines[0]);
    frame.render_widget(
        gauge("memory", row.memory_percent, Color::Magenta),
        lines[1],
    );
    frame.render_widget(gauge("root fs", row.root_percent, Color::Blue), lines[2]);
    let problem = node.problem.as_deref().map_or_else(
        || {
            format!(
                "temperature {} · throttling {}",
                row.temperature, row.throttling
            )
        },
        |problem| format!("no answer: {problem}"),
    );
    frame.render_widget(Paragraph::new(problem), lines[3]);

    let points = screen.cpu.get(&row.name);
    let width = chart.width.saturating_sub(2) as usize;
    let shown: Vec<Option<u64>> = points.map_or_else(Vec::new, |points| {
        points
            .iter()
            .skip(points.len().saturating_sub(width))
            .copied()
            .collect()
    });
    let span = screen.interval * shown.len() as u32;
    let sparkline = Sparkline::default()
        .block(Block::bordered().title(format!(
            " {} CPU % · the last {} s (0-100) ",
            row.name,
            span.as_secs()
        )))
        .data(shown)
        .max(100)
        .style(Style::default().fg(Color::Cyan));
    frame.render_widget(sparkline, chart);
}

fn draw_alerts(frame: &mut Frame, area: Rect, screen: &Screen) {
    let mut lines: Vec<Line> = Vec::new();
    let title = match &screen.alerts {
        None => {
            lines.push(Line::from("asking…"));
            " alerts ".to_string()
        }
        Some(Err(problem)) => {
            lines.push(Line::styled(
                format!("unavailable: {problem}"),
                Style::default().fg(Color::Red),
            ));
            " alerts ".to_string()
        }
        Some(Ok(answer)) => {
            for alert in &answer.alerts {
                let colour = if RED_ALERTS.contains(&alert.kind.as_str()) {
                    Color::Red
                } else {
                    Color::Yellow
                };
                lines.push(Line::styled(
                    crate::commands::alerts::line(alert, bramble_util::time::unix_millis()),
                    Style::default().fg(colour),
                ));
            }
            for missing in &answer.unanswered {
                lines.push(Line::styled(
                    format!(
                        "not included: {}'s own conditions ({})",
                        missing.node, missing.reason
                    ),
                    Style::default().add_modifier(Modifier::DIM),
                ));
            }
            if lines.is_empty() {
                lines.push(Line::styled(
                    "no active alerts",
                    Style::default().fg(Color::Green),
                ));
            }
            format!(" alerts ({}) ", answer.alerts.len())
        }
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_cluster::load::LoadSummary;
    use bramble_monitor::history::SERIES;

    fn node(name: &str, state: NodeState, figures: &[(&str, f32)]) -> LiveNode {
        let mut point = vec![None; SERIES.len()];
        for (series, value) in figures {
            let index = SERIES
                .iter()
                .position(|candidate| candidate == series)
                .expect("a series");
            point[index] = Some(*value);
        }
        LiveNode {
            view: NodeView {
                name: name.into(),
                addr: "127.0.0.1:7946".parse().expect("an address"),
                state,
                roles: vec![],
                version: "0.1.0".into(),
                protocol: 1,
                oldest_compatible_protocol: 1,
                architecture: "x86_64".into(),
                build: String::new(),
                generation: 1,
                load: Some(LoadSummary {
                    load1: 0.25,
                    memory_used_percent: 33.0,
                    cpus: 4,
                    agent_rss_kib: 21_504,
                }),
                heartbeat_age_ms: Some(200),
            },
            point: Some(point),
            reachable: Some(true),
            problem: None,
        }
    }

    #[test]
    fn a_row_shows_the_last_second_in_units_people_read() {
        let live = node(
            "n1",
            NodeState::Alive,
            &[
                ("cpu_busy_percent", 42.4),
                ("load1", 1.5),
                ("memory_used_bytes", 300.0),
                ("memory_available_bytes", 700.0),
                ("network_receive_bytes_per_second", 512.0),
                ("network_transmit_bytes_per_second", 1536.0),
                ("disk_read_bytes_per_second", 0.0),
                ("disk_write_bytes_per_second", 3.0 * 1024.0 * 1024.0),
                ("temperature_celsius", 81.25),
                ("throttled_bits", 327_685.0),
                ("root_filesystem_used_percent", 55.0),
            ],
        );
        let row = NodeRow::of(&live);
        assert_eq!(row.health, Health::Warn);
        assert_eq!(
            row.cells(),
            [
                "n1",
                "alive",
                "42 %",
                "1.50/4",
                "30 %",
                "512 B/s",
                "1.5 KiB/s",
                "0 B/s",
                "3.0 MiB/s",
                "81.2 °C",
                "55 %",
                "under_voltage, throttled",
                "21.0 MB",
            ]
        );
        assert_eq!(row.cells().len(), COLUMNS.len());
    }

    #[test]
    fn a_silent_node_falls_back_to_gossip_and_reads_red() {
        let mut silent = node("n2", NodeState::Alive, &[]);
        silent.point = None;
        silent.reachable = Some(false);
        silent.problem = Some("connection refused".into());
        let row = NodeRow::of(&silent);
        assert_eq!(row.health, Health::Down);
        assert_eq!(health_colour(row.health), Color::Red);
        assert_eq!(row.state, "unreachable");
        assert_eq!(row.cpu, "-");
        assert_eq!(row.load, "0.25/4");
        assert_eq!(row.memory, "33 %");
        assert_eq!(row.throttling, "-");
        let dead = node("n3", NodeState::Dead, &[]);
        assert_eq!(NodeRow::of(&dead).state, "dead");
        let snapshot = LiveSnapshot {
            unix_ms: 0,
            series: vec![],
            nodes: vec![silent, dead, node("n1", NodeState::Alive, &[])],
        };
        assert_eq!(summary(&snapshot), "1 of 3 nodes up");
    }

    #[test]
    fn colours_follow_health() {
        assert_eq!(
            health_colour(node("n1", NodeState::Alive, &[]).health()),
            Color::Green
        );
        assert_eq!(
            health_colour(node("n1", NodeState::Suspect, &[]).health()),
            Color::Yellow
        );
        let full = node(
            "n1",
            NodeState::Alive,
            &[("root_filesystem_used_percent", 91.0)],
        );
        assert_eq!(health_colour(full.health()), Color::Yellow);
        assert_eq!(
            health_colour(node("n1", NodeState::Left, &[]).health()),
            Color::Red
        );
    }

    #[test]
    fn bars_throttling_rates_and_clocks() {
        assert_eq!(bar(None), " ".repeat(BAR_WIDTH));
        assert_eq!(bar(Some(0.0)), " ".repeat(BAR_WIDTH));
        assert_eq!(bar(Some(100.0)), "█".repeat(BAR_WIDTH));
        assert_eq!(bar(Some(250.0)), "█".repeat(BAR_WIDTH));
        assert_eq!(bar(Some(45.0)), "████▌     ");
        assert_eq!(bar(Some(45.0)).chars().count(), BAR_WIDTH);
        assert_eq!(throttling(0), "none");
        assert_eq!(throttling(0x4_0000), "since boot: throttled");
        assert_eq!(throttling(0x5_0005), "under_voltage, throttled");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(5.0 * 1024.0 * 1024.0 * 1024.0)), "5.0 GiB/s");
        assert_eq!(clock(1_795_995_148_000), "23:32:28");
    }

    #[test]
    fn the_screen_keeps_each_nodes_cpu_and_a_valid_selection() {
        let snapshot = |nodes: Vec<LiveNode>| LiveSnapshot {
            unix_ms: 0,
            series: SERIES.iter().map(|name| (*name).to_string()).collect(),
            nodes,
        };
        let mut screen = Screen::default();
        screen.select_next();
        assert_eq!(screen.selected, 0);
        screen.apply(Update::Snapshot(snapshot(vec![
            node("n1", NodeState::Alive, &[("cpu_busy_percent", 10.4)]),
            node("n2", NodeState::Alive, &[]),
        ])));
        screen.select_next();
        screen.select_next();
        assert_eq!(screen.selected, 1);
        screen.apply(Update::Snapshot(snapshot(vec![node(
            "n1",
            NodeState::Alive,
            &[("cpu_busy_percent", 20.6)],
        )])));
        // n2 went: its points go, and the selection stays on a node.
        assert_eq!(screen.selected, 0);
        assert!(!screen.cpu.contains_key("n2"));
        assert_eq!(
            screen.cpu["n1"].iter().copied().collect::<Vec<_>>(),
            [Some(10), Some(21)]
        );
        screen.apply(Update::Problem("no agent".into()));
        assert!(screen.snapshot.is_some() && screen.problem.is_some());
    }

    #[test]
    fn the_screen_draws_into_a_small_terminal() {
        let mut screen = Screen {
            interval: Duration::from_secs(1),
            ..Screen::default()
        };
        screen.apply(Update::Snapshot(LiveSnapshot {
            unix_ms: 0,
            series: SERIES.iter().map(|name| (*name).to_string()).collect(),
            nodes: vec![node("n1", NodeState::Alive, &[("cpu_busy_percent", 50.0)])],
        }));
        screen.apply(Update::Alerts(Ok(AlertsResponse {
            asked: "n1".into(),
            alerts: vec![],
            unanswered: vec![],
        })));
        let backend = ratatui::backend::TestBackend::new(140, 20);
        let mut terminal = Terminal::new(backend).expect("a test terminal");
        terminal
            .draw(|frame| draw(frame, &screen))
            .expect("drawing");
        let text: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect();
        for expected in ["1 of 1 nodes up", "NODE", "n1", "alive", "no active alerts"] {
            assert!(text.contains(expected), "{expected:?} not on screen");
        }
    }
}
