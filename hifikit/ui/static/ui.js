// hifikit ui: the pages' behaviour. Every figure comes from the JSON API (hifikit/ui/app.py); the token
// travels in the cookie the server set when the page was opened with ?token=.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
};
const num = (x, d = 4) => (x === null || x === undefined) ? "" : Number(x).toPrecision(d);
const mib = (b) => (b === null || b === undefined) ? "" : (b / 1048576).toFixed(3);
const params = new URLSearchParams(location.search);

function say(text, isError = false) {
  const m = $("#message");
  m.hidden = !text; m.textContent = text || ""; m.className = "message" + (isError ? " error" : "");
}

async function call(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) { const e = new Error(data.error || `HTTP ${r.status}`); e.data = data; e.status = r.status; throw e; }
  return data;
}

function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function bar(p) { return el("progress", {max: 1, value: p}); }
function tps(row) { return Object.entries(row.tps || {}).map(([k, v]) => `${k} ${v[0].toFixed(1)}`).join(", "); }

function startPolling(fn, ms = 1000) {
  let stopped = false;
  const tick = async () => { if (stopped) return; try { if (await fn() === false) return; } catch (e) { say(e.message, true); }
                             setTimeout(tick, ms); };
  tick();
  return () => { stopped = true; };
}

// --- runs and models -------------------------------------------------------------------------------------

async function indexPage() {
  $("#open-model").addEventListener("submit", (ev) => {
    ev.preventDefault(); location.href = "/model?path=" + encodeURIComponent($("#model-path").value);
  });
  call("/api/models").then((d) => fill($("#models tbody"), d.models.map((m) => el("tr", {},
    el("td", {}, m.usable ? el("a", {href: "/model?path=" + encodeURIComponent(m.path)}, m.path) : m.path),
    el("td", {class: "num"}, mib(m.size)), el("td", {}, m.from))))).catch((e) => say(e.message, true));
  const selected = new Set();
  $("#compare-selected").onclick = () => { location.href = "/compare?runs=" + [...selected].join(","); };
  startPolling(async () => {
    const d = await call("/api/runs");
    fill($("#runs tbody"), d.runs.map((r) => el("tr", {"data-run": r.id, "data-status": r.status},
      el("td", {}, el("input", {type: "checkbox", checked: selected.has(r.id),
                                onchange: (ev) => ev.target.checked ? selected.add(r.id) : selected.delete(r.id)})),
      el("td", {}, el("a", {href: `/run/${r.id}`}, String(r.id))), el("td", {}, r.command),
      el("td", {}, r.model_name), el("td", {class: "status"}, r.status), el("td", {}, bar(r.progress)),
      el("td", {}, r.can_cancel ? el("button", {onclick: () => act(`/api/runs/${r.id}/cancel`)}, "Cancel") : "",
         r.can_resume ? el("button", {onclick: () => act(`/api/runs/${r.id}/resume`)}, "Resume") : ""))));
  }, 1500);
}

async function act(path) {
  try { await call(path, {}); say(""); } catch (e) { say(e.message, true); }
}

