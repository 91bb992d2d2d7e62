// Where things go on the canvas. Pure: it reads a state and never changes it.

/** @typedef {import("./types.js").State} State */

export const M = { top: 24, axis: 16, label: 110, bar: 88, pad: 6 }; // canvas margins in CSS pixels
export const PRED_W = 128; // width of the predictions column right of the matrix
export const BAND = 14; // width of a chat-role band along each axis
export const MAX_CELL = 80;

/**
 * Canvas size for a root element `width` pixels wide, with `height` pixels left below the
 * canvas's top in the window (0: unknown). The canvas fits that height, so the whole matrix
 * is on screen without scrolling, down to a 360 px floor.
 * @param {number} width
 * @param {number} [height]
 */
export function canvasSize(width, height = 0) {
  const w = Math.max(420, Math.min(1100, (width || 900) - 190));
  const room = height > 0 ? height : Infinity;
  return { w, h: Math.round(Math.min(820, Math.max(360, Math.min(w * 0.82, room)))) };
}

/**
 * Room the token labels need, in CSS pixels: the widest row label and the widest column label
 * (each capped at M.label).
 * @typedef {{ rows: number, cols: number }} LabelRoom
 */

/**
 * @typedef {object} Geometry
 * @property {number} w  canvas width
 * @property {number} h  canvas height
 * @property {number} x0  matrix left
 * @property {number} y0  matrix top
 * @property {number} pw  matrix width on screen
 * @property {number} ph  matrix height on screen
 * @property {number} cs  cell size
 * @property {number} fit  cell size that shows the whole matrix
 * @property {number} Q
 * @property {number} K
 * @property {number} vk  visible keys (cells across)
 * @property {number} vq  visible queries
 * @property {number} k0  first visible key, clamped to the matrix
 * @property {number} q0  first visible query, clamped
 * @property {number} pred  width of the predictions column (0 without predictions)
 * @property {number} band  width of the role bands (0 without roles)
 * @property {number} lw  room for the row labels (left of the bands)
 * @property {number} lh  room for the column labels (above the bands)
 * @property {number} r0  first query row of the window the matrix shows (0, or the first
 *   generated token in the generated-only view); q0 and every row index stay absolute
 * @property {number} r1  end of that window (Q for every row)
 */

/**
 * The heatmap's geometry for a state.
 * @param {{ w: number, h: number }} size
 * @param {number} Q  queries
 * @param {number} K  keys
 * @param {{ predictions: boolean, bands: boolean, room?: LabelRoom, rows?: [number, number] }} extras
 *   room: the labels' measured widths (default: M.label each); rows: the window of query
 *   rows [r0, r1) to show (default: all)
 * @param {State} st
 * @returns {Geometry}
 */
export function heatmapGeometry(size, Q, K, extras, st) {
  const { w, h } = size;
  const pred = extras.predictions ? PRED_W : 0, band = extras.bands ? BAND : 0;
  /** @param {number | undefined} x */
  const room = (x) => Math.round(Math.max(24, Math.min(M.label, x ?? M.label)));
  const lw = room(extras.room?.rows), lh = room(extras.room?.cols);
  // An axis title strip left of the row labels and one above the column labels.
  const x0 = M.axis + lw + band, y0 = M.top + M.axis + lh + band;
  const pw = w - x0 - M.bar - pred, ph = h - y0 - M.pad;
  const r0 = Math.max(0, Math.min(Q, extras.rows ? extras.rows[0] : 0));
  const r1 = Math.max(r0, Math.min(Q, extras.rows ? extras.rows[1] : Q)), nq = r1 - r0;
  const fit = Math.min(pw / Math.max(1, K), ph / Math.max(1, nq));
  const cs = st.cs && st.cs > fit ? st.cs : fit;
  const vk = pw / cs, vq = ph / cs; // visible cells
  const zoomed = cs !== fit;
  const k0 = zoomed ? Math.max(0, Math.min(st.k0, K - vk)) : 0;
  const q0 = zoomed ? Math.max(r0, Math.min(st.q0, r1 - vq)) : r0;
  return { w, h, x0, y0, pw: Math.min(pw, K * cs), ph: Math.min(ph, nq * cs), cs, fit, Q, K, vk, vq, k0, q0, pred, band, lw, lh, r0, r1 };
}

/**
 * The cell size and view origin after zooming by `f` about canvas point (px, py): the cell under
 * the point stays put. cs null = back to the whole matrix.
 * @param {Geometry} g
 * @param {number} f
 * @param {number} px
 * @param {number} py
 * @returns {{ cs: number | null, k0: number, q0: number }}
 */
export function zoomAbout(g, f, px, py) {
  const ck = g.k0 + (px - g.x0) / g.cs, cq = g.q0 + (py - g.y0) / g.cs;
  const cs = Math.min(MAX_CELL, Math.max(g.fit, g.cs * f));
  return { cs: cs <= g.fit ? null : cs, k0: ck - (px - g.x0) / cs, q0: cq - (py - g.y0) / cs };
}

/**
 * A grid of `n` thumbnails in `cols` columns.
 * @param {number} cols
 * @param {number} rows
 * @param {number} w
 * @param {number} hh
 * @param {number} top
 * @param {number} left
 */
export function gridLayout(cols, rows, w, hh, top, left) {
  const gap = 8, cap = 14;
  const t = Math.floor(Math.min((w - left - gap * (cols + 1)) / cols, (hh - top - (gap + cap) * rows) / rows));
  return { gap, cap, t: Math.max(8, t) };
}

/**
 * The best grid for `n` thumbnails on a canvas `w` wide: the largest thumbnails whose grid stays
 * shorter than 0.9 w.
 * @param {number} n
 * @param {number} w
 */
export function headsGrid(n, w) {
  const H = Math.max(1, n);
  /** @type {{ cols: number, rows: number, t: number, gap: number, cap: number, hh: number } | null} */
  let best = null;
  for (let cols = 1; cols <= H; cols++) {
    const rows = Math.ceil(H / cols), lay = gridLayout(cols, rows, w, 10000, M.top, 0);
    const t = Math.min(lay.t, 220), hh = M.top + rows * (t + lay.gap + lay.cap) + lay.gap;
    if (hh < w * 0.9 && (!best || t > best.t)) best = { cols, rows, t, gap: lay.gap, cap: lay.cap, hh };
  }
  return best || { cols: H, rows: 1, t: 16, gap: 8, cap: 14, hh: 80 };
}

/**
 * Every how many rows (or columns) a token label is drawn: labels stay ≥ 12 px apart.
 * @param {number} cs  cell size
 */
export function labelStep(cs) { return Math.max(1, Math.ceil(12 / cs)); }

/**
 * The token whose label is nearest to position `t` along an axis (in cells, fractional, from
 * the first token): a label's text is taller than a small cell, so a click on it must go to
 * the labelled token, not to whichever cell lies under the pointer. Labels are drawn for every
 * `step`-th token and for the selected one (`sel`).
 * @param {number} t
 * @param {number} n  tokens on the axis
 * @param {number} step
 * @param {number | null} [sel]
 */
export function nearestLabel(t, n, step, sel = null) {
  const last = Math.floor((n - 1) / step) * step;
  let best = Math.max(0, Math.min(last, Math.round((t - 0.5) / step) * step));
  if (sel != null && sel >= 0 && sel < n && Math.abs(sel + 0.5 - t) < Math.abs(best + 0.5 - t)) best = sel;
  return best;
}
