// Overview tab: traffic, cost and latency over time; share, errors and quality per expert/policy.
"use strict";

(function () {
  const range = document.getElementById("ov-range");
  const TIME_CHARTS = ["chart-requests", "chart-cost", "chart-latency"];
  let span = null;  // [since, until] of the time series on screen

  // The legend sits above the plot, where it cannot run into the tick labels under it.
  function layout(extra = {}) {
    return { margin: { l: 50, r: 10, t: 10, b: 10 }, legend: { orientation: "h", x: 0, y: 1, yanchor: "bottom" },
      hovermode: "x unified", yaxis: { automargin: true, rangemode: "tozero" }, ...extra };
  }

  // aria-busy marks the tab while its figures are being fetched and drawn.
  async function show() {
    const tab = document.getElementById("tab-overview");
    tab.setAttribute("aria-busy", "true");
    try { await draw(); } finally { tab.removeAttribute("aria-busy"); }
  }

  async function draw() {
    const [data, cascades, timing] = await Promise.all([EM.api(`/overview?hours=${range.value}&buckets=48`),
      EM.api(`/cascades?hours=${range.value}`), EM.api(`/routing-time?hours=${range.value}`)]);
    drawCascades(cascades);
    drawRoutingTime(timing);
    const ts = data.timeseries, b = ts.buckets;
    const t = b.map((x) => EM.localTime(x.t));
    const total = data.experts.total;
    document.getElementById("ov-total").textContent =
      `${total.toLocaleString()} requests, ${EM.usd(b.reduce((s, x) => s + x.cost_usd, 0))}`;
    // Every time chart spans the whole window, each bucket drawn across its own period.
    const end = new Date(Math.max(Date.parse(ts.until), Date.parse(b[b.length - 1].t) + ts.bucket_s * 1000)).toISOString();
    span = [ts.since, end];
    const xaxis = (id) => ({ ...EM.timeAxis(document.getElementById(id), ts.since, end),
      range: [EM.localTime(ts.since), EM.localTime(end)] });
    const period = { xperiod: ts.bucket_s * 1000, xperiodalignment: "middle" };
    const none = total ? null : "No requests in this range";

    EM.plot("chart-requests", [
      { type: "bar", name: "answered", x: t, y: b.map((x) => x.requests - x.errors), marker: { color: "#2f6fde" }, ...period },
      { type: "bar", name: "failed / rejected", x: t, y: b.map((x) => x.errors), marker: { color: "#c2332b" }, ...period },
    ], layout({ barmode: "stack", xaxis: xaxis("chart-requests") }), { empty: none });
    EM.plot("chart-cost", [
      { type: "scatter", mode: "lines", name: "cost", x: t, y: b.map((x) => x.cost_usd), fill: "tozeroy", ...period },
    ], layout({ xaxis: xaxis("chart-cost"), yaxis: { automargin: true, rangemode: "tozero", tickprefix: "$" }, showlegend: false }),
    { empty: none || (b.some((x) => x.cost_usd > 0) ? null : "No cost recorded in this range") });
    EM.plot("chart-latency", [
      { type: "scatter", mode: "lines+markers", name: "p50", x: t, y: b.map((x) => x.p50_ms), connectgaps: false, ...period },
      { type: "scatter", mode: "lines+markers", name: "p95", x: t, y: b.map((x) => x.p95_ms), connectgaps: false, ...period },
    ], layout({ xaxis: xaxis("chart-latency") }),
    { empty: none || (b.some((x) => x.p50_ms !== null) ? null : "No answered requests in this range") });

    const experts = data.experts.data;
    const names = experts.map((e) => e.expert || "(none: rejected)");
    EM.plot("chart-share", [{
      type: "pie", hole: 0.45, labels: EM.clipAll(names), values: experts.map((e) => e.requests), sort: false,
      textposition: "inside", customdata: names, hovertemplate: "%{customdata}<br>%{value} requests (%{percent})<extra></extra>",
    }], { margin: { l: 10, r: 10, t: 10, b: 10 }, uniformtext: { minsize: 10, mode: "hide" } }, { empty: none });
    EM.table(document.getElementById("experts-table"), [
      ["expert", (e) => e.expert || "(none: rejected)", "name"],
      ["requests", (e) => EM.count(e.requests), "num", { title: (e) => e.requests.toLocaleString() }],
      ["share", (e) => EM.pct(e.share), "num"],
      ["errors", (e) => EM.pct(e.error_rate), "num", { head: "error rate: failed or rejected requests",
        title: (e) => `${e.errors.toLocaleString()} of ${e.requests.toLocaleString()}` }],
      ["cost", (e) => EM.usdShort(e.cost_usd), "num", { title: (e) => EM.usd(e.cost_usd, 6) }],
      ["latency", (e) => EM.msShort(e.mean_latency_ms), "num", { head: "mean latency of answered requests",
        title: (e) => EM.ms(e.mean_latency_ms) }],
    ], experts, { empty: "No requests in this range" });

    // Horizontal bars: the names sit on the y axis (clipped, full in the hover), the x axis
    // carries only the 0–1 score, so its labels stay short however many experts there are.
    const q = data.quality;
    const policyName = (p) => `${p.policy || "(none)"} ${p.version || ""}`.trim();
    const labels = EM.clipAll([...q.by_policy.map(policyName), ...q.by_expert.map((e) => e.expert || "(none)")]);
    const bars = (name, rows, label, offset) => ({
      type: "bar", orientation: "h", name, y: rows.map((r, i) => labels[offset + i]), x: rows.map((r) => r.mean_score),
      text: rows.map((r) => `n=${r.n}`), textposition: "inside", insidetextanchor: "end",
      customdata: rows.map((r) => [label(r), r.n]), hovertemplate: "%{customdata[0]}: %{x:.3f} (n=%{customdata[1]})<extra></extra>",
    });
    const rated = q.by_policy.length + q.by_expert.length;
    EM.plot("chart-quality", [
      bars("per policy", q.by_policy, policyName, 0),
      bars("per expert", q.by_expert, (e) => e.expert || "(none)", q.by_policy.length),
    ], layout({ xaxis: { range: [0, 1], title: { text: "mean score" }, automargin: true, tickangle: 0 },
      yaxis: { automargin: true, autorange: "reversed", type: "category" }, hovermode: "closest", bargap: 0.3 }),
    { empty: rated ? null : "No feedback yet in this range" });
    const qt = document.getElementById("quality-table");
    qt.hidden = !rated;
    EM.table(qt, [
      ["policy / expert", (r) => "policy" in r ? `policy ${policyName(r)}` : `expert ${r.expert || "(none)"}`, "name"],
      ["mean score", (r) => EM.num(r.mean_score), "num"],
      ["ratings", (r) => EM.count(r.n), "num", { title: (r) => r.n.toLocaleString() }],
    ], [...q.by_policy, ...q.by_expert]);
  }

  // Cascade policies: how often they escalate and what the discarded steps cost in money and time.
  function drawCascades(c) {
    EM.table(document.getElementById("cascades-table"), [
      ["policy", (p) => p.policy || "(none)", "name"],
      ["requests", (p) => EM.count(p.requests), "num", { title: (p) => p.requests.toLocaleString() }],
      ["escalated", (p) => EM.pct(p.escalation_rate), "num", { head: "share of requests with more than one step (a failed step included)",
        title: (p) => `${p.escalated.toLocaleString()} of ${p.requests.toLocaleString()}` }],
      ["mean steps", (p) => EM.num(p.mean_steps, 2), "num"],
      ["added cost", (p) => EM.usdShort(p.added_cost_usd), "num", { head: "USD spent on steps whose answer was not returned",
        title: (p) => `${EM.usd(p.added_cost_usd, 6)} of ${EM.usd(p.cost_usd, 6)} spent on steps; judge calls ${EM.usd(p.judge_cost_usd, 6)}` }],
      ["per request", (p) => EM.usdShort(p.added_cost_per_request_usd), "num", { head: "added cost per cascade request",
        title: (p) => EM.usd(p.added_cost_per_request_usd, 8) }],
      ["added time p50", (p) => EM.msShort(p.added_latency_p50_ms), "num",
        { head: "time of the discarded steps, median over escalated requests (the first byte waits for every step)" }],
      ["p95", (p) => EM.msShort(p.added_latency_p95_ms), "num", { head: "time of the discarded steps, p95 over escalated requests" }],
    ], c.policies, { empty: "No cascade requests in this range" });
  }

  // Routing time per policy: the wait for the prompt's features, and the decision itself.
  function drawRoutingTime(t) {
    const ms = (x) => (x !== null && x !== undefined && x < 10 ? x.toFixed(2) + " ms" : EM.msShort(x));  // decisions take well under 1 ms
    EM.table(document.getElementById("routing-time-table"), [
      ["policy", (p) => p.policy || "(none)", "name"],
      ["requests", (p) => EM.count(p.requests), "num", { head: `routed requests among the newest ${t.sample.toLocaleString()} of the range`,
        title: (p) => p.requests.toLocaleString() }],
      ["features p50", (p) => ms(p.features_p50_ms), "num", { head: "time waiting for the prompt's features (off the event loop), median" }],
      ["p95", (p) => ms(p.features_p95_ms), "num", { head: "time waiting for the prompt's features, p95" }],
      ["decision p50", (p) => ms(p.decide_p50_ms), "num", { head: "the policy's decision on the event loop, median" }],
      ["p95", (p) => ms(p.decide_p95_ms), "num", { head: "the policy's decision, p95" }],
      ["total p50", (p) => ms(p.total_p50_ms), "num", { head: "features and decision, median" }],
      ["p95", (p) => ms(p.total_p95_ms), "num", { head: "features and decision, p95" }],
    ], t.policies, { empty: "No routed requests in this range" });
  }

  // The tick step depends on the chart's width: pick it again when the window is resized.
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (!span || document.getElementById("tab-overview").hidden) return;
      for (const id of TIME_CHARTS) {
        const el = document.getElementById(id);
        if (el.classList.contains("is-empty") || !el.data) continue;
        const axis = EM.timeAxis(el, span[0], span[1]);
        Plotly.relayout(el, { "xaxis.dtick": axis.dtick, "xaxis.tickformat": axis.tickformat });
      }
    }, 150);
  });

  range.addEventListener("change", () => EM.run(show));
  document.getElementById("ov-refresh").addEventListener("click", () => EM.run(show));
  EM.tabs.overview = { show };
})();
