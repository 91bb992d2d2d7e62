// Generated runs (attnmap.generate): where the model's own tokens are, which rows a step shows,
// and what the model chose at each step. Pure functions of the header and the state; no DOM.

/** @typedef {import("./types.js").Header} Header */
/** @typedef {import("./types.js").StackInfo} StackInfo */
/** @typedef {import("./types.js").State} State */
/** @typedef {import("./types.js").Prediction} Prediction */

/**
 * The generated span of one axis: tokens [first, end) were written by the model.
 * @typedef {{ first: number, end: number, count: number }} Span
 */

/**
 * @param {boolean[] | undefined} flags
 * @returns {Span | null}
 */
export function spanOf(flags) {
  if (!Array.isArray(flags)) return null;
  const first = flags.indexOf(true);
  if (first < 0) return null;
  const end = flags.lastIndexOf(true) + 1;
  return { first, end, count: end - first };
}

/**
 * The generated rows of a stack (its query axis), or null where the stack has none.
 * @param {StackInfo} info
 */
export function rowSpan(info) { return spanOf(info.query_generated); }

/**
 * The generated columns of a stack (its key axis), or null (e.g. cross-attention's source).
 * @param {StackInfo} info
 */
export function colSpan(info) { return spanOf(info.key_generated); }

/**
 * How many steps the playback has: the generated tokens of the run (0 without any).
 * @param {Header} header
 */
export function stepCount(header) {
  const g = header.generation;
  return g && Number.isInteger(g.count) && g.count > 0 ? g.count : 0;
}

/**
 * The query rows the heatmap shows, [r0, r1): the generated rows in the generated-only view,
 * every row otherwise.
 * @param {State} st
 * @param {StackInfo} info
 * @returns {[number, number]}
 */
export function rowWindow(st, info) {
  const Q = info.shape[2], s = st.gen ? rowSpan(info) : null;
  return s ? [s.first, s.end] : [0, Q];
}

/**
 * The rows (or columns) drawn at the current step: everything before the end; at step t the
 * prompt and the first t generated tokens. Without a step (null) or a generated span, the
 * whole axis.
 * @param {State} st
 * @param {Span | null} span
 * @param {number} n  tokens on the axis
 */
export function shownEnd(st, span, n) {
  if (st.step === null || !span) return n;
  return span.first + Math.max(0, Math.min(span.count, st.step));
}

/**
 * The row of the token written at the current step (the one the playback highlights), or
 * null at step 0, without a step, or on a stack with no generated rows.
 * @param {State} st
 * @param {StackInfo} info
 */
export function stepRow(st, info) {
  const s = rowSpan(info);
  if (st.step === null || !s || st.step < 1) return null;
  return shownEnd(st, s, info.shape[2]) - 1;
}

/**
 * What the model chose at the token in row `pos`: the prediction made one position before it
 * (its top-k, and the chosen token's probability, rank and, for generated runs, entropy).
 * @param {Map<number, Prediction> | null} preds
 * @param {number} pos
 * @returns {Prediction | null}
 */
export function choiceAt(preds, pos) {
  const r = preds ? preds.get(pos - 1) : undefined;
  return r && r.next ? r : null;
}

/**
 * The stack info with the census the head grids should use: over the generated rows only
 * when the generated-only switch is on and the header carries that census.
 * @param {StackInfo} info
 * @param {boolean} gen
 * @returns {StackInfo}
 */
export function censusInfo(info, gen) {
  return gen && info.scores_generated ? { ...info, scores: info.scores_generated } : info;
}

/**
 * The next step for a move of `d` tokens: from "no step" (everything shown) a step back is
 * the last-but-one token and a step on stays at the end.
 * @param {number | null} step
 * @param {number} d
 * @param {number} count
 */
export function moveStep(step, d, count) {
  const cur = step === null ? count : step;
  return Math.max(0, Math.min(count, cur + d));
}
