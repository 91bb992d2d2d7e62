// Canvas helpers shared by the views: setup, titles, token labels, role bands, colour bars.
// Token text reaches the canvas only through fillText.

import { M, labelStep } from "./layout.js";
import { css, lutIndex, roleColour } from "./colour.js";
import { roleRuns } from "./analysis.js";

/** @typedef {import("./colour.js").Ramp} Ramp */
/** @typedef {import("./layout.js").Geometry} Geometry */
/** @typedef {import("./types.js").StackInfo} StackInfo */

export const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";

/**
 * @param {HTMLCanvasElement} c
 * @returns {CanvasRenderingContext2D}
 */
export function ctx2d(c) {
  const ctx = c.getContext("2d");
  if (!ctx) throw new Error("attnmap: this browser gives no 2D canvas");
  return ctx;
}

/**
 * Size a canvas for w × hh CSS pixels at the device pixel ratio and clear it to white.
 * @param {HTMLCanvasElement} c
 * @param {number} w
 * @param {number} hh
 */
export function setupCanvas(c, w, hh) {
  const r = window.devicePixelRatio || 1;
  if (c.width !== Math.round(w * r) || c.height !== Math.round(hh * r)) {
    c.width = Math.round(w * r); c.height = Math.round(hh * r);
  }
  c.style.width = w + "px"; c.style.height = hh + "px";
  const ctx = ctx2d(c);
  ctx.setTransform(r, 0, 0, r, 0, 0);
  ctx.clearRect(0, 0, w, hh);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, hh);
  ctx.font = FONT;
  return ctx;
}

/**
 * @param {CanvasRenderingContext2D} ctx
 * @param {string} text
 */
export function title(ctx, text) {
  ctx.fillStyle = "#222";
  ctx.font = "bold 12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  ctx.fillText(text, 4, M.top / 2);
  ctx.font = FONT;
}

/**
 * @param {string} s
 * @param {number} [n]
 */
export function short(s, n = 16) { return s.length > n ? s.slice(0, n - 1) + "…" : s; }

/**
 * @param {number} v
 */
export function fmt(v) {
  if (v === 0) return "0";
  if (v >= 0.01) return v.toFixed(3);
  return v.toExponential(2);
}

/**
 * A vertical colour bar `bh` pixels high, top = entry 255.
 * @param {CanvasRenderingContext2D} ctx
 * @param {Ramp} ramp
 * @param {number} x
 * @param {number} y
 * @param {number} bw
 * @param {number} bh
 */
export function rampBar(ctx, ramp, x, y, bw, bh) {
  for (let p = 0; p < bh; p++) {
    ctx.fillStyle = css(ramp, lutIndex(1 - p / Math.max(1, bh - 1)));
    ctx.fillRect(x, y + p, bw, 1);
  }
}

/**
 * Token labels of the visible rows (left) and columns (above), thinned so they never overlap.
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {StackInfo} info
 * @param {{ q: number | null, k: number | null } | null} sel
 * @param {{ qEnd?: number, kEnd?: number, hi?: number | null, hiColour?: string }} [lim]  rows
 *   from qEnd and columns from kEnd get no label (not generated yet); row `hi` is drawn bold
 *   in hiColour (the token written at the current step)
 */
export function labels(ctx, g, info, sel, lim = {}) {
  const s = sel || { q: null, k: null };
  const qEnd = lim.qEnd ?? g.Q, kEnd = lim.kEnd ?? g.K, hi = lim.hi ?? null;
  const step = labelStep(g.cs);
  const size = Math.max(7, Math.min(12, Math.floor(g.cs - 1)));
  const lx = g.x0 - g.band - 4, ly = g.y0 - g.band - 4;
  ctx.font = `${size}px system-ui, sans-serif`;
  /** @param {boolean} special @param {boolean} on */
  const colour = (special, on) => (on ? "#e8590c" : special ? "#aaa" : "#222");
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  const q1 = Math.min(qEnd, Math.ceil(g.q0 + g.vq));
  for (let i = Math.floor(g.q0); i < q1; i++) {
    const y = g.y0 + (i - g.q0 + 0.5) * g.cs;
    if ((i % step && i !== s.q && i !== hi) || y < g.y0 || y > g.y0 + g.ph) continue; // only rows in view
    ctx.fillStyle = i === hi && i !== s.q ? lim.hiColour ?? "#222" : colour(info.query_special[i], i === s.q);
    if (i === hi) ctx.font = `bold ${size}px system-ui, sans-serif`;
    ctx.fillText(short(info.query_tokens[i]), lx, y, g.lw - 6);
    if (i === hi) ctx.font = `${size}px system-ui, sans-serif`;
  }
  ctx.textAlign = "left";
  const k1 = Math.min(kEnd, Math.ceil(g.k0 + g.vk));
  for (let j = Math.floor(g.k0); j < k1; j++) {
    const x = g.x0 + (j - g.k0 + 0.5) * g.cs;
    if ((j % step && j !== s.k) || x < g.x0 || x > g.x0 + g.pw) continue;
    ctx.save();
    ctx.translate(x, ly);
    ctx.rotate(-Math.PI / 2);
    ctx.fillStyle = colour(info.key_special[j], j === s.k);
    ctx.fillText(short(info.key_tokens[j]), 0, 0, g.lh - 6);
    ctx.restore();
  }
  ctx.font = FONT;
}

/** The axis titles, in plain words. */
export const AXES = { query: "query: the token doing the looking", key: "key: the token looked at" };

