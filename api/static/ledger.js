// Ledger tab: filters, keyset pagination (newest first), one request's decision and attempts.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { cursors: [null], page: 0, loaded: false };

  function iso(localValue) { return localValue ? new Date(localValue).toISOString() : null; }

  function query(cursor) {
    const params = new URLSearchParams({ limit: "50" });
    const pairs = { since: iso($("lg-since").value), until: iso($("lg-until").value), expert: $("lg-expert").value,
      policy: $("lg-policy").value, status: $("lg-status").value, api_key: $("lg-key").value };
    for (const [k, v] of Object.entries(pairs)) if (v) params.set(k, v);
    if (cursor) params.set("cursor", cursor);
    return params.toString();
  }

  async function loadPage() {
    const page = await EM.api("/requests?" + query(state.cursors[state.page]));
    EM.table($("lg-table"), [
      ["time", (r) => EM.when(r.created_at)], ["status", (r) => r.status], ["expert", (r) => r.expert || "–", "name", { width: "25%" }],
      ["policy", (r) => r.policy || "–", "name", { width: "10%" }], ["key", (r) => r.api_key_id || "–", "name", { width: "8%" }],
      ["latency", (r) => EM.ms(r.latency_ms), "num"], ["cost", (r) => EM.usd(r.cost_usd, 6), "num"],
      ["tokens", (r) => `${r.prompt_tokens}+${r.completion_tokens}`, "num"], ["prompt", (r) => r.prompt || "", "name", { width: "40%" }],
    ], page.data, { onClick: (r) => EM.run(() => detail(r.id)) });
    $("lg-table").querySelectorAll("tbody tr").forEach((tr, i) => { if (page.data[i]) tr.dataset.id = page.data[i].id; });
    state.cursors[state.page + 1] = page.next_cursor;
    $("lg-next").disabled = !page.next_cursor;
    $("lg-prev").disabled = state.page === 0;
    $("lg-page").textContent = `page ${state.page + 1} · ${page.data.length} rows`;
  }

  function section(title) {
    const h = document.createElement("h3");
    h.textContent = title;
    return h;
  }

  async function detail(id) {
    const r = await EM.api("/requests/" + encodeURIComponent(id));
    const box = $("lg-detail");
    box.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = `request ${r.id}`;
    const facts = document.createElement("dl");
    const add = (k, v) => { const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = v; facts.append(dt, dd); };
    add("time", EM.when(r.created_at));
    add("status", `${r.status}${r.http_status ? " (" + r.http_status + ")" : ""}${r.error ? ": " + r.error : ""}`);
    add("model asked", r.requested_model || "–");
    add("policy", `${r.policy || "–"} ${r.policy_version || ""}`);
    add("expert", r.expert || "–");
    add("reason", (r.decision && r.decision.reason) || "–");
    add("cost / latency", `${EM.usd(r.cost_usd, 6)} · ${EM.ms(r.latency_ms)}`);
    add("API key", r.api_key_id || "–");
    const candidates = document.createElement("table");
    candidates.id = "lg-candidates";
    candidates.className = "data";
    EM.table(candidates, [
      ["candidate", (c) => c.expert + (c.chosen ? " (chosen)" : ""), "name"], ["score (utility)", (c) => EM.num(c.score, 4), "num"],
      ["propensity", (c) => EM.num(c.propensity, 4), "num"],
    ], r.candidates, { rowClass: (c) => (c.chosen ? "chosen" : "") });
    const attempts = document.createElement("table");
    attempts.id = "lg-attempts";
    attempts.className = "data";
    EM.table(attempts, [
      ["#", (a) => String(a.attempt_no)], ["expert", (a) => a.expert, "name"], ["status", (a) => a.status + (a.error ? ": " + a.error : ""), "wrap"],
      ["ttft", (a) => EM.ms(a.ttft_ms), "num"], ["latency", (a) => EM.ms(a.latency_ms), "num"],
      ["tokens", (a) => `${a.prompt_tokens}+${a.completion_tokens}`, "num"], ["cost", (a) => EM.usd(a.cost_usd, 6), "num"],
    ], r.attempts);
    const feedback = document.createElement("table");
    feedback.className = "data";
    EM.table(feedback, [["score", (f) => EM.num(f.score, 2), "num"], ["source", (f) => f.source], ["comment", (f) => f.comment || "", "wrap"],
      ["when", (f) => EM.when(f.created_at)]], r.feedback);
    const prompt = document.createElement("pre");
    prompt.textContent = r.prompt_text || (r.prompt_hash ? `(prompt stored as hash ${r.prompt_hash})` : "(prompt not stored)");
    box.append(h, facts, section("Decision"), candidates, section("Attempts"), attempts, section("Feedback"), feedback,
      section("Prompt"), prompt);
    box.hidden = false;
  }

  async function show() {
    if (state.loaded) return;
    const f = await EM.api("/filters");
    EM.select($("lg-expert"), f.experts, { any: true });
    EM.select($("lg-policy"), f.policies, { any: true });
    EM.select($("lg-status"), f.statuses, { any: true });
    EM.select($("lg-key"), f.api_keys, { any: true, label: (k) => `${k.name} (${k.prefix}…)`, value: (k) => k.id });
    state.loaded = true;
    await loadPage();
  }

  $("lg-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.cursors = [null];
    state.page = 0;
    $("lg-detail").hidden = true;
    EM.run(loadPage);
  });
  $("lg-next").addEventListener("click", () => { state.page += 1; EM.run(loadPage); });
  $("lg-prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); EM.run(loadPage); });
  EM.tabs.ledger = { show };
})();
