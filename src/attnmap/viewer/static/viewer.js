// attnmap viewer: one ES module for three hosts (standalone page, web app, Jupyter/anywidget).
// It depends on nothing but the browser. Token text is data: it reaches the page only through
// textContent, option text, attributes and canvas fillText, never through markup.
//
// Host contract: export default { render({ model, el }) } returning a cleanup function, where
// model.get("payload") is the bytes of attnmap.viewer.payload.encode(run), model.get("options")
// the initial view and model.get("layer_url") an optional base URL for layers that the payload
// leaves out (GET layer_url/stack/layer → encode_layer bytes).

export const PAYLOAD_VERSION = 1;
const LEVELS = 128; // codes 0..128 carry values (step = row max / 128)
const MASKED = 255; // code of a cell the query cannot see
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const M = { top: 24, label: 110, bar: 88, pad: 6 }; // canvas margins in CSS pixels
const LOG_DECADES = 3;
const PRED_W = 128; // width of the predictions column right of the matrix

// --- bytes ----------------------------------------------------------------------------------
function toBytes(x) {
  if (!x) return new Uint8Array(0);
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  throw new Error("attnmap: payload must be bytes (ArrayBuffer, DataView or Uint8Array)");
}

function readPrefix(bytes, offset, magic) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset + offset);
  const got = String.fromCharCode(...bytes.subarray(offset, offset + 4));
  if (got !== magic) throw new Error(`attnmap: not an attnmap ${magic} block (starts ${JSON.stringify(got)})`);
  const version = dv.getUint32(4, true);
  if (version > PAYLOAD_VERSION) {
    throw new Error(`attnmap: payload version ${version} is newer than this viewer (${PAYLOAD_VERSION}); upgrade attnmap`);
  }
  const n = dv.getUint32(8, true);
  const head = JSON.parse(new TextDecoder().decode(bytes.subarray(offset + 12, offset + 12 + n)));
  return { head, end: offset + 12 + n };
}

export function parsePayload(x) {
  const bytes = toBytes(x);
  const { head, end } = readPrefix(bytes, 0, "ATNM");
  const chunks = new Map(); // "stack/layer" → chunk bytes, decoded on demand
  let at = end;
  for (const c of head.chunks || []) {
    chunks.set(`${c.stack}/${c.layer}`, bytes.subarray(at, at + c.length));
    at += c.length;
  }
  return { header: head, chunks };
}

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// One layer → { heads, q, k, scales: Float32Array [head, query], codes: Uint8Array [head, query, key] }
export async function decodeLayer(x) {
  const bytes = toBytes(x);
  const { head, end } = readPrefix(bytes, 0, "ATNL");
  const raw = await inflate(bytes.subarray(end, end + head.length));
  const [h, q, k] = head.shape;
  if (raw.byteLength !== h * q * 4 + h * q * k) throw new Error("attnmap: layer chunk has the wrong size");
  // A fresh ArrayBuffer starts 4-byte aligned; browsers are little-endian like the payload.
  return {
    stack: head.stack, layer: head.layer, heads: h, q, k,
    scales: new Float32Array(raw.buffer, raw.byteOffset, h * q),
    codes: new Uint8Array(raw.buffer, raw.byteOffset + h * q * 4, h * q * k),
    derived: new Map(),
  };
}

// Text form used by the standalone page: base 85 over an alphabet without < > & " ' \ ` / -
// so the data can sit inside a <script> element (a quarter smaller than base64).
const B85 = "!#$%()*+,.0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz{|}~";
export function b85decode(text, length) {
  const lut = new Uint8Array(128).fill(255);
  for (let i = 0; i < 85; i++) lut[B85.charCodeAt(i)] = i;
  const s = text.replace(/\s+/g, "");
  const groups = Math.floor(s.length / 5);
  const out = new Uint8Array(groups * 4);
  const dv = new DataView(out.buffer);
  for (let g = 0, p = 0; g < groups; g++) {
    let v = 0;
    for (let i = 0; i < 5; i++) {
      const d = lut[s.charCodeAt(p++)];
      if (d === 255) throw new Error("attnmap: the embedded payload is damaged");
      v = v * 85 + d;
    }
    dv.setUint32(g * 4, v);
  }
  return out.subarray(0, length ?? out.length);
}

// --- colours --------------------------------------------------------------------------------
const STOPS = [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [33, 113, 181], [8, 69, 148], [8, 38, 92]];
const RGB = [];
const LUT = new Uint32Array(256); // ImageData pixels as little-endian RGBA words
for (let i = 0; i < 256; i++) {
  const t = (i / 255) * (STOPS.length - 1), a = Math.min(Math.floor(t), STOPS.length - 2), f = t - a;
  const c = STOPS[a].map((v, j) => Math.round(v + (STOPS[a + 1][j] - v) * f));
  RGB.push(c);
  LUT[i] = (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0];
}
// Diverging map for A − B (blue < 0 < red, white at 0), index 0..255 ↔ −lim..+lim.
const DIV_STOPS = [[5, 48, 97], [67, 147, 195], [209, 229, 240], [255, 255, 255], [253, 219, 199], [214, 96, 77], [103, 0, 31]];
const DIV_RGB = [], DIV_LUT = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  const t = (i / 255) * (DIV_STOPS.length - 1), a = Math.min(Math.floor(t), DIV_STOPS.length - 2), f = t - a;
  const c = DIV_STOPS[a].map((v, j) => Math.round(v + (DIV_STOPS[a + 1][j] - v) * f));
  DIV_RGB.push(c);
  DIV_LUT[i] = (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0];
}
const MASK_A = (255 << 24) | (200 << 16) | (200 << 8) | 200; // masked: grey checkerboard, never white
const MASK_B = (255 << 24) | (226 << 16) | (226 << 8) | 226;

function fmt(v) {
  if (v === 0) return "0";
  if (v >= 0.01) return v.toFixed(3);
  return v.toExponential(2);
}

// --- data: heads, aggregates, scaling -------------------------------------------------------
function headData(layer, h) {
  if (h === "mean" || h === "max") return aggregate(layer, h);
  const n = layer.q * layer.k;
  return { q: layer.q, k: layer.k, scales: layer.scales.subarray(h * layer.q, (h + 1) * layer.q), codes: layer.codes.subarray(h * n, (h + 1) * n), stats: null };
}

function aggregate(layer, how) {
  if (layer.derived.has(how)) return layer.derived.get(how);
  const { heads, q, k } = layer;
  const n = q * k, acc = new Float32Array(n); // [query, key]
  for (let h = 0; h < heads; h++) {
    const codes = layer.codes.subarray(h * n, (h + 1) * n);
    for (let i = 0; i < q; i++) {
      const f = layer.scales[h * q + i] / LEVELS, row = i * k;
      for (let j = 0; j < k; j++) {
        const v = codes[row + j] * f;
        if (how === "max") { if (v > acc[row + j]) acc[row + j] = v; } else acc[row + j] += v;
      }
    }
  }
  const first = layer.codes.subarray(0, n), codes = new Uint8Array(n), scales = new Float32Array(q);
  for (let i = 0; i < q; i++) {
    const row = i * k;
    let mx = 0;
    for (let j = 0; j < k; j++) {
      if (how === "mean") acc[row + j] /= heads;
      if (first[row + j] !== MASKED && acc[row + j] > mx) mx = acc[row + j];
    }
    scales[i] = mx;
    for (let j = 0; j < k; j++) {
      codes[row + j] = first[row + j] === MASKED ? MASKED : mx > 0 ? Math.round((acc[row + j] / mx) * LEVELS) : 0;
    }
  }
  const d = { q, k, scales, codes, stats: null };
  layer.derived.set(how, d);
  return d;
}

function value(d, i, j) {
  const c = d.codes[i * d.k + j];
  return c === MASKED ? null : (c * d.scales[i]) / LEVELS;
}

function headMax(d, ignoreFirst) {
  // Row scales are row maxima, so the head max is one pass over q numbers; the max without
  // key 0 needs every cell and is only computed when asked for.
  if (!d.stats) {
    let all = 0;
    for (let i = 0; i < d.q; i++) if (d.scales[i] > all) all = d.scales[i];
    d.stats = { all, rest: null };
  }
  if (ignoreFirst && d.k > 1 && d.stats.rest === null) {
    let rest = 0;
    for (let i = 0; i < d.q; i++) {
      const row = i * d.k;
      let m = 0;
      for (let j = 1; j < d.k; j++) { const c = d.codes[row + j]; if (c !== MASKED && c > m) m = c; }
      const v = (m * d.scales[i]) / LEVELS;
      if (v > rest) rest = v;
    }
    d.stats.rest = rest;
  }
  const m = ignoreFirst && d.k > 1 ? d.stats.rest : d.stats.all;
  return m > 0 ? m : 1;
}

// Colour index 0..255 of value v under a scale.
function tOf(v, vmax, scale) {
  if (scale === "log") {
    if (v <= 0) return 0;
    return Math.max(0, Math.min(1, 1 + Math.log10(v / vmax) / LOG_DECADES));
  }
  return Math.min(1, v / vmax);
}

