// PowMon's live page: one EventSource (/events), a uPlot chart of power per sensor, and the
// status tables. The server sends at most ~4 `points` events a second (already downsampled),
// so every event can be drawn; the chart keeps the last 15 minutes and shows the chosen window.
// window.powmon holds the page's state, for people debugging and for the browser tests.
"use strict";

(function () {
  const KEEP_S = 15 * 60;
  const COLOURS = ["#1a73e8", "#e8710a", "#188038", "#a142f4", "#d93025", "#12a4af",
                   "#f9ab00", "#5f6368"];
  const token = new URLSearchParams(location.search).get("token");
  const q = token ? "?token=" + encodeURIComponent(token) : "";
  const state = window.powmon = {
    connected: false, sensors: [], points: {}, status: null, dropped: 0, redraws: 0,
    windowMin: 5, events: 0, range: null, plot: null, units: {}, xTicks: [],
  };
  const series = {};  // sensor -> Map(t_ms -> mean watts)
  let plot = null;
  let pending = false;

  document.querySelectorAll("a[data-link]").forEach((a) => { a.href = a.getAttribute("href") + q; });

  function fmt(v, digits) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
  }
  function age(s) {
    if (s === null || s === undefined) return "–";
    if (s < 120) return s.toFixed(1) + " s ago";
    if (s < 7200) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function span(s) {
    if (s === null || s === undefined) return "–";
    if (s < 120) return s.toFixed(0) + " s";
    if (s < 7200) return (s / 60).toFixed(0) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // Time as every other PowMon tool shows it (CSV, report, plot, logs): UTC, 24-hour, not
  // the browser's locale (a US browser would say "1:07:31 PM" for the CSV's 13:07:31).
  function utc(sec) {
    return new Date(sec * 1000).toISOString().slice(11, 19);
  }
  // An AC sensor's power is apparent power (RMS current x VCC): VA, not W (hello.units).
  function unit(sensor) {
    return state.units[sensor] || "W";
  }
  function colour(sensor) {
    const i = state.sensors.indexOf(sensor);
    return COLOURS[(i < 0 ? state.sensors.length : i) % COLOURS.length];
  }

  function makePlot() {
    const box = document.getElementById("chart");
    box.textContent = "";
    // One y scale and axis per sensor (alternating left and right, in the sensor's colour):
    // on a shared one a 30 W load next to a 920 VA one would be a flat line at the bottom.
    const scales = { x: { time: true } };
    for (const s of state.sensors) scales[s] = { auto: true };
    const opts = {
      width: box.clientWidth, height: 360,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),  // ticks on UTC minutes
      scales,
      axes: [
        { label: "time (UTC)", labelSize: 20, size: 40, space: 90,  // room for "HH:MM:SS"
          values: (u, splits) => (state.xTicks = splits.map(utc)) },
      ].concat(state.sensors.map((s, i) => ({
        scale: s, side: i % 2 ? 1 : 3, stroke: colour(s), grid: { show: i === 0 },
        label: s + " (" + unit(s) + ")", labelSize: 20, size: 70,
        values: (u, vals) => vals.map((v) => v + " " + unit(s)),
      }))),
      // Away from the cursor the legend shows each sensor's latest value, not a dash.
      series: [{
        label: "time (UTC)", value: (u, v) => (v === null || v === undefined ? "latest" : utc(v)),
      }].concat(state.sensors.map((s) => ({
        label: s, scale: s, stroke: colour(s), width: 2, spanGaps: false,
        value: (u, v, si) => {
          const w = v === null || v === undefined ? latest(u.data[si]) : v;
          return w === null ? "–" : w.toFixed(2) + " " + unit(s);
        },
      }))),
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    plot = state.plot = new uPlot(opts, aligned(), box);
  }

  function latest(ys) {
    for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null) return ys[i];
    return null;
  }

  function aligned() {
    const end = Date.now() / 1000;
    const start = end - state.windowMin * 60;
    const slots = new Set();
    for (const s of state.sensors) {
      for (const t of (series[s] || new Map()).keys()) if (t / 1000 >= start) slots.add(t);
    }
    const xs = Array.from(slots).sort((a, b) => a - b);
    const data = [xs.map((t) => t / 1000)];
    for (const s of state.sensors) {
      const m = series[s] || new Map();
      data.push(xs.map((t) => (m.has(t) ? m.get(t) : null)));
    }
    return data;
  }

  function redraw() {
    pending = false;
    if (!plot) return;
    const end = Date.now() / 1000;
    const data = aligned();
    plot.setData(data, false);
    if (plot.cursor.left === undefined || plot.cursor.left < 0) {
      plot.setLegend({ idx: data[0].length ? data[0].length - 1 : null });  // latest values
    }
    plot.setScale("x", { min: end - state.windowMin * 60, max: end });
    state.range = [plot.scales.x.min, plot.scales.x.max];
    state.redraws += 1;
  }
  function scheduleRedraw() {
    if (!pending) { pending = true; requestAnimationFrame(redraw); }
  }

  function addPoints(bySensor) {
    const cutoff = Date.now() - KEEP_S * 1000;
    for (const [sensor, pts] of Object.entries(bySensor)) {
      if (!state.sensors.includes(sensor)) { state.sensors.push(sensor); makePlot(); }
      const m = series[sensor] || (series[sensor] = new Map());
      for (const p of pts) m.set(p[0], p[1]);
      for (const t of m.keys()) { if (t < cutoff) m.delete(t); else break; }
      state.points[sensor] = (state.points[sensor] || 0) + pts.length;
    }
    scheduleRedraw();
  }

  function renderSensors(report) {
    const body = document.querySelector("#sensors tbody");
    body.textContent = "";
    for (const [id, s] of Object.entries(report.sensors)) {
      const tr = el("tr");
      const name = el("td");
      const sw = el("span", "swatch");
      sw.style.background = colour(id);
      name.append(sw, id);
      const ageCls = !s.up ? "down" : s.fresh ? "" : "stale";
      tr.dataset.sensor = id;
      // A reader without its device says why (port not found, ...): shown instead of an age.
      const why = s.up && !s.fresh && s.problem ? s.problem + (s.waiting_for_port ? "; retrying" : "") : "";
      tr.dataset.problem = why;
      tr.append(name, el("td", "num big", fmt(s.amps, 3)), el("td", "num big", fmt(s.watts, 2)),
        el("td", "num", fmt(s.energy_wh, 3)), el("td", "num", fmt(s.rate, 1)),
        el("td", "num " + ageCls, !s.up ? "reader down" : why || age(s.age_s)),
        el("td", "num", fmt(s.bad_lines, 0)), el("td", "num", fmt(s.reconnects, 0)),
        el("td", "num", fmt(s.gaps, 0)), el("td", "num", fmt(s.lost, 0)));
      body.append(tr);
    }
  }

  function renderProcesses(report) {
    const body = document.querySelector("#processes tbody");
    body.textContent = "";
    for (const [name, p] of Object.entries(report.processes)) {
      const tr = el("tr");
      tr.dataset.process = name;
      tr.dataset.up = p.up ? "1" : "0";
      const st = p.up ? el("td", "up", "● " + (p.state || "up")) : el("td", "down", "● down: " + p.why_down);
      const up = p.pid === null ? "–" : (p.uptime_exact ? "" : "≥ ") + span(p.uptime_s);
      tr.append(el("td", "", name), st, el("td", "num", p.pid === null ? "–" : String(p.pid)),
        el("td", "num", up), el("td", "num", age(p.beat_age_s)),
        el("td", "num", p.restarts === null ? "–" : String(p.restarts)));
      body.append(tr);
    }
  }

  function renderSinks(report) {
    const rows = [];
    const w = report.writer;
    if (w) {
      rows.push(["writer file", w.current_file || "no file yet"],
        ["file size", w.bytes_in_file === null ? "–" : (w.bytes_in_file / 1e6).toFixed(2) + " MB"],
        ["rows written since writer start", fmt(w.rows, 0)], ["gaps / lost", fmt(w.gaps, 0) + " / " + fmt(w.lost, 0)]);
    } else {
      rows.push(["writer", "no heartbeat yet"]);
    }
    const d = report.storage;
    if (d) {
      rows.push(["oldest data", d.oldest_data || "–"],
        ["files deleted since writer start", fmt(d.files_deleted, 0) + " (" +
          (d.bytes_deleted === null ? "–" : (d.bytes_deleted / 1e6).toFixed(2)) + " MB)"]);
    }
    const u = report.uplink;
    if (u) {
      rows.push(["uplink spool", fmt(u.spool_depth, 0) + " readings"],
        ["last upload", age(u.last_success_age_s)], ["last error", u.last_error || "none"]);
    }
    const body = document.querySelector("#sinks tbody");
    body.textContent = "";
    for (const [k, v] of rows) {
      const tr = el("tr");
      tr.append(el("th", "", k), el("td", "", v));
      body.append(tr);
    }
  }

  function renderStatus(report) {
    state.status = report;
    const badge = document.getElementById("health");
    badge.className = "badge " + (report.ok ? "ok" : "bad");
    badge.textContent = report.ok ? "pipeline up" : "pipeline DOWN";
    document.getElementById("problems").textContent = report.problems.join(" · ");
    renderSensors(report);
    renderProcesses(report);
    renderSinks(report);
  }

  function setLive(on, text) {
    state.connected = on;
    const live = document.getElementById("live");
    live.className = "live " + (on ? "on" : "off");
    live.textContent = "● " + text;
  }

  function connect() {
    const es = new EventSource("/events" + q);
    es.addEventListener("open", () => setLive(true, "live"));
    es.addEventListener("error", () => {
      setLive(false, "reconnecting…");
      fetch("/api/status" + q).then((r) => {
        if (r.status === 401) setLive(false, "needs ?token=… in the address");
      }).catch(() => {});
    });
    es.addEventListener("hello", (e) => {
      const hello = JSON.parse(e.data);
      state.sensors = hello.sensors.slice();
      state.units = hello.units || {};
      for (const k of Object.keys(series)) delete series[k];
      makePlot();
      addPoints(hello.history);
      state.events += 1;
    });
    es.addEventListener("points", (e) => { addPoints(JSON.parse(e.data)); state.events += 1; });
    es.addEventListener("status", (e) => { renderStatus(JSON.parse(e.data)); state.events += 1; });
    es.addEventListener("dropped", (e) => {
      state.dropped = JSON.parse(e.data).dropped;
      document.getElementById("dropped").textContent =
        state.dropped + " updates skipped (slow connection)";
    });
  }

  document.querySelectorAll(".window button").forEach((b) => {
    b.addEventListener("click", () => {
      document.querySelectorAll(".window button").forEach((o) => o.classList.remove("on"));
      b.classList.add("on");
      state.windowMin = Number(b.dataset.min);
      redraw();
    });
  });
  window.addEventListener("resize", () => {
    if (plot) plot.setSize({ width: document.getElementById("chart").clientWidth, height: 360 });
  });
  connect();
}());
