// KernelSource: tile requests to the notebook's kernel as custom messages, replies matched by
// id (in any order), values from one float32 buffer, errors and silence turned into rejections.
import { test } from "node:test";
import assert from "node:assert/strict";

import { KernelSource } from "../long.js";

/** A stand-in for anywidget's model: records what is sent, replies when the test says. */
function fakeModel() {
  const handlers = new Map();
  return {
    sent: [],
    send(content) { this.sent.push(content); },
    on(ev, fn) { handlers.set(ev, fn); },
    off(ev, fn) { if (handlers.get(ev) === fn) handlers.delete(ev); },
    reply(msg, buffers) { handlers.get("msg:custom")?.(msg, buffers); },
    listening() { return handlers.has("msg:custom"); },
  };
}

const req = { stack: "self", layer: 1, head: "mean", block: 4, q0: 8, k0: 0, rows: 2, cols: 3, reduce: "sum", ignoreFirst: false };

/** float32 little-endian bytes of `vals` inside a bigger buffer at an odd offset (a DataView). */
function view(vals, at = 3) {
  const buf = new ArrayBuffer(at + vals.length * 4 + 5), dv = new DataView(buf, at, vals.length * 4);
  vals.forEach((x, i) => dv.setFloat32(i * 4, x, true));
  return dv;
}

test("requests carry the tile's fields and replies are matched by id", async () => {
  const m = fakeModel(), src = new KernelSource(m);
  assert.equal(src.kind, "kernel");
  const a = src.tile(req), b = src.tile({ ...req, head: 2, rows: 1, cols: 1 });
  assert.deepEqual(m.sent[0], { kind: "tile", id: 1, stack: "self", layer: 1, head: "mean", block: 4, q0: 8, k0: 0, rows: 2, cols: 3, reduce: "sum", ignore_first: false });
  assert.equal(m.sent[1].id, 2);
  m.reply({ kind: "other", id: 2 }, []); // not a tile reply: ignored
  m.reply({ kind: "tile", id: 2, rows: 1, cols: 1, block: 4 }, [view([0.5])]);
  m.reply({ kind: "tile", id: 1, rows: 2, cols: 3, block: 4 }, [view([1, 2, NaN, 4, 5, 6])]);
  const [ta, tb] = await Promise.all([a, b]);
  assert.deepEqual([...tb.vals], [0.5]);
  assert.equal(ta.rows, 2); assert.equal(ta.cols, 3); assert.equal(ta.block, 4); assert.equal(ta.q0, 8);
  assert.deepEqual([...ta.vals], [1, 2, NaN, 4, 5, 6]);
  assert.equal(ta.bound, null); assert.equal(ta.rest, null);
});

test("an ArrayBuffer reply works as well as a DataView", async () => {
  const m = fakeModel(), src = new KernelSource(m), p = src.tile({ ...req, rows: 1, cols: 2 });
  m.reply({ kind: "tile", id: 1, rows: 1, cols: 2, block: 4 }, [new Float32Array([0.25, 0.75]).buffer]);
  assert.deepEqual([...(await p).vals], [0.25, 0.75]);
});

test("ignoreFirst at k0 = 0 also asks for the first column without key 0", async () => {
  const m = fakeModel(), src = new KernelSource(m), p = src.tile({ ...req, ignoreFirst: true });
  assert.equal(m.sent.length, 2);
  assert.equal(m.sent[0].ignore_first, false); assert.equal(m.sent[1].ignore_first, true);
  assert.equal(m.sent[1].cols, 1);
  m.reply({ kind: "tile", id: 2, rows: 2, cols: 1 }, [view([0.1, 0.2])]);
  m.reply({ kind: "tile", id: 1, rows: 2, cols: 3 }, [view([1, 2, 3, 4, 5, 6])]);
  const t = await p;
  assert.deepEqual([...t.rest].map((x) => Math.round(x * 10) / 10), [0.1, 0.2]);
});

test("an error reply rejects with the kernel's message", async () => {
  const m = fakeModel(), src = new KernelSource(m), p = src.tile(req);
  m.reply({ kind: "tile", id: 1, error: "self head must be in 0..3 or -4..-1 counting from the end (not 4)" }, []);
  await assert.rejects(p, /could not compute a tile \(self head must be in 0\.\.3 .*\(not 4\)\)/);
});

test("a reply of the wrong size rejects", async () => {
  const m = fakeModel(), src = new KernelSource(m), p = src.tile(req);
  m.reply({ kind: "tile", id: 1, rows: 2, cols: 3 }, [view([1, 2])]);
  await assert.rejects(p, /wrong size/);
});

test("silence times out; close rejects what waits and stops listening", async () => {
  const m = fakeModel(), src = new KernelSource(m, 20);
  await assert.rejects(src.tile(req), /the kernel did not answer a tile request/);
  const slow = new KernelSource(fakeModel(), 60000), p = slow.tile(req);
  slow.close();
  await assert.rejects(p, /closed/);
  assert.equal(slow.model.listening(), false);
  assert.equal(m.listening(), true);
  m.reply({ kind: "tile", id: 1, rows: 2, cols: 3 }, [view([1, 2, 3, 4, 5, 6])]); // late: ignored
});
