// A long run's heatmap: the whole n × n matrix at screen resolution (each pixel a block,
// reduced by max or sum), exact cells with values when zoomed in, from a tile source.

import { M } from "../layout.js";
import { darkEntry, lutIndex, tOf } from "../colour.js";
import { FONT, axisTitles, hatch, labels, setupCanvas, title } from "../draw.js";
import { blockFor, tileMax } from "../long.js";
import { colourBar } from "./heatmap.js";

/** @typedef {import("../viewer.js").Viewer} Viewer */
/** @typedef {import("../long.js").Tile} Tile */
/** @typedef {import("../long.js").TileRequest} TileRequest */
/** @typedef {import("../layout.js").Geometry} Geometry */
/** @typedef {import("../colour.js").Ramp} Ramp */

const TILE_CACHE = 24;

/**
 * The tile request that covers the view of geometry `g` at screen resolution.
 * @param {Viewer} v
 * @param {Geometry} g
 * @returns {TileRequest}
 */
export function viewRequest(v, g) {
  const st = v.st, bs = blockFor(g.cs);
  const q0 = Math.floor(g.q0 / bs) * bs, k0 = Math.floor(g.k0 / bs) * bs;
  const rows = Math.max(1, Math.min(Math.ceil((g.q0 + g.vq - q0) / bs), Math.ceil((g.Q - q0) / bs)));
  const cols = Math.max(1, Math.min(Math.ceil((g.k0 + g.vk - k0) / bs), Math.ceil((g.K - k0) / bs)));
  return { stack: st.stack, layer: st.layer, head: st.head, block: bs, q0, k0, rows, cols, reduce: st.reduce, ignoreFirst: st.ignoreFirst };
}

/**
 * A tile from the source, cached.
 * @param {Viewer} v
 * @param {TileRequest} req
 * @returns {Promise<Tile>}
 */
export function fetchTile(v, req) {
  const lod = /** @type {NonNullable<Viewer["lod"]>} */ (v.lod);
  const key = JSON.stringify(req);
  let p = lod.tiles.get(key);
  if (p) { lod.tiles.delete(key); lod.tiles.set(key, p); return p; }
  p = lod.source.tile(req);
  p.catch(() => lod.tiles.delete(key));
  lod.tiles.set(key, p);
  while (lod.tiles.size > TILE_CACHE) lod.tiles.delete(/** @type {string} */ (lod.tiles.keys().next().value));
  return p;
}

/**
 * Tile → one pixel per block; masked blocks transparent (the hatch shows through), blocks
 * known only by an upper bound at the bottom colour of the map.
 * @param {Tile} t
 * @param {number} vmax
 * @param {string} scale
 * @param {Ramp} ramp
 */
function tileImage(t, vmax, scale, ramp) {
  const img = new ImageData(Math.max(1, t.cols), Math.max(1, t.rows)), px = new Uint32Array(img.data.buffer);
  const low = ramp.words[0];
  for (let p = 0; p < t.vals.length; p++) {
    const x = t.vals[p];
    px[p] = x !== x ? 0 : t.bound && t.bound[p] ? low : ramp.words[lutIndex(tOf(x, vmax, scale))];
  }
  const c = document.createElement("canvas");
  c.width = img.width; c.height = img.height;
  /** @type {CanvasRenderingContext2D} */ (c.getContext("2d")).putImageData(img, 0, 0);
  return c;
}

/**
 * Fetch the view's tile (and the overview for the minimap), then paint.
 * @param {Viewer} v
 * @param {number} seq
 * @param {number} t0
 */
export async function paintLong(v, seq, t0) {
  const g = v.geom(), req = viewRequest(v, g);
  const full = { ...req, block: blockFor(g.fit), q0: 0, k0: 0, rows: Infinity, cols: Infinity };
  full.rows = Math.ceil(g.Q / full.block); full.cols = Math.ceil(g.K / full.block);
  /** @type {[Tile, Tile]} */
  let got;
  const slow = setTimeout(() => { if (seq === v.seq) v.dom.status.textContent = "computing the view…"; }, 150);
  try {
    got = await Promise.all([fetchTile(v, req), fetchTile(v, full)]);
  } catch (err) {
    clearTimeout(slow);
    if (seq === v.seq) v.fail(err);
    return;
  }
  clearTimeout(slow);
  if (seq !== v.seq) return;
  v.dom.status.textContent = "";
  v.dom.status.classList.remove("am-error");
  const [tile, over] = got;
  draw(v, g, tile, over);
  v.showInfoIfStale();
  v.drawn("heatmap", t0);
}

/**
 * @param {Viewer} v
 * @param {Geometry} g
 * @param {Tile} t
 * @param {Tile} over  the whole matrix (minimap)
 */
