// Small hooks for tests and benchmarks (root.__attnmap): the state, and where things are on
// screen. Read-only, except `relate`, which works the relation panel's controls.

import { ctx2d } from "./draw.js";
import { relate } from "./panels.js";
import { diffHead } from "./views/diff.js";
import { rowWindow, stepCount } from "./steps.js";
import { lodCell } from "./views/longmap.js";
import { visionHooks } from "./vision.js";

/** @typedef {import("./viewer.js").Viewer} Viewer */

/**
 * @param {Viewer} v
 */
export function hooks(v) {
  /**
   * @param {number} x
   * @param {number} y
   */
  const at = (x, y) => { const r = v.dom.canvas.getBoundingClientRect(); return { x: r.left + x, y: r.top + y }; };
  /**
   * Canvas RGBA at CSS point (x, y), in device pixels.
   * @param {number} x
   * @param {number} y
   */
  const px = (x, y) => {
    const r = window.devicePixelRatio || 1;
    return Array.from(ctx2d(v.dom.canvas).getImageData(Math.floor(x * r), Math.floor(y * r), 1, 1).data);
  };
  const dg = () => {
    if (!v.dgeom) throw new Error("attnmap: no diff view drawn");
    return v.dgeom;
  };
  return {
    get state() { return { ...v.st }; },
    /** Long runs: where tiles come from and the last drawn tile (block, origin, size, top of
     * the colour scale); null for runs drawn from the dense payload. */
    get lod() {
      const l = v.lod;
      if (!l) return null;
      const t = l.tile;
      return { source: l.source.kind, vmax: l.vmax, tile: t ? { block: t.block, q0: t.q0, k0: t.k0, rows: t.rows, cols: t.cols, reduce: t.reduce } : null };
    },
    /**
     * Long runs: the drawn tile's value at cell (q, k) (see views/longmap.js lodCell).
     * @param {number} q
     * @param {number} k
     */
    lodCell(q, k) { return lodCell(v, q, k); },
    /** Runs of an image: the overlay's query and values, a patch's point on screen. */
    get vision() { return visionHooks(v); },
    get header() { return v.header; },
    get thumbs() { return v.hits.map((t) => ({ layer: t.layer, head: t.head, badge: t.badge ?? null, pass: t.pass ?? true })); },
    get changeCells() { return v.changeCells; },
    get colormap() { return { name: v.ramps.seq.name, diverging: v.ramps.div.name }; },
    get bands() { return v.bands.map((b) => ({ ...b })); },
    /** The step playback: the step (null: everything shown), how many, the highlighted row,
     * the rows the heatmap shows [r0, r1), where the prompt/generation lines went, playing. */
    get steps() {
      return {
        step: v.st.step, count: v.header ? stepCount(v.header) : 0, row: v.stepRow, gen: v.st.gen,
        window: rowWindow(v.st, v.stackInfo()), boundary: { ...v.boundary }, playing: v.timer !== null,
      };
    },
    /**
     * @param {number} p  panel: 0 A, 1 B, 2 A − B
     * @param {number} q
     * @param {number} k
     */
    diffCell(p, q, k) { const g = dg(); return at(g.x0s[p] + (k + 0.5) * g.cs, g.y0s[p] + (q + 0.5) * g.cs); },
    /** The diff view's layout: panels, cell size, which positions got a label, the labels. */
    get diffGeometry() { const g = dg(), r = v.dom.canvas.getBoundingClientRect(); return { ...g, canvasLeft: r.left, canvasWidth: r.width }; },
    get diffHead() {
      const d = diffHead(v);
      /** @param {Float32Array} a */
      const list = (a) => Array.from(a, (x) => (Number.isNaN(x) ? null : x));
      return { q: d.q, k: d.k, lim: d.lim, vmax: d.vmax, a: list(d.a), b: list(d.b), d: list(d.d) };
    },
    /**
     * @param {number} p
     * @param {number} q
     * @param {number} k
     */
    diffPixel(p, q, k) { const g = dg(); return px(g.x0s[p] + (k + 0.5) * g.cs, g.y0s[p] + (q + 0.5) * g.cs); },
    get predRows() { return v.predRows; },
    /** @param {number} q */
    pred(q) { const g = v.geom(); return at(g.x0 + g.pw + 30, g.y0 + (q - g.q0 + 0.5) * g.cs); },
    get words() { return v.words.map((w) => w.spec); },
    /**
     * Pick words by their spec ("mat", "mat#2") and rank the heads.
     * @param {string} from
     * @param {string} to
     * @param {string} [vs]
     */
    relate(from, to, vs) {
      /** @param {string} spec */
      const idx = (spec) => String(v.words.findIndex((w) => w.spec === spec));
      const u = v.dom.ui;
      u.from.value = idx(from); u.to.value = idx(to); u.vs.value = vs ? idx(vs) : "";
      return relate(v);
    },
    get canvasSize() { return { w: v.dom.canvas.width, h: v.dom.canvas.height }; },
    /** The heatmap's geometry in CSS pixels of the canvas, and the canvas's place in the window. */
    get geometry() {
      const g = v.geom(), r = v.dom.canvas.getBoundingClientRect();
      return { ...g, left: r.left, top: r.top, width: r.width, height: r.height };
    },
    get axes() { return v.axes; },
    /**
     * @param {number} q
     * @param {number} k
     */
    cell(q, k) { const g = v.geom(); return at(g.x0 + (k - g.k0 + 0.5) * g.cs, g.y0 + (q - g.q0 + 0.5) * g.cs); },
    /** @param {number} q */
    rowLabel(q) { const g = v.geom(); return at(g.x0 - g.band - 20, g.y0 + (q - g.q0 + 0.5) * g.cs); },
    /** @param {number} k */
    colLabel(k) { const g = v.geom(); return at(g.x0 + (k - g.k0 + 0.5) * g.cs, g.y0 - g.band - 20); },
    /**
     * @param {number} layer
     * @param {number} head
     */
    thumb(layer, head) { const b = v.hits.find((t) => t.layer === layer && t.head === head); return b ? at(b.x + b.w / 2, b.y + b.h / 2) : null; },
    /**
     * Canvas RGBA inside a cell, clear of its printed value (device pixels).
     * @param {number} q
     * @param {number} k
     */
    pixel(q, k) { const g = v.geom(); return px(g.x0 + (k - g.k0 + 0.15) * g.cs, g.y0 + (q - g.q0 + 0.15) * g.cs); },
    /**
     * Canvas RGBA at the middle of a role band's strip at token i of an axis.
     * @param {"query" | "key"} axis
     * @param {number} i
     */
    bandPixel(axis, i) {
      const g = v.geom(), mid = (g.band - 2) / 2;
      return axis === "query" ? px(g.x0 - g.band + mid, g.y0 + (i - g.q0 + 0.5) * g.cs) : px(g.x0 + (i - g.k0 + 0.5) * g.cs, g.y0 - g.band + mid);
    },
  };
}
