// Bramble's dashboard. It only calls /api/v1 with its session cookie; every string from
// the cluster goes into the page as text (never as HTML). Actions carry the session's
// CSRF token.
"use strict";

const state = {
  csrf: null,
  events: null,
  series: [],
  nodes: [],
  tab: "nodes",
  chartNode: null,
  charts: [],
  chartData: null,
  pollTimer: null,
  alertTimer: null,
};

// The series drawn per node, by their names in the monitor's SERIES.
const CHARTS = [
  { title: "CPU busy %", series: ["cpu_busy_percent"], scale: 1 },
  { title: "Load (1 min)", series: ["load1"], scale: 1 },
  { title: "Memory used (MiB)", series: ["memory_used_bytes"], scale: 1 / 1048576 },
  { title: "Network (KiB/s)", series: ["network_receive_bytes_per_second", "network_transmit_bytes_per_second"], scale: 1 / 1024 },
  { title: "Disk (KiB/s)", series: ["disk_read_bytes_per_second", "disk_write_bytes_per_second"], scale: 1 / 1024 },
  { title: "Temperature °C", series: ["temperature_celsius"], scale: 1 },
];
const COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a"];
const HOUR = 3600;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    // Through the CSSOM: the page's policy refuses style attributes.
    else if (name === "style") node.style.cssText = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch("/api/v1" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) {
    showLogin("Your session has ended; log in again.");
    throw new Error("logged out");
  }
  if (!response.ok) throw new Error((data && data.error) || response.statusText);
  return data;
}

// ---------- login ----------

function showLogin(message) {
  stopLive();
  stopPolling();
  state.csrf = null;
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("password").value = "";
  $("password").focus();
}

async function logIn(event) {
  event.preventDefault();
  const button = $("login-button");
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    const response = await fetch("/api/v1/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: $("password").value }),
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({}));
    if (response.ok) {
      state.csrf = data.csrf;
      startApp();
    } else if (response.status === 429) {
      const wait = response.headers.get("Retry-After") || "a few";
      $("login-error").textContent = `Too many failed attempts; try again in ${wait} s.`;
    } else if (response.status === 401) {
      $("login-error").textContent = "Wrong password.";
    } else {
      $("login-error").textContent = data.error || `The agent answered ${response.status}.`;
    }
  } catch (error) {
    $("login-error").textContent = "The agent did not answer: " + error.message;
  } finally {
    button.disabled = false;
  }
}

async function logOut() {
  try { await api("DELETE", "/session"); } catch (_) { /* ended anyway */ }
  showLogin("Logged out.");
}

// ---------- live nodes ----------

function startApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  startLive();
  showTab(state.tab);
  refreshAlerts();
  if (!state.alertTimer) state.alertTimer = setInterval(refreshAlerts, 3000);
}

// Alerts the agents evaluate (bramble alerts): down nodes and backends in red, the rest
// (throttling, heat, full disks) in amber.
const RED_ALERTS = ["node_down", "backend_down"];

async function refreshAlerts() {
  if ($("app").hidden) return;
  let answer;
  try { answer = await api("GET", "/alerts"); } catch (_) { return; }
  const items = (answer.alerts || []).map((alert) =>
    el("li", { class: RED_ALERTS.includes(alert.kind) ? "" : "warn", "data-alert": alert.kind },
      `${alert.kind.replace(/_/g, " ")} · ${alert.node}${alert.subject ? " " + alert.subject : ""}: ${alert.message}`));
  $("alerts").replaceChildren(...items);
}

function startLive() {
  stopLive();
  const events = new EventSource("/api/v1/events");
  state.events = events;
  events.onopen = () => $("live").classList.add("on");
  events.onmessage = (message) => {
    let data;
    try { data = JSON.parse(message.data); } catch (_) { return; }
    state.series = data.series || [];
    state.nodes = data.nodes || [];
    renderGrid();
    appendChartPoint();
  };
  events.addEventListener("end", () => showLogin("Your session has ended; log in again."));
  events.onerror = async () => {
    $("live").classList.remove("on");
    if (events.readyState === EventSource.CLOSED) {
      // Either the agent went away or the session ended: ask which.
      try { await api("GET", "/session"); setTimeout(startLive, 2000); } catch (_) { /* login shown */ }
    }
  };
}

