// Payload decoding: the bytes of attnmap.viewer.payload.encode / encode_layer, and the base 85
// text form of the standalone page. No DOM here (it runs in node's tests as well).

/** @typedef {import("./types.js").Header} Header */
/** @typedef {import("./types.js").Layer} Layer */

export const PAYLOAD_VERSION = 1;
export const LEVELS = 128; // codes 0..128 carry values (step = row max / 128)
export const MASKED = 255; // code of a cell the query cannot see

/**
 * @param {unknown} x
 * @returns {Uint8Array}
 */
export function toBytes(x) {
  if (!x) return new Uint8Array(0);
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  throw new Error("attnmap: payload must be bytes (ArrayBuffer, DataView or Uint8Array)");
}

/**
 * The prefix shared by payloads and layer chunks: magic, u32 version, u32 header length, JSON.
 * @param {Uint8Array} bytes
 * @param {number} offset
 * @param {string} magic
 * @returns {{ head: any, end: number }}
 */
function readPrefix(bytes, offset, magic) {
  if (bytes.length - offset < 12) throw new Error(`attnmap: the ${magic} block is truncated (${bytes.length - offset} bytes)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset + offset);
  const got = String.fromCharCode(...bytes.subarray(offset, offset + 4));
  if (got !== magic) throw new Error(`attnmap: not an attnmap ${magic} block (starts ${JSON.stringify(got)})`);
  const version = dv.getUint32(4, true);
  if (version > PAYLOAD_VERSION) {
    throw new Error(`attnmap: payload version ${version} is newer than this viewer (${PAYLOAD_VERSION}); upgrade attnmap`);
  }
  const n = dv.getUint32(8, true);
  if (offset + 12 + n > bytes.length) throw new Error(`attnmap: the ${magic} block is truncated (header needs ${n} bytes)`);
  const head = JSON.parse(new TextDecoder().decode(bytes.subarray(offset + 12, offset + 12 + n)));
  return { head, end: offset + 12 + n };
}

/**
 * Split a payload into its header and its layer chunks (decoded later, on demand).
 * @param {unknown} x
 * @returns {{ header: Header, chunks: Map<string, Uint8Array> }}  chunks: "stack/layer" → bytes
 */
export function parsePayload(x) {
  const bytes = toBytes(x);
  const { head, end } = readPrefix(bytes, 0, "ATNM");
  /** @type {Map<string, Uint8Array>} */
  const chunks = new Map();
  let at = end;
  for (const c of head.chunks || []) {
    if (at + c.length > bytes.length) throw new Error(`attnmap: the payload is truncated (layer ${c.layer} of ${c.stack})`);
    chunks.set(`${c.stack}/${c.layer}`, bytes.subarray(at, at + c.length));
    at += c.length;
  }
  return { header: head, chunks };
}

/**
 * @param {Uint8Array} bytes
 * @returns {Promise<Uint8Array>}
 */
async function inflate(bytes) {
  const stream = new Blob([/** @type {BlobPart} */ (bytes)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * One layer chunk → scales [head, query] and codes [head, query, key].
 * @param {unknown} x
 * @returns {Promise<Layer>}
 */
export async function decodeLayer(x) {
  const bytes = toBytes(x);
  const { head, end } = readPrefix(bytes, 0, "ATNL");
  const raw = await inflate(bytes.subarray(end, end + head.length));
  const [h, q, k] = head.shape;
  if (raw.byteLength !== h * q * 4 + h * q * k) throw new Error("attnmap: layer chunk has the wrong size");
  // A fresh ArrayBuffer starts 4-byte aligned; browsers are little-endian like the payload.
  return {
    stack: head.stack, layer: head.layer, heads: h, q, k,
    scales: new Float32Array(raw.buffer, raw.byteOffset, h * q),
    codes: new Uint8Array(raw.buffer, raw.byteOffset + h * q * 4, h * q * k),
    derived: new Map(),
  };
}

// Text form used by the standalone page: base 85 over an alphabet without < > & " ' \ ` / -
// so the data can sit inside a <script> element (a quarter smaller than base64).
export const B85 = "!#$%()*+,.0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz{|}~";

/**
 * @param {string} text
 * @param {number} [length]  the byte length (the last group may be padded)
 * @returns {Uint8Array}
 */
export function b85decode(text, length) {
  const lut = new Uint8Array(128).fill(255);
  for (let i = 0; i < 85; i++) lut[B85.charCodeAt(i)] = i;
  const s = text.replace(/\s+/g, "");
  if (s.length % 5) throw new Error("attnmap: the embedded payload is damaged");
  const groups = s.length / 5;
  const out = new Uint8Array(groups * 4);
  const dv = new DataView(out.buffer);
  for (let g = 0, p = 0; g < groups; g++) {
    let v = 0;
    for (let i = 0; i < 5; i++) {
      const c = s.charCodeAt(p++);
      const d = c < 128 ? lut[c] : 255;
      if (d === 255) throw new Error("attnmap: the embedded payload is damaged");
      v = v * 85 + d;
    }
    if (v > 0xffffffff) throw new Error("attnmap: the embedded payload is damaged");
    dv.setUint32(g * 4, v);
  }
  return out.subarray(0, length ?? out.length);
}
