// The DOM around the canvas: the control bars, the selection panel and the relation panel.
// Token text goes in only as textContent and option text, never as markup.

import { value } from "./data.js";
import { BADGE_HELP, fmtScore, relationMass, wordTokens } from "./analysis.js";
import { choiceAt, rowSpan, stepCount, stepRow } from "./steps.js";

/** @typedef {import("./viewer.js").Viewer} Viewer */
/** @typedef {import("./types.js").StackInfo} StackInfo */

/**
 * @template {keyof HTMLElementTagNameMap} T
 * @param {T} tag
 * @param {string} [cls]
 * @param {string | null} [text]
 * @returns {HTMLElementTagNameMap[T]}
 */
export function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

/**
 * @typedef {object} Controls
 * @property {HTMLSelectElement} stack
 * @property {HTMLSelectElement} layer
 * @property {HTMLSelectElement} head
 * @property {HTMLSelectElement} view
 * @property {HTMLSelectElement} scale
 * @property {HTMLSelectElement} metric
 * @property {HTMLInputElement} ignore
 * @property {HTMLSelectElement} reduce  long runs: a block's pixel is its max or its sum
 * @property {HTMLButtonElement} zoomIn
 * @property {HTMLButtonElement} zoomOut
 * @property {HTMLButtonElement} fit
 * @property {HTMLButtonElement} png
 * @property {HTMLButtonElement} help
 * @property {HTMLSelectElement} score
 * @property {HTMLInputElement} min
 * @property {HTMLSelectElement} from
 * @property {HTMLSelectElement} to
 * @property {HTMLSelectElement} vs
 * @property {HTMLButtonElement} play
 * @property {HTMLButtonElement} prev
 * @property {HTMLButtonElement} next
 * @property {HTMLInputElement} step
 * @property {HTMLSpanElement} stepLabel
 * @property {HTMLInputElement} gen
 */

/**
 * @typedef {object} Dom
 * @property {HTMLDivElement} root
 * @property {Controls} ui
 * @property {HTMLDivElement} census
 * @property {HTMLDivElement} legend
 * @property {HTMLDivElement} help
 * @property {HTMLCanvasElement} canvas
 * @property {HTMLDivElement} tip
 * @property {HTMLCanvasElement} mini
 * @property {HTMLDivElement} info
 * @property {HTMLDivElement} relBox
 * @property {HTMLDivElement} relOut
 * @property {HTMLDivElement} status
 * @property {HTMLDivElement} steps  the step playback's bar (generated runs only)
 * @property {HTMLDivElement} stepInfo  what the model chose at the current step
 */

