// Head grids: every head of a layer, and layers × heads; thumbnails with census badges.

import { M } from "../layout.js";
import { headsGrid } from "../layout.js";
import { headData, rowSlice } from "../data.js";
import { censusInfo, rowWindow } from "../steps.js";
import { badge, passes, scoreOf } from "../analysis.js";
import { paintThumb } from "../images.js";
import { FONT, setupCanvas, title } from "../draw.js";

/** @typedef {import("../viewer.js").Viewer} Viewer */
/** @typedef {import("../types.js").Layer} Layer */
/** @typedef {import("../types.js").HitBox} HitBox */

/**
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} x
 * @param {number} y
 * @param {number} t
 * @param {string | null} text
 */
function drawBadge(ctx, x, y, t, text) {
  if (!text || t < 30) return;
  ctx.font = "10px system-ui, sans-serif";
  const w = ctx.measureText(text).width + 6;
  ctx.fillStyle = "rgba(255,255,255,0.88)"; ctx.fillRect(x + t - w - 1, y + 1, w, 13);
  ctx.fillStyle = "#7a3200"; ctx.textAlign = "right"; ctx.textBaseline = "top";
  ctx.fillText(text, x + t - 4, y + 2);
  ctx.font = FONT;
}

/**
 * @param {Viewer} v
 * @param {CanvasRenderingContext2D} ctx
 * @param {Layer} layer
 * @param {number} hd
 * @param {number} x
 * @param {number} y
 * @param {number} t
 */
function thumb(v, ctx, layer, hd, x, y, t) {
  const st = v.st, [r0, r1] = rowWindow(st, v.stackInfo()), key = `${st.stack}/${layer.layer}/${hd}/${st.ignoreFirst}/${r0}`;
  let c = v.thumbs.get(key);
  // In the generated-only view a thumbnail shows the generated rows, as the census counts them.
  if (!c) { c = paintThumb(rowSlice(headData(layer, hd), r0, r1), 128, st.ignoreFirst, v.ramps.seq); v.thumbs.set(key, c); }
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(c, x, y, t, t);
  const on = layer.layer === st.layer && hd === st.head;
  ctx.strokeStyle = on ? "#e8590c" : "#bbb";
  ctx.lineWidth = on ? 2 : 1;
  ctx.strokeRect(x - 0.5, y - 0.5, t + 1, t + 1);
}

/** @param {Viewer} v */
export function paintHeads(v) {
  const st = v.st, info = censusInfo(v.stackInfo(), st.gen), layer = v.cached(st.stack, st.layer), { w } = v.size();
  if (!layer) return;
  // Census: best heads first when a score is picked, and only the heads above the threshold.
  let order = Array.from({ length: layer.heads }, (_, i) => i).filter((hd) => passes(info, st.layer, hd, st.score, st.min));
  const score = st.score;
  if (score && info.scores) {
    /** @param {number} hd */
    const val = (hd) => { const x = scoreOf(info, st.layer, hd, score); return x === null ? -Infinity : x; };
    order = order.slice().sort((a, b) => val(b) - val(a) || a - b);
  }
  const best = headsGrid(order.length, w);
  const ctx = setupCanvas(v.dom.canvas, w, best.hh);
  title(ctx, `${v.header?.model?.id ?? "model"} · ${st.stack} · layer ${st.layer} · every head (click one)`);
  /** @type {HitBox[]} */
  const hits = [];
  order.forEach((hd, n) => {
    const c = n % best.cols, r = Math.floor(n / best.cols);
    const x = best.gap + c * (best.t + best.gap), y = M.top + r * (best.t + best.gap + best.cap);
    thumb(v, ctx, layer, hd, x, y, best.t);
    const b = badge(info, st.layer, hd, st.score);
    drawBadge(ctx, x, y, best.t, b);
    ctx.fillStyle = hd === st.head ? "#e8590c" : "#333"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    ctx.fillText(`head ${hd}`, x + best.t / 2, y + best.t + 2);
    hits.push({ x, y, w: best.t, h: best.t, layer: st.layer, head: hd, badge: b });
  });
  if (!order.length) {
    ctx.fillStyle = "#666"; ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText(`no head of this layer has ${st.score} ≥ ${st.min}`, 8, M.top + 8);
  }
  v.hits = hits;
  v.dom.mini.hidden = true;
}

/**
 * Layers × heads; layers are decoded one after another, so this view is asynchronous.
 * @param {Viewer} v
 * @param {number} seq  the refresh this paint belongs to (a newer one stops it)
 * @param {number} t0
 */
export async function paintLayers(v, seq, t0) {
  const st = v.st, info = censusInfo(v.stackInfo(), st.gen), [L, H] = info.shape, { w } = v.size();
  const left = 58, top = M.top + 16, gap = 4;
  const t = Math.max(8, Math.min(72, Math.floor((w - left) / H) - gap));
  const hh = top + L * (t + gap) + gap;
  const ctx = setupCanvas(v.dom.canvas, w, hh);
  title(ctx, `${v.header?.model?.id ?? "model"} · ${st.stack} · layers × heads (click one)`);
  ctx.fillStyle = "#333"; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  for (let hd = 0; hd < H; hd++) ctx.fillText(String(hd), left + hd * (t + gap) + t / 2, top - 2);
  /** @type {HitBox[]} */
  const hits = [];
  v.hits = hits;
  v.dom.mini.hidden = true;
  for (let li = 0; li < L; li++) {
    const y = top + li * (t + gap);
    ctx.fillStyle = "#333"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(`layer ${li}`, left - 6, y + t / 2);
    let layer = v.cached(st.stack, li);
    if (!layer) {
      v.dom.status.textContent = `decoding layer ${li} of ${L}…`;
      try { layer = await v.layer(st.stack, li); } catch (err) { if (seq === v.seq) v.fail(err); return; }
      if (seq !== v.seq) return;
    }
    for (let hd = 0; hd < H; hd++) {
      const x = left + hd * (t + gap), b = badge(info, li, hd, st.score), pass = passes(info, li, hd, st.score, st.min);
      thumb(v, ctx, layer, hd, x, y, t);
      if (!pass) { ctx.fillStyle = "rgba(255,255,255,0.8)"; ctx.fillRect(x, y, t, t); }
      else drawBadge(ctx, x, y, t, b);
      hits.push({ x, y, w: t, h: t, layer: li, head: hd, badge: b, pass });
    }
  }
  v.dom.status.textContent = "";
  v.drawn("layers", t0);
}