// [query, key] → pixels, one per cell: the fast path for 1,000+ tokens.
function paintImage(d, vmax, scale, target) {
  const img = new ImageData(d.k, d.q);
  const px = new Uint32Array(img.data.buffer);
  const row = new Uint32Array(LEVELS + 1);
  for (let i = 0; i < d.q; i++) {
    const s = d.scales[i] / LEVELS;
    for (let c = 0; c <= LEVELS; c++) row[c] = LUT[Math.round(tOf(c * s, vmax, scale) * 255)];
    const base = i * d.k;
    for (let j = 0; j < d.k; j++) {
      const c = d.codes[base + j];
      px[base + j] = c === MASKED ? ((i + j) & 1 ? MASK_A : MASK_B) : row[c];
    }
  }
  target.width = d.k;
  target.height = d.q;
  target.getContext("2d").putImageData(img, 0, 0);
  return target;
}

// A float matrix [query, key] (NaN = masked) → pixels through `lut`, t = (v - lo) / (hi - lo).
function paintFloat(vals, q, k, lo, hi, lut) {
  const img = new ImageData(k, q), px = new Uint32Array(img.data.buffer), span = hi - lo || 1;
  for (let i = 0; i < q; i++) {
    for (let j = 0; j < k; j++) {
      const v = vals[i * k + j];
      px[i * k + j] = Number.isNaN(v) ? ((i + j) & 1 ? MASK_A : MASK_B) : lut[Math.round(Math.max(0, Math.min(1, (v - lo) / span)) * 255)];
    }
  }
  const c = document.createElement("canvas");
  c.width = k; c.height = q;
  c.getContext("2d").putImageData(img, 0, 0);
  return c;
}

// A, B and A − B of one head as floats [query, key], NaN where either run masks the cell.
function diffData(da, db) {
  const n = da.q * da.k, a = new Float32Array(n), b = new Float32Array(n), d = new Float32Array(n);
  let lim = 0, vmax = 0;
  for (let i = 0; i < da.q; i++) {
    for (let j = 0; j < da.k; j++) {
      const x = value(da, i, j), y = value(db, i, j), p = i * da.k + j;
      if (x === null || y === null) { a[p] = b[p] = d[p] = NaN; continue; }
      a[p] = x; b[p] = y; d[p] = x - y;
      lim = Math.max(lim, Math.abs(x - y)); vmax = Math.max(vmax, x, y);
    }
  }
  return { q: da.q, k: da.k, a, b, d, lim: lim || 1, vmax: vmax || 1 };
}

// Block-max downsampling for thumbnails, at most `size` pixels a side.
function paintThumb(d, size, ignoreFirst) {
  const tw = Math.max(1, Math.min(d.k, size)), th = Math.max(1, Math.min(d.q, size));
  const acc = new Float32Array(tw * th).fill(-1);
  for (let i = 0; i < d.q; i++) {
    const ti = Math.floor((i * th) / d.q) * tw, s = d.scales[i] / LEVELS, row = i * d.k;
    for (let j = 0; j < d.k; j++) {
      const c = d.codes[row + j];
      if (c === MASKED) continue;
      const t = ti + Math.floor((j * tw) / d.k), v = c * s;
      if (v > acc[t]) acc[t] = v;
    }
  }
  const vmax = headMax(d, ignoreFirst);
  const img = new ImageData(tw, th), px = new Uint32Array(img.data.buffer);
  for (let t = 0; t < acc.length; t++) px[t] = acc[t] < 0 ? MASK_A : LUT[Math.round(Math.min(1, acc[t] / vmax) * 255)];
  const c = document.createElement("canvas");
  c.width = tw; c.height = th;
  c.getContext("2d").putImageData(img, 0, 0);
  return c;
}

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function short(s, n = 16) { return s.length > n ? s.slice(0, n - 1) + "…" : s; }

// --- census and relations -------------------------------------------------------------------
// Short names for badges; a thumbnail's badge is its highest "mass" score (0..1) unless a
// score is picked in the census bar. Distance and entropy are not masses, so they never win.
const ABBR = { self: "self", previous_token: "prev", first_token: "first", duplicate_token: "dup", induction: "ind", locality: "local", mean_distance: "dist", entropy: "ent", entropy_norm: "ent/max", special: "spec" };
const BADGE_SCORES = ["self", "previous_token", "first_token", "duplicate_token", "induction", "special"];

function fmtScore(v) {
  if (v === null || v === undefined) return "–";
  return Math.abs(v) < 1 ? v.toFixed(2).replace(/^(-?)0\./, "$1.") : v.toFixed(1);
}

// Words of the text as attnmap.analysis.words.text_words finds them: runs of non-space,
// punctuation and symbols stripped from both ends, case folded. Offsets count code points,
// like Python's (and the payload's token offsets).
const PUNCT = /^[\p{P}\p{S}]$/u;
export function textWords(text) {
  const cps = Array.from(text || ""), out = [];
  let i = 0;
  while (i < cps.length) {
    if (/\s/u.test(cps[i])) { i++; continue; }
    let e = i;
    while (e < cps.length && !/\s/u.test(cps[e])) e++;
    let a = i, b = e;
    while (a < b && PUNCT.test(cps[a])) a++;
    while (b > a && PUNCT.test(cps[b - 1])) b--;
    if (b === a) { a = i; b = e; }
    const word = cps.slice(a, b).join("");
    out.push({ word, key: word.toLowerCase(), s: a, e: b });
    i = e;
  }
  // Occurrence numbers make "mat#2" name the second "mat", as in attnmap relate.
  const seen = new Map();
  for (const w of out) { const n = (seen.get(w.key) || 0) + 1; seen.set(w.key, n); w.occurrence = n; }
  for (const w of out) w.spec = seen.get(w.key) > 1 ? `${w.word}#${w.occurrence}` : w.word;
  return out;
}

// Token indexes whose character span overlaps [s, e).
function wordTokens(offsets, s, e) {
  const out = [];
  offsets.forEach((o, i) => { if (o && o[0] < e && o[1] > s) out.push(i); });
  return out;
}

// Attention from `src` tokens to `dst` tokens in every head of one decoded layer: summed over
// the keys, averaged over the queries (attnmap.relate's definition). → Float64Array [head]
function relationMass(layer, src, dst) {
  const out = new Float64Array(layer.heads), n = layer.q * layer.k;
  for (let hd = 0; hd < layer.heads; hd++) {
    let acc = 0;
    for (const i of src) {
      const f = layer.scales[hd * layer.q + i] / LEVELS, row = hd * n + i * layer.k;
      for (const j of dst) { const c = layer.codes[row + j]; if (c !== MASKED) acc += c * f; }
    }
    out[hd] = acc / Math.max(1, src.length);
  }
  return out;
}

function timing(rec) {
  const w = typeof window !== "undefined" ? window : globalThis;
  (w.__attnmapTiming = w.__attnmapTiming || []).push(rec);
  if (w.__attnmapTiming.length > 500) w.__attnmapTiming.shift();
}

// --- the viewer -----------------------------------------------------------------------------
class Viewer {
  constructor(model, el) {
    this.model = model;
    this.el = el;
    this.layers = new Map(); // "stack/layer" → decoded layer (small LRU)
    this.pending = new Map();
    this.images = new Map(); // image cache key → { canvas, vmax }
    this.thumbs = new Map();
    this.seq = 0;
    this.draws = 0;
    this.off = [];
    this.build();
  }

  listen(target, type, fn, opts) {
    target.addEventListener(type, fn, opts);
    this.off.push(() => target.removeEventListener(type, fn, opts));
  }

  build() {
    const root = h("div", "attnmap");
    root.tabIndex = 0;
    root.setAttribute("data-lm-suppress-shortcuts", "true"); // keep JupyterLab's j/k for us
    root.setAttribute("data-p-suppress-shortcuts", "true");
    const bar = h("div", "am-bar");
    const field = (label, ctl) => { const l = h("label", "am-field", label + " "); l.append(ctl); bar.append(l); return ctl; };
    this.ui = {
      stack: field("stack", h("select", "am-stack")),
      layer: field("layer", h("select", "am-layer")),
      head: field("head", h("select", "am-head")),
      view: field("view", h("select", "am-view")),
      scale: field("scale", h("select", "am-scale")),
      metric: field("change", h("select", "am-metric")),
    };
    for (const [v, t] of [["js", "JS divergence"], ["mean_abs", "mean |A − B|"]]) this.ui.metric.add(new Option(t, v));
    for (const [v, t] of [["heatmap", "one head"], ["heads", "heads of layer"], ["layers", "layers × heads"]]) this.ui.view.add(new Option(t, v));
    for (const [v, t] of [["unit", "0 – 1"], ["head", "0 – head max"], ["log", "log"]]) this.ui.scale.add(new Option(t, v));
    const ign = h("label", "am-field am-check");
    this.ui.ignore = h("input", "am-ignore");
    this.ui.ignore.type = "checkbox";
    ign.append(this.ui.ignore, document.createTextNode(" ignore first token"));
    bar.append(ign);
    for (const [cls, text, title] of [["am-zoom-out", "−", "zoom out (-)"], ["am-zoom-in", "+", "zoom in (+)"], ["am-fit", "fit", "whole matrix (0)"], ["am-png", "PNG", "download this view as PNG"]]) {
      const b = h("button", "am-btn " + cls, text);
      b.type = "button"; b.title = title;
      bar.append(b);
      this.ui[cls.slice(3)] = b;
    }
    // Census: sort and filter head grids by a score (shown when the payload carries scores).
    const census = h("div", "am-bar am-census");
    const cfield = (label, ctl) => { const l = h("label", "am-field", label + " "); l.append(ctl); census.append(l); return ctl; };
    this.ui.score = cfield("score", h("select", "am-score"));
    this.ui.min = cfield("at least", h("input", "am-min"));
    this.ui.min.type = "number"; this.ui.min.step = "0.05"; this.ui.min.placeholder = "any";
    this.ui.min.style.width = "5em";
    this.census = census;
    const main = h("div", "am-main");
    const stage = h("div", "am-stage");
    this.canvas = h("canvas", "am-canvas");
    this.tip = h("div", "am-tip");
    this.tip.hidden = true;
    stage.append(this.canvas, this.tip);
    const side = h("div", "am-side");
    this.mini = h("canvas", "am-mini");
    this.info = h("div", "am-info");
    // Relation panel: heads ranked by attention from one word to another (minus a third).
    const rel = h("div", "am-rel");
    rel.append(h("div", "am-k", "relation: heads ranked by to − vs"));
    const rfield = (label, cls) => { const l = h("label", "am-field", label + " "), s = h("select", cls); l.append(s); rel.append(l); return s; };
    this.ui.from = rfield("from", "am-rel-from");
    this.ui.to = rfield("to", "am-rel-to");
    this.ui.vs = rfield("vs", "am-rel-vs");
    this.relOut = h("div", "am-rel-out");
    rel.append(this.relOut);
    this.relBox = rel;
    side.append(this.mini, this.info, rel);
    main.append(stage, side);
    this.status = h("div", "am-status");
    root.append(bar, census, main, this.status);
    this.root = root;
    this.el.append(root);
    this.offscreen = document.createElement("canvas");
    root.__attnmap = this.hooks();
  }