/** @returns {Dom} */
export function buildDom() {
  const root = h("div", "attnmap");
  root.tabIndex = 0;
  root.setAttribute("data-lm-suppress-shortcuts", "true"); // keep JupyterLab's j/k for us
  root.setAttribute("data-p-suppress-shortcuts", "true");
  const bar = h("div", "am-bar");
  /**
   * @template {HTMLElement} E
   * @param {HTMLElement} box
   * @param {string} label
   * @param {E} ctl
   * @returns {E}
   */
  const field = (box, label, ctl) => { const l = h("label", "am-field", label + " "); l.append(ctl); box.append(l); return ctl; };
  const stack = field(bar, "stack", h("select", "am-stack"));
  const layer = field(bar, "layer", h("select", "am-layer"));
  const head = field(bar, "head", h("select", "am-head"));
  const view = field(bar, "view", h("select", "am-view"));
  const scale = field(bar, "scale", h("select", "am-scale"));
  const metric = field(bar, "change", h("select", "am-metric"));
  for (const [v, t] of [["js", "JS divergence"], ["mean_abs", "mean |A − B|"]]) metric.add(new Option(t, v));
  for (const [v, t] of [["unit", "0 – 1"], ["head", "0 – head max"], ["log", "log"]]) scale.add(new Option(t, v));
  const reduce = field(bar, "blocks", h("select", "am-reduce"));
  for (const [v, t] of [["max", "max (peaks)"], ["sum", "sum (mass)"]]) reduce.add(new Option(t, v));
  reduce.title = "long runs: each pixel is a block of cells, shown by its largest weight or by its total";
  const ign = h("label", "am-field am-check");
  const ignore = h("input", "am-ignore");
  ignore.type = "checkbox";
  ign.append(ignore, document.createTextNode(" ignore first token"));
  bar.append(ign);
  /**
   * @param {string} cls
   * @param {string} text
   * @param {string} tip
   */
  const button = (cls, text, tip) => {
    const b = h("button", "am-btn " + cls, text);
    b.type = "button"; b.title = tip;
    bar.append(b);
    return b;
  };
  const zoomOut = button("am-zoom-out", "−", "zoom out (-)");
  const zoomIn = button("am-zoom-in", "+", "zoom in (+)");
  const fit = button("am-fit", "fit", "whole matrix (0)");
  const png = button("am-png", "PNG", "download this view as PNG");
  const helpBtn = button("am-help-btn", "?", "keys and mouse (?)");
  // Census: sort and filter head grids by a score (shown when the payload carries scores).
  const census = h("div", "am-bar am-census");
  const score = field(census, "score", h("select", "am-score"));
  const min = field(census, "at least", h("input", "am-min"));
  min.type = "number"; min.step = "0.05"; min.placeholder = "any";
  min.style.width = "5em";
  // What the badges on the thumbnails mean (shown with the head grids).
  const legend = h("div", "am-legend");
  legend.append(h("span", "am-k", "badges: each head's strongest pattern, as a share of its attention (0–1) ·"));
  for (const b of ["self", "prev", "next", "first", "dup", "ind", "spec"]) {
    const item = h("span", "am-legend-item");
    item.dataset.badge = b;
    item.append(h("b", "", b), document.createTextNode(" " + BADGE_HELP[b]));
    legend.append(item);
  }
  // Step playback of a generated run: play/pause, one token back/on, the slider, where it is,
  // and the switch to the generated part only.
  const steps = h("div", "am-bar am-steps");
  steps.hidden = true;
  /**
   * @param {string} cls
   * @param {string} text
   * @param {string} tip
   */
  const stepButton = (cls, text, tip) => {
    const b = h("button", "am-btn " + cls, text);
    b.type = "button"; b.title = tip;
    steps.append(b);
    return b;
  };
  const play = stepButton("am-play", "▶", "play the generation step by step");
  const prev = stepButton("am-step-prev", "‹", "one token back (,)");
  const step = h("input", "am-step");
  step.type = "range"; step.min = "0"; step.step = "1";
  step.setAttribute("aria-label", "generation step");
  steps.append(step);
  const next = stepButton("am-step-next", "›", "one token on (.)");
  const stepLabel = h("span", "am-step-label");
  steps.append(stepLabel);
  const genBox = h("label", "am-field am-check");
  const gen = h("input", "am-gen");
  gen.type = "checkbox";
  genBox.append(gen, document.createTextNode(" generated tokens only"));
  genBox.title = "rows of the generated tokens only (columns: every token); the census and relations count those rows";
  steps.append(genBox);
  const main = h("div", "am-main");
  const stage = h("div", "am-stage");
  const canvas = h("canvas", "am-canvas");
  const tip = h("div", "am-tip");
  tip.hidden = true;
  const help = helpBox();
  stage.append(canvas, tip, help);
  const side = h("div", "am-side");
  const mini = h("canvas", "am-mini");
  const info = h("div", "am-info");
  const stepInfo = h("div", "am-step-info");
  stepInfo.hidden = true;
  // Relation panel: heads ranked by attention from one word to another (minus a third).
  const relBox = h("div", "am-rel");
  relBox.append(h("div", "am-k", "relation: heads ranked by to − vs"));
  const from = field(relBox, "from", h("select", "am-rel-from"));
  const to = field(relBox, "to", h("select", "am-rel-to"));
  const vs = field(relBox, "vs", h("select", "am-rel-vs"));
  const relOut = h("div", "am-rel-out");
  relBox.append(relOut);
  side.append(mini, stepInfo, info, relBox);
  main.append(stage, side);
  const status = h("div", "am-status");
  root.append(bar, steps, census, legend, main, status);
  const ui = { stack, layer, head, view, scale, metric, ignore, reduce, zoomIn, zoomOut, fit, png, help: helpBtn, score, min, from, to, vs, play, prev, next, step, stepLabel, gen };
  return { root, ui, census, legend, help, canvas, tip, mini, info, relBox, relOut, status, steps, stepInfo };
}

