// Overview tab: traffic, cost and latency over time; share, errors and quality per expert/policy.
"use strict";

(function () {
  const range = document.getElementById("ov-range");

  function layout(extra = {}) {
    return { margin: { l: 50, r: 10, t: 10, b: 40 }, legend: { orientation: "h" }, hovermode: "x unified", ...extra };
  }

  async function show() {
    const data = await EM.api(`/overview?hours=${range.value}&buckets=48`);
    const b = data.timeseries.buckets;
    const t = b.map((x) => x.t);
    document.getElementById("ov-total").textContent =
      `${data.experts.total.toLocaleString()} requests, ${EM.usd(b.reduce((s, x) => s + x.cost_usd, 0))}`;

    Plotly.react("chart-requests", [
      { type: "bar", name: "answered", x: t, y: b.map((x) => x.requests - x.errors), marker: { color: "#2f6fde" } },
      { type: "bar", name: "failed / rejected", x: t, y: b.map((x) => x.errors), marker: { color: "#c2332b" } },
    ], layout({ barmode: "stack" }), EM.plotConfig);
    Plotly.react("chart-cost", [
      { type: "scatter", mode: "lines", name: "cost", x: t, y: b.map((x) => x.cost_usd), fill: "tozeroy" },
    ], layout(), EM.plotConfig);
    Plotly.react("chart-latency", [
      { type: "scatter", mode: "lines+markers", name: "p50", x: t, y: b.map((x) => x.p50_ms), connectgaps: false },
      { type: "scatter", mode: "lines+markers", name: "p95", x: t, y: b.map((x) => x.p95_ms), connectgaps: false },
    ], layout(), EM.plotConfig);

    const experts = data.experts.data;
    Plotly.react("chart-share", [{
      type: "pie", hole: 0.45, labels: experts.map((e) => e.expert || "(none: rejected)"),
      values: experts.map((e) => e.requests), sort: false,
    }], { margin: { l: 10, r: 10, t: 10, b: 10 } }, EM.plotConfig);
    EM.table(document.getElementById("experts-table"), [
      ["expert", (e) => e.expert || "(none)"],
      ["requests", (e) => e.requests.toLocaleString(), "num"],
      ["share", (e) => EM.pct(e.share), "num"],
      ["error rate", (e) => EM.pct(e.error_rate), "num"],
      ["cost", (e) => EM.usd(e.cost_usd), "num"],
      ["mean latency", (e) => EM.ms(e.mean_latency_ms), "num"],
    ], experts);

    const q = data.quality;
    Plotly.react("chart-quality", [
      { type: "bar", name: "per policy", x: q.by_policy.map((p) => `${p.policy} ${p.version || ""}`.trim()),
        y: q.by_policy.map((p) => p.mean_score), text: q.by_policy.map((p) => `n=${p.n}`) },
      { type: "bar", name: "per expert", x: q.by_expert.map((e) => e.expert || "(none)"),
        y: q.by_expert.map((e) => e.mean_score), text: q.by_expert.map((e) => `n=${e.n}`) },
    ], layout({ yaxis: { range: [0, 1], title: "mean score" }, hovermode: "closest" }), EM.plotConfig);
    EM.table(document.getElementById("quality-table"), [
      ["policy / expert", (r) => r.policy ? `policy ${r.policy} ${r.version || ""}` : `expert ${r.expert || "(none)"}`],
      ["mean score", (r) => EM.num(r.mean_score), "num"],
      ["ratings", (r) => r.n.toLocaleString(), "num"],
    ], [...q.by_policy, ...q.by_expert]);
  }

  range.addEventListener("change", () => EM.run(show));
  document.getElementById("ov-refresh").addEventListener("click", () => EM.run(show));
  EM.tabs.overview = { show };
})();
