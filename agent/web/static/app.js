"use strict";
const $ = (id) => document.getElementById(id);
const put = (key, text, cls) => {
  const el = document.querySelector(`[data-k="${key}"]`);
  if (!el) return;
  el.textContent = text;
  if (cls !== undefined) el.className = el.className.split(" ").filter(c => !["ok", "bad", "warn"].includes(c))
    .concat(cls ? [cls] : []).join(" ");
};
const num = (v, digits = 0, unit = "") => (v === null || v === undefined) ? "–" : `${Number(v).toFixed(digits)}${unit}`;
const bytes = (v) => v === null || v === undefined ? "–" : v < 1024 ? `${v} B` : v < 1048576 ? `${(v / 1024).toFixed(1)} kB`
  : v < 1073741824 ? `${(v / 1048576).toFixed(1)} MB` : `${(v / 1073741824).toFixed(1)} GB`;
const ago = (s) => s === null || s === undefined ? "" : s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago`
  : `${Math.round(s / 3600)} h ago`;

let paused = false;
let previewSeq = 0;
let frames = 0;
let previewUrl = null;

async function previewLoop() {
  while (true) {
    if (paused || document.hidden) { await new Promise(r => setTimeout(r, 500)); continue; }
    try {
      const res = await fetch(`/preview.jpg?after=${previewSeq}`, { cache: "no-store" });
      if (res.status === 200) {
        const blob = await res.blob();
        const url = URL.createObjectURL(blob);
        const img = $("preview");
        img.src = url;
        if (previewUrl) URL.revokeObjectURL(previewUrl);
        previewUrl = url;
        previewSeq = Number(res.headers.get("X-Frame-Seq")) || previewSeq + 1;
        frames += 1;
        img.dataset.seq = String(previewSeq);
        img.dataset.frames = String(frames);
        $("preview-info").textContent = `live · frame ${res.headers.get("X-Frame-Index")} · ${num(Number(res.headers.get("X-Frame-Age")), 1)} s old`;
      } else if (res.status === 204) {
        $("preview-info").textContent = "no new frame (see Camera)";
      } else {
        $("preview-info").textContent = `preview unavailable (HTTP ${res.status})`;
        await new Promise(r => setTimeout(r, 2000));
      }
    } catch (e) {
      $("preview-info").textContent = "node unreachable; retrying…";
      await new Promise(r => setTimeout(r, 2000));
    }
  }
}

function health(s) {
  const cam = s.camera || {};
  const link = (s.stages.uplink || {});
  if (!cam.ok) return ["bad", cam.stream !== "ok" ? `camera ${cam.stream}` : `tamper: ${cam.tamper}`];
  if (s.stages.uplink && !link.connected) return ["warn", "offline"];
  return ["ok", "ok"];
}

function render(s) {
  $("node").textContent = s.node;
  $("site").textContent = s.site || "";
  $("version").textContent = `Vigil ${s.versions.agent}`;
  const [cls, text] = health(s);
  const pill = $("health");
  pill.className = `pill ${cls}`;
  pill.textContent = text;
  const cam = s.camera || {};
  const p = s.pipeline;
  put("camera", cam.ok ? "streaming" : (cam.stream !== "ok" ? cam.stream : cam.tamper), cam.ok ? "ok" : "bad");
  const cap = s.capture;
  const away = cap.state === "connecting" || cap.state === "reconnecting";
  put("camera-sub", away
    ? `${cap.source} · ${cap.reason || "waiting for it"} · away ${num(cap.for_s, 0, " s")} · next try in ${num(cap.retry_in_s, 0, " s")}`
    : `${cap.source} · ${num(p.fps.capture, 1)} fps · ${cap.dropped} dropped` + (cap.drops ? ` · ${cap.drops} stream drops` : "") +
      (cam.tamper ? ` · tamper ${cam.tamper}` : ""));
  put("detect", `${num(p.fps.detect, 1)} runs/s`);
  put("detect-sub", `${s.versions.model} · ${num(p.inference_ms.p50, 0)}/${num(p.inference_ms.p95, 0)} ms p50/p95 · gate ${num(p.motion_gate.ratio * 100, 0)} %`);
  const up = s.stages.uplink;
  if (up) {
    put("link", up.connected ? "connected" : "offline", up.connected ? "ok" : "warn");
    put("link-sub", `${up.link.rate_bps ? bytes(up.link.rate_bps) + "/s" : "idle"} · rtt ${num(up.link.puback_rtt_ms_p50, 0, " ms")} · ${up.published} sent`);
  } else { put("link", "no broker", ""); put("link-sub", "events stay on the node"); }
  const sp = s.spool;
  if (sp.classes) {
    const drops = Object.values(sp.classes).reduce((n, c) => n + Object.values(c.drops).reduce((m, d) => m + d.count, 0), 0);
    put("spool", `${sp.depth} waiting`, sp.depth > 1000 ? "warn" : "");
    put("spool-sub", `${bytes(sp.bytes)} · ${drops} dropped · ` + Object.entries(sp.classes).map(([k, c]) => `${k} ${c.depth}`).join(", "));
  }
  const modem = (s.stages.modem || {});
  const ml = modem.link;
  if (ml) {
    const sig = ml.signal || {};
    put("modem", ml.up ? `${ml.technology || "up"}` : ml.state, ml.up ? "ok" : "bad");
    put("modem-sub", `${ml.operator || ml.state} · ${num(sig.rssi_dbm, 0, " dBm")}` + (sig.rsrp_dbm != null ? ` · RSRP ${num(sig.rsrp_dbm, 0)}` : "") +
      (modem.emulated ? " · emulated" : ""));
  } else { put("modem", "none", ""); put("modem-sub", "no modem managed"); }
  const g = modem.gnss;
  if (g) {
    const fix = g.fix || {};
    const has = fix.mode >= 2;
    put("gnss", has ? `${fix.mode}D fix` : (g.state || "no fix"), has ? "ok" : "warn");
    put("gnss-sub", has ? `${fix.sats_used ?? "?"} sats · ${num(fix.lat, 5)}, ${num(fix.lon, 5)} · ${ago(fix.age_s)}` : (g.message || ""));
  } else if (modem.location) {
    put("gnss", "fixed position", ""); put("gnss-sub", `${num(modem.location.lat, 5)}, ${num(modem.location.lon, 5)}`);
  } else { put("gnss", "none", ""); put("gnss-sub", ""); }
  const sys = s.system;
  put("system", `${num(sys.cpu_percent, 0)} % CPU`, sys.throttled && sys.throttled !== "0x0" ? "warn" : "");
  put("system-sub", [sys.cpu_temp_c != null ? num(sys.cpu_temp_c, 1, " °C") : null, `${bytes(sys.rss_bytes)} RAM`,
    `${bytes(sys.disk_free_bytes)} free`, sys.throttled && sys.throttled !== "0x0" ? `throttled ${sys.throttled}` : null]
    .filter(Boolean).join(" · "));
  put("clock", s.clock.trusted ? "synchronised" : "not trusted", s.clock.trusted ? "ok" : "warn");
  put("clock-sub", `${s.clock.source} · up ${ago(s.uptime_s).replace(" ago", "")}`);
  renderEvents(s.recent_events || []);
}

function renderEvents(events) {
  const list = $("events");
  const key = events.map(e => e.id).join(",");
  if (list.dataset.key === key) { updateAges(events); return; }
  list.dataset.key = key;
  list.textContent = "";
  if (!events.length) {
    const li = document.createElement("li"); li.className = "empty"; li.textContent = "No events yet."; list.append(li); return;
  }
  for (const e of events) {
    const li = document.createElement("li");
    li.className = "event" + (e.priority === "critical" ? " critical" : "");
    li.dataset.id = e.id;
    let pic;
    if (e.thumb) { pic = document.createElement("img"); pic.src = `/thumbs/${e.id}.jpg`; pic.alt = `${e.label || e.type} thumbnail`; pic.loading = "lazy"; }
    else { pic = document.createElement("div"); pic.className = "noimg"; }
    const text = document.createElement("div");
    const what = document.createElement("div"); what.className = "what";
    what.textContent = e.type.replaceAll("_", " ") + (e.label ? ` · ${e.label}` : "") + (e.track ? ` #${e.track}` : "");
    const when = document.createElement("div"); when.className = "when";
    when.dataset.extra = [e.zone, e.rule, e.reason].filter(Boolean).join(" · ");
    text.append(what, when);
    li.append(pic, text);
    list.append(li);
  }
  updateAges(events);
}

function updateAges(events) {
  for (const li of $("events").querySelectorAll("li.event")) {
    const e = events.find(x => x.id === li.dataset.id);
    const when = li.querySelector(".when");
    if (e && when) when.textContent = [ago(e.age_s), when.dataset.extra].filter(Boolean).join(" · ");
  }
}

async function statusLoop() {
  while (true) {
    if (!document.hidden) {
      try {
        const res = await fetch("/status.json", { cache: "no-store" });
        if (res.ok) render(await res.json());
        else { $("health").className = "pill warn"; $("health").textContent = `HTTP ${res.status}`; }
      } catch (e) { $("health").className = "pill unknown"; $("health").textContent = "unreachable"; }
    }
    await new Promise(r => setTimeout(r, 2000));
  }
}

$("pause").addEventListener("click", () => { paused = !paused; $("pause").textContent = paused ? "Resume" : "Pause"; });
$("full").addEventListener("click", () => {
  const el = document.querySelector(".preview");
  if (document.fullscreenElement) document.exitFullscreen(); else if (el.requestFullscreen) el.requestFullscreen();
});
previewLoop();
statusLoop();