  // --- lifecycle ---
  start() {
    const u = this.ui;
    this.listen(u.stack, "change", () => this.set({ stack: u.stack.value, layer: 0, sel: null, cs: null }));
    this.listen(u.layer, "change", () => this.set({ layer: +u.layer.value }));
    this.listen(u.head, "change", () => this.set({ head: /^\d+$/.test(u.head.value) ? +u.head.value : u.head.value }));
    this.listen(u.view, "change", () => this.set({ view: u.view.value }));
    this.listen(u.scale, "change", () => this.set({ scale: u.scale.value }));
    this.listen(u.metric, "change", () => this.set({ metric: u.metric.value }));
    this.listen(u.ignore, "change", () => this.set({ ignoreFirst: u.ignore.checked }));
    this.listen(u["zoom-in"], "click", () => this.zoom(2));
    this.listen(u["zoom-out"], "click", () => this.zoom(0.5));
    this.listen(u.fit, "click", () => this.set({ cs: null }));
    this.listen(u.png, "click", () => this.download());
    this.listen(u.score, "change", () => this.set({ score: u.score.value || null }));
    this.listen(u.min, "input", () => { const v = parseFloat(u.min.value); this.set({ min: Number.isFinite(v) ? v : null }); });
    for (const s of [u.from, u.to, u.vs]) this.listen(s, "change", () => this.relate());
    this.listen(this.root, "keydown", (e) => this.key(e));
    this.listen(this.canvas, "mousemove", (e) => this.hover(e));
    this.listen(this.canvas, "mouseleave", () => { this.tip.hidden = true; });
    this.listen(this.canvas, "mousedown", (e) => this.press(e));
    this.listen(this.canvas, "wheel", (e) => this.wheel(e), { passive: false });
    this.listen(this.mini, "mousedown", (e) => this.miniPress(e));
    const onPayload = () => this.load();
    const onOptions = () => this.load();
    this.model.on("change:payload", onPayload);
    this.model.on("change:options", onOptions);
    this.off.push(() => { this.model.off?.("change:payload", onPayload); this.model.off?.("change:options", onOptions); });
    if (typeof ResizeObserver !== "undefined") {
      let w = 0;
      const ro = new ResizeObserver(() => { const nw = this.root.clientWidth; if (nw && nw !== w) { w = nw; if (this.header) this.paint(); } });
      ro.observe(this.root);
      this.off.push(() => ro.disconnect());
    }
    this.load();
  }

  destroy() {
    this.seq++;
    for (const f of this.off) f();
    this.off = [];
    this.root.remove();
  }

  load() {
    try {
      const { header, chunks } = parsePayload(this.model.get("payload"));
      this.header = header;
      this.chunks = chunks;
    } catch (err) {
      this.fail(err);
      return;
    }
    this.layers.clear(); this.images.clear(); this.thumbs.clear();
    this.predMap = null; this.predRows = [];
    // Diff mode: a second payload B on the same aligned tokens, and the ranking in the options.
    const pb = this.model.get("payload_b"), od = (this.model.get("options") || {}).diff;
    this.B = null; this.diff = null; this.layersB = new Map(); this.diffCache = new Map();
    if (pb && od) {
      try { this.B = parsePayload(pb); } catch (err) { this.fail(err); return; }
      this.diff = od;
      this.changeBy = new Map(od.ranking.map((r) => [`${r.layer}/${r.head}`, r]));
    }
    const views = [["heatmap", "one head"], ["heads", "heads of layer"], ["layers", "layers × heads"]];
    if (this.diff) views.push(["diff", "A, B, A − B"], ["change", "change per head"]);
    this.ui.view.replaceChildren(...views.map(([v, t]) => new Option(t, v)));
    this.ui.metric.parentElement.hidden = !this.diff;
    const o = this.model.get("options") || {};
    const stacks = this.header.stacks.map((s) => s.name);
    const stack = stacks.includes(o.stack) ? o.stack : stacks[0];
    this.ui.stack.replaceChildren(...stacks.map((s) => new Option(s, s)));
    this.ui.stack.parentElement.hidden = stacks.length < 2;
    this.st = {
      stack, layer: 0, head: 0, metric: o.metric === "mean_abs" ? "mean_abs" : "js",
      view: ["heads", "layers"].includes(o.view) || (this.diff && ["diff", "change"].includes(o.view)) ? o.view : "heatmap",
      scale: ["unit", "head", "log"].includes(o.scale) ? o.scale : "head",
      ignoreFirst: !!o.ignore_first, cs: null, k0: 0, q0: 0, sel: null, score: null, min: null,
    };
    this.words = textWords(this.header.text);
    const wordOpts = (none) => [...(none ? [new Option("(none)", "")] : []), ...this.words.map((w, i) => new Option(w.spec, String(i)))];
    this.ui.from.replaceChildren(...wordOpts(false));
    this.ui.to.replaceChildren(...wordOpts(false));
    this.ui.vs.replaceChildren(...wordOpts(true));
    if (this.words.length > 1) this.ui.to.value = "1";
    this.relation = null;
    this.relOut.replaceChildren();
    const [L, H] = this.stackInfo(stack).shape;
    const wrap = (v, n) => (Number.isInteger(v) ? Math.min(n - 1, Math.max(0, v < 0 ? v + n : v)) : 0);
    this.st.layer = wrap(o.layer, L);
    this.st.head = o.head === "mean" || o.head === "max" ? o.head : wrap(o.head, H);
    this.set({});
  }

  fail(err) {
    this.status.textContent = String(err && err.message ? err.message : err);
    this.status.classList.add("am-error");
    console.error(err);
  }

  stackInfo(name = this.st.stack) { return this.header.stacks.find((s) => s.name === name); }

  // --- state ---
  set(patch) {
    const t0 = performance.now();
    Object.assign(this.st, patch);
    const st = this.st, info = this.stackInfo();
    const [L, H] = info.shape;
    st.layer = Math.min(L - 1, Math.max(0, st.layer));
    if (typeof st.head === "number") st.head = Math.min(H - 1, Math.max(0, st.head));
    this.syncControls(L, H);
    this.refresh(t0);
  }

  syncControls(L, H) {
    const u = this.ui, st = this.st;
    u.stack.value = st.stack;
    if (u.layer.options.length !== L) u.layer.replaceChildren(...Array.from({ length: L }, (_, i) => new Option(String(i), String(i))));
    if (u.head.options.length !== H + 2) {
      u.head.replaceChildren(...Array.from({ length: H }, (_, i) => new Option(String(i), String(i))), new Option("mean of heads", "mean"), new Option("max of heads", "max"));
    }
    u.layer.value = String(st.layer);
    u.head.value = String(st.head);
    u.view.value = st.view;
    u.scale.value = st.scale;
    u.metric.value = st.metric;
    u.ignore.checked = st.ignoreFirst;
    for (const b of [u["zoom-in"], u["zoom-out"], u.fit]) b.disabled = st.view !== "heatmap";
    const sc = this.stackInfo().scores;
    this.census.hidden = !sc;
    if (sc && u.score.options.length !== sc.names.length + 1) {
      u.score.replaceChildren(new Option("top score", ""), ...sc.names.map((n) => new Option(n, n)));
    }
    if (sc) u.score.value = st.score || "";
    this.relBox.hidden = !this.relationStack() || this.words.length === 0;
  }

  // --- census ---
  scoreOf(layer, head, name) {
    const sc = this.stackInfo().scores;
    if (!sc) return null;
    const H = this.stackInfo().shape[1], i = sc.names.indexOf(name);
    return i < 0 ? null : sc.values[layer * H + head][i];
  }