function stopLive() {
  if (state.events) state.events.close();
  state.events = null;
  $("live").classList.remove("on");
}

function stopPolling() {
  if (state.pollTimer) clearInterval(state.pollTimer);
  state.pollTimer = null;
  if (state.alertTimer) clearInterval(state.alertTimer);
  state.alertTimer = null;
}

function value(node, name) {
  const index = state.series.indexOf(name);
  if (index < 0 || !node.point) return null;
  const figure = node.point[index];
  return figure === null || figure === undefined ? null : figure;
}

// The current-condition bits of the Pi's get_throttled (0-3); bits 16-19 are "since boot".
const THROTTLE_NOW = ["under-voltage", "frequency capped", "throttled", "soft temperature limit"];

function health(node) {
  if (node.state === "dead" || node.state === "left" || node.reachable === false) return "down";
  const throttled = value(node, "throttled_bits");
  const temperature = value(node, "temperature_celsius");
  const filesystem = value(node, "root_filesystem_used_percent");
  if (node.state === "suspect" || (throttled !== null && (throttled & 0xf) !== 0)
      || (temperature !== null && temperature >= 80) || (filesystem !== null && filesystem >= 90)) {
    return "warn";
  }
  return "ok";
}

function fixed(figure, digits, unit) {
  return figure === null || figure === undefined ? "–" : figure.toFixed(digits) + (unit || "");
}

function renderGrid() {
  const grid = $("grid");
  const cards = state.nodes.map((node) => {
    const status = health(node);
    const load = node.load || {};
    const memory = load.memory_used_percent;
    const cpu = value(node, "cpu_busy_percent");
    const throttled = value(node, "throttled_bits");
    const flags = throttled === null ? "–"
      : THROTTLE_NOW.filter((_, bit) => (throttled >> bit) & 1).join(", ") || "none";
    const stateText = node.reachable === false && node.state === "alive" ? "unreachable" : node.state;
    return el("div", { class: "node", "data-node": node.name, "data-health": status, onclick: () => openCharts(node.name) },
      el("div", { class: "name" }, node.name, el("span", { class: "state" }, stateText)),
      el("dl", {},
        el("dt", {}, "roles"), el("dd", {}, (node.roles || []).join(", ") || "–"),
        el("dt", {}, "CPU"), el("dd", {}, fixed(cpu, 0, " %")),
        el("div", { class: "bar" }, el("span", { style: `width:${Math.min(100, cpu || 0)}%` })),
        el("dt", {}, "load"), el("dd", {}, load.load1 === undefined ? "–" : `${load.load1.toFixed(2)} / ${load.cpus}`),
        el("dt", {}, "memory"), el("dd", {}, fixed(memory, 0, " %")),
        el("div", { class: "bar" }, el("span", { style: `width:${Math.min(100, memory || 0)}%` })),
        el("dt", {}, "temperature"), el("dd", {}, fixed(value(node, "temperature_celsius"), 1, " °C")),
        el("dt", {}, "throttling"), el("dd", {}, flags),
        el("dt", {}, "disk /"), el("dd", {}, fixed(value(node, "root_filesystem_used_percent"), 0, " %")),
        el("dt", {}, "agent"), el("dd", {}, load.agent_rss_kib === undefined ? "–" : `${(load.agent_rss_kib / 1024).toFixed(1)} MB`),
        el("dt", {}, "version"), el("dd", {}, node.version || "–")));
  });
  grid.replaceChildren(...cards);
  const alive = state.nodes.filter((node) => health(node) !== "down").length;
  $("summary").textContent = `${alive} of ${state.nodes.length} nodes up · updated ${new Date().toLocaleTimeString()}`;
}

// ---------- charts ----------

