// Runs of an image: the picture with the shown head's attention laid over it. The overlay is
// one query token's row at the patch keys (CLS by default; a VLM's last token): hover a patch
// to see its row, click to pin it (click again, or Esc, to let go); the CLS, distillation and
// register tokens are listed beside the picture and can be picked the same way. It follows
// the viewer's layer and head. Token text reaches the page only through textContent.

import { value } from "./data.js";
import { css, lutIndex } from "./colour.js";
import { ctx2d } from "./draw.js";

/** @typedef {import("./viewer.js").Viewer} Viewer */

/**
 * The payload header's `image` field (attnmap.patches.image_header).
 * @typedef {object} ImageInfo
 * @property {number} width
 * @property {number} height
 * @property {number[]} grid                 [rows, cols]
 * @property {string} kind                   "vision" | "vlm"
 * @property {string | null} png             base64 PNG thumbnail
 * @property {(number[] | null)[]} patches   per token [row, col, x0, y0, x1, y1] or null
 * @property {(string | null)[]} kinds       per token: patch, cls, distillation, register …
 * @property {number | null} query           the default query (null: mean over patches)
 */

/**
 * @typedef {object} Pane
 * @property {ImageInfo} info
 * @property {HTMLDivElement} root
 * @property {HTMLCanvasElement} canvas
 * @property {HTMLDivElement} list
 * @property {HTMLDivElement} caption
 * @property {HTMLImageElement | null} img
 * @property {number} scale          canvas CSS pixels per image pixel
 * @property {number | null} hover   the token under the pointer
 * @property {number | null} pinned  the token clicked
 * @property {number[]} cells        per patch token (row-major), its position
 * @property {{ query: number | null, values: (number | null)[], vmax: number }} last
 */

const SIDE = 360; // the picture's longer side on the page, CSS pixels
const ALPHA = 0.6;

/**
 * @param {Viewer} v
 * @returns {Pane | null}
 */
function paneOf(v) {
  return /** @type {any} */ (v).visionPane || null;
}

/**
 * Build (or rebuild, for a new payload) the pane above the heatmap; remove it for a text run.
 * @param {Viewer} v
 * @returns {Pane | null}
 */
function ensure(v) {
  const info = /** @type {ImageInfo | undefined} */ (v.header?.image);
  let pane = paneOf(v);
  if (pane && pane.info === info) return pane;
  if (pane) { pane.root.remove(); /** @type {any} */ (v).visionPane = null; }
  if (!info) return null;
  const doc = v.dom.root.ownerDocument;
  const root = doc.createElement("div");
  root.className = "am-vision";
  root.style.cssText = "display:flex;gap:12px;align-items:flex-start;margin:4px 0 8px";
  const canvas = doc.createElement("canvas");
  canvas.className = "am-vision-image";
  canvas.style.cursor = "crosshair";
  const side = doc.createElement("div");
  side.style.cssText = "display:flex;flex-direction:column;gap:4px;font:12px system-ui,sans-serif";
  const caption = doc.createElement("div");
  caption.className = "am-vision-caption";
  const list = doc.createElement("div");
  list.className = "am-vision-tokens";
  list.style.cssText = "display:flex;flex-wrap:wrap;gap:4px;max-width:260px";
  side.append(caption, list);
  root.append(canvas, side);
  const scale = SIDE / Math.max(info.width, info.height);
  const dpr = (typeof window !== "undefined" && window.devicePixelRatio) || 1;
  canvas.style.width = `${Math.round(info.width * scale)}px`;
  canvas.style.height = `${Math.round(info.height * scale)}px`;
  canvas.width = Math.round(info.width * scale * dpr);
  canvas.height = Math.round(info.height * scale * dpr);
  const cells = [];
  for (let i = 0; i < info.patches.length; i++) if (info.patches[i]) cells.push(i);
  /** @type {Pane} */
  const p = { info, root, canvas, list, caption, img: null, scale, hover: null, pinned: null, cells, last: { query: null, values: [], vmax: 0 } };
  const tokens = v.stackInfo().query_tokens;
  info.kinds.forEach((kind, i) => {
    if (kind !== "cls" && kind !== "distillation" && kind !== "register") return;
    const b = doc.createElement("button");
    b.type = "button";
    b.className = "am-vision-token";
    b.dataset.token = String(i);
    b.textContent = tokens[i] ?? kind;
    b.title = `${kind} token: show its attention over the image (click to pin)`;
    v.listen(b, "mouseenter", () => { p.hover = i; paintVision(v); });
    v.listen(b, "mouseleave", () => { p.hover = null; paintVision(v); });
    v.listen(b, "click", () => { p.pinned = p.pinned === i ? null : i; paintVision(v); });
    list.append(b);
  });
  if (!list.childElementCount) {
    const none = doc.createElement("span");
    none.textContent = "no CLS or register tokens";
    list.append(none);
  }
  v.listen(canvas, "mousemove", (/** @type {MouseEvent} */ e) => {
    const t = patchAt(p, e);
    if (t !== p.hover) { p.hover = t; paintVision(v); }
  });
  v.listen(canvas, "mouseleave", () => { if (p.hover !== null) { p.hover = null; paintVision(v); } });
  v.listen(canvas, "click", (/** @type {MouseEvent} */ e) => {
    const t = patchAt(p, e);
    p.pinned = t === null || t === p.pinned ? null : t;
    paintVision(v);
  });
  // capture phase: the viewer's own key handler stops the keys it uses from bubbling
  v.listen(doc, "keydown", (/** @type {KeyboardEvent} */ e) => { if (e.key === "Escape" && p.pinned !== null) { p.pinned = null; paintVision(v); } }, { capture: true });
  if (info.png) {
    const img = new Image();
    img.onload = () => { p.img = img; paintVision(v); };
    img.src = `data:image/png;base64,${info.png}`;
  }
  const stage = v.dom.canvas.parentElement;
  (stage && stage.parentElement ? stage.parentElement : v.dom.root).insertBefore(root, stage);
  /** @type {any} */ (v).visionPane = p;
  return p;
}

