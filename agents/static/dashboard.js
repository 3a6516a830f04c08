// The funnel dashboard: reads /dashboard/api/<panel> (sinks/reports.py) and redraws itself every few seconds.
"use strict";

const FILTERS = ["workspace", "since", "until", "flow", "campaign", "step", "action", "provider", "by", "lang"];
const PANELS = ["funnel", "trend", "status", "failures", "health", "recipients", "dead_letters", "latency", "customer"];
const COLORS = {
  sent: "#4c78a8", processing: "#9ecae9", delivered: "#54a24b", opened: "#eeca3b", clicked: "#f58518",
  answered: "#b279a2", succeeded: "#72b7b2", failed: "#e45756", bounced: "#ff9d98",
  unsubscribed: "#9d755d", complained: "#bab0ac", "": "#d4d4d4",
};
const TREND = ["sent", "delivered", "opened", "clicked", "failed"];
// The product's own words for the page's headings (the seed document); status words come from the API.
const VI_WORDS = { action: "Hành động", current_status: "Trạng thái", customer_activity: "Báo cáo Hoạt động khách hàng" };
const SOURCES = {
  funnel: "funnel_daily", trend: "funnel_daily", status: "current_status_daily", failures: "failure_reasons",
  dead_letters: "dead_letters", latency: "messages", customer: "messages", health: "deliverability_health",
  recipients: "recipient_health",
};

const params = new URLSearchParams(location.search);
const refreshSeconds = params.has("refresh") ? Number(params.get("refresh")) : 5;
let generation = 0;
let labels = {};

const $ = (sel, root = document) => root.querySelector(sel);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(1) + "%");
const label = (status) => labels[status] || status || "(awaiting result)";
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function query(extra = {}) {
  const q = new URLSearchParams();
  for (const name of FILTERS) {
    const v = params.get(name);
    if (v) q.set(name, v);
  }
  for (const [k, v] of Object.entries(extra)) if (v) q.set(k, v);
  return q.toString();
}

async function get(name, extra) {
  const resp = await fetch(`/dashboard/api/${name}?${query(extra)}`, { headers: { Accept: "application/json" } });
  let body;
  try { body = await resp.json(); } catch (e) { body = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw Object.assign(new Error(body.error || `HTTP ${resp.status}`), { status: resp.status });
  return body;
}

// ---- rendering --------------------------------------------------------------------------------

const RATE_COLUMNS = new Set(["delivery_rate", "open_rate", "click_rate", "person_open_rate", "share", "bounce_rate",
  "complaint_rate"]);
const TEXT_COLUMNS = new Set(["action", "flow", "campaign", "step", "provider", "reason_code", "reason", "current_status",
  "message_id", "flow_id", "campaign_id", "step_id", "requested_at", "timeline", "source_topic", "error_type",
  "last_failed_at", "day", "period", "mailbox_provider", "carrier", "metric", "measured", "state", "workspace"]);
// The health report's rates and thresholds, with the precision its thresholds need (tenths of a percent).
const HEALTH_RATES = new Set(["rate", "warning", "critical"]);
const healthPct = (r) => (r * 100).toFixed(r > 0 && r < 0.01 ? 2 : 1) + "%";

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function header(col) {
  if (params.get("lang") === "vi" && VI_WORDS[col]) return VI_WORDS[col];
  return labels[col] || col.replaceAll("_", " ");
}

function cell(col, v, row, columns) {
  if (col === "timeline") return `<td class="timeline" data-col="timeline">${timeline(v)}</td>`;
  if (col === "current_status" && v === "") v = label("");
  if (RATE_COLUMNS.has(col)) return `<td class="num" data-col="${col}" data-value="${v ?? ""}">${pct(v)}</td>`;
  if (HEALTH_RATES.has(col)) return `<td class="num" data-col="${col}" data-value="${esc(v)}">${healthPct(v)}</td>`;
  if (/_p\d\d$/.test(col)) return `<td class="num" data-col="${col}" data-value="${v ?? ""}">${duration(v)}</td>`;
  if (/_at$/.test(col) && typeof v === "string") v = v.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$/, "");
  if (typeof v === "number" && !TEXT_COLUMNS.has(col))
    return `<td class="num" data-col="${col}" data-value="${v}">${fmt(v)}</td>`;
  if (v === null || v === undefined) v = "–";
  return `<td data-col="${col}">${esc(v)}</td>`;
}

