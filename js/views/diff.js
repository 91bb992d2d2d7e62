// Diff pages: A, B and A − B of one head side by side, and layers × heads coloured by change.

import { M } from "../layout.js";
import { css, darkEntry, lutIndex } from "../colour.js";
import { diffData, headData } from "../data.js";
import { paintFloat } from "../images.js";
import { FONT, hatch, rampBar, setupCanvas, short, title } from "../draw.js";

/** @typedef {import("../viewer.js").Viewer} Viewer */
/** @typedef {import("../data.js").DiffHead} DiffHead */

/**
 * Where paintDiff put the panels (CSS pixels of the canvas), for hit tests and test hooks.
 * @typedef {object} DiffGeometry
 * @property {number[]} x0s  left of panels A, B, A − B
 * @property {number[]} y0s  top of each panel
 * @property {number} cs  cell size
 * @property {number} pw
 * @property {number} ph
 * @property {number} q
 * @property {number} k
 * @property {number} cols  panels per row
 * @property {number[]} labelled  the positions that got a label (rows and columns)
 * @property {string[]} labels  the label of each aligned position
 * @property {boolean[]} changed  substituted positions
 * @property {number} font  label font size, px
 */

/**
 * A, B and A − B of the shown head with their images, cached.
 * @param {Viewer} v
 * @returns {DiffHead & { images: HTMLCanvasElement[] }}
 */
export function diffHead(v) {
  const st = v.st, key = `${st.stack}/${st.layer}/${st.head}`;
  let dd = v.diffCache.get(key);
  if (!dd) {
    const la = v.cached(st.stack, st.layer), lb = v.layersB.get(`${st.stack}/${st.layer}`);
    if (!la || !lb) throw new Error(`attnmap: layer ${st.layer} is not decoded yet`);
    const d = diffData(headData(la, st.head), headData(lb, st.head));
    const { seq, div } = v.ramps;
    dd = { ...d, images: [paintFloat(d.a, d.q, d.k, 0, d.vmax, seq), paintFloat(d.b, d.q, d.k, 0, d.vmax, seq), paintFloat(d.d, d.q, d.k, -d.lim, d.lim, div)] };
    v.diffCache.set(key, dd);
    while (v.diffCache.size > 8) v.diffCache.delete(/** @type {string} */ (v.diffCache.keys().next().value));
  }
  return dd;
}

export const CHANGED = "#c2410c"; // a substituted token's label (A's token → B's), as the PNG
const NEED = 11; // px per cell for a label on every token (rows and rotated columns)
const GAP = 18, BAR = 46, HEAD = 18; // between panels, colour bar + its numbers, panel name

/**
 * One label per aligned position: the token, or "keys→key" where the pair is a substitution.
 * The page says which pairs are substituted (options.diff.changed); without that, a pair whose
 * A and B tokens read differently is one.
 * @param {Viewer} v
 * @returns {{ text: string[], changed: boolean[] }}
 */
export function diffLabels(v) {
  const st = v.st, a = v.stackInfo(st.stack).query_tokens;
  const sb = v.B?.header.stacks.find((s) => s.name === st.stack);
  const b = sb ? sb.query_tokens : a;
  const given = v.diff?.changed;
  const changed = a.map((t, i) => (given && given.length === a.length ? !!given[i] : b[i] !== undefined && b[i] !== t));
  return { text: a.map((t, i) => (changed[i] ? `${t}→${b[i] ?? "?"}` : t)), changed };
}

/**
 * Where the three panels go on a canvas `w` wide for `n` tokens: in one row when every token
 * can be labelled there, else in two rows (A and B, then A − B) or one column, the fewest rows
 * whose cells leave room for a label on every token; a text too long for that keeps one row
 * and labels every few tokens. Panels in more than one row are capped at 18 px cells.
 * @param {number} w
 * @param {number} n
 * @param {number} left  room for the row labels
 * @returns {{ cols: number, side: number, cs: number }}
 */