/**
 * Replace a select's options. A loop into a fragment, not a spread into one call: a long
 * text has more words than a call may take arguments.
 * @param {HTMLSelectElement} select
 * @param {HTMLOptionElement[]} options
 */
function fill(select, options) {
  const frag = document.createDocumentFragment();
  for (const o of options) frag.appendChild(o);
  select.replaceChildren(frag);
}

// The keyboard and mouse help, opened with "?" (or its button) and closed with Esc.
const HELP = [
  ["← → or h l", "previous / next head"],
  ["↑ ↓ or k j", "previous / next layer"],
  ["+ −", "zoom in / out"],
  ["0", "fit: the whole matrix"],
  ["Ctrl / ⌘ + wheel", "zoom about the pointer"],
  ["wheel", "scroll the zoomed matrix (Shift + wheel: sideways); long runs: zoom"],
  ["Shift + arrows", "pan the zoomed matrix"],
  ["drag", "pan the zoomed matrix; drag on the minimap to jump"],
  ["click a label", "highlight that token's row and column"],
  [", .", "generated runs: one token back / on (step playback)"],
  ["Esc", "clear the highlight; close this help"],
  ["?", "open / close this help"],
];

function helpBox() {
  const box = h("div", "am-help");
  box.hidden = true;
  box.setAttribute("role", "dialog");
  box.setAttribute("aria-label", "keys and mouse");
  box.append(h("div", "am-help-title", "Keys and mouse"));
  const table = h("table");
  for (const [k, what] of HELP) {
    const tr = h("tr");
    tr.append(h("th", "", k), h("td", "", what));
    table.append(tr);
  }
  box.append(table, h("div", "am-k", "Esc or ? to close"));
  return box;
}

/**
 * Make the controls show the state. `full`: a new payload, so rebuild the option lists.
 * @param {Viewer} v
 * @param {boolean} full
 */