function table(name, columns, rows, hide = new Set()) {
  const cols = columns.filter((c) => !hide.has(c));
  const head = cols.map((c) => `<th class="${TEXT_COLUMNS.has(c) ? "" : "num"}">${esc(header(c))}</th>`).join("");
  const body = rows.map((r) => {
    const byName = Object.fromEntries(columns.map((c, i) => [c, r[i]]));
    return `<tr>${cols.map((c) => cell(c, byName[c], byName, columns)).join("")}</tr>`;
  }).join("");
  return `<table data-testid="${name}-table"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function timeline(text) {
  if (!text) return "";
  return text.split(" > ").map((step) => {
    const [status, time] = step.split(" ");
    const inferred = status.endsWith("*");
    const s = inferred ? status.slice(0, -1) : status;
    return `<span class="chip ${esc(s)}${inferred ? " inferred" : ""}" data-status="${esc(s)}" title="${inferred ? "inferred milestone" : ""}">${esc(label(s))}${inferred ? "*" : ""} ${esc(time || "")}</span>`;
  }).join("→");
}

function empty(panel, text) {
  $(".body", panel).innerHTML = `<div class="empty" data-testid="empty">${text}</div>`;
  const chart = $(".chart", panel);
  if (chart && window.Plotly) Plotly.purge(chart);
  if (chart) chart.classList.add("off");
}

const EMPTY_TEXT = () => `No messages yet for these filters. ${refreshSeconds > 0 ? `This page refreshes itself every ${refreshSeconds} s as status changes arrive.` : ""}`;

function unappliedNote(name, unapplied) {
  if (!unapplied || !unapplied.length) return "";
  return `<div class="unapplied" data-testid="unapplied">Not narrowed by ${unapplied.map(esc).join(", ")}: ` +
    `${SOURCES[name]} has no such column.</div>`;
}

function plot(panel, traces, layout) {
  const chart = $(".chart", panel);
  if (!chart) return;
  if (!window.Plotly) { chart.classList.add("off"); return; }
  chart.classList.remove("off");
  Plotly.react(chart, traces, {
    margin: { l: 48, r: 12, t: 8, b: 40 }, font: { size: 11 }, height: 260,
    legend: { orientation: "h", y: 1.12, x: 0 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    ...layout,
  }, { displayModeBar: false, responsive: true });
}

// Counts are whole numbers: small ones get a tick per unit, not 0.2 steps.
function countAxis(max) {
  return max <= 8 ? { rangemode: "tozero", dtick: 1, tickformat: "d" } : { rangemode: "tozero", tickformat: ",d" };
}

function renderFunnel(doc) {
  const panel = $("#funnel");
  const by = params.get("by") || "action";
  const col = (r, c) => r[doc.columns.indexOf(c)];
  tiles(doc);
  if (!doc.rows.length) return empty(panel, EMPTY_TEXT());
  // The chart shows the main milestones; the table below has every status.
  const statuses = ["sent", "delivered", "opened", "clicked", "answered", "succeeded", "failed"]
    .filter((s) => doc.rows.some((r) => col(r, s) > 0));
  const x = doc.rows.map((r) => (by === "action" ? col(r, "action") : `${col(r, by) || "(none)"} · ${col(r, "action")}`));
  plot(panel, statuses.map((s) => ({
    type: "bar", name: label(s), x, y: doc.rows.map((r) => col(r, s)), marker: { color: COLORS[s] },
  })), { barmode: "group", yaxis: countAxis(Math.max(...statuses.flatMap((s) => doc.rows.map((r) => col(r, s))))) });
  const zero = new Set(doc.columns.filter((c) => !TEXT_COLUMNS.has(c) && !RATE_COLUMNS.has(c) && c !== "messages" &&
    doc.rows.every((r) => !col(r, c))));
  $(".body", panel).innerHTML = unappliedNote("funnel", doc.unapplied) + table("funnel", doc.columns, doc.rows, zero);
}

function tiles(doc) {
  const col = (r, c) => r[doc.columns.indexOf(c)];
  const sum = (c, rows = doc.rows) => rows.reduce((a, r) => a + (col(r, c) || 0), 0);
  const ratio = (part, whole, rateCol) => {
    const rows = doc.rows.filter((r) => col(r, rateCol) !== null);
    const w = sum(whole, rows);
    return w ? sum(part, rows) / w : null;
  };
  const values = {
    messages: sum("messages"), delivered: sum("delivered"), opened: sum("opened"), clicked: sum("clicked"),
    failed: sum("failed"),
    delivery_rate: ratio("delivered", "messages", "delivery_rate"), open_rate: ratio("opened", "delivered", "open_rate"),
    click_rate: ratio("clicked", "delivered", "click_rate"),
    failure_rate: sum("messages") ? sum("failed") / sum("messages") : null,
  };
  for (const el of document.querySelectorAll("[data-tile]")) {
    const name = el.dataset.tile;
    const v = values[name];
    el.dataset.value = v ?? "";
    el.textContent = name.endsWith("_rate") ? (v === null ? "" : `${pct(v)} ${{ delivery_rate: "of sent", open_rate: "of delivered", click_rate: "of delivered", failure_rate: "of sent" }[name]}`) : fmt(v);
  }
  for (const el of document.querySelectorAll(".tile [data-status]")) el.textContent = label(el.dataset.status);
  $("#tiles-note").innerHTML = unappliedNote("funnel", doc.unapplied);
}

function renderTrend(doc) {
  const panel = $("#trend");
  if (!doc.rows.length) return empty(panel, EMPTY_TEXT());
  const days = doc.rows.map((r) => r[0]);
  plot(panel, TREND.map((s) => ({
    type: "scatter", mode: days.length > 1 ? "lines+markers" : "markers", name: label(s), x: days,
    y: doc.rows.map((r) => r[doc.columns.indexOf(s)]), line: { color: COLORS[s] }, marker: { color: COLORS[s] },
  })), {
    // One tick per day (or per few days over a long range): the counts are per send day.
    xaxis: { type: "date", tickformat: "%b %d", dtick: 86400000 * Math.max(1, Math.ceil(days.length / 12)) },
    yaxis: countAxis(Math.max(...doc.rows.flatMap((r) => r.slice(1)))),
  });
  $(".body", panel).innerHTML = unappliedNote("trend", doc.unapplied) +
    `<details><summary class="hint">numbers</summary>${table("trend", doc.columns, doc.rows)}</details>`;
}

function renderStatus(doc) {
  const panel = $("#status");
  if (!doc.rows.length) return empty(panel, EMPTY_TEXT());
  const actions = [...new Set(doc.rows.map((r) => r[0]))];
  // Statuses in the order of the milestones (COLORS' order), whatever their labels.
  const key = (s) => Object.keys(labels).find((k) => labels[k] === s) ?? s;
  const order = Object.keys(COLORS);
  const statuses = [...new Set(doc.rows.map((r) => r[1]))].sort((a, b) => order.indexOf(key(a)) - order.indexOf(key(b)));
  $(".chart", panel).style.height = `${Math.max(220, 22 * actions.length + 110)}px`;
  plot(panel, statuses.map((s) => ({
    type: "bar", orientation: "h", name: s || label(""), y: actions,
    x: actions.map((a) => { const r = doc.rows.find((r) => r[0] === a && r[1] === s); return r ? r[3] : 0; }),
    customdata: actions.map((a) => { const r = doc.rows.find((r) => r[0] === a && r[1] === s); return r ? r[2] : 0; }),
    hovertemplate: "%{y}: %{x:.1%} (%{customdata})<extra>" + esc(s || label("")) + "</extra>",
    marker: { color: COLORS[key(s)] || "#888" },
  })), { barmode: "stack", xaxis: { tickformat: ".0%", range: [0, 1] }, margin: { l: 90, r: 12, t: 8, b: 30 },
    height: Math.max(220, 22 * actions.length + 110),
    legend: { orientation: "h", y: -0.12, x: 0, yanchor: "top", traceorder: "normal" } });
  $(".body", panel).innerHTML = unappliedNote("status", doc.unapplied) +
    `<details><summary class="hint">numbers</summary>${table("status", doc.columns, doc.rows)}</details>`;
}

function renderFailures(doc) {
  const panel = $("#failures");
  if (!doc.rows.length) return empty(panel, "No failed messages for these filters.");
  const top = doc.rows.slice(0, 8).reverse();
  const height = Math.max(140, 30 * top.length + 60);
  $(".chart", panel).style.height = `${height}px`;
  plot(panel, [{
    type: "bar", orientation: "h", marker: { color: COLORS.failed },
    y: top.map((r) => `${r[2] || "(no code)"} · ${r[0]}`), x: top.map((r) => r[4]),
    text: top.map((r) => r[3]), hovertemplate: "%{y}<br>%{text}<br>%{x} messages<extra></extra>",
  }], { margin: { l: 160, r: 12, t: 8, b: 30 }, showlegend: false, height,
    xaxis: countAxis(Math.max(...top.map((r) => r[4]))) });
  $(".body", panel).innerHTML = unappliedNote("failures", doc.unapplied) +
    `<details><summary class="hint">all reasons (${doc.rows.length})</summary>${table("failures", doc.columns, doc.rows)}</details>`;
}

function renderLatency(doc) {
  const panel = $("#latency");
  if (!doc.rows.length) return empty(panel, EMPTY_TEXT());
  const html = table("latency", doc.columns, doc.rows).replace(/<thead><tr>.*?<\/tr><\/thead>/,
    `<thead><tr><th></th><th class="group" colspan="4">sent → delivered</th><th class="group" colspan="4">delivered → opened</th></tr>` +
    `<tr><th>${esc(header("action"))}</th>${"<th class=num>n</th><th class=num>p50</th><th class=num>p90</th><th class=num>p99</th>".repeat(2)}</tr></thead>`);
  $(".body", panel).innerHTML = unappliedNote("latency", doc.unapplied) + html;
}

function renderHealth(doc) {
  const panel = $("#health");
  const note = unappliedNote("health", doc.unapplied);
  if (!doc.rows.length) { empty(panel, "No messages requested in the last 7 days."); $(".body", panel).insertAdjacentHTML("afterbegin", note); return; }
  const at = (r, c) => r[doc.columns.indexOf(c)];
  const measured = doc.rows.filter((r) => at(r, "measured"));
  const alerts = measured.filter((r) => at(r, "state") !== "ok");
  const count = (s) => measured.filter((r) => at(r, "state") === s).length;
  const row = (r) => `<tr data-state="${esc(at(r, "state"))}"><td><span class="state ${esc(at(r, "state"))}">${esc(at(r, "state"))}</span></td>` +
    `<td data-col="workspace">${esc(at(r, "workspace") || "(none)")}</td><td>${esc(at(r, "period"))}</td><td data-col="action">${esc(at(r, "action"))}</td><td>${esc(at(r, "provider"))}</td>` +
    `<td>${esc(at(r, "mailbox_provider") === "*" ? "all" : at(r, "mailbox_provider"))}</td><td>${esc(at(r, "metric"))}</td>` +
    `<td class="num" data-col="rate" data-value="${esc(at(r, "rate"))}">${healthPct(at(r, "rate"))}</td>` +
    `<td class="num hint">${healthPct(at(r, "warning"))} / ${healthPct(at(r, "critical"))}</td>` +
    `<td class="num">${fmt(at(r, "events"))} of ${fmt(at(r, "volume"))}</td></tr>`;
  const head = `<thead><tr><th>state</th><th>workspace</th><th>period</th><th>action</th><th>provider</th><th>mailbox</th><th>metric</th>` +
    `<th class="num">rate</th><th class="num">warning / critical</th><th class="num">messages</th></tr></thead>`;
  const summary = `<div class="health-summary" data-testid="health-summary">` +
    `<span class="state critical">${count("critical")} critical</span> <span class="state warning">${count("warning")} warning</span> ` +
    `<span class="state ok">${count("ok")} ok</span> <span class="hint">of ${measured.length} rates measured; ` +
    `${doc.rows.length - measured.length} under the minimum volume are not judged</span></div>`;
  const shown = alerts.length ? `<table data-testid="health-alerts">${head}<tbody>${alerts.map(row).join("")}</tbody></table>`
    : `<div class="empty" data-testid="health-ok">Every measured rate is within its thresholds.</div>`;
  $(".body", panel).innerHTML = note + summary + shown +
    `<details><summary class="hint">all rates (${doc.rows.length})</summary>${table("health", doc.columns, doc.rows)}</details>`;
}

// Who receives: one bar group per mailbox provider (email) or carrier (SMS, ZNS) and action, the
// largest first; rates of the messages sent (delivered, bounced) or delivered (opened, complained).
const RECIPIENT_RATES = [["delivery_rate", "delivered", "delivered"], ["bounce_rate", "bounced", "bounced"],
  ["open_rate", "opened", "opened"], ["complaint_rate", "complained", "unsubscribed"]];  // complained's own grey is too faint for a bar

function renderRecipients(doc) {
  const panel = $("#recipients");
  const note = unappliedNote("recipients", doc.unapplied);
  if (!doc.rows.length) { empty(panel, EMPTY_TEXT()); $(".body", panel).insertAdjacentHTML("afterbegin", note); return; }
  const at = (r, c) => r[doc.columns.indexOf(c)];
  const who = (r) => `${at(r, "mailbox_provider") || at(r, "carrier") || "(other recipient)"} · ${at(r, "action")}`;
  // The chart shows email addresses and Vietnamese mobile numbers; Zalo, Messenger, HTTP and other
  // recipients have no mailbox provider or carrier, and stay in the numbers.
  const classified = doc.rows.filter((r) => at(r, "mailbox_provider") || at(r, "carrier"));
  if (!classified.length) {
    empty(panel, "No email address or Vietnamese mobile number among these recipients.");
    $(".body", panel).insertAdjacentHTML("beforeend", note +
      `<details><summary class="hint">numbers, ${doc.rows.length} rows</summary>${table("recipients", doc.columns, doc.rows)}</details>`);
    return;
  }
  const top = classified.slice(0, 10).reverse();
  const height = Math.max(180, 26 * top.length + 90);
  $(".chart", panel).style.height = `${height}px`;
  plot(panel, RECIPIENT_RATES.map(([col, name, color]) => ({
    type: "bar", orientation: "h", name: name, y: top.map(who), x: top.map((r) => at(r, col)),
    customdata: top.map((r) => at(r, "messages")), marker: { color: COLORS[color] || "#888" },
    hovertemplate: `%{y}: ${name} %{x:.1%} (of %{customdata} messages)<extra></extra>`,
  })), { barmode: "group", height, xaxis: { tickformat: ".0%", range: [0, 1] }, margin: { l: 140, r: 12, t: 8, b: 30 },
    legend: { orientation: "h", y: -0.12, x: 0, yanchor: "top", traceorder: "normal" } });
  const more = doc.rows.length > top.length ? ` (the ${top.length} largest email and mobile rows shown above)` : "";
  $(".body", panel).innerHTML = note +
    `<details><summary class="hint">numbers, ${doc.rows.length} rows${more}</summary>${table("recipients", doc.columns, doc.rows)}</details>`;
}

function renderDeadLetters(doc) {
  const panel = $("#dead_letters");
  if (doc.scoped) return empty(panel, doc.scoped);
  const note = unappliedNote("dead_letters", doc.unapplied);
  if (!doc.rows.length) { empty(panel, "No dead letters."); $(".body", panel).insertAdjacentHTML("afterbegin", note); return; }
  $(".body", panel).innerHTML = note + table("dead_letters", doc.columns, doc.rows);
}

function renderCustomer(doc) {
  const panel = $("#customer");
  if (!params.get("customer")) { $(".body", panel).innerHTML = `<div class="empty">Enter a customer id to see each of their messages with its timeline (* = inferred milestone).</div>`; return; }
  if (!doc.rows.length) return empty(panel, `No messages for customer ${esc(params.get("customer"))} with these filters.`);
  const hide = new Set(["provider", "step_id", "reason_code"]);
  $(".body", panel).innerHTML = `<div class="hint">${esc(doc.title)}</div>` + unappliedNote("customer", doc.unapplied) +
    table("customer", doc.columns, doc.rows, hide);
}

const RENDER = { funnel: renderFunnel, trend: renderTrend, status: renderStatus, failures: renderFailures,
  dead_letters: renderDeadLetters, latency: renderLatency, customer: renderCustomer, health: renderHealth,
  recipients: renderRecipients };

function choices(doc) {
  for (const [name, values] of Object.entries(doc)) {
    const list = document.getElementById(`${name}-choices`);
    if (list && Array.isArray(values)) list.innerHTML = values.map((v) => `<option value="${esc(v)}">`).join("");
  }
  // A reader of one workspace: the server narrows every panel to it; the field says so.
  const field = $("#filters").elements.workspace;
  if (doc.scope !== null && doc.scope !== undefined) {
    field.value = doc.scope === "" ? "(none)" : doc.scope;
    field.disabled = true;
    field.title = "these credentials see this workspace only";
    field.dataset.scope = doc.scope;
  }
}

// ---- the refresh loop -------------------------------------------------------------------------

function notice(text) {
  const el = $("#notice");
  el.hidden = !text;
  el.textContent = text || "";
}

// Each panel refreshes on its own clock: the funnel stays live while a panel whose view takes seconds
// on a large database (current status, failure reasons, latency) is asked again only after a pause of
// several times its own answer time.
const clocks = {};
const ALL = ["choices", ...PANELS];

async function load(name) {
  const clock = clocks[name] || (clocks[name] = { timer: null, running: false, again: false, ms: 0 });
  if (clock.running) { clock.again = true; return; }
  clearTimeout(clock.timer);
  clock.running = true;
  const mine = generation;
  const started = performance.now();
  let state = "ok";
  try {
    const doc = await get(name, name === "customer" ? { customer: params.get("customer") } : {});
    if (mine === generation) {
      if (name === "choices") choices(doc);
      else {
        if (doc.labels) labels = doc.labels;
        RENDER[name](doc);
      }
    }
  } catch (err) {
    state = err.status === 503 ? "waiting" : "failed";
    if (mine === generation && state === "failed" && name !== "choices")
      $(`#${name} .body`).innerHTML = `<div class="error" data-testid="error">Could not load: ${esc(err.message)}</div>`;
  }
  clock.running = false;
  clock.ms = performance.now() - started;
  clock.state = state;
  if (mine === generation) {
    const took = name !== "choices" && $(`#${name} .took`);
    if (took) took.textContent = clock.ms >= 1000 ? `${(clock.ms / 1000).toFixed(1)} s` : "";
    drawn(name, mine);
  }
  if (clock.again || mine !== generation) { clock.again = false; return load(name); }
  if (refreshSeconds > 0) clock.timer = setTimeout(() => load(name), Math.max(refreshSeconds * 1000, 4 * clock.ms));
}

