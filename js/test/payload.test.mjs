// Payload decoding, against bytes built here from the format's description (payload.py's
// docstring) and, when ATTNMAP_PAYLOAD_FIXTURE names one, against a payload that Python's
// encode wrote (tests/unit/test_js.py sets it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import { readFileSync } from "node:fs";

import { B85, COMPACT_ENCODING, COMPACT_VERSION, LEVELS, MASKED, PAYLOAD_VERSION, b85decode, decodeLayer, parsePayload } from "../payload.js";
import { headData, headMax, value } from "../data.js";

/** magic | u32 version | u32 header length | JSON header | body */
function block(magic, head, body = new Uint8Array(0), version = PAYLOAD_VERSION) {
  const hb = new TextEncoder().encode(JSON.stringify(head));
  const out = new Uint8Array(12 + hb.length + body.length);
  out.set(new TextEncoder().encode(magic), 0);
  const dv = new DataView(out.buffer);
  dv.setUint32(4, version, true);
  dv.setUint32(8, hb.length, true);
  out.set(hb, 12);
  out.set(body, 12 + hb.length);
  return out;
}

/** A layer chunk of `scales` [head, query] and `codes` [head, query, key]. */
function chunk(stack, layer, shape, scales, codes, encoding = "u8-rowmax-128", version = PAYLOAD_VERSION) {
  const raw = new Uint8Array(scales.length * 4 + codes.length);
  new Float32Array(raw.buffer, 0, scales.length).set(scales);
  raw.set(codes, scales.length * 4);
  const body = new Uint8Array(deflateSync(raw));
  return block("ATNL", { stack, layer, shape, encoding, compression: "deflate", length: body.length }, body, version);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

test("a payload splits into its header and chunks, and a chunk decodes to scales and codes", async () => {
  const c0 = chunk("self", 0, [2, 2, 3], [1, 0.5, 0.25, 0.75], [128, MASKED, MASKED, 64, 128, MASKED, 128, MASKED, MASKED, 0, 128, MASKED]);
  const c1 = chunk("self", 1, [2, 2, 3], [1, 1, 1, 1], new Uint8Array(12).fill(7));
  const head = { format: "attnmap-payload", version: 1, text: "a b", stacks: [{ name: "self", shape: [2, 2, 2, 3], query_tokens: ["a", "<b>"] }],
    chunks: [{ stack: "self", layer: 0, length: c0.length }, { stack: "self", layer: 1, length: c1.length }] };
  const { header, chunks } = parsePayload(concat(block("ATNM", head), c0, c1));
  assert.deepEqual(header.stacks[0].query_tokens, ["a", "<b>"]); // token text stays text
  assert.deepEqual([...chunks.keys()], ["self/0", "self/1"]);
  const L = await decodeLayer(chunks.get("self/0"));
  assert.equal(L.heads, 2); assert.equal(L.q, 2); assert.equal(L.k, 3);
  assert.deepEqual(Array.from(L.scales), [1, 0.5, 0.25, 0.75]);
  assert.equal(L.codes[3], 64);
  assert.equal(L.codes[1], MASKED);
  assert.equal((L.codes[3] * L.scales[1]) / LEVELS, 0.25); // code 64 of a row whose max is 0.5
  const L1 = await decodeLayer(chunks.get("self/1"));
  assert.ok(L1.codes.every((c) => c === 7));
});

test("compact chunks: scales are steps, so row maxima come from the codes", async () => {
  // Row 0: max 0.5 in 128 levels → scale 0.5 (as full). Row 1: max 0.01 in 3 levels → scale
  // 0.01 · 128 / 3; codes 3 (the peak), 1, masked. Row 2: max 0.9 in 230 levels, peak code 230
  // in the masked-free key 2. Row 3: nothing but zeros.
  const s1 = (0.01 * 128) / 3, s2 = (0.9 * 128) / 230;
  const L = await decodeLayer(chunk("self", 0, [1, 4, 3], [0.5, s1, s2, 0], [128, 64, 0, 3, 1, MASKED, 20, MASKED, 230, 0, 0, MASKED], COMPACT_ENCODING, COMPACT_VERSION));
  assert.equal(L.levels, 254);
  const f32 = (x) => Math.fround(x);
  assert.deepEqual(Array.from(L.peaks), [0.5, f32((3 * f32(s1)) / LEVELS), f32((230 * f32(s2)) / LEVELS), 0]);
  assert.ok(Math.abs(L.peaks[1] - 0.01) < 1e-8 && Math.abs(L.peaks[2] - 0.9) < 1e-7);
  const d = headData(L, 0);
  assert.equal(d.levels, 254);
  assert.ok(Math.abs(/** @type {number} */ (value(d, 2, 2)) - L.peaks[2]) < 1e-7); // the peak decodes to the row max
  assert.equal(value(d, 1, 2), null);
  assert.ok(Math.abs(/** @type {number} */ (value(d, 1, 1)) - 0.01 / 3) < 1e-8);
  assert.equal(headMax(d, false), L.peaks[2]); // not the largest scale (s1 = 0.43)
  assert.ok(Math.abs(headMax(d, true) - L.peaks[2]) < 1e-7); // from the codes, without key 0
  // A full chunk's row maxima are its scales.
  const F = await decodeLayer(chunk("self", 0, [1, 1, 2], [0.25], [128, 7]));
  assert.equal(F.peaks, F.scales);
  assert.equal(F.levels, LEVELS);
});

test("the decoder accepts every kind of bytes a host may hand it", () => {
  const bytes = block("ATNM", { stacks: [], chunks: [] });
  for (const x of [bytes, bytes.buffer, new DataView(bytes.buffer)]) assert.deepEqual(parsePayload(x).header.stacks, []);
  assert.throws(() => parsePayload("text"), /payload must be bytes/);
});

test("bad payloads are refused with a reason", async () => {
  assert.throws(() => parsePayload(block("XXXX", {})), /not an attnmap ATNM block/);
  assert.throws(() => parsePayload(block("ATNM", {}, undefined, COMPACT_VERSION + 1)), /newer than this viewer.*upgrade attnmap/);
  await assert.rejects(decodeLayer(chunk("self", 0, [1, 1, 1], [1], [128], "u4-other")), /encoding "u4-other" is not one this viewer reads/);
  assert.throws(() => parsePayload(new Uint8Array(5)), /truncated/);
  const whole = block("ATNM", { chunks: [{ stack: "self", layer: 0, length: 100 }] });
  assert.throws(() => parsePayload(whole), /truncated/);
  const bad = chunk("self", 0, [1, 2, 2], [1, 1], [1, 2, 3]); // 3 codes for a 1×2×2 layer
  await assert.rejects(decodeLayer(bad), /wrong size/);
});

test("base 85 decodes Python's b85encode and rejects damage", () => {
  // 4 bytes → 5 digits, big-endian: "!!!!!" is 0, the last digit of the alphabet is 84.
  assert.deepEqual(Array.from(b85decode("!!!!!", 4)), [0, 0, 0, 0]);
  const enc = (bytes) => {
    let s = "";
    for (let g = 0; g < bytes.length; g += 4) {
      let v = 0;
      for (let i = 0; i < 4; i++) v = v * 256 + (bytes[g + i] ?? 0);
      const d = [];
      for (let i = 0; i < 5; i++) { d.unshift(B85[v % 85]); v = Math.floor(v / 85); }
      s += d.join("");
    }
    return s;
  };
  const data = Uint8Array.from({ length: 257 }, (_, i) => (i * 37) & 255);
  assert.deepEqual(b85decode(enc(data), data.length), data);
  assert.deepEqual(b85decode(" " + enc(data).replace(/(.{10})/g, "$1\n"), data.length), data); // whitespace ignored
  assert.throws(() => b85decode("!!!!<"), /damaged/);
  assert.throws(() => b85decode("!!!!"), /damaged/);
});

const fixtures = [[process.env.ATTNMAP_PAYLOAD_FIXTURE, PAYLOAD_VERSION], [process.env.ATTNMAP_COMPACT_FIXTURE, COMPACT_VERSION]];
for (const [fixture, version] of fixtures) test(`a payload written by Python decodes to Python's values (version ${version})`, { skip: !fixture && "ATTNMAP_PAYLOAD_FIXTURE / ATTNMAP_COMPACT_FIXTURE not set (tests/integration/test_js.py sets them)" }, async () => {
  const want = JSON.parse(readFileSync(`${fixture}.json`, "utf8"));
  const text = readFileSync(`${fixture}.b85`, "utf8");
  const { header, chunks } = parsePayload(b85decode(text, want.length));
  assert.equal(header.version, version);
  assert.deepEqual(header.stacks.map((s) => s.query_tokens), want.tokens);
  assert.equal(header.colormap.name, want.cmap);
  for (const [key, layer] of Object.entries(want.layers)) {
    const L = await decodeLayer(chunks.get(key));
    assert.deepEqual([L.heads, L.q, L.k], layer.shape);
    const vals = Array.from(L.codes, (c, n) => {
      const row = Math.floor(n / L.k);
      return c === MASKED ? null : (c * L.scales[row]) / LEVELS;
    });
    assert.equal(vals.length, layer.values.length);
    vals.forEach((v, n) => {
      const w = layer.values[n];
      if (w === null) assert.equal(v, null, `cell ${n} should be masked`);
      else assert.ok(Math.abs(v - w) < 1e-6, `cell ${n}: ${v} vs ${w}`);
    });
    assert.equal(L.peaks.length, layer.peaks.length);
    L.peaks.forEach((p, i) => assert.ok(Math.abs(p - layer.peaks[i]) < 1e-6, `row ${i}: peak ${p} vs ${layer.peaks[i]}`));
  }
});
