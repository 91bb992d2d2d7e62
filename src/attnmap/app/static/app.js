// The app's page: text box, model choice, runs list, and the shared viewer module.
// Token text and user text are data: they reach the page only through textContent and
// option/button text, never through innerHTML or string-built markup.
import viewer from "/static/viewer.js";

const $ = (id) => document.getElementById(id);
const state = {
  models: [], current: null, cleanup: null, busy: false, model: null,
  facts: null,        // the run whose tokens the strip shows (run A of a diff view)
  diff: null,         // { a, b, position, mode } while the diff view is open
  derived: new Map(), // perturbed run id → { original, position, mode, token }
  seq: 0,             // the latest view asked for; older loads that finish late are dropped
};

// A minimal anywidget-style model: the viewer reads payload / options / layer_url from it.
function makeModel(values) {
  const handlers = new Map();
  return {
    get: (key) => values[key],
    set(key, value) {
      values[key] = value;
      for (const cb of handlers.get(`change:${key}`) || []) cb({ name: key, new: value });
    },
    on(event, cb) {
      if (!handlers.has(event)) handlers.set(event, []);
      handlers.get(event).push(cb);
    },
    off(event, cb) {
      if (!event) return handlers.clear();
      if (!cb) return handlers.delete(event);
      handlers.set(event, (handlers.get(event) || []).filter((f) => f !== cb));
    },
    save_changes() {},
    send() {},
  };
}

async function api(path, init) {
  const resp = await fetch(path, init);
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (typeof body.detail === "string") message = body.detail;
    } catch (_) {
      /* not JSON: keep the status line */
    }
    throw new Error(message);
  }
  return resp;
}

function say(text) {
  $("status").textContent = text;
}

function showError(err) {
  const box = $("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
}

function modelLabel(m) {
  const shape = m.layers ? ` · ${m.layers}×${m.heads}` : "";
  return `${m.label}${shape}`;
}

async function loadModels() {
  state.models = await (await api("/api/models")).json();
  const select = $("model");
  select.replaceChildren();
  for (const m of state.models) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = modelLabel(m);
    opt.title = m.id;
    select.append(opt);
  }
  updateTargetRow();
}

function updateTargetRow() {
  const m = state.models.find((x) => x.id === $("model").value);
  $("target-row").hidden = !(m && m.architecture === "encoder-decoder");
}

async function refreshRuns() {
  const runs = await (await api("/api/runs")).json();
  const list = $("runs");
  list.replaceChildren();
  $("no-runs").hidden = runs.length > 0;
  for (const r of runs) {
    const li = document.createElement("li");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.dataset.runId = r.id;
    btn.setAttribute("aria-current", String(r.id === state.current));
    btn.append(document.createTextNode(r.preview));
    const info = document.createElement("span");
    info.className = "app-run-info";
    const model = state.models.find((m) => m.id === r.model);
    info.textContent = `${model ? model.label : r.model} · ${r.n_tokens} tokens`;
    const from = state.derived.get(r.id);
    if (from) info.textContent += ` · ${describe(from)} of ${from.original}`;
    btn.append(info);
    btn.addEventListener("click", () => openRun(r.id).catch(showError));
    li.append(btn);
    list.append(li);
  }
}

function showFacts(facts) {
  const shape = facts.shape[facts.stacks[0]];  // [layer, head, query, key]
  const model = state.models.find((m) => m.id === facts.model);
  $("meta").textContent =
    `${model ? model.label : facts.model} · ${facts.tokens.length} tokens · ` +
    `${shape[0]} layers × ${shape[1]} heads · ${facts.stacks.join(", ")}`;
  const strip = $("tokens");
  strip.replaceChildren();
  closeActions(false);
  let first = true;
  facts.tokens.forEach((tok, i) => {
    const span = document.createElement("span");
    span.textContent = tok;
    span.dataset.pos = String(i);
    if (facts.special && facts.special[i]) {
      span.className = "app-special";
      span.title = `token ${i} (special: not part of the text)`;
    } else {
      // One tab stop for the whole strip; arrow keys move between tokens (roving tabindex).
      span.className = "app-tok";
      span.title = `token ${i}: click to remove or mask it and see what changes`;
      span.setAttribute("role", "button");
      span.setAttribute("aria-haspopup", "true");
      span.setAttribute("aria-expanded", "false");
      span.tabIndex = first ? 0 : -1;
      first = false;
    }
    strip.append(span);
  });
  $("token-hint").hidden = first;  // no token can be changed: say nothing about it
  markChanged();
}

