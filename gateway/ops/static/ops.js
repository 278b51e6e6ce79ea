// The ops page: polls /ops/api/state and draws it. Plain DOM (no framework, no build step);
// every value from the gateway goes in as text, never as HTML.
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "tandem-ops-key";
const KIND_LABELS = {
  local_thinking: "edge, thinking",
  local_non_thinking: "edge, not thinking",
  cloud_thinking: "cloud, thinking",
  cloud_non_thinking: "cloud, not thinking",
};

const $ = (id) => document.getElementById(id);
let lastOk = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}` }, text);
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function percent(share) {
  return share === null || share === undefined ? "–" : `${Math.round(share * 100)}%`;
}

function shortRef(reference) {
  // registry/models/name:tag@sha256:... -> name:tag (the full reference is in the title)
  if (!reference) return "–";
  const noDigest = reference.split("@")[0];
  return noDigest.slice(noDigest.lastIndexOf("/") + 1);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function drawGateway(gw) {
  const facts = [
    ["gateway", gw.version],
    ["in flight", gw.in_flight],
    ["shared state", gw.shared_state],
  ];
  if (gw.draining) facts.push(["", "draining"]);
  $("gateway").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
}

function drawFleet(edges) {
  const counts = { up: 0, late: 0, down: 0 };
  let local = 0;
  let forwarded = 0;
  const rows = edges.map((e) => {
    counts[e.state] += 1;
    local += (e.routes.local_thinking || 0) + (e.routes.local_non_thinking || 0);
    forwarded += (e.routes.forwarded_thinking || 0) + (e.routes.forwarded_non_thinking || 0);
    const serving = e.models.map((m) => shortRef(m.reference) !== "–" ? shortRef(m.reference) : m.name);
    const desired = e.desired_reference
      ? el("span", { title: e.desired_reference }, shortRef(e.desired_reference), " ",
          e.in_sync === null ? null : badge(e.in_sync ? "in sync" : "pending", e.in_sync ? "yes" : "late"))
      : "–";
    return el("tr", { "data-edge": e.id, "data-state": e.state, class: e.state },
      el("td", {}, e.id),
      el("td", {}, e.group),
      el("td", {}, badge(e.state)),
      el("td", {}, e.version || "–"),
      el("td", { class: "wrap" }, serving.join(", ") || "–"),
      el("td", {}, desired),
      el("td", {}, e.breaker ? badge(e.breaker.replace("_", "-"), e.breaker) : "–"),
      el("td", { title: new Date(e.last_seen * 1000).toISOString() }, ago(e.age_s)),
      el("td", {}, percent(e.local_share)),
      el("td", {}, `${e.in_flight}${e.queued ? ` (+${e.queued} queued)` : ""}`),
    );
  });
  fill($("fleet").tBodies[0], rows);
  $("fleet").hidden = edges.length === 0;
  $("fleet-empty").hidden = edges.length !== 0;
  const share = local + forwarded ? ` · ${percent(local / (local + forwarded))} answered on the edge boxes` : "";
  $("fleet-summary").textContent = `${counts.up} up, ${counts.late} late, ${counts.down} down${share}`;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function drawRoutes(routes) {
  const width = 600;
  const height = 160;
  const bottom = 2;
  const intervals = routes.intervals;
  const peak = Math.max(1, ...intervals.map((i) => routes.kinds.reduce((sum, k) => sum + i[k], 0)));
  const slot = width / intervals.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  chart.append(svg("line", { class: "axis", x1: 0, x2: width, y1: height - bottom, y2: height - bottom }));
  intervals.forEach((interval, n) => {
    let y = height - bottom;
    for (const kind of routes.kinds) {
      const h = (interval[kind] / peak) * (height - bottom - 4);
      if (h <= 0) continue;
      y -= h;
      const bar = svg("rect", { class: `k-${kind}`, x: n * slot + 1, y, width: Math.max(1, slot - 2), height: h });
      const title = svg("title", {});
      title.textContent = `${new Date(interval.start * 1000).toLocaleTimeString()}: ${interval[kind]} ${KIND_LABELS[kind]}`;
      bar.append(title);
      chart.append(bar);
    }
  });
  const minutes = Math.round((intervals.length * routes.interval_seconds) / 60);
  const scale = el("div", { class: "chart-scale" },
    el("span", {}, `${minutes} min ago`), el("span", {}, `peak ${peak} requests per ${routes.interval_seconds} s`),
    el("span", {}, "now"));
  $("routes-chart").replaceChildren(chart, scale);
  $("routes-legend").replaceChildren(...routes.kinds.map((k) =>
    el("li", {}, el("i", { class: `k-${k}` }), `${KIND_LABELS[k]}: ${routes.totals[k]}`)));
  $("routes-summary").textContent = routes.local_share === null
    ? "no requests yet"
    : `${percent(routes.local_share)} on the edge boxes`;
}

function drawPools(pools) {
  const cards = pools.map((p) => {
    const rows = p.endpoints.map((u) => el("tr", { "data-endpoint": u.id },
      el("td", { title: u.url }, u.id),
      el("td", {}, `${u.in_flight} / ${u.max_concurrency}`),
      el("td", {}, u.load ? u.load.running : "–"),
      el("td", {}, u.load ? u.load.waiting : "–"),
      el("td", {}, u.load ? percent(u.load.kv_usage) : "–"),
      el("td", {}, u.cooling ? badge("cooling") : "no"),
    ));
    const table = el("table", {},
      el("thead", {}, el("tr", {}, ...["endpoint", "in flight / max", "running", "waiting", "KV cache", "cooling down"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows));
    const cold = p.readiness === "cold" ? ` · cold ${Math.round(p.cold_seconds)} s, ~${Math.round(p.estimated_wait_seconds)} s to wait` : "";
    return el("div", { class: "pool", "data-pool": p.name },
      el("h3", {}, p.name, badge(p.readiness),
        el("span", { class: "pool-facts" }, `${p.replicas} replicas · demand ${p.demand} · held ${p.held}${cold}` +
          (p.discovered ? " · discovered (DNS)" : "") +
          (p.load_read ? "" : " · engine load not read (router.strategy is not least-loaded)"))),
      p.endpoints.length ? table : el("p", { class: "empty" }, "No endpoint now."));
  });
  $("pools").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, "No pool configured.")]));
}

function drawRollouts(rollouts) {
  const empty = $("rollouts-empty");
  if (rollouts === null) {
    fill($("rollouts").tBodies[0], []);
    empty.textContent = "Unknown now: the shared state (Redis) cannot be reached.";
  } else {
    fill($("rollouts").tBodies[0], rollouts.map((r) => el("tr", { "data-group": r.group },
      el("td", {}, r.group),
      el("td", { title: r.reference }, shortRef(r.reference)),
      el("td", {}, `${r.canary_percent}%`),
      el("td", { title: r.previous_reference }, shortRef(r.previous_reference)),
      el("td", {}, `${r.serving_assigned} / ${r.edges} (${r.on_new_version} on ${shortRef(r.reference)})`),
      el("td", {}, r.in_progress ? badge("in progress", "in-progress") : badge("done")),
      el("td", {}, ago(Date.now() / 1000 - r.updated_at)),
    )));
    empty.textContent = "No rollout: no group has a desired version.";
  }
  const none = rollouts === null || rollouts.length === 0;
  $("rollouts").hidden = none;
  empty.hidden = !none;
}

function drawBatches(batches) {
  fill($("batches").tBodies[0], batches.map((b) => el("tr", { "data-batch": b.id },
    el("td", {}, b.id),
    el("td", {}, b.tenant),
    el("td", {}, b.model || "–"),
    el("td", {}, b.status),
    el("td", {}, `${b.completed} / ${b.total}`),
    el("td", {}, b.failed),
    el("td", {}, b.created_at ? ago(Date.now() / 1000 - b.created_at) : "–"),
  )));
  $("batches").hidden = batches.length === 0;
  $("batches-empty").hidden = batches.length !== 0;
}

function draw(state) {
  drawGateway(state.gateway);
  drawFleet(state.fleet);
  drawRoutes(state.routes);
  drawPools(state.pools);
  drawRollouts(state.rollouts);
  drawBatches(state.batches);
  $("content").hidden = false;
}

function setStatus(text, error) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(error));
}

function askForKey(message) {
  $("key-why").textContent = message;
  $("key-form").hidden = false;
  $("content").hidden = true;
}

async function poll() {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  try {
    const response = await fetch("api/state", { headers, cache: "no-store" });
    const body = await response.json();
    if (response.status === 401 || response.status === 403) {
      askForKey(body.error ? body.error.message : `status ${response.status}`);
      setStatus("needs an admin key", true);
      return;
    }
    if (!response.ok) throw new Error(body.error ? body.error.message : `status ${response.status}`);
    $("key-form").hidden = true;
    draw(body);
    lastOk = Date.now();
    setStatus(`updated ${new Date(lastOk).toLocaleTimeString()}`, false);
  } catch (err) {
    const since = lastOk ? ` (last update ${ago((Date.now() - lastOk) / 1000)})` : "";
    setStatus(`cannot reach the gateway: ${err.message}${since}`, true);
  }
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    $("key").value = "";
    poll();
  });
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
