// The viewer: owns the state (changed only by set), the decoded-layer caches, and sends each
// state to the view that paints it. The DOM is built in panels.js, input in input.js, pixels
// in views/*.

import { parsePayload, decodeLayer } from "./payload.js";
import { rampsOf } from "./colour.js";
import { headData, headMax } from "./data.js";
import { textWords } from "./analysis.js";
import { canvasSize, heatmapGeometry } from "./layout.js";
import { ctx2d, hasRoles, short } from "./draw.js";
import { paintImage } from "./images.js";
import { initialState, applyPatch } from "./state.js";
import { buildDom, syncControls, showInfo, resetRelation } from "./panels.js";
import { attachInput } from "./input.js";
import { paintHeatmap } from "./views/heatmap.js";
import { paintHeads, paintLayers } from "./views/grids.js";
import { paintDiff, paintChange } from "./views/diff.js";
import { hooks } from "./hooks.js";
import { rowWindow } from "./steps.js";
import { KernelSource, PageSource, ServerSource } from "./long.js";
import { paintLong } from "./views/longmap.js";
import { paintVision } from "./vision.js";

/** @typedef {import("./types.js").State} State */
/** @typedef {import("./types.js").Header} Header */
/** @typedef {import("./types.js").Layer} Layer */
/** @typedef {import("./types.js").HeadData} HeadData */
/** @typedef {import("./types.js").HostModel} HostModel */
/** @typedef {import("./types.js").StackInfo} StackInfo */
/** @typedef {import("./types.js").Prediction} Prediction */
/** @typedef {import("./types.js").DiffOptions} DiffOptions */
/** @typedef {import("./types.js").Change} Change */
/** @typedef {import("./types.js").HitBox} HitBox */
/** @typedef {import("./colour.js").Ramp} Ramp */
/** @typedef {import("./layout.js").Geometry} Geometry */
/** @typedef {import("./data.js").DiffHead} DiffHead */
/** @typedef {import("./draw.js").Band} Band */
/** @typedef {import("./panels.js").Dom} Dom */
/** @typedef {import("./analysis.js").Word} Word */

const LAYER_CACHE = 6;

/**
 * @param {{ kind: string, ms: number, at: number, stack: string, layer?: number, head?: number | string, n: number }} rec
 */
function timing(rec) {
  const w = /** @type {any} */ (typeof window !== "undefined" ? window : globalThis);
  (w.__attnmapTiming = w.__attnmapTiming || []).push(rec);
  if (w.__attnmapTiming.length > 500) w.__attnmapTiming.shift();
}

/**
 * @template K, V
 * @param {Map<K, V>} map
 * @param {number} n
 */
function trim(map, n) {
  while (map.size > n) map.delete(/** @type {K} */ (map.keys().next().value));
}

export class Viewer {
  /**
   * @param {HostModel} model
   * @param {HTMLElement} el
   */
  constructor(model, el) {
    this.model = model;
    this.el = el;
    /** @type {Map<string, Layer>} "stack/layer" → decoded layer (small LRU) */
    this.layers = new Map();
    /** @type {Map<string, Promise<Layer>>} */
    this.pending = new Map();
    /** @type {Map<string, Layer>} payload B's layers (diff pages) */
    this.layersB = new Map();
    /** @type {Map<string, { canvas: HTMLCanvasElement, vmax: number }>} */
    this.images = new Map();
    /** @type {Map<string, HTMLCanvasElement>} */
    this.thumbs = new Map();
    /** @type {Map<string, DiffHead & { images: HTMLCanvasElement[] }>} */
    this.diffCache = new Map();
    this.seq = 0;
    this.draws = 0;
    /** @type {(() => void)[]} */
    this.off = [];
    this.drag = false;
    /** @type {Header | null} */
    this.header = null;
    /** @type {Map<string, Uint8Array>} */
    this.chunks = new Map();
    /** @type {{ header: Header, chunks: Map<string, Uint8Array> } | null} */
    this.B = null;
    /** @type {DiffOptions | null} */
    this.diff = null;
    /** @type {Map<string, Change>} */
    this.changeBy = new Map();
    this.ramps = rampsOf(null);
    /** @type {State} */
    this.st = { stack: "", layer: 0, head: 0, view: "heatmap", scale: "head", metric: "js", ignoreFirst: false, cs: null, k0: 0, q0: 0, sel: null, score: null, min: null, mark: null, step: null, gen: false, reduce: "max" };
    /** @type {{ source: import("./long.js").TileSource, tiles: Map<string, Promise<import("./long.js").Tile>>, tile: import("./long.js").Tile | null, vmax: number } | null} long runs: where tiles come from, and the last drawn */
    this.lod = null;
    /** @type {Word[]} */
    this.words = [];
    /** @type {Map<number, Prediction> | null} */
    this.predMap = null;
    // What the last paint drew, for hit tests and the test hooks.
    /** @type {HitBox[]} */
    this.hits = [];
    /** @type {import("./views/diff.js").DiffGeometry | null} */
    this.dgeom = null;
    /** @type {{ q: number, text: string, miss: boolean }[]} */
    this.predRows = [];
    /** @type {{ layer: number, head: number, value: number, rgb: number[], label: string | null }[]} */
    this.changeCells = [];
    /** @type {Band[]} */
    this.bands = [];
    /** @type {{ query: { text: string, x: number, y: number }, key: { text: string, x: number, y: number } } | null} */
    this.axes = null;
    this.miniScale = 1;
    /** @type {{ row: number | null, col: number | null }} where the prompt/generation lines went */
    this.boundary = { row: null, col: null };
    /** @type {number | null} the row the step playback highlights */
    this.stepRow = null;
    /** @type {ReturnType<typeof setInterval> | null} the step playback's timer while it plays */
    this.timer = null;
    /** @type {Map<string, import("./layout.js").LabelRoom>} stack → room its labels need */
    this.rooms = new Map();
    this.infoStale = false; // the info panel waits for the layer it describes
    /** @type {Dom} */
    this.dom = buildDom();
    this.el.append(this.dom.root);
    /** @type {any} */ (this.dom.root).__attnmap = hooks(this);
  }

