// Vigil fleet page: polls the JSON API, draws the node list, the latest events and the drill-down.
// Everything from the nodes is put in the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 5000;
let timer = null;
let updates = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function ago(epoch, now) {
  if (epoch === null || epoch === undefined) return "never";
  const s = Math.max(0, now - epoch);
  if (s >= 86400) return Math.round(s / 86400) + " d ago";
  if (s >= 3600) return Math.round(s / 3600) + " h ago";
  if (s >= 60) return Math.round(s / 60) + " min ago";
  return Math.round(s) + " s ago";
}

function dur(s) {
  if (s === null || s === undefined) return "";
  if (s >= 3600) return (s / 3600).toFixed(1) + " h";
  if (s >= 60) return Math.round(s / 60) + " min";
  return Math.round(s) + " s";
}

async function getJson(path) {
  const res = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!res.ok) throw new Error(path + ": HTTP " + res.status);
  return res.json();
}

function showProblem(text) {
  const p = document.getElementById("problem");
  p.textContent = text || "";
  p.hidden = !text;
}

function renderFleet(data) {
  document.getElementById("fleet-name").textContent = data.fleet;
  document.title = data.fleet + " — Vigil";
  for (const state of ["online", "silent", "offline", "unknown"]) {
    document.getElementById("count-" + state).textContent = data.states[state];
  }
  document.getElementById("count-gaps").textContent = data.open_gaps;
  document.getElementById("count-alarms").textContent = data.alarms;
  document.getElementById("chip-alarms").classList.toggle("bad", data.alarms > 0);
  const quarantined = Object.values(data.quarantined).reduce((a, b) => a + b, 0);
  document.getElementById("count-quarantine").textContent = quarantined;
  const ingest = data.ingesters.map((i) => {
    const alive = i.heartbeat_age_s < 30;
    return i.name + ": " + (alive ? (i.connected ? "connected" : "NOT CONNECTED") : "NO HEARTBEAT " + dur(i.heartbeat_age_s));
  });
  const line = document.getElementById("ingest");
  line.textContent = "ingest processes: " + (ingest.length ? ingest.join(" · ") : "none has run yet");
  line.classList.toggle("bad", !data.ingesters.some((i) => i.heartbeat_age_s < 30 && i.connected));
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(...data.nodes.map((n) => {
    const backlog = n.backlog === null ? "–" : n.backlog + (n.backlog_oldest_s ? " (" + dur(n.backlog_oldest_s) + ")" : "");
    const link = (n.link || "–") + (n.signal_dbm !== null ? " " + Math.round(n.signal_dbm) + " dBm" : "");
    const gaps = n.open_gaps ? n.missing + " missing" + (n.alarms ? " — ALARM" : "") : "none";
    return el("tr", { "data-node": n.node, "data-state": n.state, class: n.alarms ? "alarm" : "" },
      el("td", {}, el("a", { href: "#node/" + encodeURIComponent(n.node) }, n.node), n.site ? el("small", {}, " " + n.site) : null),
      el("td", {}, el("span", { class: "badge state-" + n.state }, n.state)),
      el("td", {}, ago(n.last_seen, data.now)),
      el("td", {}, backlog),
      el("td", {}, link),
      el("td", {}, n.events_last_hour),
      el("td", { class: n.open_gaps ? "bad" : "" }, gaps));
  }));
}

function eventItem(e, now) {
  const what = [e.type, e.label].filter(Boolean).join(" · ");
  const item = el("li", { "data-event": e.id, "data-node": e.node, class: "event prio-" + e.priority });
  if (e.thumb === "ok" || e.thumb === "degraded") {
    const img = el("img", { src: "/thumbs/" + e.id + ".jpg", alt: what + " at " + e.node, loading: "lazy" });
    img.addEventListener("load", () => img.setAttribute("data-loaded", "1"));
    item.append(img);
    if (e.thumb === "degraded") item.append(el("small", { class: "note" }, "reduced on the node's slow link"));
  } else {
    item.append(el("div", { class: "nothumb" }, e.thumb === null ? "no image" : "image pending"));
  }
  item.append(
    el("strong", {}, what),
    el("span", {}, el("a", { href: "#node/" + encodeURIComponent(e.node) }, e.node), " #" + e.seq),
    el("time", { title: "event time " + e.ts }, ago(e.received_at, now) + (e.historical ? " (sent late)" : "")));
  return item;
}

