// Starfish shore station dashboard. Every device-supplied string reaches the page through textContent (el()),
// never innerHTML, and the Content-Security-Policy forbids inline script: a hostile id or model name stays text.
(function () {
  "use strict";

  const state = { devices: [], cameras: new Map(), chart: null, chartKey: "", lastSeries: 0, cursor: null };
  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmtTime = (s) => (s ? new Date(s * 1000).toLocaleString() : "—");
  const isoTime = (s) => (s ? new Date(s * 1000).toISOString() : "");
  function ago(s) {
    if (!s) return "never";
    const d = Math.max(0, Date.now() / 1000 - s);
    if (d < 60) return `${Math.round(d)} s ago`;
    if (d < 3600) return `${Math.round(d / 60)} min ago`;
    if (d < 86400) return `${Math.round(d / 3600)} h ago`;
    return fmtTime(s);
  }
  const num = (v, digits) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits || 0));

  async function getJSON(url, options) {
    const res = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (_e) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return res.json();
  }

  // ---- fleet table ----------------------------------------------------------------------------------------------
  function statusPill(word) {
    if (!word) return el("span", { class: "pill pill-none", "data-field": "status", text: "no status" });
    const known = ["online", "offline", "stopped", "disabled"].includes(word);
    return el("span", { class: `pill pill-${known ? word : "wait"}`, "data-field": "status", text: word });
  }

  function fpsOf(d) {
    const cams = (d.stats && d.stats.cameras) || {};
    const vals = Object.values(cams).map((c) => c.processed_fps).filter((v) => typeof v === "number");
    return vals.length ? vals.reduce((a, b) => a + b, 0) : null;
  }

  function updateCell(d) {
    const u = d.update_state;
    if (!u) return el("span", { class: "muted", "data-field": "update", text: "—" });
    const parts = [u.state || "?"];
    if (u.name) parts.push(u.name);
    if (u.version !== undefined && u.version !== null) parts.push(`v${u.version}`);
    if (typeof u.progress === "number" && u.state !== "idle") {
      // The agent reports bytes done of `size`; a bare fraction is accepted too.
      const pct = u.size ? (100 * u.progress) / u.size : (u.progress <= 1 ? 100 * u.progress : u.progress);
      parts.push(`${Math.round(Math.min(100, pct))}%`);
    }
    const cell = el("span", { "data-field": "update", class: `update update-${String(u.state || "").replace(/[^a-z_]/g, "")}`,
      text: parts.join(" ") });
    if (u.error) cell.append(el("span", { class: "error", text: ` ${u.error}` }));
    return cell;
  }

  function renderDevices() {
    const body = $("#devices tbody");
    body.replaceChildren();
    for (const d of state.devices) {
      const m = d.model;
      body.append(el("tr", { "data-device": d.device_id },
        el("td", { class: "mono", "data-field": "device", text: d.device_id }),
        el("td", {}, statusPill(d.status)),
        el("td", { "data-field": "last-seen", "data-ts": d.last_seen, title: isoTime(d.last_seen), text: ago(d.last_seen) }),
        el("td", { "data-field": "model", text: m ? `${m.name} v${m.version} (${m.variant}, ${m.backend})` : "—" }),
        el("td", { class: "num", "data-field": "fps", text: num(fpsOf(d), 1) }),
        el("td", { class: "num", "data-field": "outbox", text: d.stats ? num(d.stats.outbox_depth) : "—" }),
        el("td", {}, updateCell(d)),
      ));
    }
    $("#no-devices").hidden = state.devices.length > 0;
    fillDeviceSelects();
  }

  // ---- camera cards ---------------------------------------------------------------------------------------------
  function renderCameras() {
    const grid = $("#cameras");
    grid.replaceChildren();
    for (const d of state.devices) {
      for (const c of d.cameras) {
        const live = state.cameras.get(`${d.device_id}/${c.camera_id}`) || c;
        const camStatus = d.status && d.status !== "online" ? d.status : c.status;
        grid.append(el("article", { class: "cam", "data-camera": `${d.device_id}/${c.camera_id}` },
          el("header", {},
            el("span", { class: "mono cam-name" }, el("span", { class: "muted", text: `${d.device_id} / ` }), c.camera_id),
            statusPill(camStatus)),
          el("div", { class: "figures" },
            el("div", {}, el("div", { class: "big", "data-field": "count", text: num(live.last_count) }),
              el("div", { class: "label", text: "in view now" })),
            el("div", {}, el("div", { class: "big accent", "data-field": "unique", text: num(live.last_unique) }),
              el("div", { class: "label", text: "unique this session" }))),
          el("footer", { class: "muted" },
            el("span", { "data-field": "seq", text: live.last_seq ? `seq ${live.last_seq}` : "" }), " · ",
            el("span", { "data-field": "last-seen", "data-ts": live.last_ts, title: isoTime(live.last_ts),
              text: `frame ${ago(live.last_ts)}` })),
        ));
      }
    }
    if (!grid.children.length) grid.append(el("p", { class: "muted", text: "No camera yet." }));
  }

  function tickAges() {
    for (const node of document.querySelectorAll("[data-field='last-seen'][data-ts]")) {
      const ts = Number(node.getAttribute("data-ts"));
      const prefix = node.closest(".cam") ? "frame " : "";
      node.textContent = prefix + ago(ts);
    }
  }

  // ---- chart ----------------------------------------------------------------------------------------------------
  const COLORS = ["#ff7a59", "#3bc9db", "#ffd43b", "#a9e34b", "#da77f2", "#4dabf7", "#ff8787", "#63e6be",
    "#ffa94d", "#9775fa"];

  function fillDeviceSelects() {
    const ids = state.devices.map((d) => d.device_id);
    for (const select of [$("#chart-device"), document.querySelector("#survey-form select[name=device_id]")]) {
      const keep = select.value;
      const fixed = select.id === "chart-device" ? [] : [el("option", { value: "", text: "whole fleet" })];
      select.replaceChildren(...fixed, ...ids.map((id) => el("option", { value: id, text: id })));
      if (ids.includes(keep)) select.value = keep;
    }
    const device = $("#chart-device").value;
    const q = device ? `?device_id=${encodeURIComponent(device)}&hours=${$("#chart-hours").value}` : "";
    $("#counts-csv").setAttribute("href", `/api/counts.csv${q}`);
  }

  async function refreshChart(force) {
    const device = $("#chart-device").value;
    const hours = $("#chart-hours").value;
    const metric = $("#chart-metric").value;
    if (!device) return;
    if (!force && Date.now() - state.lastSeries < 5000) return;
    state.lastSeries = Date.now();
    const res = await getJSON(`/api/series?device_id=${encodeURIComponent(device)}&hours=${hours}`);
    const cams = Object.keys(res.cameras).sort();
    const xs = [...new Set(cams.flatMap((c) => res.cameras[c].minute))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = cams.map((c) => {
      const col = res.cameras[c];
      const y = xs.map(() => null);
      col.minute.forEach((m, i) => { y[index.get(m)] = col[metric][i]; });
      return y;
    });
    const key = `${device}|${hours}|${metric}|${cams.join(",")}`;
    const data = [xs, ...ys];
    const box = $("#chart");
    if (state.chart && state.chartKey === key) { state.chart.setData(data); return; }
    if (state.chart) state.chart.destroy();
    state.chartKey = key;
    const label = $("#chart-metric").selectedOptions[0].textContent;
    state.chart = new uPlot({
      width: Math.max(320, box.clientWidth), height: 280,
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] } },
      axes: [{ stroke: "#9fb3c8", grid: { stroke: "#22384d" } },
        { stroke: "#9fb3c8", grid: { stroke: "#22384d" }, label }],
      series: [{}, ...cams.map((c, i) => ({ label: c, stroke: COLORS[i % COLORS.length], width: 2,
        points: { show: xs.length < 90 }, spanGaps: false }))],
      legend: { live: true },
    }, data, box);
  }

  // ---- surveys --------------------------------------------------------------------------------------------------
  async function refreshSurveys() {
    const rows = await getJSON("/api/surveys");
    const body = $("#surveys tbody");
    body.replaceChildren();
    for (const s of rows) {
      const t = s.totals;
      body.append(el("tr", { "data-survey": s.kind === "window" ? `w${s.id}` : `s${s.device_id}/${s.session}` },
        el("td", {}, el("span", { class: `kind kind-${s.kind}`, text: s.kind === "window" ? "survey" : "session" }), " ",
          el("span", { "data-field": "name", text: s.name })),
        el("td", { class: "mono", text: s.device_id || "fleet" }),
        el("td", { text: fmtTime(s.start) }), el("td", { text: fmtTime(s.end) }),
        el("td", { class: "num strong", "data-field": "unique", text: t.unique }),
        el("td", { class: "num", "data-field": "frames", text: t.frames }),
        el("td", { class: "num", text: t.minutes }),
        el("td", { class: "num", text: num(t.starfish_per_minute, 2) })));
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No survey yet." })));
  }

  function localInput(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function setupSurveyForm() {
    const form = $("#survey-form");
    const now = new Date();
    form.elements.start.value = localInput(new Date(now.getTime() - 3600 * 1000));
    form.elements.end.value = localInput(new Date(now.getTime() + 60 * 1000));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $("#survey-error").textContent = "";
      const body = { name: form.elements.name.value, start: new Date(form.elements.start.value).getTime() / 1000,
        end: new Date(form.elements.end.value).getTime() / 1000, device_id: form.elements.device_id.value || null };
      try {
        await getJSON("/api/surveys", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body) });
        form.elements.name.value = "";
        await refreshSurveys();
      } catch (err) {
        $("#survey-error").textContent = err.message;
      }
    });
  }

  // ---- live updates ---------------------------------------------------------------------------------------------
  function setLive(ok) {
    const pill = $("#live");
    pill.className = `pill ${ok ? "pill-online" : "pill-wait"}`;
    pill.textContent = ok ? "live" : "reconnecting…";
  }

  async function refreshHealth() {
    try {
      const h = await getJSON("/api/health");
      const n = h.rejects.reduce((a, r) => a + r.n, 0);
      $("#rejects").textContent = n ? `${n} bad message${n === 1 ? "" : "s"} ignored` : "";
      const ing = h.ingest;
      $("#broker").textContent = ing && !ing.connected ? `MQTT: ${ing.last_error || "not connected"}` : "";
    } catch (_e) { /* shown by the live pill */ }
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => setLive(true));
    source.addEventListener("error", () => setLive(false));
    source.addEventListener("devices", (ev) => {
      state.devices = JSON.parse(ev.data);
      renderDevices();
      renderCameras();
      if (!state.chart) refreshChart(true).catch(() => {});
    });
    source.addEventListener("counts", (ev) => {
      const msg = JSON.parse(ev.data);
      state.cursor = msg.cursor;
      for (const c of msg.cameras) state.cameras.set(`${c.device_id}/${c.camera_id}`, c);
      if (msg.cameras.length) {
        renderCameras();
        refreshChart(false).catch(() => {});
      }
      document.body.setAttribute("data-cursor", String(msg.cursor));
    });
  }

  for (const id of ["#chart-device", "#chart-hours", "#chart-metric"]) {
    $(id).addEventListener("change", () => { fillDeviceSelects(); refreshChart(true).catch(() => {}); });
  }
  window.addEventListener("resize", () => {
    if (state.chart) state.chart.setSize({ width: Math.max(320, $("#chart").clientWidth), height: 280 });
  });
  setupSurveyForm();
  connect();
  refreshSurveys().catch(() => {});
  refreshHealth();
  setInterval(tickAges, 1000);
  setInterval(() => { refreshSurveys().catch(() => {}); refreshHealth(); refreshChart(false).catch(() => {}); }, 10000);
})();
