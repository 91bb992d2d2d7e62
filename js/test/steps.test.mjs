// Step playback's pure parts: generated spans, the rows a step shows, what was chosen, the
// census it counts, and the geometry's row window.
import { test } from "node:test";
import assert from "node:assert/strict";

import { censusInfo, choiceAt, colSpan, moveStep, rowSpan, rowWindow, shownEnd, spanOf, stepCount, stepRow } from "../steps.js";
import { heatmapGeometry } from "../layout.js";
import { applyPatch, initialState } from "../state.js";
import { rowSlice } from "../data.js";

// 4 prompt tokens, 3 generated: rows and columns 4, 5, 6.
const gen = [false, false, false, false, true, true, true];
const info = {
  name: "self", shape: [2, 2, 7, 7], query_tokens: "abcdefg".split(""), key_tokens: "abcdefg".split(""),
  query_special: gen.map(() => false), key_special: gen.map(() => false),
  query_generated: gen, key_generated: gen,
  scores: { names: ["self"], values: [[0.1], [0.2], [0.3], [0.4]] },
  scores_generated: { names: ["self"], values: [[0.9], [0.8], [0.7], [0.6]] },
};
const header = { format: "attnmap-payload", version: 1, model: {}, text: "", target_text: null, stacks: [info], chunks: [], generation: { side: "input", boundary: 4, count: 3, positions: [4, 5, 6] } };

test("spans of generated tokens", () => {
  assert.deepEqual(spanOf(gen), { first: 4, end: 7, count: 3 });
  assert.equal(spanOf(undefined), null);
  assert.equal(spanOf([false, false]), null);
  assert.deepEqual(rowSpan(info), colSpan(info));
  assert.equal(colSpan({ ...info, key_generated: undefined }), null); // e.g. cross-attention's source
  assert.equal(stepCount(header), 3);
  assert.equal(stepCount({ ...header, generation: undefined }), 0);
});

test("a step shows the prompt and the first t generated tokens, the t-th highlighted", () => {
  const st = initialState(header, {}, false);
  assert.equal(st.step, null);
  assert.equal(shownEnd(st, rowSpan(info), 7), 7);
  assert.equal(stepRow(st, info), null);
  for (let t = 0; t <= 3; t++) {
    const s = applyPatch(st, { step: t }, header);
    assert.equal(shownEnd(s, rowSpan(info), 7), 4 + t);
    assert.equal(stepRow(s, info), t === 0 ? null : 3 + t);
  }
  // Clamped to 0..count; dropped on a run with nothing generated.
  assert.equal(applyPatch(st, { step: 9 }, header).step, 3);
  assert.equal(applyPatch(st, { step: -2 }, header).step, 0);
  const plain = { ...header, generation: undefined };
  assert.equal(applyPatch(st, { step: 2, gen: true }, plain).step, null);
  assert.equal(applyPatch(st, { step: 2, gen: true }, plain).gen, false);
  assert.equal(moveStep(null, -1, 3), 2);
  assert.equal(moveStep(null, 1, 3), 3);
  assert.equal(moveStep(0, -1, 3), 0);
  assert.equal(moveStep(1, 1, 3), 2);
});

test("options: view 'generated' opens the generated rows; step opens the playback", () => {
  const st = initialState(header, { view: "generated", step: 2 }, false);
  assert.equal(st.view, "heatmap");
  assert.equal(st.gen, true);
  assert.equal(st.step, 2);
  assert.deepEqual(rowWindow(st, info), [4, 7]);
  assert.deepEqual(rowWindow({ ...st, gen: false }, info), [0, 7]);
  const plain = initialState({ ...header, generation: undefined }, { view: "generated", step: 2 }, false);
  assert.equal(plain.gen, false);
  assert.equal(plain.step, null);
});

test("the chosen token's record is the prediction one position before it", () => {
  const rec = (position, next) => ({ position, token: "x", top: [{ token: "y", p: 0.5 }], next });
  const preds = new Map([[4, rec(4, { token: "f", p: 0.5, rank: 1, surprisal: 1 })], [5, rec(5, null)]]);
  assert.equal(choiceAt(preds, 5)?.position, 4);
  assert.equal(choiceAt(preds, 6), null); // no "next" recorded
  assert.equal(choiceAt(null, 5), null);
});

test("census over the generated rows when the switch is on", () => {
  assert.deepEqual(censusInfo(info, true).scores, info.scores_generated);
  assert.deepEqual(censusInfo(info, false).scores, info.scores);
  assert.deepEqual(censusInfo({ ...info, scores_generated: undefined }, true).scores, info.scores);
});

test("the geometry's row window fits the generated rows and keeps row indexes absolute", () => {
  const size = { w: 800, h: 600 }, st = initialState(header, {}, false);
  const all = heatmapGeometry(size, 7, 7, { predictions: false, bands: false }, st);
  const win = heatmapGeometry(size, 7, 7, { predictions: false, bands: false, rows: [4, 7] }, { ...st, gen: true });
  assert.equal(all.r0, 0); assert.equal(all.r1, 7); assert.equal(all.q0, 0);
  assert.equal(win.r0, 4); assert.equal(win.r1, 7); assert.equal(win.q0, 4);
  assert.ok(win.fit >= all.fit);
  assert.ok(Math.abs(win.ph - 3 * win.cs) < 1e-9); // three rows tall
  // Zoomed: the view stays inside the window.
  const z = heatmapGeometry(size, 7, 7, { predictions: false, bands: false, rows: [4, 7] }, { ...st, cs: win.fit * 4, q0: 0 });
  assert.ok(z.q0 >= 4 && z.q0 <= 7 - z.vq + 1e-9);
});

test("rowSlice views rows of a head without copying", () => {
  const d = { q: 3, k: 2, scales: new Float32Array([1, 2, 3]), codes: new Uint8Array([1, 2, 3, 4, 5, 6]), peaks: new Float32Array([4, 5, 6]), levels: 254, stats: null };
  const s = rowSlice(d, 1, 3);
  assert.equal(s.q, 2);
  assert.deepEqual(Array.from(s.scales), [2, 3]);
  assert.deepEqual(Array.from(s.peaks), [5, 6]);
  assert.equal(s.levels, 254);
  assert.deepEqual(Array.from(s.codes), [3, 4, 5, 6]);
  assert.equal(s.codes.buffer, d.codes.buffer);
  assert.equal(rowSlice(d, 0, 3), d);
});