function markChanged() {
  const pos = state.diff && state.diff.a === state.current ? state.diff.position : -1;
  for (const span of $("tokens").querySelectorAll("span[data-pos]")) {
    span.classList.toggle("app-changed", Number(span.dataset.pos) === pos);
  }
}

function tokenSpans() {
  return Array.from($("tokens").querySelectorAll("span.app-tok"));
}

function onStripKey(event) {
  const span = event.target.closest("span.app-tok");
  if (!span) return;
  const spans = tokenSpans();
  const at = spans.indexOf(span);
  let next = null;
  if (event.key === "ArrowRight" || event.key === "ArrowDown") next = spans[at + 1];
  else if (event.key === "ArrowLeft" || event.key === "ArrowUp") next = spans[at - 1];
  else if (event.key === "Home") next = spans[0];
  else if (event.key === "End") next = spans[spans.length - 1];
  else if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    openActions(span);
    return;
  } else return;
  event.preventDefault();
  if (next) focusToken(next);
}

function focusToken(span) {
  for (const s of tokenSpans()) s.tabIndex = s === span ? 0 : -1;
  span.focus();
}

function describe(p) {
  return `token ${p.position} «${p.token}» ${p.mode === "mask" ? "masked" : "removed"}`;
}

function openActions(span) {
  if (!state.facts) return;
  const pos = Number(span.dataset.pos);
  const box = $("token-actions");
  for (const s of tokenSpans()) s.setAttribute("aria-expanded", String(s === span));
  for (const s of tokenSpans()) s.classList.toggle("app-picked", s === span);
  focusToken(span);
  box.dataset.pos = String(pos);
  $("token-label").textContent = `token ${pos}: «${state.facts.tokens[pos]}»`;
  const mask = state.facts.mask_token;
  $("act-mask").hidden = !mask;
  $("act-mask").textContent = mask ? `Mask with ${mask}` : "Mask";
  box.hidden = false;
  $("act-remove").focus();
}

function closeActions(refocus) {
  const box = $("token-actions");
  const pos = box.dataset.pos;
  box.hidden = true;
  delete box.dataset.pos;
  for (const s of tokenSpans()) {
    s.setAttribute("aria-expanded", "false");
    s.classList.remove("app-picked");
  }
  if (refocus && pos !== undefined) {
    const span = $("tokens").querySelector(`span[data-pos="${Number(pos)}"]`);
    if (span) focusToken(span);
  }
}

async function perturb(mode) {
  const box = $("token-actions");
  if (state.busy || !state.facts || box.dataset.pos === undefined) return;
  const position = Number(box.dataset.pos);
  const original = state.facts.id;
  const token = state.facts.tokens[position];
  closeActions(false);
  state.busy = true;
  setBusy(true);
  showError(null);
  say(`running again with token ${position} ${mode === "mask" ? "masked" : "removed"}…`);
  try {
    const resp = await api(`/api/runs/${encodeURIComponent(original)}/perturb`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ position, mode }),
    });
    const out = await resp.json();
    const info = { original, position, mode, token };
    state.derived.set(out.run.id, info);
    if (out.diff_error) {
      // The new run exists but cannot be compared: show it alone and say why.
      await openRun(out.run.id);
      showError(`${describe(info)}: ${out.diff_error}`);
      return;
    }
    await openDiff(original, out.run.id, info);
  } catch (err) {
    say("");
    showError(err);
  } finally {
    state.busy = false;
    setBusy(false);
  }
}

function setBusy(on) {
  $("run").disabled = on;
  $("generate").disabled = on;
  $("act-remove").disabled = on;
  $("act-mask").disabled = on;
}

async function mountViewer(values) {
  if (state.cleanup) {
    try {
      state.cleanup();
    } catch (err) {
      console.warn("viewer cleanup failed", err);
    }
    state.cleanup = null;
  }
  const el = $("viewer");
  el.replaceChildren();
  const model = makeModel(values);
  const cleanup = await viewer.render({ model, el });
  state.cleanup = typeof cleanup === "function" ? cleanup : null;
  state.model = model;
}

