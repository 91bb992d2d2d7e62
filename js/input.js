// Input: controls, mouse, wheel and keys. Every handler turns an event into a state patch and
// hands it to Viewer.set; none writes the state itself.

import { M, labelStep, nearestLabel, zoomAbout } from "./layout.js";
import { value } from "./data.js";
import { stepHead } from "./state.js";
import { h, relate } from "./panels.js";
import { diffHead } from "./views/diff.js";
import { badgeWords } from "./analysis.js";
import { colSpan, moveStep, rowSpan, shownEnd, stepCount } from "./steps.js";
import { lodCell } from "./views/longmap.js";

/**
 * The tooltip of a long run's cell or block: the tokens, and the value the drawn tile holds
 * (exact, an upper bound for a cell no row kept, or masked).
 * @param {Viewer} v
 * @param {HTMLDivElement} tip
 * @param {(label: string, text: string, cls?: string) => HTMLDivElement} line
 * @param {import("./types.js").StackInfo} info
 * @param {number} q
 * @param {number} k
 * @returns {boolean}  false: nothing drawn there yet
 */
function lodTip(v, tip, line, info, q, k) {
  const c = lodCell(v, q, k);
  if (!c) return false;
  if (c.block === 1) {
    tip.append(line(`query ${q} `, info.query_tokens[q]), line(`key ${k} `, info.key_tokens[k]));
    const text = c.value === null ? "masked (this query cannot see this key)"
      : c.upper ? `attention < ${c.value.toFixed(4)} (below the cells this row keeps)` : `attention ${c.value.toFixed(4)}`;
    tip.append(h("div", "am-val", text));
    tip.dataset.q = String(q); tip.dataset.k = String(k);
  } else {
    const q1 = Math.min(info.shape[2], c.q0 + c.block) - 1, k1 = Math.min(info.shape[3], c.k0 + c.block) - 1;
    tip.append(line(`queries ${c.q0}–${q1} `, info.query_tokens[c.q0]), line(`keys ${c.k0}–${k1} `, info.key_tokens[c.k0]));
    const text = c.value === null ? "masked (no query here can see these keys)"
      : c.upper ? `${c.reduce} < ${c.value.toFixed(4)} (no kept cell in this block)` : `${c.reduce} of ${c.block}×${c.block} block ${c.value.toFixed(4)}`;
    tip.append(h("div", "am-val", text));
    tip.dataset.q = String(c.q0); tip.dataset.k = String(c.k0);
  }
  tip.dataset.block = String(c.block);
  tip.dataset.value = c.value === null ? "masked" : (c.upper ? "<" : "") + c.value.toFixed(4);
  tip.dataset.raw = c.value === null ? "masked" : String(c.value);
  return true;
}

/** @typedef {import("./viewer.js").Viewer} Viewer */
/** @typedef {import("./types.js").State} State */

/**
 * @typedef {{ kind: "cell", q: number, k: number }
 *   | { kind: "dcell", p: number, q: number, k: number }
 *   | { kind: "row", q: number } | { kind: "col", k: number } | { kind: "pred", q: number }
 *   | ({ kind: "thumb" } & import("./types.js").HitBox)} Hit
 */

/**
 * @param {Viewer} v
 * @param {MouseEvent} e
 */
function pos(v, e) {
  const r = v.dom.canvas.getBoundingClientRect();
  return { x: e.clientX - r.left, y: e.clientY - r.top };
}

/**
 * What is under canvas point (x, y): a cell, a row label, a column label or a thumbnail.
 * @param {Viewer} v
 * @param {number} x
 * @param {number} y
 * @returns {Hit | null}
 */
