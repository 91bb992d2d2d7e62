// One head as a heatmap: matrix, values in big cells, selection, token labels, role bands,
// predictions column, colour bar and minimap.

import { M, PRED_W } from "../layout.js";
import { LOG_DECADES, darkEntry, lutIndex, tOf } from "../colour.js";
import { value } from "../data.js";
import { fmtScore } from "../analysis.js";
import { FONT, axisTitles, fmt, hatch, labels, rampBar, roleBands, setupCanvas, short, title } from "../draw.js";
import { colSpan, rowSpan, shownEnd, stepCount, stepRow } from "../steps.js";

/** @typedef {import("../viewer.js").Viewer} Viewer */
/** @typedef {import("../types.js").HeadData} HeadData */
/** @typedef {import("../layout.js").Geometry} Geometry */

/**
 * @param {Viewer} v
 * @param {HeadData} d
 */
export function paintHeatmap(v, d) {
  const st = v.st, info = v.stackInfo(), g = v.geom();
  // The canvas hugs the matrix (plus labels and colour bar) so the side panel sits beside it,
  // and ends below the matrix or the colour bar's legend, whichever is lower.
  const ch = Math.min(g.h, Math.max(g.y0 + g.ph + M.pad, g.y0 + Math.min(g.ph, 260) + 64));
  const ctx = setupCanvas(v.dom.canvas, Math.min(g.w, Math.max(420, g.x0 + g.pw + g.pred + M.bar)), ch);
  const { canvas: img, vmax } = v.image(d);
  const steps = v.header ? stepCount(v.header) : 0;
  const where = st.step !== null && rowSpan(info) ? ` · step ${st.step} of ${steps}` : st.gen && rowSpan(info) ? " · generated tokens" : "";
  title(ctx, `${v.header?.model?.id ?? "model"} · ${st.stack} · layer ${st.layer} · ${v.headName()}${where}`);
  // Matrix: whole source cells, scaled without smoothing so each cell stays a crisp square.
  const sk = Math.floor(g.k0), sq = Math.floor(g.q0);
  const nk = Math.min(g.K - sk, Math.ceil(g.k0 + g.vk) - sk + 1), nq = Math.min(g.Q - sq, Math.ceil(g.q0 + g.vq) - sq + 1);
  ctx.save();
  ctx.beginPath(); ctx.rect(g.x0, g.y0, g.pw, g.ph); ctx.clip();
  ctx.imageSmoothingEnabled = false;
  const dx = g.x0 + (sk - g.k0) * g.cs, dy = g.y0 + (sq - g.q0) * g.cs;
  hatch(ctx, g.x0, g.y0, g.pw, g.ph); // shows through the masked (transparent) cells
  ctx.drawImage(img, sk, sq, nk, nq, dx, dy, nk * g.cs, nq * g.cs);
  if (g.cs >= 30) cellValues(v, ctx, d, g, { sk, sq, nk, nq, dx, dy }, vmax);
  if (st.sel) paintSelection(v, ctx, g, img);
  if (st.mark) paintMark(ctx, g, st.mark);
  // Step playback: rows (and columns) the model has not written yet are blank.
  const qEnd = shownEnd(st, rowSpan(info), g.Q), kEnd = shownEnd(st, colSpan(info), g.K), hi = stepRow(st, info);
  blankAfter(ctx, g, qEnd, kEnd);
  if (hi !== null) paintStepRow(ctx, g, hi);
  ctx.restore();
  ctx.strokeStyle = "#888"; ctx.lineWidth = 1;
  ctx.strokeRect(g.x0 - 0.5, g.y0 - 0.5, g.pw + 1, g.ph + 1);
  labels(ctx, g, info, st.sel, { qEnd, kEnd, hi, hiColour: STEP });
  v.axes = axisTitles(ctx, g);
  v.bands = roleBands(ctx, g, info, { qEnd, kEnd });
  v.boundary = paintBoundary(ctx, g, info);
  v.stepRow = hi;
  v.predRows = g.pred ? paintPredictions(v, ctx, g, qEnd) : [];
  colourBar(v, ctx, g, vmax);
  paintMini(v, img, g);
  v.hits = [];
}

/**
 * @param {Viewer} v
 * @param {CanvasRenderingContext2D} ctx
 * @param {HeadData} d
 * @param {Geometry} g
 * @param {{ sk: number, sq: number, nk: number, nq: number, dx: number, dy: number }} r  the drawn cells
 * @param {number} vmax
 */
