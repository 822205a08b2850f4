// Policy tuning tab: the λ slider on the policy's cost–quality curve, Apply, promote / roll back; and the Own experts tab (below).
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
    const alone = state.curve.experts;
    const costs = [...state.curve.curve.map((p) => p.cost_per_1k_usd), ...alone.map((e) => e.cost_usd * 1000)];
    const mid = (Math.min(...costs) + Math.max(...costs)) / 2;
    const traces = [
      { type: "scatter", mode: "lines+markers", name: "curve (λ grid)", x: state.curve.curve.map((p) => p.cost_per_1k_usd),
        y: state.curve.curve.map((p) => p.quality), marker: { size: 4 }, line: { shape: "hv" },
        text: state.curve.curve.map((p) => `λ=${p.lambda.toPrecision(3)}`), hovertemplate: "%{text}<br>$%{x:.4g} / 1k<br>quality %{y:.3f}" },
      // Names are clipped and set off towards the middle of the chart, so none runs off its edge.
      { type: "scatter", mode: "markers+text", name: "each expert alone", x: alone.map((e) => e.cost_usd * 1000),
        y: alone.map((e) => e.quality), text: EM.clipAll(alone.map((e) => e.expert), 28), customdata: alone.map((e) => e.expert),
        textposition: alone.map((e) => (e.cost_usd * 1000 > mid ? "top left" : "top right")), cliponaxis: false,
        hovertemplate: "%{customdata}<br>$%{x:.4g} / 1k<br>quality %{y:.3f}<extra></extra>",
        marker: { size: 9, symbol: "diamond", color: "#888" } },
      { type: "scatter", mode: "markers", name: "this λ", x: [point.cost_per_1k_usd], y: [point.quality],
        marker: { size: 16, symbol: "star", color: "#e8590c" } },
    ];
    if (applied !== null && state.appliedPoint) {
      traces.push({ type: "scatter", mode: "markers", name: `serving (λ=${applied})`, x: [state.appliedPoint.cost_per_1k_usd],
        y: [state.appliedPoint.quality], marker: { size: 12, symbol: "circle-open", color: "#2b8a3e", line: { width: 3 } } });
    }
    EM.plot("chart-curve", traces, {
      margin: { l: 60, r: 10, t: 10, b: 10 }, legend: { orientation: "h", x: 0, y: 1, yanchor: "bottom" },
      xaxis: { title: { text: "expected cost per 1,000 requests (USD)" }, tickprefix: "$", tickangle: 0, automargin: true },
      yaxis: { title: { text: "quality on the evaluation set" }, automargin: true },
    });
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
      ["version", (v) => v.version, "name"], ["created", (v) => EM.whenShort(v.created_at), "", { title: (v) => EM.when(v.created_at) }],
      ["active", (v) => (v.active ? "active" : "")],
      ["promoted", (v) => EM.whenShort(v.promoted_at), "", { title: (v) => (v.promoted_at ? EM.when(v.promoted_at) : "") }],
      ["", () => ""],
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
      ["when", (e) => EM.whenShort(e.created_at), "", { title: (e) => EM.when(e.created_at) }], ["policy", (e) => e.policy],
      ["action", (e) => e.action], ["version", (e) => e.version || "–", "name", { width: "18%" }],
      ["previous", (e) => e.previous_version || "–", "name", { width: "18%" }],
      ["by", (e) => e.actor || "–"], ["why", (e) => e.reason || "", "wrap", { width: "40%" }],
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
      EM.plot("chart-curve", [], {}, { empty: `No cost–quality curve: ${state.policies.tuning_unavailable}` });
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

