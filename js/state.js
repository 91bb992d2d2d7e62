// The view state: its first value from the host's options, and the one rule that applies a
// patch (clamping layer and head to the stack). No DOM.

/** @typedef {import("./types.js").State} State */
/** @typedef {import("./types.js").Header} Header */
/** @typedef {import("./types.js").Head} Head */

import { stepCount } from "./steps.js";

/**
 * @param {unknown} v
 * @param {number} n
 */
function wrap(v, n) {
  return typeof v === "number" && Number.isInteger(v) ? Math.min(n - 1, Math.max(0, v < 0 ? v + n : v)) : 0;
}

/**
 * The state a fresh viewer starts in: the options where they make sense, defaults elsewhere.
 * @param {Header} header
 * @param {Record<string, any>} o  the host's options
 * @param {boolean} diff  whether the page compares two runs
 * @returns {State}
 */
export function initialState(header, o, diff) {
  const stacks = header.stacks.map((s) => s.name);
  const stack = stacks.includes(o.stack) ? o.stack : stacks[0];
  const info = header.stacks[stacks.indexOf(stack)];
  const [L, H] = info.shape;
  /** @type {import("./types.js").View} */
  const view = ["heads", "layers"].includes(o.view) || (diff && ["diff", "change"].includes(o.view)) ? o.view : "heatmap";
  // "generated" is the heatmap of the generated rows: the heatmap with the switch on.
  const n = stepCount(header), gen = n > 0 && o.view === "generated";
  const step = n > 0 && Number.isInteger(o.step) ? Math.max(0, Math.min(n, o.step)) : null;
  return {
    stack, layer: wrap(o.layer, L), head: o.head === "mean" || o.head === "max" ? o.head : wrap(o.head, H),
    view, scale: ["unit", "head", "log"].includes(o.scale) ? o.scale : "head",
    metric: o.metric === "mean_abs" ? "mean_abs" : "js",
    ignoreFirst: !!o.ignore_first, cs: null, k0: 0, q0: 0, sel: null, score: null, min: null, mark: null,
    step, gen, reduce: o.reduce === "sum" ? "sum" : "max",
  };
}

/**
 * `st` with `patch` applied, layer and head clamped to the stack's shape. A new object:
 * nothing else ever writes a state.
 * @param {State} st
 * @param {Partial<State>} patch
 * @param {Header} header
 * @returns {State}
 */
export function applyPatch(st, patch, header) {
  const next = { ...st, ...patch };
  const info = header.stacks.find((s) => s.name === next.stack) || header.stacks[0];
  next.stack = info.name;
  const [L, H] = info.shape;
  next.layer = Math.min(L - 1, Math.max(0, Math.trunc(next.layer) || 0));
  if (typeof next.head === "number") next.head = Math.min(H - 1, Math.max(0, Math.trunc(next.head) || 0));
  const n = stepCount(header);
  next.step = n > 0 && next.step !== null ? Math.min(n, Math.max(0, Math.trunc(next.step) || 0)) : null;
  next.gen = n > 0 && !!next.gen;
  next.reduce = next.reduce === "sum" ? "sum" : "max";
  return next;
}

/**
 * The next head for the keyboard: numbers wrap around; from mean/max, the first or last head.
 * @param {Head} head
 * @param {number} dh
 * @param {number} H
 * @returns {number}
 */
export function stepHead(head, dh, H) {
  return typeof head === "number" ? (head + dh + H) % H : dh > 0 ? 0 : H - 1;
}