function chart(title, at, values, unit) {
  const points = at.map((t, i) => [t, values[i]]).filter((p) => p[1] !== null && p[1] !== undefined);
  const box = el("figure", { class: "chart" }, el("figcaption", {}, title));
  if (points.length < 2) {
    box.append(el("p", { class: "muted" }, "no data"));
    return box;
  }
  const [t0, t1] = [points[0][0], points[points.length - 1][0]];
  const vs = points.map((p) => p[1]);
  const [lo, hi] = [Math.min(...vs), Math.max(...vs)];
  const w = 300, h = 60;
  const d = points.map((p, i) => (i ? "L" : "M") + ((p[0] - t0) / Math.max(1, t1 - t0) * w).toFixed(1) + " " +
    (h - (p[1] - lo) / Math.max(1e-9, hi - lo) * (h - 4) - 2).toFixed(1)).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  svg.append(path);
  box.append(svg, el("small", {}, "now " + vs[vs.length - 1] + unit + " (range " + lo + "–" + hi + unit + ")"));
  return box;
}

function renderDetail(d, now) {
  const n = d.node;
  document.getElementById("detail-title").textContent = n.node + " — " + n.state;
  document.getElementById("detail").setAttribute("data-node", n.node);
  document.getElementById("detail").setAttribute("data-state", n.state);
  const facts = [["site", n.site], ["last seen", ago(n.last_seen, now)], ["agent", n.agent], ["model", n.model],
    ["position", n.lat !== null && n.lat !== undefined ? n.lat.toFixed(5) + ", " + n.lon.toFixed(5) + " (" + n.position + ")" : "none"],
    ["backlog", n.backlog === null ? "–" : n.backlog + " records, oldest " + dur(n.backlog_oldest_s)],
    ["link", (n.link || "–") + (n.signal_dbm !== null && n.signal_dbm !== undefined ? ", " + n.signal_dbm + " dBm" : "")],
    ["GNSS", n.gnss], ["clock", n.clock_trusted === null || n.clock_trusted === undefined ? "–" : n.clock_trusted ? "trusted" : "NOT trusted"],
    ["events", n.received + " received, seq up to " + n.max_seq]];
  document.getElementById("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "–")]));
  const h = d.health || { at: [] };
  document.getElementById("detail-charts").replaceChildren(
    chart("spool backlog", h.at || [], h.backlog || [], ""), chart("CPU temperature", h.at || [], h.temp_c || [], " °C"),
    chart("analysis fps", h.at || [], h.fps || [], ""), chart("signal", h.at || [], h.signal_dbm || [], " dBm"));
  const gaps = d.gaps || [];
  document.getElementById("detail-gaps").replaceChildren(...(gaps.length ? gaps.map((g) =>
    el("li", { class: g.alarm ? "bad" : "" }, "seq " + g.from + (g.to !== g.from ? "–" + g.to : "") + " missing for " +
      dur(now - g.opened_at) + (g.alarm ? " — ALARM" : ""))) : [el("li", {}, "none: every event arrived")]));
  const alarms = d.alarms || [];
  document.getElementById("detail-alarms").replaceChildren(...(alarms.length ? alarms.map((a) =>
    el("li", { class: a.cleared_at ? "" : "bad" }, a.kind + " " + JSON.stringify(a.detail) + " — " + ago(a.opened_at, now) +
      (a.cleared_at ? ", cleared" : ""))) : [el("li", {}, "none")]));
  document.getElementById("detail-states").replaceChildren(...(d.status_history || []).map((s) =>
    el("li", {}, s.state + " — " + ago(s.at, now))));
  document.getElementById("detail-events").replaceChildren(...(d.events || []).map((e) => eventItem(e, now)));
  document.getElementById("detail-telemetry").textContent = d.telemetry ? JSON.stringify(d.telemetry, null, 2) : "none yet";
}

async function refreshMap() {
  const res = await fetch("/map.svg", { credentials: "same-origin", cache: "no-store" });
  if (!res.ok) throw new Error("/map.svg: HTTP " + res.status);
  const doc = new DOMParser().parseFromString(await res.text(), "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  if (svg.nodeName.toLowerCase() === "svg") document.getElementById("map").replaceChildren(svg);
}

function selectedNode() {
  const m = location.hash.match(/^#node\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

async function refresh() {
  try {
    const node = selectedNode();
    document.getElementById("detail").hidden = !node;
    document.getElementById("overview").hidden = !!node;
    if (node) {
      const [fleet, detail] = await Promise.all([getJson("/api/fleet.json"), getJson("/api/node/" + encodeURIComponent(node) + ".json")]);
      renderFleet(fleet);
      renderDetail(detail, fleet.now);
    } else {
      const [fleet, events] = await Promise.all([getJson("/api/fleet.json"), getJson("/api/events.json?limit=24"), refreshMap()]);
      renderFleet(fleet);
      document.getElementById("events").replaceChildren(...events.events.map((e) => eventItem(e, fleet.now)));
    }
    showProblem(null);
    updates += 1;
    document.body.dataset.updated = String(updates);
  } catch (err) {
    showProblem("Cannot update: " + err.message);
  }
}

function schedule() {
  clearTimeout(timer);
  if (document.hidden) return;
  refresh().finally(() => { timer = setTimeout(schedule, POLL_MS); });
}

document.addEventListener("visibilitychange", schedule);
window.addEventListener("hashchange", schedule);
schedule();