async function modelPage() {
  const path = params.get("path");
  let d;
  try { d = await call("/api/model?path=" + encodeURIComponent(path)); } catch (e) { say(e.message, true); return; }
  $("#model-title").textContent = d.path;
  $("#model-summary").textContent = `${d.architecture || "?"} · ${d.n_tensors} tensors · ` +
    `${(d.n_elements / 1e6).toFixed(2)} M weights · ${mib(d.size)} MiB · ${d.bpw.toFixed(3)} bits per weight`;
  if (d.grid.message) { const w = $("#grid-warning"); w.hidden = false; w.textContent = d.grid.message;
                        if (!d.grid.detected) w.className = "note"; }
  fill($("#tensors tbody"), d.tensors.map((t) => el("tr", {}, el("td", {}, t.name), el("td", {}, t.type),
    el("td", {}, t.shape.join(" × ")), el("td", {class: "num"}, String(t.bytes)),
    el("td", {class: "num"}, t.bpw.toFixed(3)), el("td", {}, t.on_grid || ""))));
  const showSweeps = (sweeps) => fill($("#sweeps tbody"), sweeps.map((r) => el("tr", {"data-run": r.id,
      "data-status": r.status}, el("td", {}, el("a", {href: `/run/${r.id}`}, String(r.id))), el("td", {}, r.mode),
    el("td", {class: "status"}, r.status), el("td", {}, bar(r.progress)),
    el("td", {}, r.status === "done" ? el("a", {class: "open-editor", href: `/editor?model=${encodeURIComponent(d.path)}&run=${r.id}`},
                                          "Open in the strategy editor") : ""))));
  showSweeps(d.sweeps);
  $("#sweep-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const job = await call("/api/sweep", {model: d.path, mode: f.get("mode"), types: f.get("types") || null,
                                            text: f.get("text") || null});
      say(`sweep started (pid ${job.pid})`);
    } catch (e) { say(e.message, true); }
  });
  startPolling(async () => { showSweeps((await call("/api/sweeps?model=" + encodeURIComponent(d.path))).sweeps); }, 2000);
}

// --- one run -----------------------------------------------------------------------------------------------

async function runPage() {
  const id = location.pathname.split("/").pop();
  let curvesShown = false;
  $("#cancel").onclick = () => act(`/api/runs/${id}/cancel`);
  $("#resume").onclick = () => act(`/api/runs/${id}/resume`);
  startPolling(async () => {
    const r = await call(`/api/runs/${id}`);
    $("#run-id").textContent = r.id; $("#run-command").textContent = r.command + " · " + r.model;
    $("#run-status").textContent = r.status; $("#run-progress").value = r.progress;
    $("#run-error").textContent = r.error || "";
    $("#cancel").hidden = !r.can_cancel; $("#resume").hidden = !r.can_resume;
    fill($("#steps tbody"), r.steps.map((s) => el("tr", {}, el("td", {}, s.name), el("td", {}, s.kind),
                                                         el("td", {}, s.status))));
    if (r.rows.length) {
      $("#rows-section").hidden = false;
      fill($("#rows tbody"), r.rows.map((x) => el("tr", {"data-role": x.role}, el("td", {}, x.label),
        el("td", {}, x.role), el("td", {class: "num"}, String(x.file_bytes ?? "")), el("td", {class: "num"}, num(x.bpw)),
        el("td", {class: "num kld"}, num(x.kld_mean, 5)), el("td", {class: "num"}, num(x.kld_error, 2)),
        el("td", {class: "num"}, num(x.kld_p999)), el("td", {class: "num"}, x.same_top_p === null ? "" : x.same_top_p.toFixed(2)),
        el("td", {}, tps(x)))));
    }
    fill($("#artifacts"), r.artifacts.map((a) => el("li", {}, el("a", {href: `/api/runs/${id}/artifacts/${a.index}`},
      a.path), ` (${a.kind || "file"}, ${a.size} bytes)`)));
    if (r.command === "analyze" && r.args && r.status === "done") {
      const a = $("#to-editor"); a.hidden = false;
      a.href = `/editor?model=${encodeURIComponent(r.args.model)}&run=${r.id}`;
    }
    if (r.has_curves && r.status === "done" && !curvesShown) { curvesShown = true; showCurves(id); }
    return r.status === "running" || r.status === "pending";
  });
}

