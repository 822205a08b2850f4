// Policy tuning tab: the λ slider on the policy's cost–quality curve, Apply, promote / roll back.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { policies: null, curve: null, index: 0, lambda: 0 };

  function nearestIndex(lambdas, lam) {
    let best = 0;
    for (let i = 1; i < lambdas.length; i++) {
      if (Math.abs(Math.log1p(lambdas[i]) - Math.log1p(lam)) < Math.abs(Math.log1p(lambdas[best]) - Math.log1p(lam))) best = i;
    }
    return best;
  }

  function showPoint(point) {
    $("tu-point-lambda").textContent = Number(point.lambda).toPrecision(4);
    $("tu-cost1k").textContent = EM.usd(point.cost_per_1k_usd);
    $("tu-quality").textContent = EM.num(point.quality);
    $("tu-share").textContent = Object.entries(point.share).map(([e, s]) => `${e} ${EM.pct(s)}`).join(", ");
    const applied = state.policies.active === $("tu-policy").value ? state.policies.lambda : null;
    const traces = [
      { type: "scatter", mode: "lines+markers", name: "curve (λ grid)", x: state.curve.curve.map((p) => p.cost_per_1k_usd),
        y: state.curve.curve.map((p) => p.quality), marker: { size: 4 }, line: { shape: "hv" },
        text: state.curve.curve.map((p) => `λ=${p.lambda.toPrecision(3)}`), hovertemplate: "%{text}<br>$%{x:.4g} / 1k<br>quality %{y:.3f}" },
      { type: "scatter", mode: "markers+text", name: "each expert alone", x: state.curve.experts.map((e) => e.cost_usd * 1000),
        y: state.curve.experts.map((e) => e.quality), text: state.curve.experts.map((e) => e.expert), textposition: "top center",
        marker: { size: 9, symbol: "diamond", color: "#888" } },
      { type: "scatter", mode: "markers", name: "this λ", x: [point.cost_per_1k_usd], y: [point.quality],
        marker: { size: 16, symbol: "star", color: "#e8590c" } },
    ];
    if (applied !== null && state.appliedPoint) {
      traces.push({ type: "scatter", mode: "markers", name: `serving (λ=${applied})`, x: [state.appliedPoint.cost_per_1k_usd],
        y: [state.appliedPoint.quality], marker: { size: 12, symbol: "circle-open", color: "#2b8a3e", line: { width: 3 } } });
    }
    Plotly.react("chart-curve", traces, {
      margin: { l: 60, r: 10, t: 10, b: 50 }, legend: { orientation: "h" },
      xaxis: { title: "expected cost per 1,000 requests (USD)" }, yaxis: { title: "quality on the evaluation set" },
    }, EM.plotConfig);
  }

  async function loadCurve() {
    const name = $("tu-policy").value;
    const current = state.policies.lambda;
    state.curve = await EM.api(`/tuning/${encodeURIComponent(name)}?lambda=${current}`);
    state.appliedPoint = state.policies.active === name ? state.curve.point : null;
    const slider = $("tu-slider");
    slider.max = String(state.curve.lambdas.length - 1);
    slider.disabled = !state.curve.uses_lambda;
    state.index = nearestIndex(state.curve.lambdas, current);
    slider.value = String(state.index);
    state.lambda = current;
    $("tu-lambda").value = String(current);
    $("tu-status").textContent = `evaluation set: ${state.curve.evaluation_set}` +
      (state.curve.uses_lambda ? "" : ` · ${name} ignores λ (one operating point)`);
    showPoint(state.curve.point);
  }

  function onSlide() {
    state.index = Number($("tu-slider").value);
    state.lambda = state.curve.lambdas[state.index];
    $("tu-lambda").value = String(Number(state.lambda.toPrecision(6)));
    showPoint(state.curve.curve[state.index]);
  }

  async function onExact() {
    const lam = Number($("tu-lambda").value);
    if (!(lam >= 0)) return;
    state.lambda = lam;
    $("tu-slider").value = String(nearestIndex(state.curve.lambdas, lam));
    showPoint(await EM.api(`/tuning/${encodeURIComponent($("tu-policy").value)}/point?lambda=${lam}`));
  }

  async function apply() {
    const policy = $("tu-policy").value;
    const out = await EM.api("/apply", { body: { policy, lambda: state.lambda } });
    $("tu-status").textContent = `applied: ${out.active} with λ = ${out.lambda} (was ${out.previous.active}, λ = ${out.previous.lambda})`;
    state.policies = await EM.refreshServing();
    if (state.curve && !state.policies.tuning_unavailable) {
      state.appliedPoint = await EM.api(`/tuning/${encodeURIComponent(policy)}/point?lambda=${out.lambda}`);
      showPoint(state.appliedPoint);
    }
    renderRegistry();
  }

  function renderRegistry() {
    const name = $("tu-policy").value;
    const table = $("versions-table");
    const versions = state.policies.versions.filter((v) => v.policy === name);
    EM.table(table, [
      ["version", (v) => v.version], ["created", (v) => EM.when(v.created_at)],
      ["active", (v) => (v.active ? "active" : "")], ["promoted", (v) => EM.when(v.promoted_at)], ["", () => ""],
    ], versions, { rowClass: (v) => (v.active ? "chosen" : "") });
    table.querySelectorAll("tbody tr").forEach((tr, i) => {
      const v = versions[i];
      if (!v || v.active) return;
      const button = document.createElement("button");
      button.textContent = "Promote";
      button.className = "promote";
      button.addEventListener("click", () => EM.run(() => registryAction("promote", { version: v.version })));
      tr.lastElementChild.appendChild(button);
    });
    EM.table($("events-table"), [
      ["when", (e) => EM.when(e.created_at)], ["policy", (e) => e.policy], ["action", (e) => e.action],
      ["version", (e) => e.version || "–"], ["previous", (e) => e.previous_version || "–"],
      ["by", (e) => e.actor || "–"], ["why", (e) => e.reason || ""],
    ], state.policies.events);
  }

  async function registryAction(action, body) {
    const name = $("tu-policy").value;
    const reason = $("tu-reason").value.trim() || null;
    const payload = action === "promote" ? { ...body, force: $("tu-force").checked, reason } : { reason };
    const out = await EM.api(`/policies/${encodeURIComponent(name)}/${action}`, { body: payload });
    $("tu-registry-result").textContent = `${out.action}: ${out.version || "(configured artifact)"} — ${out.reason}`;
    state.policies = await EM.refreshServing();
    renderRegistry();
  }

  async function show() {
    state.policies = await EM.refreshServing();
    const select = $("tu-policy");
    const keep = select.value || state.policies.active;
    EM.select(select, state.policies.servable);
    select.value = state.policies.servable.includes(keep) ? keep : state.policies.active;
    renderRegistry();
    if (state.policies.tuning_unavailable) {
      $("tu-status").textContent = `No curve: ${state.policies.tuning_unavailable}. λ can still be applied.`;
      $("tu-slider").disabled = true;
      $("tu-lambda").value = String(state.policies.lambda);
      state.lambda = state.policies.lambda;
      return;
    }
    await loadCurve();
  }

  $("tu-policy").addEventListener("change", () => EM.run(async () => { renderRegistry(); if (!state.policies.tuning_unavailable) await loadCurve(); }));
  $("tu-slider").addEventListener("input", onSlide);
  $("tu-lambda").addEventListener("change", () => EM.run(async () => {
    if (state.curve) await onExact(); else state.lambda = Number($("tu-lambda").value);
  }));
  $("tu-apply").addEventListener("click", () => EM.run(apply));
  $("tu-rollback").addEventListener("click", () => EM.run(() => registryAction("rollback", {})));
  EM.tabs.tuning = { show };
})();