export function hit(v, x, y) {
  const st = v.st;
  if (!v.header) return null;
  if (st.view === "diff") {
    const g = v.dgeom;
    if (!g) return null;
    for (let p = 0; p < 3; p++) {
      const x0 = g.x0s[p];
      const y0 = g.y0s[p];
      if (x >= x0 && x < x0 + g.pw && y >= y0 && y < y0 + g.ph) return { kind: "dcell", p, q: Math.floor((y - y0) / g.cs), k: Math.floor((x - x0) / g.cs) };
    }
    return null;
  }
  if (st.view !== "heatmap") {
    const t = v.hits.find((b) => x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + b.h);
    return t ? { kind: "thumb", ...t } : null;
  }
  const g = v.geom(), info = v.stackInfo();
  const k = Math.floor(g.k0 + (x - g.x0) / g.cs), q = Math.floor(g.q0 + (y - g.y0) / g.cs);
  const inX = x >= g.x0 && x < g.x0 + g.pw, inY = y >= g.y0 && y < g.y0 + g.ph;
  // Step playback: tokens not written yet are blank and answer nothing.
  const qEnd = shownEnd(st, rowSpan(info), g.Q), kEnd = shownEnd(st, colSpan(info), g.K);
  if (inX && inY) return q < qEnd && k < kEnd ? { kind: "cell", q, k } : null;
  // On the labels, the token is the one whose label is nearest (labels are thinned and taller
  // than small cells), found from the geometry, as labels() placed them.
  const step = labelStep(g.cs), sel = st.sel;
  if (inY && x < g.x0 && x >= 0) {
    const r = nearestLabel(g.q0 + (y - g.y0) / g.cs, g.Q, step, sel?.q);
    return r < qEnd ? { kind: "row", q: r } : null;
  }
  if (inY && g.pred && x >= g.x0 + g.pw && x < g.x0 + g.pw + g.pred) {
    const p = nearestLabel(g.q0 + (y - g.y0) / g.cs, g.Q, step, sel?.q);
    return p < qEnd && v.predictions()?.has(p) ? { kind: "pred", q: p } : null;
  }
  if (inX && y < g.y0 && y >= M.top + M.axis) {
    const c = nearestLabel(g.k0 + (x - g.x0) / g.cs, g.K, step, sel?.k);
    return c < kEnd ? { kind: "col", k: c } : null;
  }
  return null;
}

/**
 * The tooltip for what is under the mouse.
 * @param {Viewer} v
 * @param {MouseEvent} e
 */
function hover(v, e) {
  if (v.drag) return;
  const { x, y } = pos(v, e), t = hit(v, x, y), tip = v.dom.tip;
  if (!t) { tip.hidden = true; return; }
  const info = v.stackInfo();
  /**
   * @param {string} label
   * @param {string} text
   * @param {string} [cls]
   */
  const line = (label, text, cls) => { const d = h("div", cls); d.append(h("span", "am-k", label), h("span", "am-tok", text)); return d; };
  tip.replaceChildren();
  delete tip.dataset.value;
  if (t.kind === "cell" && v.lod) {
    if (!lodTip(v, tip, line, info, t.q, t.k)) { tip.hidden = true; return; }
  } else if (t.kind === "cell") {
    const d = v.current(), val = d ? value(d, t.q, t.k) : null;
    tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), line(`key ${t.k} `, info.key_tokens[t.k]));
    tip.append(h("div", "am-val", val === null ? "masked (this query cannot see this key)" : `attention ${val.toFixed(4)}`));
    tip.dataset.q = String(t.q); tip.dataset.k = String(t.k); tip.dataset.value = val === null ? "masked" : val.toFixed(4);
  } else if (t.kind === "dcell") {
    const dd = diffHead(v), p = t.q * dd.k + t.k;
    const lb = v.dgeom ? v.dgeom.labels : info.query_tokens; // "keys→key" where substituted
    tip.append(line(`query ${t.q} `, lb[t.q] ?? info.query_tokens[t.q]), line(`key ${t.k} `, lb[t.k] ?? info.key_tokens[t.k]));
    if (Number.isNaN(dd.d[p])) tip.append(h("div", "am-val", "masked"));
    else tip.append(h("div", "am-val", `A ${dd.a[p].toFixed(4)} · B ${dd.b[p].toFixed(4)} · A − B ${dd.d[p] >= 0 ? "+" : ""}${dd.d[p].toFixed(4)}`));
    tip.dataset.value = Number.isNaN(dd.d[p]) ? "masked" : dd.d[p].toFixed(4);
  } else if (t.kind === "pred") {
    const r = v.predictions()?.get(t.q);
    if (!r) { tip.hidden = true; return; }
    tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), line("top-1 ", `${r.top[0].token}  p ${r.top[0].p.toFixed(3)}`));
    if (r.next) tip.append(line("actual next ", `${r.next.token}  p ${r.next.p.toFixed(3)} · rank ${r.next.rank}`));
    tip.append(h("div", "am-k", "click: top-k"));
  } else if (t.kind === "row") {
    tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), h("div", "am-k", "click: highlight"));
  } else if (t.kind === "col") {
    tip.append(line(`key ${t.k} `, info.key_tokens[t.k]), h("div", "am-k", "click: highlight"));
  } else {
    tip.append(h("div", "", `layer ${t.layer} · head ${t.head}`));
    if (t.badge) tip.append(h("div", "am-badge-words", badgeWords(t.badge)));
    tip.append(h("div", "am-k", "click to open"));
  }
  tip.hidden = false;
  const r = v.dom.canvas.getBoundingClientRect();
  tip.style.left = Math.min(x + 14, r.width - 180) + "px";
  tip.style.top = y + 16 + "px";
}