export function syncControls(v, full) {
  const u = v.dom.ui, st = v.st, info = v.stackInfo(), [L, H] = info.shape;
  const header = /** @type {import("./types.js").Header} */ (v.header);
  if (full) {
    const views = v.lod ? [["heatmap", "one head"]] : [["heatmap", "one head"], ["heads", "heads of layer"], ["layers", "layers × heads"]];
    /** @type {HTMLElement} */ (u.reduce.parentElement).hidden = !v.lod;
    if (v.diff) views.push(["diff", "A, B, A − B"], ["change", "change per head"]);
    fill(u.view, views.map(([val, t]) => new Option(t, val)));
    /** @type {HTMLElement} */ (u.metric.parentElement).hidden = !v.diff;
    const stacks = header.stacks.map((s) => s.name);
    fill(u.stack, stacks.map((s) => new Option(s, s)));
    /** @type {HTMLElement} */ (u.stack.parentElement).hidden = stacks.length < 2;
    /** @param {boolean} none */
    const wordOpts = (none) => [...(none ? [new Option("(none)", "")] : []), ...v.words.map((w, i) => new Option(w.spec, String(i)))];
    fill(u.from, wordOpts(false));
    fill(u.to, wordOpts(false));
    fill(u.vs, wordOpts(true));
    if (v.words.length > 1) u.to.value = "1";
  }
  u.stack.value = st.stack;
  if (u.layer.options.length !== L) fill(u.layer, Array.from({ length: L }, (_, i) => new Option(String(i), String(i))));
  if (u.head.options.length !== H + 2) {
    fill(u.head, [...Array.from({ length: H }, (_, i) => new Option(String(i), String(i))), new Option("mean of heads", "mean"), new Option("max of heads", "max")]);
  }
  u.layer.value = String(st.layer);
  u.head.value = String(st.head);
  u.view.value = st.view;
  u.scale.value = st.scale;
  u.metric.value = st.metric;
  u.ignore.checked = st.ignoreFirst;
  u.reduce.value = st.reduce;
  for (const b of [u.zoomIn, u.zoomOut, u.fit]) b.disabled = st.view !== "heatmap";
  const sc = info.scores;
  v.dom.census.hidden = !sc;
  v.dom.legend.hidden = !sc || !["heads", "layers"].includes(st.view);
  if (sc && u.score.options.length !== sc.names.length + 1) {
    u.score.replaceChildren(new Option("top score", ""), ...sc.names.map((n) => new Option(n, n)));
  }
  if (sc) u.score.value = st.score || "";
  v.dom.relBox.hidden = !relationStack(v) || v.words.length === 0;
  syncSteps(v);
}

/**
 * The step bar and the step panel: shown for a stack with generated rows.
 * @param {Viewer} v
 */
function syncSteps(v) {
  const u = v.dom.ui, st = v.st, info = v.stackInfo();
  const n = v.header ? stepCount(v.header) : 0, span = rowSpan(info);
  v.dom.steps.hidden = !n || !span;
  if (!n || !span) { v.dom.stepInfo.hidden = true; return; }
  u.step.max = String(n);
  u.step.value = String(st.step ?? n);
  u.gen.checked = st.gen;
  u.stepLabel.textContent = st.step === null ? `${n} tokens generated` : `step ${st.step} of ${n}`;
  u.prev.disabled = st.step === 0;
  u.next.disabled = st.step === null || st.step >= n;
  showStep(v);
}

/**
 * The step panel: the token written at this step, and what the model chose it from (top-k,
 * the chosen token's probability, rank and entropy). Token text only as textContent.
 * @param {Viewer} v
 */
function showStep(v) {
  const st = v.st, info = v.stackInfo(), box = v.dom.stepInfo, span = rowSpan(info);
  box.replaceChildren();
  box.hidden = st.step === null || !span;
  if (st.step === null || !span) return;
  const n = v.header ? stepCount(v.header) : 0;
  box.append(h("div", "am-k", `step ${st.step} of ${n}`));
  const q = stepRow(st, info);
  if (q === null) { box.append(h("div", "am-step-new", `the prompt: ${span.first} tokens`)); return; }
  const head = h("div", "am-sel am-step-new");
  head.append(h("span", "am-k", `wrote (row ${q}) `), h("span", "am-tok", info.query_tokens[q]));
  box.append(head);
  const c = choiceAt(v.predictions(), q);
  if (!c || !c.next) return;
  const nx = c.next, facts = [`p ${nx.p.toFixed(3)}`, `rank ${nx.rank}`];
  if (typeof c.entropy === "number" && Number.isFinite(c.entropy)) facts.push(`entropy ${fmtScore(c.entropy)}`);
  const chosen = h("div", "am-step-chosen" + (nx.rank !== 1 ? " am-pred-miss" : ""));
  chosen.append(h("span", "am-k", "chosen: "), h("span", "am-num", facts.join(" · ")));
  box.append(chosen);
  const list = h("div", "am-list am-pred am-step-top");
  list.append(h("div", "am-k", "it was chosen from, top-k"));
  for (const t of c.top) {
    const r = h("div", "am-row am-pred-row");
    if (t.token === nx.token) r.classList.add("am-pred-true");
    r.append(h("span", "am-tok", t.token), h("span", "am-num", t.p.toFixed(3)));
    list.append(r);
  }
  box.append(list);
}