  /**
   * @template {Event} E
   * @param {EventTarget} target
   * @param {string} type
   * @param {(e: E) => void} fn
   * @param {AddEventListenerOptions} [opts]
   */
  listen(target, type, fn, opts) {
    const f = /** @type {EventListener} */ (fn);
    target.addEventListener(type, f, opts);
    this.off.push(() => target.removeEventListener(type, f, opts));
  }

  start() {
    attachInput(this);
    const onChange = () => this.load();
    this.model.on("change:payload", onChange);
    this.model.on("change:options", onChange);
    this.off.push(() => { this.model.off?.("change:payload", onChange); this.model.off?.("change:options", onChange); });
    if (typeof ResizeObserver !== "undefined") {
      let w = 0;
      const ro = new ResizeObserver(() => { const nw = this.dom.root.clientWidth; if (nw && nw !== w) { w = nw; if (this.header) this.set({}); } });
      ro.observe(this.dom.root);
      this.off.push(() => ro.disconnect());
    }
    // The canvas follows the window's height too (the matrix fits the screen).
    if (typeof window !== "undefined") {
      let hgt = window.innerHeight;
      this.listen(window, "resize", () => { if (window.innerHeight !== hgt) { hgt = window.innerHeight; if (this.header) this.set({}); } });
    }
    this.load();
  }

  destroy() {
    this.seq++;
    this.pause();
    for (const f of this.off) f();
    this.off = [];
    this.dom.root.remove();
  }

  load() {
    /** @type {Header} */
    let header;
    try {
      const p = parsePayload(this.model.get("payload"));
      header = p.header;
      this.chunks = p.chunks;
    } catch (err) {
      this.fail(err);
      return;
    }
    this.pause();
    this.header = header;
    this.ramps = rampsOf(header);
    this.layers.clear(); this.images.clear(); this.rooms.clear(); this.thumbs.clear(); this.layersB.clear(); this.diffCache.clear();
    this.predMap = null; this.predRows = [];
    // Diff mode: a second payload B on the same aligned tokens, and the ranking in the options.
    const o = this.model.get("options") || {};
    const pb = this.model.get("payload_b"), od = o.diff;
    this.B = null; this.diff = null;
    if (pb && od) {
      try { this.B = parsePayload(pb); } catch (err) { this.fail(err); return; }
      this.diff = od;
      this.changeBy = new Map(od.ranking.map((/** @type {Change} */ r) => [`${r.layer}/${r.head}`, r]));
    }
    this.words = textWords(header.text);
    // Long runs draw from tiles: the page's own long representation, the app's endpoint, or
    // the notebook's kernel (a widget whose `tiles` trait is set).
    const chunk = this.model.get("long_chunk"), tileUrl = this.model.get("tile_url");
    const hl = /** @type {Header & { long?: any }} */ (header);
    const m = /** @type {any} */ (this.model), kernel = !hl.long && !!m.get("tiles") && typeof m.send === "function";
    this.lod?.source.close?.();
    /** @type {import("./long.js").TileSource | null} */
    const source = hl.long && typeof chunk === "function" ? new PageSource(hl, chunk)
      : tileUrl ? new ServerSource(tileUrl) : kernel ? new KernelSource(m) : null;
    if (source?.close) this.off.push(() => source.close?.());
    this.lod = source ? { source, tiles: new Map(), tile: null, vmax: 1 } : null;
    syncControls(this, true);
    resetRelation(this);
    this.set(initialState(header, o, !!this.diff)); // every key: a fresh start
  }