/**
 * Say what the sides are: queries down the left (read bottom to top), keys across the top.
 * Returns where each title went.
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {{ query?: string, key?: string }} [names]  other words (e.g. for cross-attention)
 */
export function axisTitles(ctx, g, names = {}) {
  const q = names.query ?? AXES.query, k = names.key ?? AXES.key;
  ctx.save();
  ctx.font = "italic 11px system-ui, sans-serif"; ctx.fillStyle = "#666"; ctx.textBaseline = "middle";
  const ky = M.top + M.axis / 2;
  ctx.textAlign = "left";
  ctx.fillText(k + " →", g.x0, ky, Math.max(120, g.w - g.x0 - 4));
  const qx = M.axis / 2 + 1, qy = g.y0 + Math.min(g.ph, g.h - g.y0) / 2;
  ctx.translate(qx, qy); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
  ctx.fillText("← " + q, 0, 0, Math.max(120, g.ph + g.lh));
  ctx.restore();
  return { query: { text: "← " + q, x: qx, y: qy }, key: { text: k + " →", x: g.x0, y: ky } };
}

// Masked cells: the figure's quiet diagonal hatch ("////", as plot.draw_matrix draws it), in
// greys light enough to read as "nothing here" beside any colormap's low end.
export const HATCH = { face: "#e2e2e2", line: "#c0c0c0", step: 6 };

/**
 * Fill a rectangle with the masked hatch. The lines are anchored to the canvas origin, so
 * neighbouring rectangles continue the same lines.
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} x
 * @param {number} y
 * @param {number} w
 * @param {number} hh
 */
export function hatch(ctx, x, y, w, hh) {
  if (w <= 0 || hh <= 0) return;
  ctx.save();
  ctx.beginPath(); ctx.rect(x, y, w, hh); ctx.clip();
  ctx.fillStyle = HATCH.face; ctx.fillRect(x, y, w, hh);
  ctx.strokeStyle = HATCH.line; ctx.lineWidth = 1;
  ctx.beginPath();
  const s = HATCH.step, end = x + w + y + hh;
  for (let c = Math.floor((x + y) / s) * s; c <= end + s; c += s) { ctx.moveTo(c - y, y); ctx.lineTo(c - y - hh, y + hh); }
  ctx.stroke();
  ctx.restore();
}

/**
 * @typedef {{ axis: "query" | "key", start: number, end: number, role: string, message: number | null, labelled: boolean, x: number, y: number, w: number, h: number }} Band
 */

/**
 * Thin chat-role bands: one coloured strip per message along the rows (left of the matrix)
 * and the columns (above it), the role written in when it fits. Returns what was drawn.
 * @param {CanvasRenderingContext2D} ctx
 * @param {Geometry} g
 * @param {StackInfo} info
 * @param {{ qEnd?: number, kEnd?: number }} [lim]  tokens from here on are not drawn yet (step
 *   playback), so their bands are not either
 * @returns {Band[]}
 */
export function roleBands(ctx, g, info, lim = {}) {
  /** @type {Band[]} */
  const out = [];
  if (!g.band) return out;
  const b = g.band - 2; // strip thickness; 2 px gap to the matrix
  ctx.save();
  ctx.font = "9px system-ui, sans-serif";
  ctx.textBaseline = "middle"; ctx.textAlign = "center";
  /**
   * @param {"query" | "key"} axis
   * @param {(string | null)[] | undefined} roles
   * @param {(number | null)[] | undefined} messages
   */
  const one = (axis, roles, messages) => {
    const along = axis === "query", first = along ? g.q0 : g.k0, n = along ? lim.qEnd ?? g.Q : lim.kEnd ?? g.K;
    const lo = along ? g.y0 : g.x0, span = along ? g.ph : g.pw;
    for (const r of roleRuns(roles, messages)) {
      if (r.start >= n) continue;
      const a = Math.max(lo, lo + (r.start - first) * g.cs), z = Math.min(lo + span, lo + (Math.min(r.end, n) - first) * g.cs);
      if (z <= a) continue; // not in view
      const [x, y, w, h] = along ? [g.x0 - g.band, a, b, z - a] : [a, g.y0 - g.band, z - a, b];
      ctx.fillStyle = roleColour(r.role);
      ctx.fillRect(x, y, w, h);
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 1;
      ctx.strokeRect(x + 0.5, y + 0.5, Math.max(0, w - 1), Math.max(0, h - 1));
      const room = (along ? h : w) - 4, labelled = ctx.measureText(r.role).width <= room;
      if (labelled) {
        ctx.fillStyle = "#fff";
        if (along) { ctx.save(); ctx.translate(x + w / 2, y + h / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(r.role, 0, 0.5); ctx.restore(); }
        else ctx.fillText(r.role, x + w / 2, y + h / 2 + 0.5);
      }
      out.push({ axis, start: r.start, end: r.end, role: r.role, message: r.message, labelled, x, y, w, h });
    }
  };
  one("query", info.query_roles, info.query_messages);
  one("key", info.key_roles, info.key_messages);
  ctx.restore();
  return out;
}

/**
 * Whether a stack's header carries chat roles on either axis.
 * @param {StackInfo} info
 */
export function hasRoles(info) {
  /** @param {unknown} a */
  const any = (a) => Array.isArray(a) && a.some((r) => typeof r === "string");
  return any(info.query_roles) || any(info.key_roles);
}