function cellValues(v, ctx, d, g, r, vmax) {
  ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.font = `${Math.min(12, Math.floor(g.cs / 3))}px system-ui, sans-serif`;
  for (let i = 0; i < r.nq; i++) {
    for (let j = 0; j < r.nk; j++) {
      const x = value(d, r.sq + i, r.sk + j);
      if (x === null) continue;
      ctx.fillStyle = darkEntry(v.ramps.seq, lutIndex(tOf(x, vmax, v.st.scale))) ? "#fff" : "#333";
      ctx.fillText(x.toFixed(2), r.dx + (j + 0.5) * g.cs, r.dy + (i + 0.5) * g.cs);
    }
  }
  ctx.font = FONT;
}

/**
 * Fade everything but the selected row (what the token attends to) and column (who attends
 * to it).
 * @param {Viewer} v
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {HTMLCanvasElement} img
 */
function paintSelection(v, ctx, g, img) {
  const sel = v.st.sel;
  if (!sel) return;
  const { q, k } = sel;
  ctx.fillStyle = "rgba(255,255,255,0.55)";
  ctx.fillRect(g.x0, g.y0, g.pw, g.ph);
  ctx.strokeStyle = "#e8590c"; ctx.lineWidth = 2;
  ctx.imageSmoothingEnabled = false;
  if (q != null) {
    const y = g.y0 + (q - g.q0) * g.cs;
    hatch(ctx, g.x0, y, g.pw, g.cs);
    ctx.drawImage(img, 0, q, g.K, 1, g.x0 - g.k0 * g.cs, y, g.K * g.cs, g.cs);
    ctx.strokeRect(g.x0, y, g.pw, g.cs);
  }
  if (k != null) {
    const x = g.x0 + (k - g.k0) * g.cs;
    hatch(ctx, x, g.y0, g.cs, g.ph);
    ctx.drawImage(img, k, 0, 1, g.Q, x, g.y0 - g.q0 * g.cs, g.cs, g.Q * g.cs);
    ctx.strokeRect(x, g.y0, g.cs, g.ph);
  }
}

export const MARK = "#c2255c";
export const STEP = "#7048e8"; // the row of the token written at the current step
export const BOUNDARY = "#2b8a3e"; // between the prompt and the generated tokens

/**
 * Blank the rows from `qEnd` and the columns from `kEnd` on (not yet generated).
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {number} qEnd
 * @param {number} kEnd
 */
function blankAfter(ctx, g, qEnd, kEnd) {
  ctx.fillStyle = "#fff";
  const ya = Math.max(g.y0, g.y0 + (qEnd - g.q0) * g.cs), xa = Math.max(g.x0, g.x0 + (kEnd - g.k0) * g.cs);
  if (ya < g.y0 + g.ph) ctx.fillRect(g.x0, ya, g.pw, g.y0 + g.ph - ya);
  if (xa < g.x0 + g.pw) ctx.fillRect(xa, g.y0, g.x0 + g.pw - xa, g.ph);
}

/**
 * Outline the row of the token written at the current step.
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {number} q
 */
function paintStepRow(ctx, g, q) {
  const y = g.y0 + (q - g.q0) * g.cs;
  ctx.strokeStyle = STEP; ctx.lineWidth = 2;
  ctx.strokeRect(g.x0 + 1, y - 1, g.pw - 2, g.cs + 2);
}

/**
 * The line between the last prompt token and the first generated one, across the rows (with
 * their labels) and down the columns. Returns where the lines went (null: not drawn).
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {import("../types.js").StackInfo} info
 * @returns {{ row: number | null, col: number | null }}
 */
function paintBoundary(ctx, g, info) {
  const rs = rowSpan(info), ks = colSpan(info), out = { row: /** @type {number | null} */ (null), col: /** @type {number | null} */ (null) };
  ctx.save();
  ctx.strokeStyle = BOUNDARY; ctx.lineWidth = 2;
  if (rs && rs.first > 0) {
    const y = g.y0 + (rs.first - g.q0) * g.cs;
    if (y >= g.y0 - 0.5 && y <= g.y0 + g.ph + 0.5) {
      ctx.beginPath(); ctx.moveTo(M.axis, y); ctx.lineTo(g.x0 + g.pw, y); ctx.stroke();
      out.row = y;
    }
  }
  if (ks && ks.first > 0) {
    const x = g.x0 + (ks.first - g.k0) * g.cs;
    if (x >= g.x0 - 0.5 && x <= g.x0 + g.pw + 0.5) {
      ctx.beginPath(); ctx.moveTo(x, M.top + M.axis); ctx.lineTo(x, g.y0 + g.ph); ctx.stroke();
      out.col = x;
    }
  }
  ctx.restore();
  return out;
}

/**
 * Outline the cells a relation measures (its "from" rows × "to" columns).
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {import("../types.js").Mark} m
 */
