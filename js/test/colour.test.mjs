// Colour mapping: matplotlib's value → entry rule, the tables as they travel, role runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { base64Bytes, css, lutIndex, rampFromBytes, rampsOf, rgba, tOf } from "../colour.js";
import { roleRuns } from "../analysis.js";

test("a value in [i/256, (i+1)/256) takes entry i; the top of the scale the last entry", () => {
  assert.equal(lutIndex(0), 0);
  assert.equal(lutIndex(1 / 256 - 1e-9), 0);
  assert.equal(lutIndex(1 / 256), 1);
  assert.equal(lutIndex(0.5), 128);
  assert.equal(lutIndex(0.3), 76); // floor(76.8), where rounding 0.3 · 255 would give 77
  assert.equal(lutIndex(255.5 / 256), 255);
  assert.equal(lutIndex(1), 255);
  assert.equal(lutIndex(7), 255);
  assert.equal(lutIndex(-1), 0);
  assert.equal(lutIndex(NaN), 0);
});

test("scales: linear to vmax, log over three decades", () => {
  assert.equal(tOf(0.25, 0.5, "head"), 0.5);
  assert.equal(tOf(2, 1, "unit"), 1);
  assert.ok(Math.abs(tOf(0.01, 1, "log") - 1 / 3) < 1e-12);
  assert.equal(tOf(1e-5, 1, "log"), 0);
  assert.equal(tOf(0, 1, "log"), 0);
});

test("a table from the header becomes pixels and CSS colours entry by entry", () => {
  const rgb = Uint8Array.from({ length: 768 }, (_, n) => (n % 3 === 0 ? n / 3 : n % 3 === 1 ? 255 - ((n - 1) / 3) : 7));
  const b64 = Buffer.from(rgb).toString("base64");
  assert.deepEqual(base64Bytes(b64), rgb);
  const { seq, div } = rampsOf({ colormap: { name: "test", lut: b64 }, diverging: { name: "d", lut: b64 } });
  assert.equal(seq.name, "test"); assert.equal(div.name, "d");
  assert.equal(css(seq, 10), "rgb(10,245,7)");
  // ImageData's bytes are R, G, B, A in memory: a little-endian word 0xAABBGGRR.
  const px = new Uint8Array(new Uint32Array([seq.words[200]]).buffer);
  assert.deepEqual(Array.from(px), [200, 55, 7, 255]);
  assert.equal(rgba(1, 2, 3), 0xff030201);
  assert.throws(() => rampFromBytes("short", new Uint8Array(30)), /not 256 × 3/);
});

test("without tables (an older payload) the viewer falls back to matplotlib's Blues and RdBu_r", () => {
  const { seq, div } = rampsOf({});
  assert.equal(seq.name, "Blues"); assert.equal(div.name, "RdBu_r");
  assert.deepEqual(Array.from(seq.rgb.subarray(0, 3)), [247, 251, 255]);
  assert.deepEqual(Array.from(seq.rgb.subarray(765)), [8, 48, 107]);
  // Python's tables, when the test runner hands them over, agree with the fallback within 1.
  const tables = process.env.ATTNMAP_LUT_FIXTURE;
  if (!tables) return;
  const want = JSON.parse(readFileSync(tables, "utf8"));
  for (const [ramp, name] of [[seq, "Blues"], [div, "RdBu_r"]]) {
    const t = base64Bytes(want[name]);
    for (let n = 0; n < 768; n++) assert.ok(Math.abs(t[n] - ramp.rgb[n]) <= 1, `${name} byte ${n}: ${t[n]} vs ${ramp.rgb[n]}`);
  }
});

test("role runs: one per message, none for tokens without a role, absent lists → none", () => {
  assert.deepEqual(roleRuns(undefined, undefined), []);
  assert.deepEqual(roleRuns(["system", "system", "user", "user", null, "assistant"], [0, 0, 1, 1, null, 2]), [
    { start: 0, end: 2, role: "system", message: 0 },
    { start: 2, end: 4, role: "user", message: 1 },
    { start: 5, end: 6, role: "assistant", message: 2 },
  ]);
  // Two user messages in a row stay two bands; without message numbers, one band per role run.
  assert.equal(roleRuns(["user", "user"], [1, 2]).length, 2);
  assert.deepEqual(roleRuns(["user", "user", "assistant"], null), [
    { start: 0, end: 2, role: "user", message: null }, { start: 2, end: 3, role: "assistant", message: null }]);
  assert.deepEqual(roleRuns([1, "user"], ["x", 3]), [{ start: 1, end: 2, role: "user", message: 3 }]); // junk ignored
});