  /** @param {unknown} err */
  fail(err) {
    const e = /** @type {any} */ (err);
    this.dom.status.textContent = String(e && e.message ? e.message : e);
    this.dom.status.classList.add("am-error");
    console.error(err);
  }

  /**
   * @param {string} [name]
   * @returns {StackInfo}
   */
  stackInfo(name = this.st.stack) {
    const hd = /** @type {Header} */ (this.header);
    return hd.stacks.find((s) => s.name === name) || hd.stacks[0];
  }

  // --- state: the one way it changes ---
  /**
   * Apply `patch`, clamp it (layer, head, the zoomed view inside the matrix), show it.
   * @param {Partial<State>} patch
   */
  set(patch) {
    if (!this.header) return;
    const t0 = performance.now();
    let next = applyPatch(this.st, patch, this.header);
    if (this.lod && next.view !== "heatmap") next = { ...next, view: "heatmap" }; // tiles: one head at a time
    if (next.view === "heatmap" || next.cs !== null) {
      const g = this.geom(next);
      next = { ...next, cs: g.cs > g.fit ? g.cs : null, k0: g.k0, q0: g.q0 };
    }
    const selChanged = next.sel !== this.st.sel || next.stack !== this.st.stack || next.layer !== this.st.layer || next.head !== this.st.head;
    // A tooltip describes what was under the pointer in the old view: it goes with that view.
    if (selChanged || next.view !== this.st.view) this.dom.tip.hidden = true;
    this.st = next;
    if (selChanged) this.infoStale = true;
    syncControls(this, false);
    this.refresh(t0);
  }

  /**
   * The heatmap's geometry for state `st` (default: the current one). Reads, never writes.
   * @param {State} [st]
   * @returns {Geometry}
   */
  geom(st = this.st) {
    const info = this.stackInfo(st.stack);
    const [, , Q, K] = info.shape;
    return heatmapGeometry(this.size(), Q, K, { predictions: !!this.predictions(st), bands: hasRoles(info), room: this.labelRoom(info), rows: rowWindow(st, info) }, st);
  }

  /** Stop the step playback (a no-op when it is not playing). */
  pause() {
    if (this.timer !== null) { clearInterval(this.timer); this.timer = null; }
    this.dom.root.dataset.playing = "false";
    this.dom.ui.play.textContent = "▶";
    this.dom.ui.play.title = "play the generation step by step";
  }

  /**
   * The canvas size: the root's width, and the window's height below the canvas's top (less
   * the status line), so the whole matrix is on screen when the viewer's top is.
   */
  size() {
    const root = this.dom.root;
    let below = 0;
    if (typeof window !== "undefined" && window.innerHeight) {
      const top = this.dom.canvas.getBoundingClientRect().top - root.getBoundingClientRect().top;
      below = window.innerHeight - top - 44;
    }
    return canvasSize(root.clientWidth, below);
  }

  /**
   * How wide the widest row and column labels are drawn (at the largest label font), per stack.
   * @param {StackInfo} info
   * @returns {import("./layout.js").LabelRoom}
   */
  labelRoom(info) {
    let r = this.rooms.get(info.name);
    if (!r) {
      const ctx = ctx2d(document.createElement("canvas"));
      ctx.font = "12px system-ui, sans-serif";
      /** @param {string[]} toks */
      const widest = (toks) => toks.reduce((m, t) => Math.max(m, ctx.measureText(short(t)).width), 0) + 10;
      r = { rows: widest(info.query_tokens), cols: widest(info.key_tokens) };
      this.rooms.set(info.name, r);
    }
    return r;
  }

  /**
   * Predictions of the shown stack's query rows: position → record, or null.
   * @param {State} [st]
   */
  predictions(st = this.st) {
    const hd = this.header;
    if (!hd || !hd.predictions || !(hd.predictions_stacks || []).includes(st.stack)) return null;
    if (!this.predMap) this.predMap = new Map(hd.predictions.map((r) => [r.position, r]));
    return this.predMap;
  }

