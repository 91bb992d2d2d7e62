// Numbers from decoded layers: one head, mean/max of heads, values, maxima, A − B. No DOM.

import { LEVELS, MASKED } from "./payload.js";

/** @typedef {import("./types.js").Layer} Layer */
/** @typedef {import("./types.js").HeadData} HeadData */
/** @typedef {import("./types.js").Head} Head */

/**
 * @param {Layer} layer
 * @param {Head} h
 * @returns {HeadData}
 */
export function headData(layer, h) {
  if (h === "mean" || h === "max") return aggregate(layer, h);
  const n = layer.q * layer.k;
  const r0 = h * layer.q, r1 = (h + 1) * layer.q;
  return { q: layer.q, k: layer.k, scales: layer.scales.subarray(r0, r1), codes: layer.codes.subarray(h * n, (h + 1) * n), peaks: layer.peaks.subarray(r0, r1), levels: layer.levels, stats: null };
}

/**
 * Rows [r0, r1) of a head, as a head of their own (views, no copy).
 * @param {HeadData} d
 * @param {number} r0
 * @param {number} r1
 * @returns {HeadData}
 */
export function rowSlice(d, r0, r1) {
  if (r0 === 0 && r1 === d.q) return d;
  return { q: r1 - r0, k: d.k, scales: d.scales.subarray(r0, r1), codes: d.codes.subarray(r0 * d.k, r1 * d.k), peaks: d.peaks.subarray(r0, r1), levels: d.levels, stats: null };
}

/**
 * Mean or max over the heads, re-quantised per row like the payload; cached on the layer.
 * @param {Layer} layer
 * @param {"mean" | "max"} how
 * @returns {HeadData}
 */
export function aggregate(layer, how) {
  const cached = layer.derived.get(how);
  if (cached) return cached;
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
  const d = { q, k, scales, codes, peaks: scales, levels: LEVELS, stats: null };
  layer.derived.set(how, d);
  return d;
}

/**
 * The attention of query i to key j, or null where the query cannot see the key.
 * @param {HeadData} d
 * @param {number} i
 * @param {number} j
 */
export function value(d, i, j) {
  const c = d.codes[i * d.k + j];
  return c === MASKED ? null : (c * d.scales[i]) / LEVELS;
}

/**
 * The head's largest value (without key 0 when `ignoreFirst`); 1 for an all-zero head.
 * @param {HeadData} d
 * @param {boolean} ignoreFirst
 */
export function headMax(d, ignoreFirst) {
  // Row maxima are known (peaks), so the head max is one pass over q numbers; the max without
  // key 0 needs every cell and is only computed when asked for.
  if (!d.stats) {
    let all = 0;
    for (let i = 0; i < d.q; i++) if (d.peaks[i] > all) all = d.peaks[i];
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
  const m = ignoreFirst && d.k > 1 ? d.stats.rest ?? 0 : d.stats.all;
  return m > 0 ? m : 1;
}

/**
 * @typedef {object} DiffHead
 * @property {number} q
 * @property {number} k
 * @property {Float32Array} a  [query, key], NaN where either run masks the cell
 * @property {Float32Array} b
 * @property {Float32Array} d  A − B
 * @property {number} lim   largest |A − B| (the diverging scale is −lim..lim)
 * @property {number} vmax  largest value of A and B
 */

/**
 * A, B and A − B of one head as floats.
 * @param {HeadData} da
 * @param {HeadData} db
 * @returns {DiffHead}
 */
export function diffData(da, db) {
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