async function openRun(runId) {
  const seq = ++state.seq;
  showError(null);
  say("loading…");
  const id = encodeURIComponent(runId);
  const [facts, payload] = await Promise.all([
    api(`/api/runs/${id}`).then((r) => r.json()),
    api(`/api/runs/${id}/payload`).then((r) => r.arrayBuffer()),
  ]);
  if (seq !== state.seq) return;  // another view was asked for meanwhile
  state.current = runId;
  state.facts = facts;
  state.diff = null;
  showDiffBar(null);
  showFacts(facts);
  fillForm(facts);
  // Runs that keep queries and keys (long inputs) draw from tiles the server computes.
  const tile_url = facts.storage === "qk" ? `/api/runs/${id}/tiles` : "";
  await mountViewer({ payload, options: {}, layer_url: `/api/runs/${id}/layers`, tile_url });
  say(`run ${runId}`);
  await refreshRuns();
  if (seq !== state.seq) return;
  settled({ run: runId, view: "run" });
}

// The form shows the open run's text, model and decoder text, ready to edit and run again.
function fillForm(facts) {
  $("text").value = facts.text;
  if (state.models.some((m) => m.id === facts.model)) $("model").value = facts.model;
  updateTargetRow();
  $("target").value = facts.target_text || "";
}

// The page's view is complete (viewer mounted, runs list refreshed): only now say which run
// and view are shown, so that scripts (and tests) that wait on these flags read a whole page.
function settled({ run, view, diff }) {
  const data = document.body.dataset;
  data.run = run;
  data.view = view;
  if (diff) data.diff = diff;
  else delete data.diff;
}

// Run A (the original) against run B (the perturbed one): the viewer's diff mode on the two
// runs cut to their aligned tokens, as the standalone diff page builds it.
async function openDiff(a, b, info) {
  const seq = ++state.seq;
  say("comparing…");
  const base = `/api/diff/${encodeURIComponent(a)}/${encodeURIComponent(b)}`;
  const [d, pa, pb, facts] = await Promise.all([
    api(base).then((r) => r.json()),
    api(`${base}/payload/a`).then((r) => r.arrayBuffer()),
    api(`${base}/payload/b`).then((r) => r.arrayBuffer()),
    state.facts && state.facts.id === a
      ? state.facts : api(`/api/runs/${encodeURIComponent(a)}`).then((r) => r.json()),
  ]);
  if (seq !== state.seq) return;
  const top = d.ranking[0] || { layer: 0, head: 0 };
  state.current = a;
  state.facts = facts;
  state.diff = { a, b, ...info };
  showFacts(facts);
  showDiffBar(d, info);
  await mountViewer({
    payload: pa,
    payload_b: pb,
    layer_url: "",  // both payloads carry every layer
    options: {
      stack: d.stack, layer: top.layer, head: top.head, view: "diff", metric: "js",
      diff: { ranking: d.ranking, aligned: d.aligned, a: d.labels.a, b: d.labels.b,
              stack: d.stack, changed: d.changed },
    },
  });
  // The action that led here is gone from the page: keep keyboard focus on the changed token.
  const changed = $("tokens").querySelector("span.app-changed");
  if (changed && (document.activeElement === document.body || !document.activeElement)) {
    focusToken(changed);
  }
  say(`A − B: ${describe(info)}`);
  await refreshRuns();
  if (seq !== state.seq) return;
  settled({ run: a, view: "diff", diff: `${a} ${b}` });
}

const RANKED = 5;  // heads listed beside the diff view

// Small changes are the usual case (one token of many): 0.0000 would read as "no change".
function num(x) {
  return x !== 0 && Math.abs(x) < 1e-3 ? x.toExponential(2) : x.toFixed(4);
}

function showDiffBar(d, info) {
  const bar = $("diff-bar");
  if (!d) {
    bar.hidden = true;
    $("ranking").replaceChildren();
    return;
  }
  const subs = (d.changed || []).filter(Boolean).length;
  $("diff-title").textContent =
    `A: run ${d.a} · B: run ${d.b}, ${describe(info)} · ${d.aligned} aligned tokens` +
    (subs ? `, ${subs} substituted` : "");
  const list = $("ranking");
  list.replaceChildren();
  for (const r of d.ranking.slice(0, RANKED)) {
    const li = document.createElement("li");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.dataset.layer = String(r.layer);
    btn.dataset.head = String(r.head);
    btn.textContent = `layer ${r.layer} · head ${r.head}: JS ${num(r.js)} · ` +
      `mean |A − B| ${num(r.mean_abs)}`;
    btn.addEventListener("click", () => showHead(r.layer, r.head));
    li.append(btn);
    list.append(li);
  }
  bar.hidden = false;
}

