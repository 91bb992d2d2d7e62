// Diff pages: A, B and A − B of one head side by side, and layers × heads coloured by change.

import { M } from "../layout.js";
import { css, darkEntry, lutIndex } from "../colour.js";
import { diffData, headData } from "../data.js";
import { fmtScore } from "../analysis.js";
import { paintFloat } from "../images.js";
import { FONT, hatch, rampBar, setupCanvas, short, title } from "../draw.js";

/** @typedef {import("../viewer.js").Viewer} Viewer */
/** @typedef {import("../data.js").DiffHead} DiffHead */

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

/** @param {Viewer} v */
export function paintDiff(v) {
  const st = v.st, info = v.stackInfo(), dd = diffHead(v), { w } = v.size();
  const gap = 18, bar = 46, left = M.label, top = M.top + 18 + M.label;
  const side = Math.max(60, Math.floor((w - left - 3 * (gap + bar)) / 3));
  const cs = side / Math.max(dd.q, dd.k), pw = dd.k * cs, ph = dd.q * cs;
  const ctx = setupCanvas(v.dom.canvas, w, top + ph + 30);
  const r = v.changeBy.get(`${st.layer}/${st.head}`);
  const stats = r ? ` · mean |A−B| ${r.mean_abs.toFixed(4)} · JS ${r.js.toFixed(4)}` : "";
  title(ctx, `${st.stack} · layer ${st.layer} · ${v.headName()}${stats}`);
  const names = ["A: " + (v.diff?.a || "A"), "B: " + (v.diff?.b || "B"), "A − B"];
  /** @type {number[]} */
  const x0s = [];
  ctx.imageSmoothingEnabled = false;
  for (let p = 0; p < 3; p++) {
    const x = left + p * (pw + gap + bar);
    x0s.push(x);
    hatch(ctx, x, top, pw, ph); // shows through the masked (transparent) cells
    ctx.drawImage(dd.images[p], x, top, pw, ph);
    ctx.strokeStyle = "#888"; ctx.lineWidth = 1; ctx.strokeRect(x - 0.5, top - 0.5, pw + 1, ph + 1);
    ctx.fillStyle = "#222"; ctx.font = "bold 11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    ctx.fillText(short(names[p], 40), x, M.top + 8, pw + bar);
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
  v.dgeom = { x0s, y0: top, cs, pw, ph, q: dd.q, k: dd.k };
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
      if (t >= 30) {
        ctx.fillStyle = darkEntry(ramp, i) ? "#fff" : "#333"; ctx.textAlign = "center"; ctx.font = "10px system-ui, sans-serif";
        ctx.fillText(fmtScore(val), x + t / 2, y + t / 2); ctx.font = FONT;
      }
      v.hits.push({ x, y, w: t, h: t, layer: li, head: hd });
      v.changeCells.push({ layer: li, head: hd, value: val, rgb });
    }
  }
  v.dom.mini.hidden = true;
}