function paintMark(ctx, g, m) {
  const x = g.x0 + (m.k[0] - g.k0) * g.cs, y = g.y0 + (m.q[0] - g.q0) * g.cs;
  const w = (m.k[1] - m.k[0]) * g.cs, hh = (m.q[1] - m.q[0]) * g.cs;
  ctx.strokeStyle = MARK; ctx.lineWidth = 3;
  ctx.strokeRect(x + 1.5, y + 1.5, Math.max(1, w - 3), Math.max(1, hh - 3));
}

/**
 * One line per query row: the top-1 next token and its probability; ✗ where the token that
 * really came next was not the top-1. Token text is drawn with fillText (data).
 * @param {Viewer} v
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {number} qEnd  rows from here on are not shown (step playback)
 */
function paintPredictions(v, ctx, g, qEnd) {
  const preds = v.predictions(), sel = v.st.sel, x = g.x0 + g.pw + 6;
  /** @type {{ q: number, text: string, miss: boolean }[]} */
  const rows = [];
  if (!preds) return rows;
  const step = Math.max(1, Math.ceil(12 / g.cs));
  const size = Math.max(7, Math.min(12, Math.floor(g.cs - 1)));
  ctx.font = "bold 10px system-ui, sans-serif"; ctx.fillStyle = "#555"; ctx.textAlign = "left"; ctx.textBaseline = "bottom";
  ctx.fillText("predicted (p)", x, g.y0 - 4);
  ctx.font = `${size}px system-ui, sans-serif`; ctx.textBaseline = "middle";
  const q1 = Math.min(qEnd, Math.ceil(g.q0 + g.vq));
  for (let i = Math.floor(g.q0); i < q1; i++) {
    const r = preds.get(i), y = g.y0 + (i - g.q0 + 0.5) * g.cs;
    if (!r || !r.top.length || (i % step && i !== sel?.q) || y < g.y0 || y > g.y0 + g.ph) continue;
    const top = r.top[0], miss = !!(r.next && r.next.rank !== 1);
    const text = `${short(top.token, 10)} ${fmtScore(top.p)}`;
    ctx.fillStyle = i === sel?.q ? "#e8590c" : "#222";
    ctx.fillText(text, x, y, PRED_W - 22);
    if (miss) { ctx.fillStyle = "#c92a2a"; ctx.fillText("✗", x + PRED_W - 18, y); }
    rows.push({ q: i, text, miss });
  }
  ctx.font = FONT;
  return rows;
}

/**
 * @param {Viewer} v
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {number} vmax
 */
export function colourBar(v, ctx, g, vmax) {
  const x = g.x0 + g.pw + g.pred + 14, y = g.y0, bh = Math.min(g.ph, 260), bw = 12, st = v.st;
  rampBar(ctx, v.ramps.seq, x, y, bw, bh);
  ctx.strokeStyle = "#888"; ctx.strokeRect(x - 0.5, y - 0.5, bw + 1, bh + 1);
  ctx.fillStyle = "#333"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
  const ticks = st.scale === "log" ? [0, 1, 2, 3].map((i) => [vmax * 10 ** -i, 1 - i / LOG_DECADES]) : [0, 0.25, 0.5, 0.75, 1].map((f) => [f * vmax, f]);
  for (const [val, f] of ticks) ctx.fillText(fmt(val), x + bw + 4, y + (1 - f) * (bh - 1));
  const my = y + bh + 14;
  hatch(ctx, x, my, 12, 12);
  ctx.strokeStyle = "#aaa"; ctx.strokeRect(x - 0.5, my - 0.5, 13, 13);
  ctx.fillStyle = "#333"; ctx.fillText("masked", x + bw + 4, my + 6);
  if (st.ignoreFirst && st.scale !== "unit") ctx.fillText("key 0 ignored", x - 2, my + 24);
  ctx.font = "9px system-ui, sans-serif"; ctx.fillStyle = "#888";
  ctx.fillText(v.ramps.seq.name, x - 2, my + 38, M.bar - 4);
  ctx.font = FONT;
}

/**
 * The whole matrix small, with the zoomed view outlined.
 * @param {Viewer} v
 * @param {HTMLCanvasElement} img
 * @param {Geometry} g
 */
function paintMini(v, img, g) {
  const side = 160, r = Math.min(side / g.K, side / g.Q), w = Math.max(1, Math.round(g.K * r)), hh = Math.max(1, Math.round(g.Q * r));
  const ctx = setupCanvas(v.dom.mini, w, hh);
  hatch(ctx, 0, 0, w, hh);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(img, 0, 0, w, hh);
  v.miniScale = r;
  v.dom.mini.hidden = false;
  if (g.cs > g.fit || g.r0 > 0 || g.r1 < g.Q) {
    ctx.strokeStyle = "#e8590c"; ctx.lineWidth = 2;
    ctx.strokeRect(g.k0 * r, g.q0 * r, Math.min(g.vk, g.K) * r, Math.min(g.vq, g.r1 - g.q0) * r);
  }
}