  // The badge text of one head: the picked score, or the head's highest mass score.
  badge(layer, head) {
    const sc = this.stackInfo().scores;
    if (!sc) return null;
    if (this.st.score) return `${ABBR[this.st.score] || this.st.score} ${fmtScore(this.scoreOf(layer, head, this.st.score))}`;
    let best = null, bv = -1;
    for (const n of BADGE_SCORES) { const v = this.scoreOf(layer, head, n); if (v !== null && v > bv) { bv = v; best = n; } }
    return best ? `${ABBR[best]} ${fmtScore(bv)}` : null;
  }

  // Heads that pass the census filter (score ≥ threshold); every head without a filter.
  passes(layer, head) {
    const st = this.st;
    if (!st.score || st.min === null || !this.stackInfo().scores) return true;
    const v = this.scoreOf(layer, head, st.score);
    return v !== null && v >= st.min;
  }

  drawBadge(ctx, x, y, t, text) {
    if (!text || t < 30) return;
    ctx.font = "10px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 6;
    ctx.fillStyle = "rgba(255,255,255,0.88)"; ctx.fillRect(x + t - w - 1, y + 1, w, 13);
    ctx.fillStyle = "#7a3200"; ctx.textAlign = "right"; ctx.textBaseline = "top";
    ctx.fillText(text, x + t - 4, y + 2);
    ctx.font = FONT;
  }

  // --- relation panel ---
  relationStack() {
    const info = this.stackInfo();
    return ["self", "encoder"].includes(info.name) && info.query_offsets ? info : null;
  }

  async relate() {
    const info = this.relationStack(), u = this.ui;
    if (!info) return null;
    const pick = (sel) => (sel.value === "" ? null : this.words[+sel.value]);
    const from = pick(u.from), to = pick(u.to), vs = pick(u.vs);
    if (!from || !to) return null;
    const toks = (w) => wordTokens(info.query_offsets, w.s, w.e);
    const src = toks(from), dst = toks(to), alt = vs ? toks(vs) : null;
    const seq = (this.relSeq = (this.relSeq || 0) + 1);
    const [L] = info.shape, heads = [];
    for (let li = 0; li < L; li++) {
      let layer;
      try { layer = await this.layer(info.name, li); } catch (err) { this.fail(err); return null; }
      if (seq !== this.relSeq) return null; // a newer query took over
      const a = relationMass(layer, src, dst), b = alt ? relationMass(layer, src, alt) : null;
      for (let hd = 0; hd < layer.heads; hd++) {
        const r = { layer: li, head: hd, to: a[hd] };
        if (b) { r.vs = b[hd]; r.diff = a[hd] - b[hd]; }
        heads.push(r);
      }
    }
    const key = alt ? "diff" : "to";
    heads.sort((p, q) => q[key] - p[key] || p.layer - q.layer || p.head - q.head);
    this.relation = { stack: info.name, from: from.spec, to: to.spec, vs: vs ? vs.spec : null, ranked_by: alt ? "to - vs" : "to", heads };
    this.showRelation();
    return this.relation;
  }

  showRelation() {
    const r = this.relation;
    this.relOut.replaceChildren();
    if (!r) return;
    for (const x of r.heads.slice(0, 10)) {
      const row = h("div", "am-row am-rel-row");
      row.dataset.layer = String(x.layer); row.dataset.head = String(x.head);
      row.title = r.vs ? `to ${x.to.toFixed(3)} · vs ${x.vs.toFixed(3)}` : `to ${x.to.toFixed(3)}`;
      row.append(h("span", "am-k", `${x.layer}.${x.head}`), h("span", "am-num", (r.vs ? x.diff : x.to).toFixed(3)));
      this.listen(row, "click", () => this.set({ layer: x.layer, head: x.head, view: "heatmap" }));
      this.relOut.append(row);
    }
  }

  async layer(stack, li) {
    const key = `${stack}/${li}`;
    if (this.layers.has(key)) {
      const d = this.layers.get(key);
      this.layers.delete(key); this.layers.set(key, d); // most recently used last
      return d;
    }
    if (!this.pending.has(key)) {
      const p = (async () => {
        let bytes = this.chunks.get(key);
        if (!bytes) {
          const url = this.model.get("layer_url");
          if (!url) throw new Error(`attnmap: layer ${li} of ${stack} is not in this payload`);
          const r = await fetch(`${url}/${encodeURIComponent(stack)}/${li}`);
          if (!r.ok) throw new Error(`attnmap: could not fetch layer ${li} of ${stack} (HTTP ${r.status})`);
          bytes = new Uint8Array(await r.arrayBuffer());
        }
        const d = await decodeLayer(bytes);
        this.layers.set(key, d);
        while (this.layers.size > 6) this.layers.delete(this.layers.keys().next().value);
        return d;
      })();
      this.pending.set(key, p);
      p.finally(() => this.pending.delete(key)).catch(() => {});
    }
    return this.pending.get(key);
  }

  cached(stack, li) { return this.layers.get(`${stack}/${li}`); }

  async layerB(stack, li) {
    const key = `${stack}/${li}`;
    if (!this.layersB.has(key)) {
      const bytes = this.B.chunks.get(key);
      if (!bytes) throw new Error(`attnmap: layer ${li} of ${stack} is not in payload B`);
      const d = await decodeLayer(bytes);
      this.layersB.set(key, d);
      while (this.layersB.size > 6) this.layersB.delete(this.layersB.keys().next().value);
    }
    return this.layersB.get(key);
  }

  async refresh(t0) {
    const seq = ++this.seq, st = this.st;
    if (st.view === "layers") return this.paintLayers(seq, t0);
    if (st.view === "change") return this.paint(t0);
    if (st.view === "diff") {
      this.status.textContent = `decoding layer ${st.layer}…`;
      try { await this.layer(st.stack, st.layer); await this.layerB(st.stack, st.layer); } catch (err) { if (seq === this.seq) this.fail(err); return; }
      if (seq !== this.seq) return;
      this.status.textContent = "";
      return this.paint(t0);
    }
    if (!this.cached(st.stack, st.layer)) {
      this.status.textContent = `decoding layer ${st.layer}…`;
      try { await this.layer(st.stack, st.layer); } catch (err) { if (seq === this.seq) this.fail(err); return; }
      if (seq !== this.seq) return;
    }
    this.status.textContent = "";
    this.paint(t0);
  }

  // --- geometry ---
  size() {
    const w = Math.max(420, Math.min(1100, (this.root.clientWidth || 900) - 190));
    return { w, h: Math.round(Math.min(820, Math.max(360, w * 0.82))) };
  }

  geom() {
    const { w, h: hh } = this.size(), info = this.stackInfo();
    const [, , Q, K] = info.shape;
    const pred = this.predictions() ? PRED_W : 0;
    const x0 = M.label, y0 = M.top + M.label, pw = w - x0 - M.bar - pred, ph = hh - y0 - M.pad;
    const fit = Math.min(pw / K, ph / Q);
    const st = this.st;
    const cs = st.cs && st.cs > fit ? st.cs : fit;
    const vk = pw / cs, vq = ph / cs; // visible cells
    st.k0 = Math.max(0, Math.min(st.k0, K - vk));
    st.q0 = Math.max(0, Math.min(st.q0, Q - vq));
    if (cs === fit) { st.k0 = 0; st.q0 = 0; }
    return { w, h: hh, x0, y0, pw: Math.min(pw, K * cs), ph: Math.min(ph, Q * cs), cs, fit, Q, K, vk, vq, pred };
  }

  // Predictions of the shown stack's query rows: Map position → record, or null.
  predictions() {
    const hd = this.header, st = this.st;
    if (!hd || !hd.predictions || !(hd.predictions_stacks || []).includes(st.stack)) return null;
    if (!this.predMap) this.predMap = new Map(hd.predictions.map((r) => [r.position, r]));
    return this.predMap;
  }

