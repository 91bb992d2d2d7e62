// Payload decoding: the bytes of attnmap.viewer.payload.encode / encode_layer, and the base 85
// text form of the standalone page. No DOM here (it runs in node's tests as well).

/** @typedef {import("./types.js").Header} Header */
/** @typedef {import("./types.js").Layer} Layer */

export const PAYLOAD_VERSION = 1; // full precision
export const COMPACT_VERSION = 2; // compact precision: scales are not row maxima
export const LEVELS = 128; // value = code / LEVELS * row scale (full: codes 0..128, scale = row max)
export const MASKED = 255; // code of a cell the query cannot see
export const COMPACT_ENCODING = "u8-rowlevels-254"; // per-row levels: codes 0..254

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
  if (version > COMPACT_VERSION) {
    throw new Error(`attnmap: payload version ${version} is newer than this viewer (${COMPACT_VERSION}); upgrade attnmap`);
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
 * One layer chunk → scales [head, query], codes [head, query, key] and row maxima.
 * @param {unknown} x
 * @returns {Promise<Layer>}
 */
export async function decodeLayer(x) {
  const bytes = toBytes(x);
  const { head, end } = readPrefix(bytes, 0, "ATNL");
  const encoding = head.encoding ?? "u8-rowmax-128";
  if (encoding !== "u8-rowmax-128" && encoding !== COMPACT_ENCODING) {
    throw new Error(`attnmap: layer encoding ${JSON.stringify(encoding)} is not one this viewer reads; upgrade attnmap`);
  }
  const raw = await inflate(bytes.subarray(end, end + head.length));
  const [h, q, k] = head.shape;
  if (raw.byteLength !== h * q * 4 + h * q * k) throw new Error("attnmap: layer chunk has the wrong size");
  // A fresh ArrayBuffer starts 4-byte aligned; browsers are little-endian like the payload.
  const scales = new Float32Array(raw.buffer, raw.byteOffset, h * q);
  const codes = new Uint8Array(raw.buffer, raw.byteOffset + h * q * 4, h * q * k);
  const compact = encoding === COMPACT_ENCODING;
  return {
    stack: head.stack, layer: head.layer, heads: h, q, k, scales, codes,
    peaks: compact ? rowPeaks(scales, codes, k) : scales,
    levels: compact ? MASKED - 1 : LEVELS,
    derived: new Map(),
  };
}

/**
 * Each row's maximum, max code × scale / LEVELS over its visible cells (compact precision,
 * where a scale is row max × 128 / the row's levels).
 * @param {Float32Array} scales  [row]
 * @param {Uint8Array} codes     [row, key]
 * @param {number} k
 */
export function rowPeaks(scales, codes, k) {
  const out = new Float32Array(scales.length);
  for (let i = 0; i < scales.length; i++) {
    let m = 0;
    for (let j = i * k, end = j + k; j < end; j++) { const c = codes[j]; if (c !== MASKED && c > m) m = c; }
    out[i] = (m * scales[i]) / LEVELS;
  }
  return out;
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
