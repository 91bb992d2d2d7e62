// The app's page: text box, model choice, runs list, and the shared viewer module.
// Token text and user text are data: they reach the page only through textContent and
// option/button text, never through innerHTML or string-built markup.
import viewer from "/static/viewer.js";

const $ = (id) => document.getElementById(id);
const state = { models: [], current: null, cleanup: null, busy: false };

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
  facts.tokens.forEach((tok, i) => {
    const span = document.createElement("span");
    span.textContent = tok;
    span.title = `token ${i}`;
    if (facts.special && facts.special[i]) span.className = "app-special";
    strip.append(span);
  });
}

async function mountViewer(runId, payload) {
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
  const model = makeModel({
    payload,
    options: {},
    layer_url: `/api/runs/${encodeURIComponent(runId)}/layers`,
  });
  const cleanup = await viewer.render({ model, el });
  state.cleanup = typeof cleanup === "function" ? cleanup : null;
}

async function openRun(runId) {
  showError(null);
  say("loading…");
  const facts = await (await api(`/api/runs/${encodeURIComponent(runId)}`)).json();
  const payload = await (await api(`/api/runs/${encodeURIComponent(runId)}/payload`))
    .arrayBuffer();
  state.current = runId;
  showFacts(facts);
  await mountViewer(runId, payload);
  document.body.dataset.run = runId;  // lets scripts (and tests) see which run is shown
  say(`run ${runId}`);
  await refreshRuns();
}

async function submit(event) {
  event.preventDefault();
  if (state.busy) return;
  const body = { text: $("text").value, model: $("model").value };
  const target = $("target").value;
  if (!$("target-row").hidden && target.trim()) body.target = target;
  state.busy = true;
  $("run").disabled = true;
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
    $("run").disabled = false;
  }
}

async function start() {
  $("run-form").addEventListener("submit", submit);
  $("model").addEventListener("change", updateTargetRow);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("run-form").requestSubmit();
  });
  try {
    await loadModels();
    $("run").disabled = false;
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