/**
 * The selection panel: the selected token's strongest keys and queries, and its predictions.
 * @param {Viewer} v
 */
export function showInfo(v) {
  const sel = v.st.sel, d = v.current(), info = v.stackInfo(), box = v.dom.info;
  box.replaceChildren();
  if (!sel || !d) return;
  /** @param {[number, number | null][]} pairs */
  const top = (pairs) => /** @type {[number, number][]} */ (pairs.filter((p) => p[1] !== null)).sort((a, b) => b[1] - a[1]).slice(0, 5);
  /**
   * @param {string} titleText
   * @param {[number, number][]} rows
   * @param {string[]} toks
   */
  const list = (titleText, rows, toks) => {
    const el = h("div", "am-list");
    el.append(h("div", "am-k", titleText));
    for (const [i, x] of rows) { const r = h("div", "am-row"); r.append(h("span", "am-tok", toks[i]), h("span", "am-num", x.toFixed(3))); el.append(r); }
    box.append(el);
  };
  const head = h("div", "am-sel");
  if (sel.q != null) head.append(h("span", "am-k", `query ${sel.q} `), h("span", "am-tok", info.query_tokens[sel.q]));
  if (sel.k != null && sel.k !== sel.q) head.append(h("span", "am-k", ` key ${sel.k} `), h("span", "am-tok", info.key_tokens[sel.k]));
  box.append(head);
  const q = sel.q, k = sel.k;
  if (q != null) list("attends most to", top(Array.from({ length: d.k }, (_, j) => [j, value(d, q, j)])), info.key_tokens);
  if (k != null) list("attended most by", top(Array.from({ length: d.q }, (_, i) => [i, value(d, i, k)])), info.query_tokens);
  const preds = v.predictions();
  const pred = q != null && preds ? preds.get(q) : null;
  if (pred) {
    const el = h("div", "am-list am-pred");
    el.append(h("div", "am-k", v.header?.predictions_kind === "masked" ? "fill-in, top-k" : "next token, top-k"));
    for (const t of pred.top) {
      const r = h("div", "am-row am-pred-row");
      if (pred.next && t.token === pred.next.token) r.classList.add("am-pred-true");
      r.append(h("span", "am-tok", t.token), h("span", "am-num", t.p.toFixed(3)));
      el.append(r);
    }
    if (pred.next) {
      const r = h("div", "am-pred-next" + (pred.next.rank !== 1 ? " am-pred-miss" : ""));
      r.append(h("span", "am-k", "actual "), h("span", "am-tok", pred.next.token),
        h("span", "am-num", ` p ${pred.next.p.toFixed(3)} · rank ${pred.next.rank}`));
      el.append(r);
    }
    box.append(el);
  }
}

// --- relation panel ---
/**
 * The stack the relation panel works on (self-attention with token offsets), or null.
 * @param {Viewer} v
 * @returns {StackInfo | null}
 */
export function relationStack(v) {
  const info = v.stackInfo();
  return ["self", "encoder"].includes(info.name) && info.query_offsets ? info : null;
}

/**
 * @typedef {{ layer: number, head: number, to: number, vs?: number, diff?: number }} RelHead
 * @typedef {{ stack: string, from: string, to: string, vs: string | null, ranked_by: string, heads: RelHead[], from_tokens: number[], to_tokens: number[], rows: "all" | "generated" }} Relation
 */

/** @type {WeakMap<Viewer, { seq: number, relation: Relation | null }>} */
const REL = new WeakMap();

/** @param {Viewer} v */
export function resetRelation(v) {
  REL.set(v, { seq: 0, relation: null });
  v.dom.relOut.replaceChildren();
}

/**
 * Rank every head by attention from the "from" word to the "to" word (minus "vs").
 * @param {Viewer} v
 * @returns {Promise<Relation | null>}
 */