async function showCurves(id) {
  const strategy = params.get("strategy");
  const d = await call(`/api/runs/${id}/curves` + (strategy ? "?strategy=" + encodeURIComponent(strategy) : ""));
  $("#curves-section").hidden = false;
  const sel = $("#curve-tensor");
  sel.replaceChildren(...d.tensors.map((t, i) => el("option", {value: i}, t.tensor)));
  const draw = () => {
    const t = d.tensors[sel.value];
    const pts = t.points;
    const traces = [{x: pts.map((p) => p.bpw), y: pts.map((p) => p.error), text: pts.map((p) => p.type),
      mode: "lines+markers+text", textposition: "top center", name: t.tensor,
      hovertemplate: "%{text}: %{x:.3f} bits per weight, error %{y:.4g}<br>%{customdata} bytes<extra></extra>",
      customdata: pts.map((p) => p.bytes)}];
    for (const [label, type, symbol] of [["knee", t.knee, "diamond"], ["chosen", t.chosen, "star"]]) {
      const p = pts.find((q) => q.type === type);
      if (p) traces.push({x: [p.bpw], y: [p.error], mode: "markers", name: `${label} (${type})`,
                          marker: {size: 14, symbol}});
    }
    Plotly.react("curve-plot", traces, {title: {text: `${t.tensor} (${d.mode})`}, xaxis: {title: {text: "bits per weight"}},
      yaxis: {title: {text: "error"}, type: "log"}, margin: {t: 40}});
  };
  sel.onchange = draw; draw();
  Plotly.react("overview-plot", d.tensors.map((t) => ({x: t.points.map((p) => p.bpw), y: t.points.map((p) => p.error),
    mode: "lines", name: t.tensor, text: t.points.map((p) => p.type),
    hovertemplate: `${t.tensor}<br>%{text}: %{x:.3f} bpw, %{y:.4g}<extra></extra>`})),
    {title: {text: "every tensor"}, xaxis: {title: {text: "bits per weight"}}, yaxis: {title: {text: "error"}, type: "log"},
     showlegend: false, margin: {t: 40}});
}

// --- the strategy editor -------------------------------------------------------------------------------------

const editor = {plan: null, pins: {}, busy: false};

function editorRequest() {
  const f = new FormData($("#target-form"));
  return {model: params.get("model"), run: params.get("run"), imatrix: params.get("imatrix"),
          target: {kind: f.get("kind"), value: f.get("value")}, max_slowdown: f.get("max_slowdown") || null,
          costs_machine: f.get("costs_machine") || null,
          pins: editor.pins, types: editor.plan ? Object.fromEntries(editor.plan.tensors.map((t) => [t.name, t.type])) : {}};
}

async function replan() {
  const t0 = performance.now();
  try {
    const p = await call("/api/plan", editorRequest());
    editor.plan = p; renderPlan(p, performance.now() - t0); say("");
  } catch (e) {
    say(e.message, true);
    const a = e.data && e.data.assessment;
    $("#check").replaceChildren(...(a ? [el("li", {class: "error"},
      `the edited file would be ${a.predicted_bytes} bytes (${mib(a.predicted_bytes)} MiB)`),
      ...a.errors.map((x) => el("li", {class: "error"}, x))] : []));
  }
}