function draw(v, g, t, over) {
  const st = v.st, info = v.stackInfo(), lod = /** @type {NonNullable<Viewer["lod"]>} */ (v.lod);
  const ch = Math.min(g.h, Math.max(g.y0 + g.ph + M.pad, g.y0 + Math.min(g.ph, 260) + 64));
  const ctx = setupCanvas(v.dom.canvas, Math.min(g.w, Math.max(420, g.x0 + g.pw + g.pred + M.bar)), ch);
  const vmax = st.scale === "unit" ? 1 : tileMax(t) || 1;
  const what = t.block > 1 ? ` · ${t.reduce} of ${t.block}×${t.block} blocks` : "";
  title(ctx, `${v.header?.model?.id ?? "model"} · ${st.stack} · layer ${st.layer} · ${v.headName()}${what}`);
  ctx.save();
  ctx.beginPath(); ctx.rect(g.x0, g.y0, g.pw, g.ph); ctx.clip();
  hatch(ctx, g.x0, g.y0, g.pw, g.ph);
  ctx.imageSmoothingEnabled = false;
  const s = t.block * g.cs, dx = g.x0 + (t.k0 - g.k0) * g.cs, dy = g.y0 + (t.q0 - g.q0) * g.cs;
  ctx.drawImage(tileImage(t, vmax, st.scale, v.ramps.seq), dx, dy, t.cols * s, t.rows * s);
  if (t.block === 1 && g.cs >= 30) cellValues(v, ctx, t, g, vmax);
  if (st.sel) paintSel(ctx, g, st.sel);
  ctx.restore();
  ctx.strokeStyle = "#888"; ctx.lineWidth = 1;
  ctx.strokeRect(g.x0 - 0.5, g.y0 - 0.5, g.pw + 1, g.ph + 1);
  labels(ctx, g, info, st.sel, {});
  v.axes = axisTitles(ctx, g);
  v.bands = []; v.boundary = { row: null, col: null }; v.stepRow = null; v.predRows = [];
  colourBar(v, ctx, g, vmax);
  if (t.bound && t.bound.some((x) => x)) {
    ctx.font = "9px system-ui, sans-serif"; ctx.fillStyle = "#888"; ctx.textAlign = "left";
    ctx.fillText("palest: below the row's kept cells", g.x0 + g.pw + g.pred + 2, g.y0 + Math.min(g.ph, 260) + 64, M.bar - 4);
    ctx.font = FONT;
  }
  lod.tile = t; lod.vmax = vmax;
  paintMiniLong(v, over, g);
  v.hits = [];
}

/**
 * Values printed in cells big enough to hold them ("<x" for an upper bound).
 * @param {Viewer} v
 * @param {CanvasRenderingContext2D} ctx
 * @param {Tile} t
 * @param {Geometry} g
 * @param {number} vmax
 */
function cellValues(v, ctx, t, g, vmax) {
  ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.font = `${Math.min(12, Math.floor(g.cs / 3))}px system-ui, sans-serif`;
  for (let r = 0; r < t.rows; r++) {
    for (let c = 0; c < t.cols; c++) {
      const p = r * t.cols + c, x = t.vals[p];
      if (x !== x) continue;
      const up = !!(t.bound && t.bound[p]);
      ctx.fillStyle = !up && darkEntry(v.ramps.seq, lutIndex(tOf(x, vmax, v.st.scale))) ? "#fff" : "#333";
      ctx.fillText(up ? `<${x.toFixed(2)}` : x.toFixed(2), g.x0 + (t.k0 + c - g.k0 + 0.5) * g.cs, g.y0 + (t.q0 + r - g.q0 + 0.5) * g.cs);
    }
  }
  ctx.font = FONT;
}

/**
 * Outline the selected token's row and column.
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {{ q: number | null, k: number | null }} sel
 */
function paintSel(ctx, g, sel) {
  ctx.strokeStyle = "#e8590c"; ctx.lineWidth = 2;
  if (sel.q != null) ctx.strokeRect(g.x0, g.y0 + (sel.q - g.q0) * g.cs, g.pw, Math.max(1, g.cs));
  if (sel.k != null) ctx.strokeRect(g.x0 + (sel.k - g.k0) * g.cs, g.y0, Math.max(1, g.cs), g.ph);
}

/**
 * The whole matrix small, with the zoomed view outlined.
 * @param {Viewer} v
 * @param {Tile} over
 * @param {Geometry} g
 */
function paintMiniLong(v, over, g) {
  const side = 160, r = Math.min(side / g.K, side / g.Q), w = Math.max(1, Math.round(g.K * r)), hh = Math.max(1, Math.round(g.Q * r));
  const ctx = setupCanvas(v.dom.mini, w, hh);
  hatch(ctx, 0, 0, w, hh);
  ctx.imageSmoothingEnabled = true;
  const vmax = v.st.scale === "unit" ? 1 : tileMax(over) || 1;
  ctx.drawImage(tileImage(over, vmax, v.st.scale, v.ramps.seq), 0, 0, over.cols * over.block * r, over.rows * over.block * r);
  v.miniScale = r;
  v.dom.mini.hidden = false;
  if (g.cs > g.fit) {
    ctx.strokeStyle = "#e8590c"; ctx.lineWidth = 2;
    ctx.strokeRect(g.k0 * r, g.q0 * r, Math.min(g.vk, g.K) * r, Math.min(g.vq, g.Q) * r);
  }
}

/**
 * What the last drawn tile says about cell (q, k): its block, the value (max or sum over the
 * block; the cell's weight at block 1), and whether it is exact, an upper bound or masked.
 * @param {Viewer} v
 * @param {number} q
 * @param {number} k
 * @returns {{ block: number, q0: number, k0: number, reduce: string, value: number | null, upper: boolean } | null}
 */
export function lodCell(v, q, k) {
  const t = v.lod?.tile;
  if (!t) return null;
  const r = Math.floor((q - t.q0) / t.block), c = Math.floor((k - t.k0) / t.block);
  if (r < 0 || c < 0 || r >= t.rows || c >= t.cols) return null;
  const p = r * t.cols + c, x = t.vals[p];
  return { block: t.block, q0: t.q0 + r * t.block, k0: t.k0 + c * t.block, reduce: t.reduce, value: x !== x ? null : x, upper: !!(t.bound && t.bound[p]) };
}
