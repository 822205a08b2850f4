// Shared helpers of the admin dashboard: JSON calls, tabs, formatting, tables.
"use strict";

const EM = {
  tabs: {},  // name -> {show()} registered by overview.js, tuning.js, ledger.js
  plotConfig: { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage"] },

  async api(path, options = {}) {
    const init = { credentials: "same-origin", headers: { accept: "application/json" }, ...options };
    if (init.body !== undefined) {
      init.method = init.method || "POST";
      init.headers = { ...init.headers, "content-type": "application/json", "x-expertmux-csrf": "1" };
      init.body = JSON.stringify(init.body);
    }
    const resp = await fetch("/admin/api" + path, init);
    if (resp.status === 401) { location.href = "/admin/login"; throw new Error("signed out"); }
    const body = await resp.json();
    if (!resp.ok) {
      const message = (body.error && body.error.message) || resp.statusText;
      throw new Error(message);
    }
    return body;
  },

  banner(message) {
    const el = document.getElementById("banner");
    el.textContent = message || "";
    el.hidden = !message;
  },

  // Runs an async action and shows its error in the banner instead of the console.
  async run(action) {
    try { EM.banner(""); return await action(); } catch (err) { EM.banner(err.message); return undefined; }
  },

  usd(x, digits = 4) {
    if (x === null || x === undefined) return "–";
    if (x !== 0 && Math.abs(x) < 10 ** -digits) return "$" + x.toExponential(2);
    return "$" + x.toFixed(digits);
  },
  ms(x) { return x === null || x === undefined ? "–" : x.toFixed(0) + " ms"; },
  // Compact forms for narrow table columns (the exact value goes in the cell's title).
  count(x) {
    if (x === null || x === undefined) return "–";
    return Math.abs(x) < 10000 ? x.toLocaleString("en") : EM.compact.format(x);
  },
  compact: new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 }),
  usdShort(x) {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    if (a === 0) return "$0";
    if (a >= 10000) return "$" + EM.compact.format(x);
    if (a >= 1) return "$" + x.toFixed(2);
    if (a >= 1e-4) return "$" + Number(x.toPrecision(2));
    return "$" + x.toExponential(1);
  },
  msShort(x) {
    if (x === null || x === undefined) return "–";
    if (x < 1000) return x.toFixed(0) + " ms";
    if (x < 60000) return (x / 1000).toFixed(x < 10000 ? 2 : 1) + " s";
    return (x / 60000).toFixed(1) + " min";
  },
  // Shortens labels for a chart axis or legend (the full text stays in the hover): an ellipsis in
  // the middle keeps both ends of names like "llama-3.3-70b-instruct.us-east-2.prod". plotly
  // merges equal labels, so clipped labels are kept distinct.
  clipAll(texts, max = 24) {
    const seen = new Set();
    return texts.map((text) => {
      let label = text.length > max ? text.slice(0, Math.ceil(max * 0.6) - 1) + "…" + text.slice(-Math.floor(max * 0.4)) : text;
      for (let i = 2; seen.has(label); i++) label = `${label.replace(/ #\d+$/, "")} #${i}`;
      seen.add(label);
      return label;
    });
  },
  pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; },
  num(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); },
  when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; },
  // "Mar 5, 14:02" (the year only when it is not this one), for narrow table columns.
  whenShort(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const opts = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (d.getFullYear() !== new Date().getFullYear()) opts.year = "numeric";
    return d.toLocaleString("en", opts);
  },

  // Fills a <table> from rows: columns = [[header, row => text, kind?, {title, head}?], ...]. Text
  // only (no HTML). kind "num": right-aligned figures; "name": shrinks with an ellipsis when the
  // card is narrow (the full text is the cell's tooltip); "wrap": long free text, wrapped.
  // title(row) gives a cell's tooltip (e.g. the exact value of a compact figure); head, the
  // header's; width, a "name" column's share of the room left by the others (CSS width).
  table(el, columns, rows, { onClick, rowClass, empty = "nothing here" } = {}) {
    el.replaceChildren();
    const head = el.createTHead().insertRow();
    for (const [title, , kind, opts = {}] of columns) {
      const th = document.createElement("th");
      th.textContent = title;
      if (kind) th.className = kind;
      if (opts.head) th.title = opts.head;
      if (opts.width) th.style.width = opts.width;
      head.appendChild(th);
    }
    const body = el.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      if (rowClass) tr.className = rowClass(row) || "";
      for (const [, value, kind, opts = {}] of columns) {
        const td = tr.insertCell();
        td.textContent = value(row);
        if (kind) td.className = kind;
        const tip = opts.title ? opts.title(row) : kind === "name" ? td.textContent : "";
        if (tip) td.title = tip;
      }
      if (onClick) tr.addEventListener("click", () => onClick(row, tr));
    }
    if (!rows.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = columns.length;
      td.className = "muted empty";
      td.textContent = empty;
    }
  },

  // Draws a plotly chart, or, when there is nothing to draw, says so in words instead of an
  // empty pair of axes.
  plot(id, traces, layout, { empty } = {}) {
    const el = document.getElementById(id);
    if (empty) {
      Plotly.purge(el);
      const note = document.createElement("p");
      note.className = "chart-empty";
      note.textContent = empty;
      el.replaceChildren(note);
      el.classList.add("is-empty");
      return;
    }
    if (el.classList.contains("is-empty")) {
      el.classList.remove("is-empty");
      el.replaceChildren();
    }
    Plotly.react(el, traces, layout, EM.plotConfig);
  },

  // A bucket's ISO time (UTC) as a local wall-clock string, which plotly shows as it is (it
  // ignores time-zone offsets), so the charts read like the tables' local times.
  localTime(iso) {
    const d = new Date(iso);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  },

  // An x axis over [since, until]: the tick step is the smallest of a fixed ladder whose labels,
  // at their format's width, fit side by side in the chart's width; the format follows the
  // step and the span (clock times within a day, dates over days, months over a year).
  timeAxis(el, since, until) {
    const MIN = 60e3, HOUR = 3600e3, DAY = 86400e3;
    const span = Math.max(MIN, new Date(until) - new Date(since));
    const plotWidth = Math.max(120, (el.clientWidth || 400) - 90);
    const ladder = [
      ...[1, 2, 5, 10, 15, 30].map((m) => [m * MIN, m * MIN]),
      ...[1, 2, 3, 4, 6, 12].map((h) => [h * HOUR, h * HOUR]),
      [DAY, DAY], [2 * DAY, 2 * DAY], [7 * DAY, 7 * DAY], [14 * DAY, 14 * DAY],
      ["M1", 30 * DAY], ["M2", 61 * DAY], ["M3", 91 * DAY], ["M6", 182 * DAY], ["M12", 365 * DAY],
    ];
    const format = (ms) => {
      if (ms < DAY) return span <= 26 * HOUR ? ["%H:%M", 5] : ["%b %-d %H:%M", 12];
      if (ms < 28 * DAY) return ["%b %-d", 6];
      return ms < 365 * DAY ? ["%b %Y", 8] : ["%Y", 4];
    };
    let pick = ladder[ladder.length - 1];
    for (const step of ladder) {
      const [, chars] = format(step[1]);
      const labelPx = chars * 6.5 + 14;  // 12px labels: at most 6.5 px a character, and a gap
      if ((span / step[1]) * labelPx <= plotWidth) { pick = step; break; }
    }
    const [tickformat] = format(pick[1]);
    return { type: "date", dtick: pick[0], tickformat, tickangle: 0, automargin: true,
      hoverformat: "%b %-d %Y, %H:%M", showgrid: false };
  },

  select(el, values, { any = false, label = (v) => v, value = (v) => v } = {}) {
    const keep = el.value;
    el.replaceChildren();
    if (any) el.add(new Option("any", ""));
    for (const v of values) el.add(new Option(label(v), value(v)));
    if ([...el.options].some((o) => o.value === keep)) el.value = keep;
  },

  showTab(name) {
    if (!EM.tabs[name]) name = "overview";
    for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== "tab-" + name;
    for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.tab === name);
    EM.run(() => EM.tabs[name].show());
  },

  async refreshServing() {
    const p = await EM.api("/policies");
    document.getElementById("serving").textContent = `serving: ${p.active} · λ = ${p.lambda}`;
    return p;
  },
};

window.addEventListener("hashchange", () => EM.showTab(location.hash.slice(1)));
window.addEventListener("DOMContentLoaded", () => {
  EM.run(() => EM.refreshServing());
  EM.showTab(location.hash.slice(1) || "overview");
});