function renderPlan(p, ms) {
  const items = [["predicted size", `${p.predicted_bytes} bytes`, `${p.predicted_mib.toFixed(3)} MiB`],
                 ["budget", `${p.budget} bytes`, `${p.slack} to spare`], ["bits per weight", p.bpw.toFixed(4), "whole file"],
                 [p.error_label, num(p.predicted_error, 5), `lower bound ${num(p.lower_bound, 5)}`]];
  if (p.speed) {
    const s = p.speed, ref = s.reference;
    items.push(["predicted speed", `pp${s.n_prompt} ${s.pp_tps.toFixed(1)} t/s · tg ${s.tg_tps.toFixed(2)} t/s`,
                ref ? `${(ref.pp_seconds / s.pp_seconds).toFixed(3)}× / ${(ref.tg_seconds / s.tg_seconds).toFixed(3)}× ${ref.ftype}` : ""]);
  }
  items.push(["re-planned in", `${ms.toFixed(0)} ms`, `${Object.keys(editor.pins).length} edits`]);
  $("#summary").replaceChildren(...items.map(([k, v, sub]) => el("div", {"data-key": k}, k, el("b", {class: "value"}, v), sub)));
  const c = p.check || {errors: [], warnings: []};
  $("#check").replaceChildren(...c.errors.map((x) => el("li", {class: "error"}, x)),
                              ...c.warnings.map((x) => el("li", {class: "warning"}, x)));
  fill($("#plan-table tbody"), p.tensors.map((t) => {
    const sel = el("select", {"data-tensor": t.name, onchange: (ev) => edit(t.name, ev.target.value)},
      ...t.candidates.map((o) => el("option", {value: o.type, selected: o.type === t.type},
                                    `${o.type} · ${o.bpw.toFixed(2)} bpw · ${num(o.error, 3)}`)));
    return el("tr", {class: editor.pins[t.name] ? "pinned" : "", "data-tensor": t.name}, el("td", {}, t.name),
      el("td", {}, t.shape.join(" × ")), el("td", {}, sel), el("td", {class: "num"}, String(t.bytes)),
      el("td", {class: "num"}, t.bpw.toFixed(3)), el("td", {class: "num"}, num(t.error, 4)),
      el("td", {}, editor.pins[t.name] ? "edited" : t.reason));
  }));
  // the seed's view: bits per weight chosen per layer, one line per tensor kind
  const kinds = {};
  for (const t of p.tensors) (kinds[t.kind] ||= []).push(t);
  const traces = Object.entries(kinds).map(([k, ts]) => {
    ts.sort((a, b) => (a.layer ?? -1) - (b.layer ?? -1));
    return {x: ts.map((t) => t.layer ?? -1), y: ts.map((t) => t.bpw), text: ts.map((t) => `${t.name}: ${t.type}`),
            name: k, mode: "lines+markers", hovertemplate: "%{text}<br>%{y:.2f} bits per weight<extra></extra>"};
  });
  Plotly.react("bpw-plot", traces, {title: {text: "bits per weight chosen, per layer (−1: outside the blocks)"},
    xaxis: {title: {text: "layer"}}, yaxis: {title: {text: "bits per weight"}}, margin: {t: 40}});
}

function edit(name, type) {
  if (!$("#target-form").replan.checked) {
    // a hand edit: every tensor keeps its type, this one changes
    for (const t of editor.plan.tensors) editor.pins[t.name] ||= t.type;
  }
  editor.pins[name] = type;
  replan();
}

async function editorPage() {
  const model = params.get("model");
  $("#strategy-path").value = model.replace(/\.gguf$/, "") + "-ui.yaml";
  $("#output-path").value = model.replace(/\.gguf$/, "") + "-ui.gguf";
  $("#target-form").addEventListener("submit", (ev) => { ev.preventDefault(); replan(); });
  $("#clear-pins").onclick = () => { editor.pins = {}; replan(); };
  $("#save").onclick = async () => {
    try { const r = await call("/api/strategy/save", {...editorRequest(), path: $("#strategy-path").value});
          say(`saved ${r.path} (${r.predicted_bytes} bytes predicted)`); } catch (e) { say(e.message, true); }
  };
  $("#load").onclick = async () => {
    try {
      const r = await call("/api/strategy/load", {path: $("#strategy-path").value, model});
      editor.pins = {};
      const planned = new Set((editor.plan ? editor.plan.tensors : []).map((t) => t.name));
      for (const [k, v] of Object.entries(r.types)) if (planned.has(k)) editor.pins[k] = v;
      await replan(); say(`loaded ${r.path}`);
    } catch (e) { say(e.message, true); }
  };
  $("#quantize").onclick = quantizeNow;
  call("/api/costs/machines").then((d) => $("#target-form select[name=costs_machine]").append(
    ...d.machines.map((m) => el("option", {value: m.fingerprint}, `${m.fingerprint} (${m.label})`))));
  say("opening the plan: the sweep, llama-quantize's dry run and the knees are read once per model and run");
  await replan();
}