function showHead(layer, head) {
  if (!state.model) return;
  const options = state.model.get("options") || {};
  state.model.set("options", { ...options, layer, head, view: "diff" });
}

async function submit(event) {
  event.preventDefault();
  if (state.busy) return;
  const body = { text: $("text").value, model: $("model").value };
  const target = $("target").value;
  if (!$("target-row").hidden && target.trim()) body.target = target;
  state.busy = true;
  setBusy(true);
  showError(null);
  say("running…");
  try {
    const resp = await api("/api/runs", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const facts = await resp.json();
    await openRun(facts.id);
    say(`ran in ${facts.seconds.toFixed(2)} s`);
  } catch (err) {
    say("");
    showError(err);
  } finally {
    state.busy = false;
    setBusy(false);
  }
}

// Server-Sent Events from a fetch body: calls onEvent(name, data) for each whole event.
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// Generate: the model writes on the text; each token shows as it arrives, then the stored run
// opens in the viewer (with its step control). Stop ends it early (the run is still kept).
async function generate() {
  if (state.busy) return;
  const model = $("model").value;
  const body = { text: $("text").value, model,
                 max_new_tokens: Number($("max-new").value) };
  state.busy = true;
  setBusy(true);
  showError(null);
  const out = $("gen-out");
  out.replaceChildren();
  out.hidden = false;
  $("stop").hidden = false;
  $("stop").disabled = false;
  $("stop").dataset.model = model;
  say("generating…");
  let done = null;
  let failed = null;
  try {
    const resp = await api("/api/generate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    await readEvents(resp, (name, data) => {
      if (name === "token") {
        const span = document.createElement("span");
        span.textContent = data.token;  // token text is data
        span.dataset.step = String(data.step);
        out.append(span);
        say(`generating… ${data.step + 1} tokens`);
      } else if (name === "done") {
        done = data;
      } else if (name === "error") {
        failed = new Error(data.detail);
      }
    });
    if (failed) throw failed;
    if (!done) throw new Error("the generation ended without a result; see the server's output");
    $("stop").hidden = true;
    await openRun(done.id);
    const why = done.stopped === "cancelled" ? "stopped" : `ended: ${done.stopped}`;
    say(`generated ${done.generated} tokens in ${done.seconds.toFixed(2)} s (${why})`);
  } catch (err) {
    say("");
    showError(err);
  } finally {
    $("stop").hidden = true;
    state.busy = false;
    setBusy(false);
  }
}

async function stopGenerating() {
  $("stop").disabled = true;
  say("stopping…");
  try {
    await api("/api/generate/stop", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: $("stop").dataset.model || null }),
    });
  } catch (err) {
    showError(err);
  }
}

async function start() {
  $("run-form").addEventListener("submit", submit);
  $("generate").addEventListener("click", () => generate());
  $("stop").addEventListener("click", () => stopGenerating());
  $("model").addEventListener("change", updateTargetRow);
  $("tokens").addEventListener("click", (e) => {
    const span = e.target.closest("span.app-tok");
    if (span) openActions(span);
  });
  $("tokens").addEventListener("keydown", onStripKey);
  $("act-remove").addEventListener("click", () => perturb("remove"));
  $("act-mask").addEventListener("click", () => perturb("mask"));
  $("act-cancel").addEventListener("click", () => closeActions(true));
  $("token-actions").addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeActions(true);
  });
  $("diff-back").addEventListener("click", () => {
    if (state.diff) openRun(state.diff.a).catch(showError);
  });
  $("diff-open-b").addEventListener("click", () => {
    if (state.diff) openRun(state.diff.b).catch(showError);
  });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("run-form").requestSubmit();
  });
  try {
    await loadModels();
    $("run").disabled = false;
    $("generate").disabled = false;
    await refreshRuns();
    const newest = $("runs").querySelector("button");
    if (newest) await openRun(newest.dataset.runId);
  } catch (err) {
    showError(err);
  } finally {
    document.body.dataset.ready = "1";  // the first view is settled (tests wait for this)
  }
}

start();