async function openCharts(name) {
  state.chartNode = name;
  $("charts").hidden = false;
  $("chart-node").textContent = `${name}: the last hour`;
  const area = $("chart-area");
  area.replaceChildren();
  state.charts.forEach((chart) => chart.destroy());
  state.charts = [];
  let history;
  try {
    history = await api("GET", `/nodes/${encodeURIComponent(name)}/history?tier=hour`);
  } catch (error) {
    area.append(el("p", { class: "error" }, error.message));
    return;
  }
  if (state.chartNode !== name) return;
  const times = history.points.map((point) => point.unix_seconds);
  state.chartData = CHARTS.map((chart) => [
    times.slice(),
    ...chart.series.map((series) => {
      const index = history.series.indexOf(series);
      return history.points.map((point) => scaled(point.values[index], chart.scale));
    }),
  ]);
  CHARTS.forEach((chart, position) => {
    const holder = el("div", { class: "chart" });
    area.append(holder);
    // As wide as its cell of the chart grid, which follows the screen.
    const width = Math.max(200, Math.floor(holder.getBoundingClientRect().width) - 8);
    const options = {
      title: chart.title,
      width,
      height: 160,
      series: [{}, ...chart.series.map((series, index) => ({
        label: series.replace(/_/g, " "),
        stroke: COLOURS[index % COLOURS.length],
        width: 1.5,
      }))],
      axes: [{}, { size: 50 }],
    };
    state.charts.push(new uPlot(options, state.chartData[position], holder));
  });
}

function scaled(figure, scale) {
  return figure === null || figure === undefined || Number.isNaN(figure) ? null : figure * scale;
}

function appendChartPoint() {
  if (!state.chartNode || !state.chartData) return;
  const node = state.nodes.find((candidate) => candidate.name === state.chartNode);
  if (!node || !node.point) return;
  const now = Math.floor(Date.now() / 1000);
  CHARTS.forEach((chart, position) => {
    const data = state.chartData[position];
    if (data[0].length && data[0][data[0].length - 1] >= now) return;
    data[0].push(now);
    chart.series.forEach((series, index) => data[index + 1].push(scaled(value(node, series), chart.scale)));
    if (data[0].length > HOUR) data.forEach((column) => column.shift());
    state.charts[position].setData(data);
  });
}

// Charts follow the screen: a turned phone, a resized window.
function resizeCharts() {
  for (const chart of state.charts) {
    const holder = chart.root.parentElement;
    if (!holder) continue;
    chart.setSize({ width: Math.max(200, Math.floor(holder.getBoundingClientRect().width) - 8), height: 160 });
  }
}

function closeCharts() {
  state.chartNode = null;
  state.chartData = null;
  state.charts.forEach((chart) => chart.destroy());
  state.charts = [];
  $("charts").hidden = true;
}

// ---------- tabs: balancers, services, jobs, volumes ----------

const PANELS = {
  balancers: { every: 2000, render: renderBalancers },
  services: { every: 3000, render: renderServices },
  jobs: { every: 3000, render: renderJobs },
  volumes: { every: 5000, render: renderVolumes },
};

function showTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const name of ["nodes", ...Object.keys(PANELS)]) $("tab-" + name).hidden = name !== tab;
  if (state.pollTimer) clearInterval(state.pollTimer);
  state.pollTimer = null;
  const panel = PANELS[tab];
  if (panel) {
    const refresh = () => panel.render().catch((error) => {
      if (error.message !== "logged out") $("action-error").textContent = error.message;
    });
    refresh();
    state.pollTimer = setInterval(refresh, panel.every);
  }
}

async function act(method, path, body) {
  $("action-error").textContent = "";
  try {
    await api(method, path, body);
    await PANELS[state.tab].render();
  } catch (error) {
    if (error.message !== "logged out") $("action-error").textContent = error.message;
  }
}

function table(headings, rows) {
  return el("div", { class: "table-wrap" },
    el("table", {}, el("thead", {}, el("tr", {}, headings.map((heading) => el("th", {}, heading)))),
      el("tbody", {}, rows)));
}