export function diffLayout(w, n, left) {
  const N = Math.max(1, n);
  /** @param {number} cols */
  const side = (cols) => Math.max(60, Math.floor((w - left - cols * (GAP + BAR)) / cols));
  for (const cols of [3, 2, 1]) {
    const cs = side(cols) / N;
    if (cs >= NEED) {
      const c = cols === 3 ? cs : Math.min(cs, 18);
      return { cols, side: c * N, cs: c };
    }
  }
  return { cols: 3, side: side(3), cs: side(3) / N };
}

/**
 * `x` with three significant digits, short: ".0523", "0.500" → ".500", "1.23", "4.20e-5".
 * @param {number} x
 */
export function sig3(x) {
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 1e3) return x.toPrecision(3).replace(/^(-?)0\./, "$1.");
  return x.toExponential(2);
}

/** @param {Viewer} v */
export function paintDiff(v) {
  const st = v.st, dd = diffHead(v), { w } = v.size(), labels = diffLabels(v);
  const left = M.label, n = Math.max(dd.q, dd.k), lay = diffLayout(w, n, left), cs = lay.cs;
  const pw = dd.k * cs, ph = dd.q * cs, rows = Math.ceil(3 / lay.cols);
  const rowH = HEAD + M.label + ph + 14; // panel name, column labels, matrix, space
  const ctx = setupCanvas(v.dom.canvas, w, M.top + rows * rowH + 16);
  const r = v.changeBy.get(`${st.layer}/${st.head}`);
  const stats = r ? ` · mean |A−B| ${r.mean_abs.toFixed(4)} · JS ${r.js.toFixed(4)}` : "";
  const subs = labels.changed.filter(Boolean).length;
  title(ctx, `${st.stack} · layer ${st.layer} · ${v.headName()}${stats}${subs ? ` · ${subs} substituted (A→B)` : ""}`);
  const names = ["A: " + (v.diff?.a || "A"), "B: " + (v.diff?.b || "B"), "A − B"];
  /** @type {number[]} */
  const x0s = [];
  /** @type {number[]} */
  const y0s = [];
  ctx.imageSmoothingEnabled = false;
  for (let p = 0; p < 3; p++) {
    const col = p % lay.cols, row = Math.floor(p / lay.cols);
    const x = left + col * (pw + GAP + BAR), top = M.top + row * rowH + HEAD + M.label;
    x0s.push(x); y0s.push(top);
    hatch(ctx, x, top, pw, ph); // shows through the masked (transparent) cells
    ctx.drawImage(dd.images[p], x, top, pw, ph);
    ctx.strokeStyle = "#888"; ctx.lineWidth = 1; ctx.strokeRect(x - 0.5, top - 0.5, pw + 1, ph + 1);
    ctx.fillStyle = "#222"; ctx.font = "bold 11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    const nameW = (lay.cols === 1 ? w - left : pw + BAR) - 4;
    ctx.fillText(short(names[p], Math.max(12, Math.floor(nameW / 6))), x, top - M.label - HEAD / 2, nameW);
    ctx.font = FONT;
    // Colour bar: A and B share 0..max of both; A − B is symmetric around 0.
    const bx = x + pw + 6, bh = Math.min(ph, 200);
    rampBar(ctx, p < 2 ? v.ramps.seq : v.ramps.div, bx, top, 8, bh);
    ctx.fillStyle = "#333"; ctx.textAlign = "left"; ctx.font = "10px system-ui, sans-serif";
    const [hi, lo] = p < 2 ? [dd.vmax, 0] : [dd.lim, -dd.lim];
    ctx.fillText(hi.toFixed(2), bx + 10, top + 4); ctx.fillText(lo.toFixed(2), bx + 10, top + bh - 4);
    if (p === 2) ctx.fillText("0", bx + 10, top + bh / 2);
    ctx.font = FONT;
  }
  // Token labels: rows left of each row's first panel, columns above every panel; a
  // substituted token reads "keys→key", in orange.
  const size = Math.max(7, Math.min(11, Math.floor(cs - 1))), step = Math.max(1, Math.ceil(NEED / cs));
  /** @type {number[]} */
  const drawn = [];
  for (let i = 0; i < n; i += step) drawn.push(i);
  /** @param {number} i */
  const style = (i) => {
    ctx.font = `${labels.changed[i] ? "bold " : ""}${size}px system-ui, sans-serif`;
    ctx.fillStyle = labels.changed[i] ? CHANGED : "#222";
  };
  ctx.textBaseline = "middle";
  for (let p = 0; p < 3; p++) {
    const x = x0s[p], top = y0s[p];
    if (p % lay.cols === 0) {
      ctx.textAlign = "right";
      for (const i of drawn) if (i < dd.q) { style(i); ctx.fillText(short(labels.text[i], 24), x - 4, top + (i + 0.5) * cs, M.label - 8); }
    }
    ctx.textAlign = "left";
    for (const j of drawn) {
      if (j >= dd.k) continue;
      style(j);
      ctx.save(); ctx.translate(x + (j + 0.5) * cs, top - 4); ctx.rotate(-Math.PI / 2);
      ctx.fillText(short(labels.text[j], 24), 0, 0, M.label - 8); ctx.restore();
    }
  }
  ctx.font = FONT;
  v.dgeom = { x0s, y0s, cs, pw, ph, q: dd.q, k: dd.k, cols: lay.cols, labelled: drawn, labels: labels.text, changed: labels.changed, font: size };
  v.hits = [];
  v.dom.mini.hidden = true;
}