// Own experts tab: the autolearn job (stage in words, calibration progress while it runs, polled
// until the stage is final), the served policy with the gate's verdict and comparison, and the
// calibration matrix per expert and per skill × expert (a heat-coloured table).
(function () {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 3000;
  const FINAL = new Set(["serving", "refused", "failed", "stopped", "off"]);
  const state = { timer: null, stage: null, served: null };

  // Per stage: the badge's tone and a sentence on what happens now (j: the job, a: the active policy).
  const STAGES = {
    waiting: ["run", (j) => `The job starts in a moment: the proxy takes its first requests before it begins.`],
    calibrating: ["run", (j, a) => `Asking ${names(j.experts)} the graded prompts and grading every answer. The proxy keeps serving ${a} meanwhile.`],
    choosing: ["run", (j) => `Cross-validating the candidate policies on the calibration matrix's train rows: the best is trained.`],
    training: ["run", (j) => `Training ${j.policy} on how the experts answered (the calibration matrix below).`],
    gating: ["run", (j, a) => `Comparing the trained ${j.policy} with ${a} on held-out prompts: it is swapped in only if it is not worse.`],
    serving: ["good", (j, a) => a === j.policy
      ? `${j.policy} passed the gate and routes every new request, learned from your experts' own answers.`
      : `${j.policy} passed the gate; the proxy has since been switched to ${a}.`],
    refused: ["warn", (j, a) => `The trained ${j.policy} did not beat ${a} on the held-out prompts, so ${a} keeps routing. Calibrating more prompts retries at the next start.`],
    failed: ["bad", (j, a) => `The job stopped on an error; the proxy keeps serving ${a}. The next start resumes from the answers already graded.`],
    stopped: ["", () => `The job stopped with the proxy; the next start resumes the calibration where it stopped.`],
    off: ["", (j, a) => `Autolearn does not run in this process, so the proxy routes with the configured policy (${a}). ` +
      `To learn from your experts, set autolearn: {enabled: true} in the config and restart; with several replicas, ` +
      `run it on one (EXPERTMUX_AUTOLEARN=false on the others).`],
  };
  const METRICS = {
    aiq: "area under the cost–quality frontier over the λ sweep (what the gate decides on)",
    quality_at_best_cost: "quality reached at no more than the cost of the best single expert",
    gap_closed: "share of the gap between the best single expert and a perfect per-prompt oracle",
    cost_to_best_quality: "cost to reach the best single expert's quality, as a share of its cost",
    "quality@λ": "mean quality at the served λ", "utility@λ": "quality − λ × cost at the served λ",
    "cost@λ": "mean cost per request at the served λ",
  };

  function names(list) {
    if (!list || !list.length) return "the experts";
    return list.length > 4 ? `${list.slice(0, 3).join(", ")} and ${list.length - 3} more experts` : list.join(", ");
  }
  // "8 s", "4 min 10 s", "1 h 05 min"
  function dur(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }
  const epoch = (t) => (t ? new Date(t * 1000).toISOString() : null);
  const basename = (path) => String(path || "").split("/").filter(Boolean).pop() || String(path || "");
  function badge(el, text, tone) {
    el.textContent = text;
    el.className = "badge" + (tone ? " " + tone : "");
  }
  function fact(dl, term, value, title) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    if (title) dd.title = title;
    dl.append(dt, dd);
  }

  // ---- the job ----------------------------------------------------------------------------------
  function renderJob(job, active) {
    const [tone, explain] = STAGES[job.stage] || ["", () => ""];
    badge($("al-stage"), job.stage, tone);
    $("tab-experts").dataset.stage = job.stage;
    $("al-message").textContent = job.message || "";
    $("al-explain").textContent = explain(job, active);
    $("al-live").textContent = FINAL.has(job.stage)
      ? `as of ${new Date().toLocaleTimeString("en", { hourCycle: "h23" })}`
      : `live · checks every ${POLL_MS / 1000} s`;

    const p = job.progress || {};
    const running = job.stage === "calibrating" && p.total !== undefined;
    $("al-progress").hidden = !running;
    if (running) {
      const share = p.total ? p.done / p.total : 1;
      const bar = $("al-bar");
      bar.firstElementChild.style.width = `${(100 * share).toFixed(1)}%`;
      bar.setAttribute("aria-valuemax", String(p.total));
      bar.setAttribute("aria-valuenow", String(p.done));
      const eta = p.eta_s === null || p.eta_s === undefined ? "time left not known yet" : `about ${dur(p.eta_s)} left`;
      $("al-progress-text").textContent = [
        `${EM.count(p.done)} of ${EM.count(p.total)} answers graded (${EM.pct(share)})`, eta,
        p.failed ? `${EM.count(p.failed)} failed` : null,
        p.already ? `${EM.count(p.already)} from earlier runs` : null,
        `${EM.usdShort(p.spent_usd)} spent`, `${dur(p.elapsed_s)} elapsed`,
      ].filter(Boolean).join(" · ");
      const experts = Object.entries(p.experts || {}).map(([name, e]) => ({ name, ...e }));
      EM.table($("al-progress-table"), [
        ["expert", (e) => e.name, "name", { width: "30%" }],
        ["state", (e) => e.state],
        ["graded", (e) => `${EM.count(e.done)} / ${EM.count(e.total)}`, "num", { title: (e) => `${e.done} of ${e.total} answers graded` }],
        ["failed", (e) => EM.count(e.failed), "num", { title: (e) => e.last_error || "" }],
        ["answers/s", (e) => EM.num(e.cells_per_s, 1), "num", { head: "graded answers per second" }],
        ["tokens/s", (e) => EM.num(e.tokens_per_s, 1), "num", { head: "output tokens per second" }],
        ["spent", (e) => EM.usdShort(e.spent_usd), "num", { title: (e) => EM.usd(e.spent_usd, 6) }],
        ["left", (e) => dur(e.eta_s), "num", { head: "estimated time left" }],
      ], experts, { rowClass: (e) => (e.state === "down" || e.state === "budget" ? "error" : ""), empty: "no expert has started yet" });
    }

    const dl = $("al-facts");
    dl.replaceChildren();
    if (job.stage === "off") return;
    fact(dl, "learned policy", job.version ? `${job.policy} ${job.version}` : job.policy || "–", job.artifact || "");
    fact(dl, "experts", (job.experts || []).join(", ") || "–");
    if (!running && p.total !== undefined) {
      fact(dl, "calibration", `${EM.count(p.done)} answers graded` + (p.failed ? `, ${EM.count(p.failed)} failed` : "") +
        (p.already ? `, ${EM.count(p.already)} from earlier runs` : "") + ` in ${dur(p.elapsed_s)} for ${EM.usdShort(p.spent_usd)}`);
    }
    fact(dl, "calibration folder", job.matrix || "–");
    if (job.started_at) {
      const end = job.finished_at || Date.now() / 1000;
      fact(dl, job.finished_at ? "ran" : "running since", job.finished_at
        ? `${EM.whenShort(epoch(job.started_at))} – ${EM.whenShort(epoch(job.finished_at))} (${dur(end - job.started_at)})`
        : `${EM.whenShort(epoch(job.started_at))} (${dur(end - job.started_at)})`, EM.when(epoch(job.started_at)));
    }
  }

  // ---- the served policy and the gate -----------------------------------------------------------
  function metricValue(metric, x) {
    if (x === null || x === undefined) return "–";
    if (metric.startsWith("cost@")) return EM.usdShort(x);
    if (metric === "cost_to_best_quality") return EM.pct(x);
    return EM.num(x, 3);
  }
  function metricDelta(metric, d) {
    if (d === null || d === undefined) return "–";
    const sign = d > 0 ? "+" : d < 0 ? "−" : "±";
    return sign + metricValue(metric, Math.abs(d));
  }

  function renderGate(job, active) {
    $("al-served-policy").textContent = active;
    const served = state.served;
    const version = served && (served.versions || []).find((v) => v.policy === active && v.active);
    $("al-served-version").textContent = [version ? version.version : null,
      served ? `λ = ${served.lambda}` : null].filter(Boolean).join(" · ");

    const gate = job.gate;
    const verdict = $("al-verdict"), words = $("al-verdict-words");
    if (!gate) {
      badge(verdict, "not gated", "");
      words.textContent = job.stage === "off" ? "autolearn is off" : job.stage === "failed" || job.stage === "stopped"
        ? "the job ended before the gate" : "the gate runs after training";
    } else if (gate.action === "promote") {
      badge(verdict, "promoted", "good");
      words.textContent = `${job.policy}${job.version ? " " + job.version : ""}` + (gate.previous ? ` replaced ${gate.previous}` : "");
    } else {
      badge(verdict, gate.action === "refuse" ? "refused" : gate.action || "refused", "warn");
      words.textContent = `${active} kept`;
    }
    $("al-reason").textContent = gate && gate.reason ? gate.reason : "";
    $("al-reason").hidden = !(gate && gate.reason);

    const rows = (gate && gate.rows) || [];
    const details = (gate && gate.details) || {};
    const inc = String(details.incumbent_artifact || "");
    const incName = inc.startsWith("policy:") ? inc.slice(7) : "incumbent";
    const table = $("al-gate-table");
    table.hidden = !rows.length;
    EM.table(table, [
      ["metric", (r) => r.metric, "name", { width: "40%", title: (r) => `${r.metric}: ${METRICS[r.metric] || ""}` +
        (r.higher_is_better === false ? " (lower is better)" : "") }],
      [job.policy || "candidate", (r) => metricValue(r.metric, r.candidate), "num",
        { head: `the candidate: ${job.policy} ${job.version || ""}`.trim(), title: (r) => String(r.candidate ?? "–") }],
      [incName, (r) => metricValue(r.metric, r.incumbent), "num",
        { head: `the served policy it was compared with: ${inc || "incumbent"}`, title: (r) => String(r.incumbent ?? "–") }],
      ["delta", (r) => metricDelta(r.metric, r.delta), "num delta", { title: (r) => {
        if (r.delta === null || r.delta === undefined || r.delta === 0) return "no difference";
        return (r.delta > 0) === (r.higher_is_better !== false) ? "better than the served policy" : "worse than the served policy";
      } }],
    ], rows);
    table.querySelectorAll("tbody tr").forEach((tr, i) => {
      const r = rows[i];
      if (!r || r.delta === null || r.delta === undefined || r.delta === 0) return;
      tr.lastElementChild.classList.add((r.delta > 0) === (r.higher_is_better !== false) ? "better" : "worse");
    });
    const parts = [];
    if (details.split) parts.push(`on the ${details.split} split of ${basename(details.data)}`);
    if (details.n_queries) parts.push(`${EM.count(details.n_queries)} held-out prompts`);
    if (details.lambda !== undefined) parts.push(`at λ = ${details.lambda}`);
    if (inc) parts.push(`against ${inc}`);
    $("al-gate-details").textContent = parts.length ? "Compared " + parts.join(", ") + "." : "";
    renderCandidates(job);
  }

  // Which learned policy was trained: every candidate's cross-validated aiq on the train rows.
  function renderCandidates(job) {
    const rows = job.candidates || [];
    const table = $("al-candidates-table");
    table.hidden = !rows.length;
    $("al-candidates-note").hidden = !rows.length;
    const params = (r) => Object.entries(r.params || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    EM.table(table, [
      ["candidate", (r) => r.policy + (params(r) ? ` (${params(r)})` : ""), "name"],
      ["cv aiq", (r) => (r.cv_aiq === undefined ? "–" : r.cv_aiq.toFixed(4)), "num", { title: (r) => r.error || "" }],
      ["", (r) => (r.error ? "could not be fitted" : r.chosen ? "trained" : ""), "name"],
    ], rows);
  }

  // ---- the calibration matrix -------------------------------------------------------------------
  // Light to mid blue by quality; light enough at 1 for the dark figures to stay readable.
  function heat(q) {
    const a = 0.04 + 0.6 * Math.max(0, Math.min(1, q));
    return { background: `rgba(47, 111, 222, ${a.toFixed(3)})` };
  }

  function emptyMatrix(job) {
    if (job.stage === "off") return "No calibration matrix: autolearn is off and no tuning data set is configured. " +
      "Turn autolearn on, or run expertmux calibrate, to grade your experts.";
    if (job.stage === "failed" || job.stage === "stopped") return "No calibration matrix: the job ended before the first calibration was written.";
    return `No calibration matrix yet: it appears here once the experts' answers are graded` +
      (job.matrix ? ` (written to ${job.matrix}).` : ".");
  }

  function renderMatrix(m, job) {
    const empty = emptyMatrix(job);
    const experts = m ? m.experts : [];
    const skills = m ? m.skills : [];
    const best = {};  // skill -> the experts of its highest quality (all of them on a tie)
    for (const s of skills) {
      const q = (e) => (m.per_skill[s][e] ? m.per_skill[s][e].quality : null);
      const graded = experts.filter((e) => q(e) !== null && q(e) !== undefined);
      const top = Math.max(...graded.map(q));
      best[s] = new Set(graded.filter((e) => q(e) === top));
    }
    const bestOn = (e) => skills.filter((s) => best[s].has(e));
    $("al-matrix-summary").textContent = m
      ? `${EM.count(m.rows)} prompts, ${skills.length} skills` +
        (Object.keys(m.splits || {}).length ? ` (${Object.entries(m.splits).map(([k, v]) => `${k} ${EM.count(v)}`).join(", ")})` : "") +
        ` · ${basename(m.folder)}`
      : "";
    $("al-matrix-summary").title = m ? m.folder : "";
    EM.table($("al-matrix-experts"), [
      ["expert", (e) => e, "name"],
      ["quality", (e) => EM.num(m.overall[e].quality), "num", { head: "mean graded quality over all prompts (0–1)" }],
      ["graded", (e) => EM.count(m.overall[e].graded), "num", { head: "prompts graded", title: (e) => `${m.overall[e].graded} of ${m.rows}` }],
      ["cost/req", (e) => EM.usdShort(m.overall[e].cost_usd), "num", { head: "mean cost per request", title: (e) => EM.usd(m.overall[e].cost_usd, 8) }],
      ["latency", (e) => EM.msShort(m.overall[e].latency_s === null ? null : m.overall[e].latency_s * 1000), "num",
        { head: "mean latency per request" }],
      ["best on", (e) => `${bestOn(e).length} ${bestOn(e).length === 1 ? "skill" : "skills"}`, "num", { head: "skills where this expert has the highest quality (ties count for each)",
        title: (e) => bestOn(e).join(", ") || "none" }],
    ], experts, { empty: m ? "" : empty.split(":")[0] + " (see below)." });

    const table = $("al-heat");
    $("al-heat-empty").hidden = !!m;
    $("al-heat-empty").firstElementChild.textContent = m ? "" : empty;
    table.hidden = !m;
    $("al-heat-legend").hidden = !m;
    if (!m) { table.replaceChildren(); return; }
    const rows = [{ skill: "all skills", cells: m.overall, overall: true }, ...skills.map((s) => ({ skill: s, cells: m.per_skill[s] }))];
    const graded = (r) => Math.max(0, ...experts.map((e) => (r.cells[e] && r.cells[e].graded) || 0));
    const cellTip = (r, e) => {
      const c = r.cells[e];
      if (!c) return `${e} · ${r.skill}: not graded`;
      return `${e} on ${r.skill}: quality ${EM.num(c.quality)} over ${c.graded} graded · ${EM.usd(c.cost_usd, 6)} per request · ` +
        `${EM.msShort(c.latency_s === null || c.latency_s === undefined ? null : c.latency_s * 1000)}`;
    };
    EM.table(table, [
      ["skill", (r) => r.skill, "name", { width: "22%" }],
      ["prompts", (r) => EM.count(graded(r)), "num", { width: "5.5rem", head: "prompts graded for this skill" }],
      ...experts.map((e) => [e, (r) => (r.cells[e] && r.cells[e].quality !== null ? EM.num(r.cells[e].quality, 2) : "–"), "num heat",
        { head: e, title: (r) => cellTip(r, e) }]),
    ], rows, { rowClass: (r) => (r.overall ? "overall" : "") });
    table.querySelectorAll("tbody tr").forEach((tr, i) => {
      const r = rows[i];
      experts.forEach((e, j) => {
        const td = tr.cells[2 + j], c = r.cells[e];
        if (!td || !c || c.quality === null || c.quality === undefined) return;
        Object.assign(td.style, heat(c.quality));
        if (!r.overall && best[r.skill].has(e)) td.classList.add("best");
      });
    });
  }

  // ---- loading and polling ----------------------------------------------------------------------
  async function load() {
    const data = await EM.api("/autolearn");
    const stage = data.job.stage;
    if (stage !== state.stage || !state.served) {
      // the served policy changes with the stage (a swap): the header and the version follow
      state.served = await EM.refreshServing();
      state.stage = stage;
    }
    renderJob(data.job, data.active_policy);
    renderGate(data.job, data.active_policy);
    renderMatrix(data.matrix, data.job);
    return stage;
  }

  function schedule(stage) {
    clearTimeout(state.timer);
    state.timer = null;
    if (stage !== null && FINAL.has(stage)) return;
    state.timer = setTimeout(poll, POLL_MS);
  }

  // Polls while the tab is shown and the stage is not final; an error is shown and retried.
  async function poll() {
    if ($("tab-experts").hidden) { state.timer = null; return; }
    let stage = null;
    try { stage = await load(); EM.banner(""); } catch (err) { EM.banner(err.message); }
    schedule(stage);
  }

  async function show() {
    clearTimeout(state.timer);
    const tab = $("tab-experts");
    tab.setAttribute("aria-busy", "true");
    let stage = null;
    try { stage = await load(); } finally { tab.removeAttribute("aria-busy"); schedule(stage); }
  }

  EM.tabs.experts = { show };
})();