export async function relate(v) {
  const info = relationStack(v), u = v.dom.ui, mem = REL.get(v) || { seq: 0, relation: null };
  REL.set(v, mem);
  if (!info || !info.query_offsets) return null;
  const offsets = info.query_offsets;
  /** @param {HTMLSelectElement} sel */
  const pick = (sel) => (sel.value === "" ? null : v.words[+sel.value] ?? null);
  const from = pick(u.from), to = pick(u.to), vs = pick(u.vs);
  if (!from || !to) return null;
  /** @param {import("./analysis.js").Word} w */
  const toks = (w) => wordTokens(offsets, w.s, w.e);
  const span = v.st.gen ? rowSpan(info) : null;
  // The generated-only switch: the "from" word's generated tokens only.
  const src = toks(from).filter((i) => !span || (i >= span.first && i < span.end)), dst = toks(to), alt = vs ? toks(vs) : null;
  const seq = ++mem.seq;
  if (!src.length) {
    mem.relation = null;
    v.dom.relOut.replaceChildren(h("div", "am-k am-rel-none", `“${from.spec}” has no generated token; pick a word the model wrote, or turn off “generated tokens only”`));
    return null;
  }
  const [L] = info.shape;
  /** @type {RelHead[]} */
  const heads = [];
  for (let li = 0; li < L; li++) {
    let layer;
    try { layer = await v.layer(info.name, li); } catch (err) { v.fail(err); return null; }
    if (seq !== mem.seq) return null; // a newer query took over
    const a = relationMass(layer, src, dst), b = alt ? relationMass(layer, src, alt) : null;
    for (let hd = 0; hd < layer.heads; hd++) {
      /** @type {RelHead} */
      const r = { layer: li, head: hd, to: a[hd] };
      if (b) { r.vs = b[hd]; r.diff = a[hd] - b[hd]; }
      heads.push(r);
    }
  }
  const key = alt ? "diff" : "to";
  heads.sort((p, q) => (q[key] ?? 0) - (p[key] ?? 0) || p.layer - q.layer || p.head - q.head);
  mem.relation = { stack: info.name, from: from.spec, to: to.spec, vs: vs ? vs.spec : null, ranked_by: alt ? "to - vs" : "to", heads, from_tokens: src, to_tokens: dst, rows: span ? "generated" : "all" };
  showRelation(v, mem.relation);
  return mem.relation;
}

/**
 * The ten best heads of a relation; a click opens one.
 * @param {Viewer} v
 * @param {Relation} r
 */
function showRelation(v, r) {
  const out = v.dom.relOut;
  out.replaceChildren();
  const head = h("div", "am-row am-rel-head");
  head.append(h("span", "", "head"), h("span", "", r.vs ? "to − vs" : "attention to"));
  out.append(head);
  /** @param {number[]} t @returns {[number, number]} */
  const span = (t) => [Math.min(...t), Math.max(...t) + 1];
  // The block of cells the number sums: the "from" word's rows × the "to" word's columns.
  const mark = r.from_tokens.length && r.to_tokens.length ? { q: span(r.from_tokens), k: span(r.to_tokens) } : null;
  for (const x of r.heads.slice(0, 10)) {
    const row = h("div", "am-row am-rel-row");
    row.dataset.layer = String(x.layer); row.dataset.head = String(x.head);
    row.title = `layer ${x.layer}, head ${x.head}: ` + (r.vs ? `to ${x.to.toFixed(3)} · vs ${(x.vs ?? 0).toFixed(3)}` : `to ${x.to.toFixed(3)}`);
    row.append(h("span", "am-k", `L${x.layer} H${x.head}`), h("span", "am-num", ((r.vs ? x.diff : x.to) ?? 0).toFixed(3)));
    v.listen(row, "click", () => v.set({ layer: x.layer, head: x.head, view: "heatmap", mark }));
    out.append(row);
  }
}