async function renderBalancers() {
  const nodes = await api("GET", "/balancers");
  const blocks = [];
  for (const node of nodes) {
    if (node.error) {
      blocks.push(el("p", { class: "error" }, `${node.node}: ${node.error}`));
      continue;
    }
    for (const balancer of node.balancers) {
      blocks.push(el("p", { class: "caption" },
        `${balancer.name} on ${node.node} · ${balancer.listen} · ${balancer.mode}, ${balancer.balance} · VIP: ${balancer.vip_holder || "–"} · sessions ${balancer.frontend_sessions} · errors ${balancer.frontend_errors}`));
      if (!balancer.backends.length) {
        blocks.push(el("p", { class: "hint" }, `standing by: ${node.node} does not hold the VIP, so it serves nothing and checks no server`));
        continue;
      }
      blocks.push(table(["server", "status", "weight", "active", "total", "errors", "last check", ""],
        balancer.backends.map((backend) => el("tr", { "data-backend": backend.name },
          el("td", {}, backend.name),
          el("td", { class: "status " + backend.status }, backend.status),
          el("td", { class: "num" }, `${backend.effective_weight}/${backend.weight}`),
          el("td", { class: "num" }, backend.active_sessions),
          el("td", { class: "num" }, backend.total_sessions),
          el("td", { class: "num" }, backend.errors),
          el("td", {}, backend.last_check || "–"),
          el("td", {},
            el("button", { onclick: () => act("POST", `/balancers/${encodeURIComponent(balancer.name)}/backends/${encodeURIComponent(backend.name)}/drain`) }, "drain"),
            " ",
            el("button", { onclick: () => act("POST", `/balancers/${encodeURIComponent(balancer.name)}/backends/${encodeURIComponent(backend.name)}/enable`) }, "enable"))))));
    }
  }
  if (!blocks.length) blocks.push(el("p", {}, "No balancer nodes (role lb) are up."));
  $("balancers").replaceChildren(...blocks);
}

async function renderServices() {
  const services = await api("GET", "/services");
  $("services").replaceChildren(services.length ? table(["service", "version", "replicas", "port", "command", "update", ""],
    services.map((service) => el("tr", { "data-service": service.name },
      el("td", {}, service.name),
      el("td", { class: "num" }, service.version),
      el("td", { class: "num" }, `${service.running}/${service.replicas}`),
      el("td", { class: "num" }, service.port || "–"),
      el("td", {}, service.command),
      el("td", {}, service.update || "–"),
      el("td", {},
        el("button", { onclick: () => act("POST", `/services/${encodeURIComponent(service.name)}/scale`, { replicas: service.replicas + 1 }) }, "+1"),
        " ",
        el("button", { onclick: () => act("POST", `/services/${encodeURIComponent(service.name)}/scale`, { replicas: Math.max(0, service.replicas - 1) }) }, "−1")))))
    : el("p", {}, "No services (bramble service create --help)."));
}

async function renderJobs() {
  const jobs = await api("GET", "/jobs?all=true");
  $("jobs").replaceChildren(jobs.length ? table(["job", "state", "tasks done", "policy", "command", ""],
    jobs.map((job) => el("tr", { "data-job": job.id },
      el("td", { class: "num" }, job.id),
      el("td", {}, job.state),
      el("td", { class: "num" }, `${job.done}/${job.tasks}`),
      el("td", {}, job.policy),
      el("td", {}, job.work),
      el("td", {}, ["succeeded", "failed", "cancelled"].includes(job.state) ? ""
        : el("button", { onclick: () => act("POST", `/jobs/${job.id}/cancel`) }, "cancel")))))
    : el("p", {}, "No jobs (bramble run --help)."));
}

async function renderVolumes() {
  const volumes = await api("GET", "/volumes");
  $("volumes").replaceChildren(volumes.length ? table(["volume", "state", "layout", "bricks"],
    volumes.map((volume) => el("tr", {},
      el("td", {}, volume.name),
      el("td", {}, JSON.stringify(volume.state)),
      el("td", {}, JSON.stringify(volume.layout)),
      el("td", {}, volume.bricks.map((brick) => brick.path ? `${brick.node}:${brick.path}` : brick.node).join(" ")))))
    : el("p", {}, "No volumes (bramble volume create --help)."));
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("close-charts").addEventListener("click", closeCharts);
  new ResizeObserver(resizeCharts).observe($("chart-area"));
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  try {
    const session = await fetch("/api/v1/session", { credentials: "same-origin", cache: "no-store" });
    if (session.ok) {
      state.csrf = (await session.json()).csrf;
      startApp();
      return;
    }
  } catch (_) { /* fall through to the login */ }
  showLogin("");
});