  setupCanvas(c, w, hh) {
    const r = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * r) || c.height !== Math.round(hh * r)) {
      c.width = Math.round(w * r); c.height = Math.round(hh * r);
    }
    c.style.width = w + "px"; c.style.height = hh + "px";
    const ctx = c.getContext("2d");
    ctx.setTransform(r, 0, 0, r, 0, 0);
    ctx.clearRect(0, 0, w, hh);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, hh);
    ctx.font = FONT;
    return ctx;
  }

  current() {
    const st = this.st, layer = this.cached(st.stack, st.layer);
    return layer ? headData(layer, st.head) : null;
  }

  image(d) {
    const st = this.st, key = `${st.stack}/${st.layer}/${st.head}/${st.scale}/${st.ignoreFirst}`;
    let e = this.images.get(key);
    if (!e) {
      const vmax = st.scale === "unit" ? 1 : headMax(d, st.ignoreFirst);
      e = { vmax, canvas: paintImage(d, vmax, st.scale, document.createElement("canvas")) };
      this.images.set(key, e);
      while (this.images.size > 8) this.images.delete(this.images.keys().next().value);
    }
    return e;
  }

  // --- painting ---
  paint(t0 = performance.now()) {
    const st = this.st;
    if (st.view === "layers") return this.refresh(t0);
    if (st.view === "change") this.paintChange();
    else if (st.view === "diff") {
      if (!this.cached(st.stack, st.layer) || !this.layersB.has(`${st.stack}/${st.layer}`)) return this.refresh(t0);
      this.paintDiff();
    } else {
      const d = this.current();
      if (!d) return this.refresh(t0);
      if (st.view === "heads") this.paintHeads();
      else this.paintHeatmap(d);
    }
    const ms = performance.now() - t0;
    this.draws++;
    this.root.dataset.draws = String(this.draws);
    this.root.dataset.drawMs = ms.toFixed(2);
    this.root.dataset.view = st.view;
    timing({ kind: st.view, ms, at: performance.now(), stack: st.stack, layer: st.layer, head: st.head, n: this.draws });
  }

  title(ctx, text) {
    ctx.fillStyle = "#222";
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.fillText(text, 4, M.top / 2);
    ctx.font = FONT;
  }

  headName(head = this.st.head) { return typeof head === "number" ? `head ${head}` : `${head} of heads`; }

  paintHeatmap(d) {
    const st = this.st, info = this.stackInfo(), g = this.geom();
    // The canvas hugs the matrix (plus labels and colour bar) so the side panel sits beside it.
    const ctx = this.setupCanvas(this.canvas, Math.min(g.w, Math.max(420, g.x0 + g.pw + g.pred + M.bar)), g.h);
    const { canvas: img, vmax } = this.image(d);
    this.title(ctx, `${this.header.model?.id ?? "model"} · ${st.stack} · layer ${st.layer} · ${this.headName()}`);
    // Matrix: whole source cells, scaled without smoothing so each cell stays a crisp square.
    const sk = Math.floor(st.k0), sq = Math.floor(st.q0);
    const nk = Math.min(g.K - sk, Math.ceil(st.k0 + g.vk) - sk + 1), nq = Math.min(g.Q - sq, Math.ceil(st.q0 + g.vq) - sq + 1);
    ctx.save();
    ctx.beginPath(); ctx.rect(g.x0, g.y0, g.pw, g.ph); ctx.clip();
    ctx.imageSmoothingEnabled = false;
    const dx = g.x0 + (sk - st.k0) * g.cs, dy = g.y0 + (sq - st.q0) * g.cs;
    ctx.drawImage(img, sk, sq, nk, nq, dx, dy, nk * g.cs, nq * g.cs);
    if (g.cs >= 30) this.cellValues(ctx, d, g, sk, sq, nk, nq, dx, dy, vmax);
    if (st.sel) this.paintSelection(ctx, g);
    ctx.restore();
    ctx.strokeStyle = "#888"; ctx.lineWidth = 1;
    ctx.strokeRect(g.x0 - 0.5, g.y0 - 0.5, g.pw + 1, g.ph + 1);
    this.labels(ctx, g, info);
    if (g.pred) this.paintPredictions(ctx, g);
    this.colourBar(ctx, g, vmax);
    this.paintMini(img, g);
  }

  cellValues(ctx, d, g, sk, sq, nk, nq, dx, dy, vmax) {
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.font = `${Math.min(12, Math.floor(g.cs / 3))}px system-ui, sans-serif`;
    for (let i = 0; i < nq; i++) {
      for (let j = 0; j < nk; j++) {
        const v = value(d, sq + i, sk + j);
        if (v === null) continue;
        ctx.fillStyle = tOf(v, vmax, this.st.scale) > 0.55 ? "#fff" : "#333";
        ctx.fillText(v.toFixed(2), dx + (j + 0.5) * g.cs, dy + (i + 0.5) * g.cs);
      }
    }
    ctx.font = FONT;
  }

  paintSelection(ctx, g) {
    const { q, k } = this.st.sel, st = this.st;
    ctx.fillStyle = "rgba(255,255,255,0.55)";
    ctx.fillRect(g.x0, g.y0, g.pw, g.ph);
    ctx.fillStyle = "rgba(255,255,255,0)";
    ctx.strokeStyle = "#e8590c"; ctx.lineWidth = 2;
    const img = this.images.get(`${st.stack}/${st.layer}/${st.head}/${st.scale}/${st.ignoreFirst}`).canvas;
    ctx.imageSmoothingEnabled = false;
    if (q != null) { // the row: what this token attends to
      const y = g.y0 + (q - st.q0) * g.cs;
      ctx.drawImage(img, 0, q, g.K, 1, g.x0 - st.k0 * g.cs, y, g.K * g.cs, g.cs);
      ctx.strokeRect(g.x0, y, g.pw, g.cs);
    }
    if (k != null) { // the column: who attends to it
      const x = g.x0 + (k - st.k0) * g.cs;
      ctx.drawImage(img, k, 0, 1, g.Q, x, g.y0 - st.q0 * g.cs, g.cs, g.Q * g.cs);
      ctx.strokeRect(x, g.y0, g.cs, g.ph);
    }
  }

  labels(ctx, g, info) {
    const st = this.st, sel = st.sel || {};
    const step = Math.max(1, Math.ceil(12 / g.cs)); // thin labels so they never overlap
    const size = Math.max(7, Math.min(12, Math.floor(g.cs - 1)));
    ctx.font = `${size}px system-ui, sans-serif`;
    const colour = (special, on) => (on ? "#e8590c" : special ? "#aaa" : "#222");
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const q1 = Math.min(g.Q, Math.ceil(st.q0 + g.vq));
    for (let i = Math.floor(st.q0); i < q1; i++) {
      const y = g.y0 + (i - st.q0 + 0.5) * g.cs;
      if ((i % step && i !== sel.q) || y < g.y0 || y > g.y0 + g.ph) continue; // only rows in view
      ctx.fillStyle = colour(info.query_special[i], i === sel.q);
      ctx.fillText(short(info.query_tokens[i]), g.x0 - 4, y, M.label - 8);
    }
    ctx.textAlign = "left";
    const k1 = Math.min(g.K, Math.ceil(st.k0 + g.vk));
    for (let j = Math.floor(st.k0); j < k1; j++) {
      const x = g.x0 + (j - st.k0 + 0.5) * g.cs;
      if ((j % step && j !== sel.k) || x < g.x0 || x > g.x0 + g.pw) continue;
      ctx.save();
      ctx.translate(x, g.y0 - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillStyle = colour(info.key_special[j], j === sel.k);
      ctx.fillText(short(info.key_tokens[j]), 0, 0, M.label - 8);
      ctx.restore();
    }
    ctx.font = FONT;
  }

  // One line per query row: the top-1 next token and its probability; ✗ where the token
  // that really came next was not the top-1. Token text is drawn with fillText (data).
  paintPredictions(ctx, g) {
    const st = this.st, preds = this.predictions(), sel = st.sel || {}, x = g.x0 + g.pw + 6;
    const step = Math.max(1, Math.ceil(12 / g.cs));
    const size = Math.max(7, Math.min(12, Math.floor(g.cs - 1)));
    ctx.font = "bold 10px system-ui, sans-serif"; ctx.fillStyle = "#555"; ctx.textAlign = "left"; ctx.textBaseline = "bottom";
    ctx.fillText("predicted (p)", x, g.y0 - 4);
    ctx.font = `${size}px system-ui, sans-serif`; ctx.textBaseline = "middle";
    this.predRows = [];
    const q1 = Math.min(g.Q, Math.ceil(st.q0 + g.vq));
    for (let i = Math.floor(st.q0); i < q1; i++) {
      const r = preds.get(i), y = g.y0 + (i - st.q0 + 0.5) * g.cs;
      if (!r || !r.top.length || (i % step && i !== sel.q) || y < g.y0 || y > g.y0 + g.ph) continue;
      const top = r.top[0], miss = !!(r.next && r.next.rank !== 1);
      const text = `${short(top.token, 10)} ${fmtScore(top.p)}`;
      ctx.fillStyle = i === sel.q ? "#e8590c" : "#222";
      ctx.fillText(text, x, y, PRED_W - 22);
      if (miss) { ctx.fillStyle = "#c92a2a"; ctx.fillText("✗", x + PRED_W - 18, y); }
      this.predRows.push({ q: i, text, miss });
    }
    ctx.font = FONT;
  }

  colourBar(ctx, g, vmax) {
    const x = g.x0 + g.pw + g.pred + 14, y = g.y0, bh = Math.min(g.ph, 260), bw = 12, st = this.st;
    for (let p = 0; p < bh; p++) {
      const c = RGB[Math.round((1 - p / (bh - 1)) * 255)];
      ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
      ctx.fillRect(x, y + p, bw, 1);
    }
    ctx.strokeStyle = "#888"; ctx.strokeRect(x - 0.5, y - 0.5, bw + 1, bh + 1);
    ctx.fillStyle = "#333"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    const ticks = st.scale === "log" ? [0, 1, 2, 3].map((i) => [vmax * 10 ** -i, 1 - i / LOG_DECADES]) : [0, 0.25, 0.5, 0.75, 1].map((f) => [f * vmax, f]);
    for (const [v, f] of ticks) ctx.fillText(fmt(v), x + bw + 4, y + (1 - f) * (bh - 1));
    const my = y + bh + 14;
    ctx.fillStyle = "#c8c8c8"; ctx.fillRect(x, my, 6, 6); ctx.fillStyle = "#e2e2e2"; ctx.fillRect(x + 6, my, 6, 6);
    ctx.fillRect(x, my + 6, 6, 6); ctx.fillStyle = "#c8c8c8"; ctx.fillRect(x + 6, my + 6, 6, 6);
    ctx.fillStyle = "#333"; ctx.fillText("masked", x + bw + 4, my + 6);
    if (st.ignoreFirst && st.scale !== "unit") ctx.fillText("key 0 ignored", x - 2, my + 24);
  }

  paintMini(img, g) {
    const side = 160, r = Math.min(side / g.K, side / g.Q), w = Math.max(1, Math.round(g.K * r)), hh = Math.max(1, Math.round(g.Q * r));
    const ctx = this.setupCanvas(this.mini, w, hh);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(img, 0, 0, w, hh);
    this.miniScale = r;
    this.mini.hidden = false;
    if (g.cs > g.fit) {
      ctx.strokeStyle = "#e8590c"; ctx.lineWidth = 2;
      ctx.strokeRect(this.st.k0 * r, this.st.q0 * r, Math.min(g.vk, g.K) * r, Math.min(g.vq, g.Q) * r);
    }
  }

  // --- diff views ---
  diffHead() {
    const st = this.st, key = `${st.stack}/${st.layer}/${st.head}`;
    if (!this.diffCache.has(key)) {
      const da = headData(this.cached(st.stack, st.layer), st.head), db = headData(this.layersB.get(`${st.stack}/${st.layer}`), st.head);
      const dd = diffData(da, db);
      dd.images = [paintFloat(dd.a, dd.q, dd.k, 0, dd.vmax, LUT), paintFloat(dd.b, dd.q, dd.k, 0, dd.vmax, LUT), paintFloat(dd.d, dd.q, dd.k, -dd.lim, dd.lim, DIV_LUT)];
      this.diffCache.set(key, dd);
      while (this.diffCache.size > 8) this.diffCache.delete(this.diffCache.keys().next().value);
    }
    return this.diffCache.get(key);
  }

  paintDiff() {
    const st = this.st, info = this.stackInfo(), dd = this.diffHead(), { w } = this.size();
    const gap = 18, bar = 46, left = M.label, top = M.top + 18 + M.label;
    const side = Math.max(60, Math.floor((w - left - 3 * (gap + bar)) / 3));
    const cs = side / Math.max(dd.q, dd.k), pw = dd.k * cs, ph = dd.q * cs;
    const ctx = this.setupCanvas(this.canvas, w, top + ph + 30);
    const r = this.changeBy.get(`${st.layer}/${st.head}`);
    const stats = r ? ` · mean |A−B| ${r.mean_abs.toFixed(4)} · JS ${r.js.toFixed(4)}` : "";
    this.title(ctx, `${st.stack} · layer ${st.layer} · ${this.headName()}${stats}`);
    const names = ["A: " + (this.diff.a || "A"), "B: " + (this.diff.b || "B"), "A − B"];
    const x0s = [];
    ctx.imageSmoothingEnabled = false;
    for (let p = 0; p < 3; p++) {
      const x = left + p * (pw + gap + bar);
      x0s.push(x);
      ctx.drawImage(dd.images[p], x, top, pw, ph);
      ctx.strokeStyle = "#888"; ctx.lineWidth = 1; ctx.strokeRect(x - 0.5, top - 0.5, pw + 1, ph + 1);
      ctx.fillStyle = "#222"; ctx.font = "bold 11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
      ctx.fillText(short(names[p], 40), x, M.top + 8, pw + bar);
      ctx.font = FONT;
      // Colour bar: A and B share 0..max of both; A − B is symmetric around 0.
      const bx = x + pw + 6, bh = Math.min(ph, 200), lut = p < 2 ? RGB : DIV_RGB;
      for (let y = 0; y < bh; y++) { const c = lut[Math.round((1 - y / Math.max(1, bh - 1)) * 255)]; ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`; ctx.fillRect(bx, top + y, 8, 1); }
      ctx.fillStyle = "#333"; ctx.textAlign = "left"; ctx.font = "10px system-ui, sans-serif";
      const [hi, lo] = p < 2 ? [dd.vmax, 0] : [dd.lim, -dd.lim];
      ctx.fillText(hi.toFixed(2), bx + 10, top + 4); ctx.fillText(lo.toFixed(2), bx + 10, top + bh - 4);
      if (p === 2) ctx.fillText("0", bx + 10, top + bh / 2);
      ctx.font = FONT;
    }
    // Token labels: rows on the left of A, columns above each panel when cells are big enough.
    const size = Math.max(7, Math.min(11, Math.floor(cs - 1))), step = Math.max(1, Math.ceil(11 / cs));
    ctx.font = `${size}px system-ui, sans-serif`; ctx.fillStyle = "#222";
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let i = 0; i < dd.q; i += step) ctx.fillText(short(info.query_tokens[i]), left - 4, top + (i + 0.5) * cs, M.label - 8);
    ctx.textAlign = "left";
    for (const x of x0s) {
      for (let j = 0; j < dd.k; j += step) {
        ctx.save(); ctx.translate(x + (j + 0.5) * cs, top - 4); ctx.rotate(-Math.PI / 2);
        ctx.fillText(short(info.key_tokens[j]), 0, 0, M.label - 8); ctx.restore();
      }
    }
    ctx.font = FONT;
    this.dgeom = { x0s, y0: top, cs, pw, ph, q: dd.q, k: dd.k };
    this.hits = [];
    this.mini.hidden = true;
  }

  // Layers × heads, each cell coloured by how much the head changed (JS or mean |A − B|).
  paintChange() {
    const st = this.st, [L, H] = this.stackInfo().shape, { w } = this.size(), m = st.metric;
    const left = 58, top = M.top + 16, gap = 3;
    const t = Math.max(10, Math.min(56, Math.floor((w - left - 60) / H) - gap));
    const ctx = this.setupCanvas(this.canvas, w, top + L * (t + gap) + 20);
    this.title(ctx, `${st.stack} · change per head: ${m === "js" ? "JS divergence (bits)" : "mean |A − B|"} · ${this.diff.aligned} aligned tokens (click one)`);
    let vmax = 0;
    for (const r of this.diff.ranking) vmax = Math.max(vmax, r[m]);
    vmax = vmax || 1;
    ctx.textAlign = "center"; ctx.textBaseline = "bottom"; ctx.fillStyle = "#333";
    for (let hd = 0; hd < H; hd++) ctx.fillText(String(hd), left + hd * (t + gap) + t / 2, top - 2);
    this.hits = [];
    this.changeCells = [];
    for (let li = 0; li < L; li++) {
      const y = top + li * (t + gap);
      ctx.fillStyle = "#333"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(`layer ${li}`, left - 6, y + t / 2);
      for (let hd = 0; hd < H; hd++) {
        const x = left + hd * (t + gap), r = this.changeBy.get(`${li}/${hd}`), v = r ? r[m] : 0;
        const c = RGB[Math.round(Math.min(1, v / vmax) * 255)];
        ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`; ctx.fillRect(x, y, t, t);
        const on = li === st.layer && hd === st.head;
        ctx.strokeStyle = on ? "#e8590c" : "#bbb"; ctx.lineWidth = on ? 2 : 1; ctx.strokeRect(x - 0.5, y - 0.5, t + 1, t + 1);
        if (t >= 30) {
          ctx.fillStyle = v / vmax > 0.55 ? "#fff" : "#333"; ctx.textAlign = "center"; ctx.font = "10px system-ui, sans-serif";
          ctx.fillText(fmtScore(v), x + t / 2, y + t / 2); ctx.font = FONT;
        }
        this.hits.push({ x, y, w: t, h: t, layer: li, head: hd });
        this.changeCells.push({ layer: li, head: hd, value: v, rgb: c });
      }
    }
    this.mini.hidden = true;
  }

  gridLayout(n, cols, rows, w, hh, top, left) {
    const gap = 8, cap = 14;
    const t = Math.floor(Math.min((w - left - gap * (cols + 1)) / cols, (hh - top - (gap + cap) * rows) / rows));
    return { gap, cap, t: Math.max(8, t) };
  }

  paintHeads() {
    const st = this.st, layer = this.cached(st.stack, st.layer), { w } = this.size();
    // Census: best heads first when a score is picked, and only the heads above the threshold.
    let order = Array.from({ length: layer.heads }, (_, i) => i).filter((hd) => this.passes(st.layer, hd));
    if (st.score && this.stackInfo().scores) {
      const v = (hd) => { const x = this.scoreOf(st.layer, hd, st.score); return x === null ? -Infinity : x; };
      order = order.slice().sort((a, b) => v(b) - v(a) || a - b);
    }
    const H = Math.max(1, order.length);
    let best = null;
    for (let cols = 1; cols <= H; cols++) {
      const rows = Math.ceil(H / cols), lay = this.gridLayout(H, cols, rows, w, 10000, M.top, 0);
      const t = Math.min(lay.t, 220), hh = M.top + rows * (t + lay.gap + lay.cap) + lay.gap;
      if (hh < w * 0.9 && (!best || t > best.t)) best = { cols, rows, t, gap: lay.gap, cap: lay.cap, hh };
    }
    best = best || { cols: H, rows: 1, t: 16, gap: 8, cap: 14, hh: 80 };
    const ctx = this.setupCanvas(this.canvas, w, best.hh);
    this.title(ctx, `${this.header.model?.id ?? "model"} · ${st.stack} · layer ${st.layer} · every head (click one)`);
    this.hits = [];
    order.forEach((hd, n) => {
      const c = n % best.cols, r = Math.floor(n / best.cols);
      const x = best.gap + c * (best.t + best.gap), y = M.top + r * (best.t + best.gap + best.cap);
      this.thumb(ctx, layer, hd, x, y, best.t);
      const badge = this.badge(st.layer, hd);
      this.drawBadge(ctx, x, y, best.t, badge);
      ctx.fillStyle = hd === st.head ? "#e8590c" : "#333"; ctx.textAlign = "center"; ctx.textBaseline = "top";
      ctx.fillText(`head ${hd}`, x + best.t / 2, y + best.t + 2);
      this.hits.push({ x, y, w: best.t, h: best.t, layer: st.layer, head: hd, badge });
    });
    if (!order.length) {
      ctx.fillStyle = "#666"; ctx.textAlign = "left"; ctx.textBaseline = "top";
      ctx.fillText(`no head of this layer has ${st.score} ≥ ${st.min}`, 8, M.top + 8);
    }
    this.mini.hidden = true;
  }

  thumb(ctx, layer, hd, x, y, t) {
    const st = this.st, key = `${st.stack}/${layer.layer}/${hd}/${st.ignoreFirst}`;
    let c = this.thumbs.get(key);
    if (!c) { c = paintThumb(headData(layer, hd), 128, st.ignoreFirst); this.thumbs.set(key, c); }
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(c, x, y, t, t);
    ctx.strokeStyle = layer.layer === st.layer && hd === st.head ? "#e8590c" : "#bbb";
    ctx.lineWidth = layer.layer === st.layer && hd === st.head ? 2 : 1;
    ctx.strokeRect(x - 0.5, y - 0.5, t + 1, t + 1);
  }

  async paintLayers(seq, t0) {
    const st = this.st, [L, H] = this.stackInfo().shape, { w } = this.size();
    const left = 58, top = M.top + 16, gap = 4;
    const t = Math.max(8, Math.min(72, Math.floor((w - left) / H) - gap));
    const hh = top + L * (t + gap) + gap;
    const ctx = this.setupCanvas(this.canvas, w, hh);
    this.title(ctx, `${this.header.model?.id ?? "model"} · ${st.stack} · layers × heads (click one)`);
    ctx.fillStyle = "#333"; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    for (let hd = 0; hd < H; hd++) ctx.fillText(String(hd), left + hd * (t + gap) + t / 2, top - 2);
    this.hits = [];
    this.mini.hidden = true;
    for (let li = 0; li < L; li++) {
      const y = top + li * (t + gap);
      ctx.fillStyle = "#333"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(`layer ${li}`, left - 6, y + t / 2);
      let layer = this.cached(st.stack, li);
      if (!layer) {
        this.status.textContent = `decoding layer ${li} of ${L}…`;
        try { layer = await this.layer(st.stack, li); } catch (err) { if (seq === this.seq) this.fail(err); return; }
        if (seq !== this.seq) return;
      }
      for (let hd = 0; hd < H; hd++) {
        const x = left + hd * (t + gap), badge = this.badge(li, hd), pass = this.passes(li, hd);
        this.thumb(ctx, layer, hd, x, y, t);
        if (!pass) { ctx.fillStyle = "rgba(255,255,255,0.8)"; ctx.fillRect(x, y, t, t); }
        else this.drawBadge(ctx, x, y, t, badge);
        this.hits.push({ x, y, w: t, h: t, layer: li, head: hd, badge, pass });
      }
    }
    this.status.textContent = "";
    const ms = performance.now() - t0;
    this.draws++;
    this.root.dataset.draws = String(this.draws);
    this.root.dataset.drawMs = ms.toFixed(2);
    this.root.dataset.view = "layers";
    timing({ kind: "layers", ms, at: performance.now(), stack: st.stack, n: this.draws });
  }

  // --- interaction ---
  pos(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  // What is under canvas point (x, y): a cell, a row label, a column label or a thumbnail.
  hit(x, y) {
    const st = this.st;
    if (!this.header) return null;
    if (st.view === "diff") {
      const g = this.dgeom;
      if (!g) return null;
      for (let p = 0; p < 3; p++) {
        const x0 = g.x0s[p];
        if (x >= x0 && x < x0 + g.pw && y >= g.y0 && y < g.y0 + g.ph) return { kind: "dcell", p, q: Math.floor((y - g.y0) / g.cs), k: Math.floor((x - x0) / g.cs) };
      }
      return null;
    }
    if (st.view !== "heatmap") {
      const t = (this.hits || []).find((b) => x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + b.h);
      return t ? { kind: "thumb", ...t } : null;
    }
    const g = this.geom();
    const k = Math.floor(st.k0 + (x - g.x0) / g.cs), q = Math.floor(st.q0 + (y - g.y0) / g.cs);
    const inX = x >= g.x0 && x < g.x0 + g.pw, inY = y >= g.y0 && y < g.y0 + g.ph;
    if (inX && inY) return { kind: "cell", q, k };
    if (inY && x < g.x0 && x >= 0) return { kind: "row", q };
    if (inY && g.pred && x >= g.x0 + g.pw && x < g.x0 + g.pw + g.pred && this.predictions().has(q)) return { kind: "pred", q };
    if (inX && y < g.y0 && y >= M.top) return { kind: "col", k };
    return null;
  }

  hover(e) {
    if (this.drag) return;
    const { x, y } = this.pos(e), t = this.hit(x, y), info = this.header && this.stackInfo();
    const tip = this.tip;
    if (!t) { tip.hidden = true; return; }
    const line = (label, text, cls) => { const d = h("div", cls); d.append(h("span", "am-k", label), h("span", "am-tok", text)); return d; };
    tip.replaceChildren();
    delete tip.dataset.value;
    if (t.kind === "cell") {
      const d = this.current(), v = value(d, t.q, t.k);
      tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), line(`key ${t.k} `, info.key_tokens[t.k]));
      tip.append(h("div", "am-val", v === null ? "masked (this query cannot see this key)" : `attention ${v.toFixed(4)}`));
      tip.dataset.q = t.q; tip.dataset.k = t.k; tip.dataset.value = v === null ? "masked" : v.toFixed(4);
    } else if (t.kind === "dcell") {
      const dd = this.diffHead(), p = t.q * dd.k + t.k;
      tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), line(`key ${t.k} `, info.key_tokens[t.k]));
      if (Number.isNaN(dd.d[p])) tip.append(h("div", "am-val", "masked"));
      else tip.append(h("div", "am-val", `A ${dd.a[p].toFixed(4)} · B ${dd.b[p].toFixed(4)} · A − B ${dd.d[p] >= 0 ? "+" : ""}${dd.d[p].toFixed(4)}`));
      tip.dataset.value = Number.isNaN(dd.d[p]) ? "masked" : dd.d[p].toFixed(4);
    } else if (t.kind === "pred") {
      const r = this.predictions().get(t.q);
      tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), line("top-1 ", `${r.top[0].token}  p ${r.top[0].p.toFixed(3)}`));
      if (r.next) tip.append(line("actual next ", `${r.next.token}  p ${r.next.p.toFixed(3)} · rank ${r.next.rank}`));
      tip.append(h("div", "am-k", "click: top-k"));
    } else if (t.kind === "row") {
      tip.append(line(`query ${t.q} `, info.query_tokens[t.q]), h("div", "am-k", "click: highlight"));
    } else if (t.kind === "col") {
      tip.append(line(`key ${t.k} `, info.key_tokens[t.k]), h("div", "am-k", "click: highlight"));
    } else {
      tip.append(h("div", "", `layer ${t.layer} · head ${t.head}`), h("div", "am-k", "click to open"));
    }
    tip.hidden = false;
    const r = this.canvas.getBoundingClientRect();
    tip.style.left = Math.min(x + 14, r.width - 180) + "px";
    tip.style.top = y + 16 + "px";
  }

  press(e) {
    if (e.button !== 0) return;
    this.root.focus({ preventScroll: true });
    const start = this.pos(e), t = this.hit(start.x, start.y), st = this.st;
    if (!t) return;
    if (t.kind === "thumb") { this.set({ layer: t.layer, head: t.head, view: st.view === "change" ? "diff" : "heatmap" }); return; }
    if (t.kind === "dcell") return;
    if (t.kind === "cell") {
      const g = this.geom();
      if (g.cs <= g.fit) return;
      // Drag to pan; a click without movement does nothing.
      const q0 = st.q0, k0 = st.k0;
      const move = (ev) => {
        const p = this.pos(ev);
        this.drag = true;
        st.k0 = k0 - (p.x - start.x) / g.cs; st.q0 = q0 - (p.y - start.y) / g.cs;
        this.paint();
      };
      const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); this.drag = false; };
      window.addEventListener("mousemove", move);
      window.addEventListener("mouseup", up);
      this.off.push(up);
      return;
    }
    this.select(t.kind === "row" || t.kind === "pred" ? t.q : null, t.kind === "col" ? t.k : null);
  }

  select(q, k) {
    // Self-attention: one token is both a query (its row) and a key (its column).
    if (this.st.stack !== "cross") { const i = q ?? k; q = i; k = i; }
    const cur = this.st.sel;
    if (cur && cur.q === q && cur.k === k) { this.set({ sel: null }); this.showInfo(); return; }
    this.set({ sel: { q, k } });
    this.showInfo();
  }

  showInfo() {
    const sel = this.st.sel, d = this.current(), info = this.stackInfo();
    this.info.replaceChildren();
    if (!sel || !d) return;
    const top = (pairs) => pairs.filter((p) => p[1] !== null).sort((a, b) => b[1] - a[1]).slice(0, 5);
    const list = (title, rows, toks) => {
      const box = h("div", "am-list");
      box.append(h("div", "am-k", title));
      for (const [i, v] of rows) { const r = h("div", "am-row"); r.append(h("span", "am-tok", toks[i]), h("span", "am-num", v.toFixed(3))); box.append(r); }
      this.info.append(box);
    };
    const head = h("div", "am-sel");
    if (sel.q != null) head.append(h("span", "am-k", `query ${sel.q} `), h("span", "am-tok", info.query_tokens[sel.q]));
    if (sel.k != null && sel.k !== sel.q) head.append(h("span", "am-k", ` key ${sel.k} `), h("span", "am-tok", info.key_tokens[sel.k]));
    this.info.append(head);
    if (sel.q != null) list("attends most to", top(Array.from({ length: d.k }, (_, j) => [j, value(d, sel.q, j)])), info.key_tokens);
    if (sel.k != null) list("attended most by", top(Array.from({ length: d.q }, (_, i) => [i, value(d, i, sel.k)])), info.query_tokens);
    const pred = sel.q != null && this.predictions() ? this.predictions().get(sel.q) : null;
    if (pred) {
      const box = h("div", "am-list am-pred");
      box.append(h("div", "am-k", this.header.predictions_kind === "masked" ? "fill-in, top-k" : "next token, top-k"));
      for (const t of pred.top) {
        const r = h("div", "am-row am-pred-row");
        if (pred.next && t.token === pred.next.token) r.classList.add("am-pred-true");
        r.append(h("span", "am-tok", t.token), h("span", "am-num", t.p.toFixed(3)));
        box.append(r);
      }
      if (pred.next) {
        const r = h("div", "am-pred-next" + (pred.next.rank !== 1 ? " am-pred-miss" : ""));
        r.append(h("span", "am-k", "actual "), h("span", "am-tok", pred.next.token),
          h("span", "am-num", ` p ${pred.next.p.toFixed(3)} · rank ${pred.next.rank}`));
        box.append(r);
      }
      this.info.append(box);
    }
  }

  zoom(f, cx, cy) {
    if (this.st.view !== "heatmap") return;
    const g = this.geom(), st = this.st;
    const px = cx ?? g.x0 + g.pw / 2, py = cy ?? g.y0 + g.ph / 2;
    const ck = st.k0 + (px - g.x0) / g.cs, cq = st.q0 + (py - g.y0) / g.cs; // cell under the point stays put
    const cs = Math.min(80, Math.max(g.fit, g.cs * f));
    this.set({ cs: cs <= g.fit ? null : cs, k0: ck - (px - g.x0) / cs, q0: cq - (py - g.y0) / cs });
  }

  wheel(e) {
    if (this.st.view !== "heatmap") return;
    const g = this.geom(), p = this.pos(e);
    if (e.ctrlKey || e.metaKey) { e.preventDefault(); this.zoom(e.deltaY < 0 ? 1.25 : 0.8, p.x, p.y); return; }
    if (g.cs <= g.fit) return; // at full view the page scrolls as usual
    e.preventDefault();
    this.set({ k0: this.st.k0 + (e.shiftKey ? e.deltaY : e.deltaX) / g.cs, q0: this.st.q0 + (e.shiftKey ? 0 : e.deltaY) / g.cs });
  }

  miniPress(e) {
    const go = (ev) => {
      const r = this.mini.getBoundingClientRect(), g = this.geom();
      const k = (ev.clientX - r.left) / this.miniScale, q = (ev.clientY - r.top) / this.miniScale;
      this.set({ k0: k - g.vk / 2, q0: q - g.vq / 2 });
    };
    go(e);
    const up = () => { window.removeEventListener("mousemove", go); window.removeEventListener("mouseup", up); };
    window.addEventListener("mousemove", go);
    window.addEventListener("mouseup", up);
  }

  key(e) {
    if (e.target && /^(SELECT|INPUT|TEXTAREA)$/.test(e.target.tagName)) return;
    const st = this.st, [L, H] = this.stackInfo().shape;
    const head = (dh) => (typeof st.head === "number" ? (st.head + dh + H) % H : dh > 0 ? 0 : H - 1);
    const acts = {
      ArrowLeft: () => this.set({ head: head(-1) }), h: () => this.set({ head: head(-1) }),
      ArrowRight: () => this.set({ head: head(1) }), l: () => this.set({ head: head(1) }),
      ArrowUp: () => this.set({ layer: (st.layer - 1 + L) % L }), k: () => this.set({ layer: (st.layer - 1 + L) % L }),
      ArrowDown: () => this.set({ layer: (st.layer + 1) % L }), j: () => this.set({ layer: (st.layer + 1) % L }),
      "+": () => this.zoom(2), "=": () => this.zoom(2), "-": () => this.zoom(0.5), 0: () => this.set({ cs: null }),
      Escape: () => { this.set({ sel: null }); this.showInfo(); },
    };
    const f = acts[e.key];
    if (!f || e.ctrlKey || e.metaKey || e.altKey) return;
    e.preventDefault();
    e.stopPropagation();
    f();
    if (this.st.sel) this.showInfo();
  }

  download() {
    const st = this.st, name = `attnmap-${st.stack}-L${st.layer}-${typeof st.head === "number" ? "H" + st.head : st.head}-${st.view}.png`;
    this.canvas.toBlob((blob) => {
      if (!blob) return this.fail(new Error("attnmap: this browser could not make a PNG"));
      const url = URL.createObjectURL(blob), a = h("a");
      a.href = url; a.download = name; a.hidden = true;
      this.root.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 5000);
    }, "image/png");
  }

  // Small hooks for tests and benchmarks: state and where things are on screen.
  hooks() {
    const self = this;
    const at = (x, y) => { const r = self.canvas.getBoundingClientRect(); return { x: r.left + x, y: r.top + y }; };
    return {
      get state() { return { ...self.st }; },
      get header() { return self.header; },
      get thumbs() { return (self.hits || []).map((t) => ({ layer: t.layer, head: t.head, badge: t.badge ?? null, pass: t.pass ?? true })); },
      get changeCells() { return self.changeCells || []; },
      diffCell(p, q, k) { const g = self.dgeom; return at(g.x0s[p] + (k + 0.5) * g.cs, g.y0 + (q + 0.5) * g.cs); },
      get diffHead() { const d = self.diffHead(); return { q: d.q, k: d.k, lim: d.lim, vmax: d.vmax, a: Array.from(d.a, (v) => (Number.isNaN(v) ? null : v)), b: Array.from(d.b, (v) => (Number.isNaN(v) ? null : v)), d: Array.from(d.d, (v) => (Number.isNaN(v) ? null : v)) }; },
      diffPixel(p, q, k) { const g = self.dgeom, r = window.devicePixelRatio || 1; return Array.from(self.canvas.getContext("2d").getImageData(Math.floor((g.x0s[p] + (k + 0.5) * g.cs) * r), Math.floor((g.y0 + (q + 0.5) * g.cs) * r), 1, 1).data); },
      get predRows() { return self.predRows || []; },
      pred(q) { const g = self.geom(); return at(g.x0 + g.pw + 30, g.y0 + (q - self.st.q0 + 0.5) * g.cs); },
      get words() { return self.words.map((w) => w.spec); },
      relate(from, to, vs) { // pick words by their spec ("mat", "mat#2") and rank the heads
        const idx = (spec) => String(self.words.findIndex((w) => w.spec === spec));
        self.ui.from.value = idx(from); self.ui.to.value = idx(to); self.ui.vs.value = vs ? idx(vs) : "";
        return self.relate();
      },
      get canvasSize() { return { w: self.canvas.width, h: self.canvas.height }; },
      cell(q, k) { const g = self.geom(); return at(g.x0 + (k - self.st.k0 + 0.5) * g.cs, g.y0 + (q - self.st.q0 + 0.5) * g.cs); },
      rowLabel(q) { const g = self.geom(); return at(g.x0 - 20, g.y0 + (q - self.st.q0 + 0.5) * g.cs); },
      colLabel(k) { const g = self.geom(); return at(g.x0 + (k - self.st.k0 + 0.5) * g.cs, g.y0 - 20); },
      thumb(layer, head) { const b = (self.hits || []).find((t) => t.layer === layer && t.head === head); return b ? at(b.x + b.w / 2, b.y + b.h / 2) : null; },
      pixel(q, k) { // canvas RGBA inside a cell, clear of its printed value (device pixels)
        const g = self.geom(), r = window.devicePixelRatio || 1;
        const x = Math.floor((g.x0 + (k - self.st.k0 + 0.15) * g.cs) * r), y = Math.floor((g.y0 + (q - self.st.q0 + 0.15) * g.cs) * r);
        return Array.from(self.canvas.getContext("2d").getImageData(x, y, 1, 1).data);
      },
    };
  }
}

function render({ model, el }) {
  const v = new Viewer(model, el);
  v.start();
  return () => v.destroy();
}

export default { render };