/**
 * The patch token under the pointer, or null.
 * @param {Pane} p
 * @param {MouseEvent} e
 */
function patchAt(p, e) {
  const r = p.canvas.getBoundingClientRect();
  const x = (e.clientX - r.left) / p.scale, y = (e.clientY - r.top) / p.scale;
  for (const i of p.cells) {
    const b = /** @type {number[]} */ (p.info.patches[i]);
    if (x >= b[2] && x < b[4] && y >= b[3] && y < b[5]) return i;
  }
  return null;
}

/**
 * Repaint the picture and its overlay for the viewer's current head (a no-op for text runs).
 * @param {Viewer} v
 */
export function paintVision(v) {
  const p = ensure(v);
  if (!p) return;
  const d = v.current();
  const ctx = ctx2d(p.canvas);
  const dpr = p.canvas.width / (p.info.width * p.scale);
  ctx.setTransform(dpr * p.scale, 0, 0, dpr * p.scale, 0, 0);
  ctx.clearRect(0, 0, p.info.width, p.info.height);
  ctx.globalAlpha = 1;
  if (p.img) ctx.drawImage(p.img, 0, 0, p.info.width, p.info.height);
  else { ctx.fillStyle = "#c8c8c8"; ctx.fillRect(0, 0, p.info.width, p.info.height); }
  if (!d) return;
  const query = p.pinned ?? p.hover ?? p.info.query;
  /** @type {(number | null)[]} */
  const values = p.cells.map((j) => (query === null ? mean(d, p.cells, j) : value(d, query, j)));
  let vmax = 0;
  for (const x of values) if (x !== null && x > vmax) vmax = x;
  const ramp = v.ramps.seq;
  ctx.globalAlpha = ALPHA;
  p.cells.forEach((j, n) => {
    const x = values[n];
    if (x === null) return;
    const b = /** @type {number[]} */ (p.info.patches[j]);
    ctx.fillStyle = css(ramp, lutIndex(vmax > 0 ? x / vmax : 0));
    ctx.fillRect(b[2], b[3], b[4] - b[2], b[5] - b[3]);
  });
  ctx.globalAlpha = 1;
  if (query !== null && p.info.patches[query]) {
    const b = /** @type {number[]} */ (p.info.patches[query]);
    ctx.strokeStyle = p.pinned === query ? "#d62728" : "#ff7f0e";
    ctx.lineWidth = 2 / p.scale;
    ctx.strokeRect(b[2], b[3], b[4] - b[2], b[5] - b[3]);
  }
  p.last = { query, values, vmax };
  const tokens = v.stackInfo().query_tokens;
  const who = query === null ? "mean of the patch queries" : `${tokens[query] ?? query}${p.pinned === query ? " (pinned)" : ""}`;
  p.caption.textContent = `${who} → the image · ${v.headName()} · layer ${v.st.layer} · brightest ${vmax.toFixed(3)}`;
  for (const b of /** @type {HTMLButtonElement[]} */ (Array.from(p.list.querySelectorAll("button")))) {
    b.style.fontWeight = Number(b.dataset.token) === query ? "bold" : "normal";
  }
  p.root.dataset.query = query === null ? "" : String(query);
}

/**
 * The mean over the patch queries of their attention to key j (models without CLS).
 * @param {import("./types.js").HeadData} d
 * @param {number[]} rows
 * @param {number} j
 */
function mean(d, rows, j) {
  let s = 0, n = 0;
  for (const i of rows) { const x = value(d, i, j); if (x !== null) { s += x; n++; } }
  return n ? s / n : null;
}

/**
 * For tests: where a patch token is on screen (its box's centre), and the last overlay.
 * @param {Viewer} v
 */
export function visionHooks(v) {
  const p = paneOf(v);
  if (!p) return null;
  return {
    query: p.last.query,
    values: p.last.values,
    vmax: p.last.vmax,
    pinned: p.pinned,
    /** @param {number} token */
    point(token) {
      const b = p.info.patches[token];
      if (!b) throw new Error(`attnmap: token ${token} is not a patch`);
      const r = p.canvas.getBoundingClientRect();
      return { x: r.left + ((b[2] + b[4]) / 2) * p.scale, y: r.top + ((b[3] + b[5]) / 2) * p.scale };
    },
    /** @param {number} x  @param {number} y  canvas RGBA at CSS point (x, y) of the picture */
    pixel(x, y) {
      const dpr = p.canvas.width / (p.info.width * p.scale);
      return Array.from(ctx2d(p.canvas).getImageData(Math.floor(x * dpr), Math.floor(y * dpr), 1, 1).data);
    },
  };
}