const drawnIn = new Map();

function drawn(name, mine) {
  if (!drawnIn.has(mine)) drawnIn.set(mine, new Set());
  const done = drawnIn.get(mine);
  done.add(name);
  const states = ALL.map((n) => clocks[n] && clocks[n].state);
  const failed = states.includes("failed");
  const waiting = states.includes("waiting");
  const live = $(".live");
  live.classList.toggle("on", !failed && !waiting && refreshSeconds > 0);
  live.classList.toggle("error", failed);
  notice(waiting ? "ClickHouse is not open yet (the worker is starting): retrying…" : "");
  if (name === "funnel")
    $("#live-text").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}` +
      (refreshSeconds > 0 ? ` · refreshes every ${refreshSeconds} s` : "");
  if (done.size === ALL.length) {  // every panel has drawn this generation's filters (tests wait for it)
    document.body.dataset.generation = String(mine);
    document.body.dataset.loaded = "1";
  }
}

function refreshAll() {
  for (const name of ALL) load(name);
}

function apply(form) {
  for (const name of FILTERS) {
    const el = form.elements[name];
    if (!el || el.disabled) continue;
    const v = el.value.trim();
    if (v && !(name === "by" && v === "action") && !(name === "lang" && v === "en")) params.set(name, v);
    else params.delete(name);
  }
  history.replaceState(null, "", `${location.pathname}?${params}`);
  applyLanguage();
  generation += 1;
  refreshAll();
}

function applyLanguage() {
  const vi = params.get("lang") === "vi";
  document.documentElement.lang = vi ? "vi" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) {
    el.dataset.en = el.dataset.en || el.textContent;
    el.textContent = vi ? VI_WORDS[el.dataset.i18n] : el.dataset.en;
  }
  if (!vi) labels = {};
}

document.addEventListener("DOMContentLoaded", () => {
  const form = $("#filters");
  for (const name of FILTERS) if (form.elements[name] && params.get(name)) form.elements[name].value = params.get(name);
  $("#customer-form").elements.customer.value = params.get("customer") || "";
  form.addEventListener("submit", (e) => { e.preventDefault(); apply(form); });
  $("#reset").addEventListener("click", () => { form.reset(); apply(form); });
  $("#customer-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = e.target.elements.customer.value.trim();
    if (v) params.set("customer", v); else params.delete("customer");
    apply(form);
  });
  applyLanguage();
  refreshAll();
});
