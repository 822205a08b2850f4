// Over time tab: each paced budget's spend against its pacing line, sessions with their switches,
// the shadow's candidate policies. A feature that is off says so and names the config key.
"use strict";

(function () {
  const range = document.getElementById("ot-range");
  let pacingSpans = [];  // [chart id, since, until] of the pacing charts on screen

  // A paragraph of text and config keys ({code: "..."}); no parts hides it.
  function say(id, ...parts) {
    const el = document.getElementById(id);
    el.replaceChildren(...parts.map((p) => {
      if (typeof p === "string") return p;
      const code = document.createElement("code");
      code.textContent = p.code;
      return code;
    }));
    el.hidden = !parts.length;
  }

  const lambda = (x) => (x === null || x === undefined ? "–" : Number(x.toPrecision(3)).toLocaleString("en"));

  async function show() {
    const tab = document.getElementById("tab-overtime");
    tab.setAttribute("aria-busy", "true");
    try {
      const hours = Number(range.value);
      const since = new Date(Date.now() - hours * 3600e3).toISOString();
      const [pacing, sessions, shadow] = await Promise.all([EM.api("/pacing"), EM.api(`/sessions?hours=${hours}`),
        EM.api(`/shadow?since=${encodeURIComponent(since)}`)]);
      drawPacing(pacing);
      drawSessions(sessions);
      drawShadow(shadow);
    } finally { tab.removeAttribute("aria-busy"); }
  }

  // -- budget pacing: one chart per paced scope --------------------------------------------------
  function drawPacing(p) {
    const box = document.getElementById("ot-pacing");
    for (const el of box.querySelectorAll(".chart")) Plotly.purge(el);
    box.replaceChildren();
    pacingSpans = [];
    if (!p.enabled) {
      say("ot-pacing-note", "Budget pacing is off: budgets are hard caps only. Turn it on with a ", { code: "pacing:" },
        " section in the config (", { code: "pacing.window: day" }, " paces each key's ", { code: "budget_usd_day" }, ", ",
        { code: "pacing.global_budget_usd" }, " all traffic), or ", { code: "pacing.enabled: true" }, ".");
      return;
    }
    if (!p.scopes.length) {
      say("ot-pacing-note", "Pacing is on, but no budget is paced yet: a key with a budget for the window (",
        { code: "budget_usd_day" }, " or ", { code: "budget_usd_month" }, ") is paced from its first request, all traffic with ",
        { code: "pacing.global_budget_usd" }, ".");
      return;
    }
    say("ot-pacing-note");
    p.scopes.forEach((s, i) => {
      const block = document.createElement("div");
      block.className = "scope";
      const title = document.createElement("h3");
      title.textContent = s.scope === "global" ? "All traffic" : `Key ${s.name}`;
      title.title = s.scope;
      const facts = document.createElement("p");
      facts.className = "muted";
      facts.textContent = `λ now ${lambda(s.lambda)} · spent ${EM.usd(s.spent_usd)} of ${EM.usd(s.budget_usd)} this ${s.window}`
        + (s.near_cap ? " · near the cap: the cheapest fitting expert serves" : "");
      const chart = document.createElement("div");
      chart.className = "chart";
      chart.id = `chart-pacing-${i}`;
      block.append(title, facts, chart);
      box.append(block);
      plotScope(chart, s);
    });
  }

  // Cumulative spend against the pacing line (planned spend by then) and the budget; λ on the
  // right axis (log: it moves by factors).
  function plotScope(el, s) {
    const h = s.history;
    if (!h.length) {
      EM.plot(el.id, [], {}, { empty: "No spend read yet: the pacer reads it every pacing.update_s seconds" });
      return;
    }
    const t = h.map((x) => EM.localTime(x.t));
    const since = h[0].t;
    const until = new Date(Math.max(Date.parse(h[h.length - 1].t), Date.parse(since) + 60e3)).toISOString();
    pacingSpans.push([el.id, since, until]);
    EM.plot(el.id, [
      { type: "scatter", mode: "lines+markers", name: "spent", x: t, y: h.map((x) => x.spent_usd), line: { color: "#2f6fde" } },
      { type: "scatter", mode: "lines", name: "pacing line", x: t, y: h.map((x) => x.planned_usd),
        line: { color: "#667085", dash: "dash" } },
      { type: "scatter", mode: "lines", name: "budget", x: [t[0], EM.localTime(until)], y: [s.budget_usd, s.budget_usd],
        line: { color: "#c2332b", dash: "dot", width: 1 }, hoverinfo: "skip" },
      { type: "scatter", mode: "lines", name: "λ (right)", x: t, y: h.map((x) => x.lambda), yaxis: "y2",
        line: { color: "#8a5300", width: 1, shape: "hv" } },
    ], { margin: { l: 50, r: 10, t: 10, b: 10 }, legend: { orientation: "h", x: 0, y: 1, yanchor: "bottom" },
      hovermode: "x unified",
      xaxis: { ...EM.timeAxis(el, since, until), range: [EM.localTime(since), EM.localTime(until)] },
      yaxis: { automargin: true, rangemode: "tozero", tickprefix: "$" },
      yaxis2: { overlaying: "y", side: "right", type: "log", automargin: true, showgrid: false, tickformat: ".3~g" } });
  }

  // -- sessions ----------------------------------------------------------------------------------
  function drawSessions(s) {
    const table = document.getElementById("sessions-table");
    if (s.enabled) say("ot-sessions-note");
    else {
      say("ot-sessions-note", "Sessions are off: every request is routed alone. Turn them on with a ", { code: "sessions:" },
        " section in the config (", { code: "sessions: {}" }, " takes the defaults), or ", { code: "sessions.enabled: true" }, ".");
    }
    table.hidden = !s.enabled && !s.top.length;
    const totals = document.getElementById("ot-sessions-totals");
    totals.textContent = s.sessions
      ? `${s.sessions.toLocaleString()} sessions, ${s.requests.toLocaleString()} turns, ${s.switches.toLocaleString()} switches `
        + `(${EM.num(s.switches_per_session, 2)} per session; ${s.sessions_with_switches.toLocaleString()} sessions switched)`
      : "";
    totals.hidden = !totals.textContent;
    EM.table(table, [
      ["session", (x) => x.session_id, "name"],
      ["turns", (x) => EM.count(x.requests), "num", { head: "answered requests in this range" }],
      ["switches", (x) => EM.count(x.switches), "num", { head: "expert changes between consecutive answers" }],
      ["experts used", (x) => EM.count(x.experts), "num"],
      ["expert now", (x) => x.expert || "–", "name", { width: "25%" }],
      ["escalations", (x) => EM.count(x.escalations), "num", { head: "moves one tier up after a stall" }],
      ["cost", (x) => EM.usdShort(x.cost_usd), "num", { title: (x) => EM.usd(x.cost_usd, 6) }],
      ["last", (x) => EM.whenShort(x.last), "", { title: (x) => EM.when(x.last) }],
    ], s.top, { empty: "No sessions in this range" });
  }

  // -- shadow evaluation -------------------------------------------------------------------------
  function drawShadow(s) {
    const table = document.getElementById("shadow-table");
    if (s.enabled) say("ot-shadow-note");
    else {
      say("ot-shadow-note", "Shadow evaluation is off. Turn it on with a ", { code: "shadow:" },
        " section naming the candidate policy (", { code: "shadow: {policy: knn}" }, "), or ", { code: "shadow.enabled: true" },
        "; a candidate that cannot be loaded turns it off too (the proxy's log says why).");
    }
    const live = s.live, c = live ? live.counts : null;
    const running = document.getElementById("ot-shadow-live");
    running.textContent = live
      ? `running ${live.policy} ${live.version || ""}: ${c.decided} decided, ${c.called} called, ${c.judged} judged, `
        + `${c.skipped_full} skipped (queue full), ${c.skipped_budget} over budget · spent today ${EM.usd(live.spent_today_usd)}`
      : "";
    running.hidden = !running.textContent;
    table.hidden = !s.enabled && !s.candidates.length;
    const vs = (a, b, f) => `${f(a)} vs ${f(b)}`;
    EM.table(table, [
      ["candidate", (x) => `${x.policy} ${x.version || ""}`.trim(), "name"],
      ["decisions", (x) => EM.count(x.decisions), "num"],
      ["agreement", (x) => EM.pct(x.agreement), "num", { head: "share of decisions choosing the served expert" }],
      ["calls", (x) => EM.count(x.called), "num", { head: "the candidate's expert called where it differed" }],
      ["judged", (x) => EM.count(x.judged), "num", { head: "pairs of answers rated blind by the judge" }],
      ["wins", (x) => EM.pct(x.win_share), "num", { head: "share of judged pairs the candidate won (ties count half)" }],
      ["score", (x) => vs(x.mean_score, x.served_mean_score, (v) => EM.num(v, 2)), "num",
        { head: "mean judge score: candidate vs served" }],
      ["cost", (x) => vs(x.cost_usd, x.served_cost_usd, EM.usdShort), "num",
        { head: "the candidate's calls vs the served answers on the same requests",
          title: (x) => `${EM.usd(x.cost_usd, 6)} vs ${EM.usd(x.served_cost_usd, 6)}` }],
      ["skipped", (x) => EM.count(x.skipped_budget), "num", { head: "calls skipped: over the shadow's daily budget" }],
      ["errors", (x) => EM.count(x.errors), "num"],
    ], s.candidates, { empty: "No shadow decisions in this range" });
  }

  // The tick step depends on the chart's width: pick it again when the window is resized.
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (document.getElementById("tab-overtime").hidden) return;
      for (const [id, since, until] of pacingSpans) {
        const el = document.getElementById(id);
        if (!el || !el.data) continue;
        const axis = EM.timeAxis(el, since, until);
        Plotly.relayout(el, { "xaxis.dtick": axis.dtick, "xaxis.tickformat": axis.tickformat });
      }
    }, 150);
  });

  range.addEventListener("change", () => EM.run(show));
  document.getElementById("ot-refresh").addEventListener("click", () => EM.run(show));
  EM.tabs.overtime = { show };
})();