/**
 * Mouse down on the canvas: open a thumbnail, select a token, or start panning.
 * @param {Viewer} v
 * @param {MouseEvent} e
 */
function press(v, e) {
  if (e.button !== 0) return;
  v.dom.root.focus({ preventScroll: true });
  const start = pos(v, e), t = hit(v, start.x, start.y), st = v.st;
  if (!t) return;
  if (t.kind === "thumb") { v.set({ layer: t.layer, head: t.head, view: st.view === "change" ? "diff" : "heatmap" }); return; }
  if (t.kind === "dcell") return;
  if (t.kind === "cell") {
    const g = v.geom();
    if (g.cs <= g.fit) return;
    // Drag to pan; a click without movement does nothing.
    const q0 = g.q0, k0 = g.k0;
    /** @param {MouseEvent} ev */
    const move = (ev) => {
      const p = pos(v, ev);
      v.drag = true;
      v.set({ k0: k0 - (p.x - start.x) / g.cs, q0: q0 - (p.y - start.y) / g.cs });
    };
    const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); v.drag = false; };
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
    v.off.push(up);
    return;
  }
  select(v, t.kind === "row" || t.kind === "pred" ? t.q : null, t.kind === "col" ? t.k : null);
}

/**
 * Select a token (its row and column); selecting it again clears the selection.
 * @param {Viewer} v
 * @param {number | null} q
 * @param {number | null} k
 */
export function select(v, q, k) {
  // Self-attention: one token is both a query (its row) and a key (its column).
  if (v.st.stack !== "cross") { const i = q ?? k; q = i; k = i; }
  const cur = v.st.sel;
  v.set({ sel: cur && cur.q === q && cur.k === k ? null : { q, k } });
}

/**
 * @param {Viewer} v
 * @param {number} f
 * @param {number} [cx]
 * @param {number} [cy]
 */
export function zoom(v, f, cx, cy) {
  if (v.st.view !== "heatmap") return;
  const g = v.geom();
  v.set(zoomAbout(g, f, cx ?? g.x0 + g.pw / 2, cy ?? g.y0 + g.ph / 2));
}

/**
 * @param {Viewer} v
 * @param {WheelEvent} e
 */
function wheel(v, e) {
  if (v.st.view !== "heatmap") return;
  const g = v.geom(), p = pos(v, e);
  if (e.ctrlKey || e.metaKey || (v.lod && !e.shiftKey)) { e.preventDefault(); zoom(v, e.deltaY < 0 ? 1.25 : 0.8, p.x, p.y); return; }
  if (g.cs <= g.fit) return; // at full view the page scrolls as usual
  e.preventDefault();
  v.set({ k0: g.k0 + (e.shiftKey ? e.deltaY : e.deltaX) / g.cs, q0: g.q0 + (e.shiftKey ? 0 : e.deltaY) / g.cs });
}