/**
 * Layers × heads, each cell coloured by how much the head changed (JS or mean |A − B|).
 * @param {Viewer} v
 */
export function paintChange(v) {
  const st = v.st, [L, H] = v.stackInfo().shape, { w } = v.size(), m = st.metric, diff = v.diff;
  if (!diff) return;
  const left = 58, top = M.top + 16, gap = 3, ramp = v.ramps.seq;
  const t = Math.max(10, Math.min(56, Math.floor((w - left - 60) / H) - gap));
  const ctx = setupCanvas(v.dom.canvas, w, top + L * (t + gap) + 20);
  title(ctx, `${st.stack} · change per head: ${m === "js" ? "JS divergence (bits)" : "mean |A − B|"} · ${diff.aligned} aligned tokens (click one)`);
  let vmax = 0;
  for (const r of diff.ranking) vmax = Math.max(vmax, r[m]);
  vmax = vmax || 1;
  ctx.textAlign = "center"; ctx.textBaseline = "bottom"; ctx.fillStyle = "#333";
  for (let hd = 0; hd < H; hd++) ctx.fillText(String(hd), left + hd * (t + gap) + t / 2, top - 2);
  v.hits = [];
  v.changeCells = [];
  for (let li = 0; li < L; li++) {
    const y = top + li * (t + gap);
    ctx.fillStyle = "#333"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(`layer ${li}`, left - 6, y + t / 2);
    for (let hd = 0; hd < H; hd++) {
      const x = left + hd * (t + gap), r = v.changeBy.get(`${li}/${hd}`), val = r ? r[m] : 0;
      const i = lutIndex(val / vmax), rgb = Array.from(ramp.rgb.subarray(3 * i, 3 * i + 3));
      ctx.fillStyle = css(ramp, i); ctx.fillRect(x, y, t, t);
      const on = li === st.layer && hd === st.head;
      ctx.strokeStyle = on ? "#e8590c" : "#bbb"; ctx.lineWidth = on ? 2 : 1; ctx.strokeRect(x - 0.5, y - 0.5, t + 1, t + 1);
      let label = null;
      if (t >= 30) {
        // Three significant digits: a change of 0.0042 must not read ".00".
        label = sig3(val);
        ctx.fillStyle = darkEntry(ramp, i) ? "#fff" : "#333"; ctx.textAlign = "center";
        let px = 10;
        ctx.font = `${px}px system-ui, sans-serif`;
        while (px > 8 && ctx.measureText(label).width > t - 4) ctx.font = `${--px}px system-ui, sans-serif`;
        ctx.fillText(label, x + t / 2, y + t / 2, t - 2); ctx.font = FONT;
      }
      v.hits.push({ x, y, w: t, h: t, layer: li, head: hd });
      v.changeCells.push({ layer: li, head: hd, value: val, rgb, label });
    }
  }
  v.dom.mini.hidden = true;
}
