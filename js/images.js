// Pixel painters: a head, a float matrix or a thumbnail into an offscreen canvas, one pixel per
// cell, through a colormap's table.

import { LEVELS, MASKED } from "./payload.js";
import { MASK_A, lutIndex, tOf } from "./colour.js";
import { headMax } from "./data.js";
import { ctx2d } from "./draw.js";

/** @typedef {import("./types.js").HeadData} HeadData */
/** @typedef {import("./colour.js").Ramp} Ramp */

/**
 * @param {number} w
 * @param {number} h
 * @param {ImageData} img
 */
function toCanvas(w, h, img) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  ctx2d(c).putImageData(img, 0, 0);
  return c;
}

// Masked cells are left transparent in the images: the views paint the hatch (draw.hatch)
// behind the matrix, as the figures do.
const CLEAR = 0;

/**
 * [query, key] → pixels, one per cell: the fast path for 1,000+ tokens.
 * @param {HeadData} d
 * @param {number} vmax
 * @param {string} scale
 * @param {Ramp} ramp
 */
export function paintImage(d, vmax, scale, ramp) {
  const img = new ImageData(Math.max(1, d.k), Math.max(1, d.q));
  const px = new Uint32Array(img.data.buffer);
  const row = new Uint32Array(d.levels + 1); // colour of each code in this row
  for (let i = 0; i < d.q; i++) {
    const s = d.scales[i] / LEVELS;
    for (let c = 0; c <= d.levels; c++) row[c] = ramp.words[lutIndex(tOf(c * s, vmax, scale))];
    const base = i * d.k;
    for (let j = 0; j < d.k; j++) {
      const c = d.codes[base + j];
      px[base + j] = c === MASKED ? CLEAR : row[c];
    }
  }
  return toCanvas(img.width, img.height, img);
}

/**
 * A float matrix [query, key] (NaN = masked) → pixels, t = (v − lo) / (hi − lo).
 * @param {Float32Array} vals
 * @param {number} q
 * @param {number} k
 * @param {number} lo
 * @param {number} hi
 * @param {Ramp} ramp
 */
export function paintFloat(vals, q, k, lo, hi, ramp) {
  const img = new ImageData(Math.max(1, k), Math.max(1, q)), px = new Uint32Array(img.data.buffer), span = hi - lo || 1;
  for (let i = 0; i < q; i++) {
    for (let j = 0; j < k; j++) {
      const v = vals[i * k + j];
      px[i * k + j] = Number.isNaN(v) ? CLEAR : ramp.words[lutIndex((v - lo) / span)];
    }
  }
  return toCanvas(img.width, img.height, img);
}

/**
 * Block-max downsampling for thumbnails, at most `size` pixels a side.
 * @param {HeadData} d
 * @param {number} size
 * @param {boolean} ignoreFirst
 * @param {Ramp} ramp
 */
export function paintThumb(d, size, ignoreFirst, ramp) {
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
  for (let t = 0; t < acc.length; t++) px[t] = acc[t] < 0 ? MASK_A : ramp.words[lutIndex(acc[t] / vmax)];
  return toCanvas(tw, th, img);
}