/**
 * Drag on the minimap: centre the view there.
 * @param {Viewer} v
 * @param {MouseEvent} e
 */
function miniPress(v, e) {
  /** @param {MouseEvent} ev */
  const go = (ev) => {
    const r = v.dom.mini.getBoundingClientRect(), g = v.geom();
    const k = (ev.clientX - r.left) / v.miniScale, q = (ev.clientY - r.top) / v.miniScale;
    v.set({ k0: k - g.vk / 2, q0: q - g.vq / 2 });
  };
  go(e);
  const up = () => { window.removeEventListener("mousemove", go); window.removeEventListener("mouseup", up); };
  window.addEventListener("mousemove", go);
  window.addEventListener("mouseup", up);
}

/**
 * @param {Viewer} v
 * @param {KeyboardEvent} e
 */
function key(v, e) {
  const target = /** @type {HTMLElement | null} */ (e.target);
  if (target && /^(SELECT|INPUT|TEXTAREA)$/.test(target.tagName)) return;
  const st = v.st, [L, H] = v.stackInfo().shape;
  /** @param {number} dh */
  const head = (dh) => () => v.set({ head: stepHead(st.head, dh, H) });
  /** @param {number} dl */
  const layer = (dl) => () => v.set({ layer: (st.layer + dl + L) % L });
  /** @type {Record<string, () => void>} */
  const acts = {
    ArrowLeft: head(-1), h: head(-1), ArrowRight: head(1), l: head(1),
    ArrowUp: layer(-1), k: layer(-1), ArrowDown: layer(1), j: layer(1),
    "+": () => zoom(v, 2), "=": () => zoom(v, 2), "-": () => zoom(v, 0.5), 0: () => v.set({ cs: null }),
    Escape: () => { if (!v.dom.help.hidden) showHelp(v, false); else v.set({ sel: null, mark: null }); },
    ",": () => stepBy(v, -1), ".": () => stepBy(v, 1),
    "?": () => showHelp(v, v.dom.help.hidden),
  };
  const pan = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[e.key];
  if (pan && e.shiftKey && st.view === "heatmap") {
    // Shift + arrows: a quarter of the view across or down.
    e.preventDefault(); e.stopPropagation();
    const g = v.geom();
    if (g.cs > g.fit) v.set({ k0: g.k0 + pan[0] * g.vk / 4, q0: g.q0 + pan[1] * g.vq / 4 });
    return;
  }
  const f = acts[e.key];
  if (!f || e.ctrlKey || e.metaKey || e.altKey) return;
  e.preventDefault();
  e.stopPropagation();
  f();
}

/**
 * One token back (d = -1) or on (d = 1) in the step playback; pauses it.
 * @param {Viewer} v
 * @param {number} d
 */
export function stepBy(v, d) {
  const n = v.header ? stepCount(v.header) : 0;
  if (!n || !rowSpan(v.stackInfo())) return;
  v.pause();
  v.set({ step: moveStep(v.st.step, d, n) });
}

export const PLAY_MS = 450; // one generated token every PLAY_MS while playing

/**
 * Play the generation token by token from the start (or from where it stands), or pause.
 * @param {Viewer} v
 */
export function togglePlay(v) {
  const n = v.header ? stepCount(v.header) : 0;
  if (v.timer !== null) { v.pause(); return; }
  if (!n) return;
  if (v.st.step === null || v.st.step >= n) v.set({ step: 0 });
  v.timer = setInterval(() => {
    const s = v.st.step ?? n;
    if (s >= n) { v.pause(); return; }
    v.set({ step: s + 1 });
    if (s + 1 >= n) v.pause();
  }, PLAY_MS);
  v.dom.root.dataset.playing = "true";
  v.dom.ui.play.textContent = "⏸";
  v.dom.ui.play.title = "pause";
}