async function quantizeNow() {
  const status = $("#quantize-status");
  try {
    const job = await call("/api/quantize", {model: params.get("model"), strategy: $("#strategy-path").value,
      output: $("#output-path").value, text: $("#text-path").value, ctx: $("#ctx").value,
      chunks: $("#chunks").value || null, bench: $("#bench").checked, imatrix: params.get("imatrix")});
    status.textContent = "started";
    startPolling(async () => {
      const j = await call(`/api/jobs/${job.key}`);
      if (!j.run_id) { status.textContent = j.alive ? "starting" : `ended (exit ${j.returncode})`; return j.alive; }
      const r = await call(`/api/runs/${j.run_id}`);
      const m = r.rows.find((x) => x.role !== "reference");
      status.replaceChildren(el("a", {href: `/run/${r.id}`, id: "quantize-run"}, `run ${r.id}`), ` ${r.status}`,
        m && m.kld_mean !== null ? el("span", {id: "quantize-kld"}, ` · mean KLD ${num(m.kld_mean, 5)} ± ${num(m.kld_error, 2)}`) : "");
      status.dataset.status = r.status;
      return r.status === "running" || r.status === "pending";
    }, 1000);
  } catch (e) { say(e.message, true); }
}

// --- compare ---------------------------------------------------------------------------------------------

async function comparePage() {
  const form = $("#compare-form");
  const show = async () => {
    const runs = new FormData(form).get("runs");
    if (!runs) return;
    try {
      const d = await call("/api/compare?runs=" + encodeURIComponent(runs));
      const link = $("#report-link"); link.hidden = false; link.href = "/api/report?runs=" + encodeURIComponent(runs);
      const rows = d.rows.filter((r) => r.kld_mean !== null && r.role !== "reference");
      const speed = (r) => { const v = Object.entries(r.tps || {}).find(([k]) => k.startsWith("tg")); return v ? v[1][0] : null; };
      Plotly.react("pareto-plot", [{x: rows.map((r) => r.file_bytes / 1048576), y: rows.map((r) => r.kld_mean),
        text: rows.map((r) => r.label), mode: rows.length > 8 ? "markers" : "markers+text", textposition: "top center",
        hovertemplate: "%{text}<br>%{x:.3f} MiB, mean KLD %{y:.5f}<extra></extra>",
        error_y: {type: "data", array: rows.map((r) => r.kld_error || 0)},
        marker: {size: 12, color: rows.map((r) => speed(r) ?? 0), colorscale: "Viridis", showscale: true,
                 colorbar: {title: {text: "tg t/s"}}}}],
        {title: {text: "mean KLD against size (colour: generation speed, 0 where not measured)"},
         xaxis: {title: {text: "file MiB"}}, yaxis: {title: {text: "mean KLD"}, type: "log"}, margin: {t: 40}});
      fill($("#compare-rows tbody"), d.rows.map((x) => el("tr", {}, el("td", {}, String(x.run_id)), el("td", {}, x.label),
        el("td", {}, x.role), el("td", {class: "num"}, x.file_bytes ? mib(x.file_bytes) : ""), el("td", {class: "num"}, num(x.bpw)),
        el("td", {class: "num"}, num(x.kld_mean, 5)), el("td", {class: "num"}, num(x.kld_error, 2)),
        el("td", {class: "num"}, num(x.kld_p999)), el("td", {class: "num"}, x.same_top_p === null ? "" : x.same_top_p.toFixed(2)),
        el("td", {}, tps(x)))));
    } catch (e) { say(e.message, true); }
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); show(); });
  show();
}

const PAGES = {index: indexPage, model: modelPage, run: runPage, editor: editorPage, compare: comparePage};
document.addEventListener("DOMContentLoaded", () => (PAGES[document.body.dataset.page] || (() => {}))());