  // --- layers ---
  /**
   * A decoded layer: from the cache, the payload, or the host's layer_url.
   * @param {string} stack
   * @param {number} li
   * @returns {Promise<Layer>}
   */
  async layer(stack, li) {
    const key = `${stack}/${li}`;
    const hit = this.layers.get(key);
    if (hit) {
      this.layers.delete(key); this.layers.set(key, hit); // most recently used last
      return hit;
    }
    let p = this.pending.get(key);
    if (!p) {
      p = (async () => {
        let bytes = this.chunks.get(key);
        if (!bytes) {
          const url = this.model.get("layer_url");
          if (!url) throw new Error(`attnmap: layer ${li} of ${stack} is not in this payload`);
          const r = await fetch(`${url}/${encodeURIComponent(stack)}/${li}`);
          if (!r.ok) throw new Error(`attnmap: could not fetch layer ${li} of ${stack} (HTTP ${r.status})`);
          bytes = new Uint8Array(await r.arrayBuffer());
        }
        const d = await decodeLayer(bytes);
        this.layers.set(key, d);
        trim(this.layers, LAYER_CACHE);
        return d;
      })();
      this.pending.set(key, p);
      p.finally(() => this.pending.delete(key)).catch(() => {});
    }
    return p;
  }

  /**
   * @param {string} stack
   * @param {number} li
   */
  cached(stack, li) { return this.layers.get(`${stack}/${li}`); }

  /**
   * @param {string} stack
   * @param {number} li
   */
  async layerB(stack, li) {
    const key = `${stack}/${li}`;
    let d = this.layersB.get(key);
    if (!d) {
      const bytes = this.B?.chunks.get(key);
      if (!bytes) throw new Error(`attnmap: layer ${li} of ${stack} is not in payload B`);
      d = await decodeLayer(bytes);
      this.layersB.set(key, d);
      trim(this.layersB, LAYER_CACHE);
    }
    return d;
  }

  /** @returns {HeadData | null} */
  current() {
    const st = this.st, layer = this.cached(st.stack, st.layer);
    return layer ? headData(layer, st.head) : null;
  }

  imageKey() {
    const st = this.st;
    return `${st.stack}/${st.layer}/${st.head}/${st.scale}/${st.ignoreFirst}`;
  }

  /**
   * The shown head as one pixel per cell, cached, with the value at the top of its scale.
   * @param {HeadData} d
   */
  image(d) {
    const st = this.st, key = this.imageKey();
    let e = this.images.get(key);
    if (!e) {
      const vmax = st.scale === "unit" ? 1 : headMax(d, st.ignoreFirst);
      e = { vmax, canvas: paintImage(d, vmax, st.scale, this.ramps.seq) };
      this.images.set(key, e);
      trim(this.images, 8);
    }
    return e;
  }

  /**
   * @param {import("./types.js").Head} [head]
   */
  headName(head = this.st.head) { return typeof head === "number" ? `head ${head}` : `${head} of heads`; }

  // --- getting the data, then painting ---
  /** @param {number} [t0] */
  async refresh(t0 = performance.now()) {
    const seq = ++this.seq, st = this.st, status = this.dom.status;
    if (this.lod) return paintLong(this, seq, t0);
    if (st.view === "layers") { this.showInfoIfStale(); return paintLayers(this, seq, t0); }
    if (st.view !== "change") {
      const need = !this.cached(st.stack, st.layer) || (st.view === "diff" && !this.layersB.has(`${st.stack}/${st.layer}`));
      if (need) {
        status.textContent = `decoding layer ${st.layer}…`;
        try {
          await this.layer(st.stack, st.layer);
          if (st.view === "diff") await this.layerB(st.stack, st.layer);
        } catch (err) { if (seq === this.seq) this.fail(err); return; }
        if (seq !== this.seq) return;
      }
    }
    status.textContent = "";
    this.showInfoIfStale();
    this.paint(t0);
  }

  showInfoIfStale() {
    if (!this.infoStale) return;
    this.infoStale = false;
    showInfo(this);
  }

  /** @param {number} [t0] */
  paint(t0 = performance.now()) {
    const st = this.st;
    if (st.view === "change") paintChange(this);
    else if (st.view === "diff") paintDiff(this);
    else if (st.view === "layers") return;
    else {
      const d = this.current();
      if (!d) return;
      if (st.view === "heads") paintHeads(this);
      else paintHeatmap(this, d);
    }
    paintVision(this); // runs of an image: the picture with the query's row over it
    this.drawn(st.view, t0);
  }

  /**
   * Count a finished draw (tests wait on data-draws) and record its time.
   * @param {string} view
   * @param {number} t0
   */
  drawn(view, t0) {
    const st = this.st, ms = performance.now() - t0, root = this.dom.root;
    this.draws++;
    root.dataset.draws = String(this.draws);
    root.dataset.drawMs = ms.toFixed(2);
    root.dataset.view = view;
    timing({ kind: view, ms, at: performance.now(), stack: st.stack, layer: st.layer, head: st.head, n: this.draws });
  }
}