/**
 * Open or close the keys-and-mouse help.
 * @param {Viewer} v
 * @param {boolean} open
 */
export function showHelp(v, open) {
  v.dom.help.hidden = !open;
  v.dom.ui.help.setAttribute("aria-expanded", String(open));
  if (open) v.dom.tip.hidden = true;
}

/**
 * Save the canvas as a PNG named after the view.
 * @param {Viewer} v
 */
function download(v) {
  const st = v.st, name = `attnmap-${st.stack}-L${st.layer}-${typeof st.head === "number" ? "H" + st.head : st.head}-${st.view}.png`;
  v.dom.canvas.toBlob((blob) => {
    if (!blob) return v.fail(new Error("attnmap: this browser could not make a PNG"));
    const url = URL.createObjectURL(blob), a = h("a");
    a.href = url; a.download = name; a.hidden = true;
    v.dom.root.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  }, "image/png");
}

/**
 * Wire the controls, canvas, minimap and keys to the viewer.
 * @param {Viewer} v
 */
export function attachInput(v) {
  const u = v.dom.ui, c = v.dom.canvas;
  v.listen(u.stack, "change", () => v.set({ stack: u.stack.value, layer: 0, sel: null, cs: null, mark: null }));
  v.listen(u.layer, "change", () => v.set({ layer: +u.layer.value }));
  v.listen(u.head, "change", () => v.set({ head: /^\d+$/.test(u.head.value) ? +u.head.value : /** @type {"mean" | "max"} */ (u.head.value) }));
  v.listen(u.view, "change", () => v.set({ view: /** @type {State["view"]} */ (u.view.value) }));
  v.listen(u.scale, "change", () => v.set({ scale: /** @type {State["scale"]} */ (u.scale.value) }));
  v.listen(u.metric, "change", () => v.set({ metric: u.metric.value === "mean_abs" ? "mean_abs" : "js" }));
  v.listen(u.ignore, "change", () => v.set({ ignoreFirst: u.ignore.checked }));
  v.listen(u.reduce, "change", () => v.set({ reduce: u.reduce.value === "sum" ? "sum" : "max" }));
  v.listen(u.zoomIn, "click", () => zoom(v, 2));
  v.listen(u.zoomOut, "click", () => zoom(v, 0.5));
  v.listen(u.fit, "click", () => v.set({ cs: null }));
  v.listen(u.png, "click", () => download(v));
  v.listen(u.help, "click", () => showHelp(v, v.dom.help.hidden));
  v.listen(u.score, "change", () => v.set({ score: u.score.value || null }));
  v.listen(u.min, "input", () => { const x = parseFloat(u.min.value); v.set({ min: Number.isFinite(x) ? x : null }); });
  for (const s of [u.from, u.to, u.vs]) v.listen(s, "change", () => relate(v));
  v.listen(u.play, "click", () => togglePlay(v));
  v.listen(u.prev, "click", () => stepBy(v, -1));
  v.listen(u.next, "click", () => stepBy(v, 1));
  v.listen(u.step, "input", () => { v.pause(); v.set({ step: +u.step.value }); });
  v.listen(u.gen, "change", () => {
    v.set({ gen: u.gen.checked, sel: null, mark: null });
    if (v.dom.relOut.childElementCount) relate(v); // the shown relation counts other rows now
  });
  v.listen(v.dom.root, "keydown", (/** @type {KeyboardEvent} */ e) => key(v, e));
  v.listen(c, "mousemove", (/** @type {MouseEvent} */ e) => hover(v, e));
  v.listen(c, "mouseleave", () => { v.dom.tip.hidden = true; });
  v.listen(c, "mousedown", (/** @type {MouseEvent} */ e) => press(v, e));
  v.listen(c, "wheel", (/** @type {WheelEvent} */ e) => wheel(v, e), { passive: false });
  v.listen(v.dom.mini, "mousedown", (/** @type {MouseEvent} */ e) => miniPress(v, e));
}
