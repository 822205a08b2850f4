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
  pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; },
  num(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); },
  when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; },

  // Fills a <table> from rows: columns = [[header, row => text, "num"?], ...]. Text only (no HTML).
  table(el, columns, rows, { onClick, rowClass } = {}) {
    el.replaceChildren();
    const head = el.createTHead().insertRow();
    for (const [title] of columns) {
      const th = document.createElement("th");
      th.textContent = title;
      head.appendChild(th);
    }
    const body = el.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      if (rowClass) tr.className = rowClass(row) || "";
      for (const [, value, kind] of columns) {
        const td = tr.insertCell();
        td.textContent = value(row);
        if (kind === "num") td.className = "num";
      }
      if (onClick) tr.addEventListener("click", () => onClick(row, tr));
    }
    if (!rows.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = columns.length;
      td.className = "muted";
      td.textContent = "nothing here";
    }
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
