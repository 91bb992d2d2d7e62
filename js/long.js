// Long runs: a head (or mean/max of heads) as tiles of block × block cells, reduced by max or
// sum, from one of two sources: the standalone page's long representation (pyramid + top-k per
// row, attnmap.viewer.longpage) or the app's tile endpoint. No DOM here (node tests run it).

/** @typedef {import("./types.js").Header} Header */
/** @typedef {import("./types.js").Head} Head */

/**
 * @typedef {object} TileRequest
 * @property {string} stack
 * @property {number} layer
 * @property {Head} head
 * @property {number} block  cells per block side (a power of two)
 * @property {number} q0  first query, a multiple of block
 * @property {number} k0  first key, a multiple of block
 * @property {number} rows  blocks down
 * @property {number} cols  blocks across
 * @property {"max" | "sum"} reduce
 * @property {boolean} ignoreFirst  also give the first block column without key 0 (rest)
 */

/**
 * @typedef {object} Tile
 * @property {number} q0
 * @property {number} k0
 * @property {number} rows
 * @property {number} cols
 * @property {number} block  may be coarser than asked (the page's sums below its pyramid)
 * @property {"max" | "sum"} reduce
 * @property {Float32Array} vals  [rows, cols] NaN = all masked
 * @property {Uint8Array | null} bound  [rows, cols] 1 where vals is only an upper bound (cells
 *   no head kept); null: every value is exact
 * @property {Float32Array | null} rest  [rows] the first block column without key 0 (k0 = 0 and
 *   ignoreFirst only)
 */

/**
 * @typedef {object} TileSource
 * @property {"page" | "server" | "kernel"} kind
 * @property {(req: TileRequest) => Promise<Tile>} tile
 * @property {() => void} [close]  stop listening (sources that listen to their host)
 */

/** @param {Uint8Array} bytes */
async function inflate(bytes) {
  const stream = new Blob([/** @type {BlobPart} */ (bytes)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * A head's kept cells (top k per row).
 * @typedef {object} LongCells
 * @property {Float32Array} bound  [nq] upper bound of every cell the row did not keep
 * @property {Uint32Array} start  [nq + 1] where each row's kept cells start
 * @property {Uint32Array} keys   kept cells' keys, ascending per row
 * @property {Float32Array} vals  kept cells' values
 */

/**
 * One head of the page's long representation, decoded as views need it: the pyramid a plane
 * at a time, the kept cells a segment of rows at a time.
 * @typedef {object} LongHead
 * @property {number} nq
 * @property {number} nk
 * @property {number} pq  pyramid blocks down
 * @property {number} pk
 * @property {Float32Array} max  [pq, pk] NaN = masked
 * @property {Float32Array} sum
 * @property {Float32Array} restMax  [pq] first block column without key 0
 * @property {Float32Array} restSum
 * @property {(q0: number, q1: number) => LongCells} cells  the kept cells, rows [q0, q1) decoded
 */

/**
 * A pyramid with its shape: one head's, or a layer's heads together (max of block maxima,
 * mean of block sums).
 * @typedef {object} LongPyramid
 * @property {number} nq
 * @property {number} nk
 * @property {number} pq  pyramid blocks down
 * @property {number} pk
 * @property {Float32Array} max  [pq, pk] NaN = masked
 * @property {Float32Array} sum
 * @property {Float32Array} restMax  [pq] first block column without key 0
 * @property {Float32Array} restSum
 */

/**
 * The long-representation facts a decoder needs (header.long).
 * @typedef {{ block: number, k: number, decades: number, steps: number, levels: number, index_bytes: Record<string, number>, stacks: Record<string, { masks: number[] }> }} LongInfo
 */

/**
 * Log codes → values: 0 → 0, 1..254 log-spaced up to hi, 255 → NaN (masked).
 * @param {Uint8Array} codes
 * @param {number} hi
 * @param {LongInfo} L
 */
function logValues(codes, hi, L) {
  const lut = new Float32Array(256);
  for (let c = 1; c < 255; c++) lut[c] = hi * 10 ** (L.decades * ((c - 1) / L.steps - 1));
  lut[255] = NaN;
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) out[i] = lut[codes[i]];
  return out;
}

/**
 * Decode one head chunk (inflated bytes; layout in longpage.py): each pyramid plane when
 * first read, the kept cells of a row when a view first needs them (`cells(q0, q1)`).
 * @param {Uint8Array} raw
 * @param {number} nq
 * @param {number} nk
 * @param {LongInfo} L
 * @param {number} ib  bytes per key delta
 * @returns {LongHead}
 */
export function decodeHead(raw, nq, nk, L, ib) {
  const b = L.block, pq = Math.ceil(nq / b), pk = Math.ceil(nk / b);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const hiMax = dv.getFloat32(0, true), hiSum = dv.getFloat32(4, true);
  let at = 8 + 4 * nq;
  /** @param {number} n */
  const take = (n) => { const a = raw.subarray(at, at + n); at += n; return a; };
  if (raw.length < at + 2 * pq * pk + 2 * pq + 2 * nq) throw new Error("attnmap: a long head chunk has the wrong size");
  const pyramid = lazyPyramid(take(2 * pq * pk + 2 * pq), hiMax, hiSum, { nq, nk, pq, pk }, L);
  const bcAt = at, countAt = at + nq;
  const start = new Uint32Array(nq + 1);
  for (let i = 0; i < nq; i++) start[i + 1] = start[i] + raw[countAt + i];
  const total = start[nq], planesAt = countAt + nq, codesAt = planesAt + ib * total;
  if (codesAt + total !== raw.length) throw new Error("attnmap: a long head chunk has the wrong size");
  const rowmax = new Float32Array(nq);
  for (let i = 0; i < nq; i++) rowmax[i] = dv.getFloat32(8 + 4 * i, true);
  const cells = lazyCells(raw, { bcAt, planesAt, codesAt, total, ib, levels: L.levels }, start, rowmax);
  return Object.assign(pyramid, { cells });
}

/**
 * A pyramid from its codes (u8 max[pq, pk], sum[pq, pk], rest_max[pq], rest_sum[pq]), each
 * plane decoded when first read (mean of heads over cells never reads a head's; a view by max
 * never reads the sums).
 * @param {Uint8Array} codes
 * @param {number} hiMax
 * @param {number} hiSum
 * @param {{ nq: number, nk: number, pq: number, pk: number }} dims
 * @param {LongInfo} L
 * @returns {LongPyramid}
 */
function lazyPyramid(codes, hiMax, hiSum, dims, L) {
  const { nq, nk, pq, pk } = dims, n = pq * pk;
  /** @type {(Float32Array | null)[]} */
  const got = [null, null, null, null];
  /** @type {[number, number, number][]} */
  const spans = [[0, n, hiMax], [n, 2 * n, hiSum], [2 * n, 2 * n + pq, hiMax], [2 * n + pq, 2 * n + 2 * pq, hiSum]];
  /** @param {number} i */
  const plane = (i) => {
    let x = got[i];
    if (!x) {
      const [a, z, hi] = spans[i];
      x = got[i] = logValues(codes.subarray(a, z), hi, L);
    }
    return x;
  };
  return {
    nq, nk, pq, pk,
    get max() { return plane(0); }, get sum() { return plane(1); },
    get restMax() { return plane(2); }, get restSum() { return plane(3); },
  };
}

/**
 * Decode a layer chunk (inflated; layout in longpage.py): the pyramid of its heads together.
 * @param {Uint8Array} raw
 * @param {number} nq
 * @param {number} nk
 * @param {LongInfo} L
 * @returns {LongPyramid}
 */
export function decodePyramid(raw, nq, nk, L) {
  const b = L.block, pq = Math.ceil(nq / b), pk = Math.ceil(nk / b);
  if (raw.length !== 8 + 2 * pq * pk + 2 * pq) throw new Error("attnmap: a long layer chunk has the wrong size");
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  return lazyPyramid(raw.subarray(8), dv.getFloat32(0, true), dv.getFloat32(4, true), { nq, nk, pq, pk }, L);
}

const SEGMENT = 256; // query rows whose kept cells are decoded together

/**
 * The kept cells of a head chunk, decoded a segment of rows at a time when a view first needs
 * them (`cells(q0, q1)`: rows [q0, q1) ready; the arrays are the whole head's); the chunk's
 * bytes are let go once every segment is. A function of its own, so that its closure holds
 * nothing else of the chunk.
 * @param {Uint8Array} raw
 * @param {{ bcAt: number, planesAt: number, codesAt: number, total: number, ib: number, levels: number }} at
 * @param {Uint32Array} start
 * @param {Float32Array} rowmax
 * @returns {(q0: number, q1: number) => LongCells}
 */
function lazyCells(raw, at, start, rowmax) {
  /** @type {Uint8Array | null} */
  let bytes = raw;
  /** @type {LongCells | null} */
  let cells = null;
  const nq = rowmax.length, nseg = Math.ceil(nq / SEGMENT), done = new Uint8Array(nseg);
  let left = nseg;
  return (q0, q1) => {
    const b = bytes;
    if (!b || !cells) {
      if (!b) return /** @type {LongCells} */ (cells);
      const bound = new Float32Array(nq);
      for (let i = 0; i < nq; i++) bound[i] = b[at.bcAt + i] * (rowmax[i] / at.levels);
      cells = { bound, start, keys: new Uint32Array(at.total), vals: new Float32Array(at.total) };
    }
    const { keys, vals } = cells, { planesAt, codesAt, total, ib, levels } = at;
    for (let s = Math.max(0, Math.floor(q0 / SEGMENT)), s1 = Math.min(nseg, Math.ceil(q1 / SEGMENT)); s < s1; s++) {
      if (done[s]) continue;
      for (let i = s * SEGMENT, iEnd = Math.min(nq, i + SEGMENT), e = start[i]; i < iEnd; i++) {
        const f = rowmax[i] / levels;
        let key = 0; // each row's first delta is its first key
        for (const e1 = start[i + 1]; e < e1; e++) {
          let d = 0;
          for (let p = ib - 1, o = planesAt + (ib - 1) * total + e; p >= 0; p--, o -= total) d = d * 256 + b[o];
          key += d;
          keys[e] = key;
          vals[e] = b[codesAt + e] * f;
        }
      }
      done[s] = 1;
      if (--left === 0) bytes = null;
    }
    return cells;
  };
}

/**
 * A layer mask as each row's visible [start, end) intervals.
 * @typedef {{ start: Uint32Array, pairs: Uint32Array }} Intervals  start: [nq + 1] into pairs/2
 */

/**
 * @param {Uint8Array} raw
 * @param {number} nq
 * @returns {Intervals}
 */
export function decodeMask(raw, nq) {
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const start = new Uint32Array(nq + 1);
  for (let i = 0; i < nq; i++) start[i + 1] = start[i] + dv.getUint32(4 * i, true);
  const n = start[nq] * 2, pairs = new Uint32Array(n);
  for (let i = 0; i < n; i++) pairs[i] = dv.getUint32(4 * nq + 4 * i, true);
  return { start, pairs };
}

/**
 * First index in keys[lo, hi) with keys[i] >= x.
 * @param {Uint32Array} keys
 * @param {number} lo
 * @param {number} hi
 * @param {number} x
 */
function lowerBound(keys, lo, hi, x) {
  while (lo < hi) { const m = (lo + hi) >> 1; if (keys[m] < x) lo = m + 1; else hi = m; }
  return lo;
}

/**
 * Whether a tile comes from the pyramid (blocks at least the pyramid's; sums of any block
 * above one cell, which the kept cells cannot give) rather than from the cells rows kept.
 * @param {TileRequest} req
 * @param {number} pb  the pyramid's block
 */
export function fromPyramid(req, pb) {
  return req.block >= pb || (req.reduce === "sum" && req.block > 1);
}

/**
 * A tile of heads (one head, or every head of a layer for mean/max), from the pyramid where
 * `fromPyramid`, else from the cells each row kept.
 * @param {LongHead[]} heads  the heads `how` takes (may be empty where `fromPyramid`)
 * @param {"one" | "mean" | "max"} how
 * @param {LongPyramid} pyr  the pyramid of `how`
 * @param {Intervals} mask
 * @param {TileRequest} req
 * @param {number} pb  the pyramid's block
 * @returns {Tile}
 */
export function pageTile(heads, how, pyr, mask, req, pb) {
  if (fromPyramid(req, pb)) return pyramidTile(pyr, req, Math.max(req.block, pb) / pb, pb);
  return cellTile(heads, how, mask, req);
}

/**
 * @param {LongPyramid} pyr
 * @param {TileRequest} req
 * @param {number} f  pyramid blocks per tile block
 * @param {number} pb
 * @returns {Tile}
 */
function pyramidTile(pyr, req, f, pb) {
  const block = f * pb, q0 = Math.floor(req.q0 / block) * block, k0 = Math.floor(req.k0 / block) * block;
  const rows = Math.min(Math.ceil((req.q0 + req.rows * req.block - q0) / block), Math.ceil((pyr.nq - q0) / block));
  const cols = Math.min(Math.ceil((req.k0 + req.cols * req.block - k0) / block), Math.ceil((pyr.nk - k0) / block));
  const src = req.reduce === "sum" ? pyr.sum : pyr.max, isSum = req.reduce === "sum";
  const vals = new Float32Array(rows * cols);
  const r0 = q0 / pb, c0 = k0 / pb;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      let acc = NaN;
      for (let a = 0; a < f; a++) {
        const pr = r0 + r * f + a;
        if (pr >= pyr.pq) break;
        const base = pr * pyr.pk;
        for (let b = 0; b < f; b++) {
          const pc = c0 + c * f + b;
          if (pc >= pyr.pk) break;
          const x = src[base + pc];
          if (x === x) acc = acc === acc ? (isSum ? acc + x : Math.max(acc, x)) : x; // NaN-skipping
        }
      }
      vals[r * cols + c] = acc;
    }
  }
  /** @type {Float32Array | null} */
  let rest = null;
  if (req.ignoreFirst && k0 === 0) {
    rest = new Float32Array(rows);
    const rsrc = isSum ? pyr.restSum : pyr.restMax;
    for (let r = 0; r < rows; r++) {
      let acc = NaN;
      for (let a = 0; a < f; a++) {
        const pr = r0 + r * f + a;
        if (pr >= pyr.pq) break;
        const pieces = [rsrc[pr]];
        for (let b = 1; b < f && b < pyr.pk; b++) pieces.push(src[pr * pyr.pk + b]);
        for (const x of pieces) if (x === x) acc = acc === acc ? (isSum ? acc + x : Math.max(acc, x)) : x;
      }
      rest[r] = acc;
    }
  }
  return { q0, k0, rows, cols, block, reduce: req.reduce, vals, bound: null, rest };
}

/**
 * Blocks smaller than the pyramid's, from the cells each row kept (max: the largest kept cell;
 * a block with no kept cell gets the rows' bound, flagged). Block 1: the cells themselves.
 * @param {LongHead[]} heads
 * @param {"one" | "mean" | "max"} how
 * @param {Intervals} mask
 * @param {TileRequest} req
 * @returns {Tile}
 */
function cellTile(heads, how, mask, req) {
  const h0 = heads[0], bs = req.block, H = heads.length;
  const rows = Math.min(req.rows, Math.ceil((h0.nq - req.q0) / bs)), cols = Math.min(req.cols, Math.ceil((h0.nk - req.k0) / bs));
  const ka = req.k0, kb = Math.min(h0.nk, ka + cols * bs), W = kb - ka;
  const vals = new Float32Array(rows * cols).fill(-1), ub = new Float32Array(rows * cols).fill(-1);
  const vis = new Uint8Array(rows * cols);
  const rest = req.ignoreFirst && ka === 0 ? new Float32Array(rows).fill(NaN) : null;
  // Per-cell scratch for one query row, reset lazily through a stamp.
  const stamp = new Int32Array(W).fill(-1), sumv = new Float32Array(W), cnt = new Uint16Array(W), mx = new Float32Array(W), sb = new Float32Array(W);
  /** @type {number[]} */
  const touched = [];
  const cells = heads.map((hd) => hd.cells(req.q0, req.q0 + rows * bs));
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let i = req.q0 + r * bs, iEnd = Math.min(h0.nq, i + bs); i < iEnd; i++) {
      touched.length = 0;
      let sumB = 0, maxB = 0;
      for (const hd of cells) {
        const b = hd.bound[i];
        sumB += b; if (b > maxB) maxB = b;
        const e1 = hd.start[i + 1];
        for (let e = lowerBound(hd.keys, hd.start[i], e1, ka); e < e1 && hd.keys[e] < kb; e++) {
          const j = hd.keys[e] - ka, x = hd.vals[e];
          if (stamp[j] !== i) { stamp[j] = i; sumv[j] = 0; cnt[j] = 0; mx[j] = -1; sb[j] = 0; touched.push(j); }
          sumv[j] += x; cnt[j]++; sb[j] += b; if (x > mx[j]) mx[j] = x;
        }
      }
      const ubAll = how === "mean" ? sumB / H : maxB;
      for (let p = mask.start[i]; p < mask.start[i + 1]; p++) {
        const a = Math.max(ka, mask.pairs[2 * p]), z = Math.min(kb, mask.pairs[2 * p + 1]);
        if (a >= z) continue;
        for (let c = Math.floor((a - ka) / bs), c1 = Math.floor((z - 1 - ka) / bs); c <= c1; c++) {
          vis[o + c] = 1;
          if (ubAll > ub[o + c]) ub[o + c] = ubAll;
        }
      }
      for (const j of touched) {
        let exact = -1, bound = 0;
        if (how === "mean") {
          if (cnt[j] === H) exact = sumv[j] / H; else bound = (sumv[j] + sumB - sb[j]) / H;
        } else if (mx[j] >= maxB) exact = mx[j];
        else bound = Math.max(mx[j], maxB);
        const c = Math.floor(j / bs);
        if (exact >= 0) {
          if (exact > vals[o + c]) vals[o + c] = exact;
          if (rest && c === 0 && j > 0 && !(exact <= rest[r])) rest[r] = exact;
        } else if (bound > ub[o + c]) ub[o + c] = bound;
      }
    }
  }
  const flag = new Uint8Array(rows * cols);
  for (let p = 0; p < vals.length; p++) {
    if (vals[p] >= 0) continue;
    if (vis[p]) { vals[p] = Math.max(0, ub[p]); flag[p] = 1; } else vals[p] = NaN;
  }
  return { q0: req.q0, k0: ka, rows, cols, block: bs, reduce: req.reduce, vals, bound: flag, rest };
}

/**
 * For pages built before the layer chunks: the mean or max of a layer's heads from their own
 * pyramids. The max of heads by block max (the max of the block maxima) and the mean of heads
 * by block sum (the mean of the block sums) are exact up to the codes; the other two can only
 * be estimated this way: the mean's block max as the mean of the heads' block maxima (an
 * upper bound), the max's block sum as the largest of the heads' block sums (a lower bound).
 * Each plane is folded on first use, in place into one new array.
 * @param {LongHead[]} heads
 * @param {"mean" | "max"} how
 * @returns {LongPyramid}
 */
export function aggregatePyramid(heads, how) {
  /** @type {Float32Array | null} */
  let max = null, sum = null, restMax = null, restSum = null;
  const { nq, nk, pq, pk } = heads[0];
  const fold = how === "max" ? foldMax : foldMean;
  // each plane folded when first read: a view reduced by max never needs the sums
  return {
    nq, nk, pq, pk,
    get max() { return (max ??= fold(heads.map((hd) => hd.max))); },
    get sum() { return (sum ??= fold(heads.map((hd) => hd.sum))); },
    get restMax() { return (restMax ??= fold(heads.map((hd) => hd.restMax))); },
    get restSum() { return (restSum ??= fold(heads.map((hd) => hd.restSum))); },
  };
}

/**
 * Cellwise max of same-length planes, NaN (masked) left out; NaN where every plane is.
 * @param {Float32Array[]} planes
 */
function foldMax(planes) {
  const out = Float32Array.from(planes[0]);
  for (let h = 1; h < planes.length; h++) {
    const src = planes[h];
    for (let i = 0; i < out.length; i++) {
      const x = src[i];
      if (x > out[i] || out[i] !== out[i]) out[i] = x; // NaN out: take x (NaN stays NaN)
    }
  }
  return out;
}

/**
 * Cellwise mean of same-length planes (NaN left out of the sum; NaN where every plane is).
 * @param {Float32Array[]} planes
 */
function foldMean(planes) {
  const out = Float32Array.from(planes[0]);
  for (let h = 1; h < planes.length; h++) {
    const src = planes[h];
    for (let i = 0; i < out.length; i++) {
      const x = src[i];
      if (x === x) out[i] = out[i] === out[i] ? out[i] + x : x;
    }
  }
  const H = planes.length;
  for (let i = 0; i < out.length; i++) out[i] /= H;
  return out;
}

/**
 * @template K, V
 * @param {Map<K, V>} map
 * @param {number} n
 */
function trim(map, n) {
  while (map.size > n) map.delete(/** @type {K} */ (map.keys().next().value));
}

/**
 * Tiles from the page's embedded long representation.
 * @implements {TileSource}
 */
export class PageSource {
  /**
   * @param {Header & { long?: LongInfo }} header
   * @param {(key: string) => Uint8Array | null} chunk  the bytes of a keyed element
   */
  constructor(header, chunk) {
    /** @type {"page"} */
    this.kind = "page";
    this.header = header;
    this.L = /** @type {LongInfo} */ (header.long);
    this.chunk = chunk;
    /** @type {Map<string, Promise<LongHead>>} */
    this.heads = new Map();
    /** @type {Map<string, Promise<Intervals>>} */
    this.masks = new Map();
    /** @type {Map<string, Promise<LongPyramid>>} */
    this.pyramids = new Map();
  }

  /** @param {string} stack */
  shape(stack) {
    const info = this.header.stacks.find((s) => s.name === stack);
    if (!info) throw new Error(`attnmap: no ${stack} attention in this page`);
    return info.shape;
  }

  /**
   * @param {string} key
   * @returns {Promise<Uint8Array>}
   */
  async raw(key) {
    const bytes = this.chunk(key);
    if (!bytes) throw new Error(`attnmap: this page does not hold ${key}`);
    return inflate(bytes);
  }

  /**
   * @param {string} stack
   * @param {number} layer
   * @param {number} head
   */
  head(stack, layer, head) {
    const key = `${stack}/${layer}/${head}`;
    let p = this.heads.get(key);
    if (p) { this.heads.delete(key); this.heads.set(key, p); return p; }
    const [, , nq, nk] = this.shape(stack);
    p = this.raw(key).then((raw) => decodeHead(raw, nq, nk, this.L, this.L.index_bytes[stack] || 2));
    p.catch(() => this.heads.delete(key));
    this.heads.set(key, p);
    trim(this.heads, 40);
    return p;
  }

  /**
   * @param {string} stack
   * @param {number} layer
   */
  mask(stack, layer) {
    const idx = this.L.stacks[stack].masks[layer], key = `mask/${stack}/${idx}`;
    let p = this.masks.get(key);
    if (!p) {
      const [, , nq] = this.shape(stack);
      p = this.raw(key).then((raw) => decodeMask(raw, nq));
      this.masks.set(key, p);
    }
    return p;
  }

  /**
   * The pyramid of the mean or the max of a layer's heads (taken cell by cell, then reduced
   * over blocks): the page's layer chunk — one chunk, not every head — or, in a page built
   * before those chunks, the heads' pyramids folded (see aggregatePyramid).
   * @param {string} stack
   * @param {number} layer
   * @param {"mean" | "max"} how
   * @returns {Promise<LongPyramid>}
   */
  aggregate(stack, layer, how) {
    const key = `${how}/${stack}/${layer}`;
    let p = this.pyramids.get(key);
    if (p) return p;
    const [, H, nq, nk] = this.shape(stack), bytes = this.chunk(`agg/${key}`);
    p = bytes ? inflate(bytes).then((raw) => decodePyramid(raw, nq, nk, this.L))
      : Promise.all(Array.from({ length: H }, (_, h) => this.head(stack, layer, h))).then((heads) => aggregatePyramid(heads, how));
    p.catch(() => this.pyramids.delete(key));
    this.pyramids.set(key, p);
    trim(this.pyramids, 4);
    return p;
  }

  /**
   * @param {TileRequest} req
   * @returns {Promise<Tile>}
   */
  async tile(req) {
    const [, H] = this.shape(req.stack), pb = this.L.block, coarse = fromPyramid(req, pb);
    const how = typeof req.head === "number" ? "one" : req.head;
    // mean/max over the pyramid: the layer's pyramid alone; exact cells: every head's
    const which = how === "one" ? [/** @type {number} */ (req.head)] : coarse ? [] : Array.from({ length: H }, (_, i) => i);
    const [heads, mask] = await Promise.all([Promise.all(which.map((h) => this.head(req.stack, req.layer, h))), this.mask(req.stack, req.layer)]);
    const pyr = how !== "one" && coarse ? await this.aggregate(req.stack, req.layer, how) : heads[0];
    return pageTile(heads, how, pyr, mask, req, pb);
  }
}

/**
 * Tiles from the app: GET {url}?stack=&layer=&head=&block=&q0=&k0=&rows=&cols=&reduce=&ignore_first=
 * → float32 little-endian [rows, cols], NaN = masked.
 * @implements {TileSource}
 */
export class ServerSource {
  /** @param {string} url */
  constructor(url) {
    /** @type {"server"} */
    this.kind = "server";
    this.url = url;
  }

  /**
   * @param {TileRequest} req
   * @param {number} cols
   * @param {boolean} ignoreFirst
   */
  async fetchTile(req, cols, ignoreFirst) {
    const p = new URLSearchParams({
      stack: req.stack, layer: String(req.layer), head: String(req.head), block: String(req.block),
      q0: String(req.q0), k0: String(req.k0), rows: String(req.rows), cols: String(cols),
      reduce: req.reduce, ignore_first: ignoreFirst ? "1" : "0",
    });
    const r = await fetch(`${this.url}?${p}`);
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { const j = await r.json(); msg = j.detail || j.error || msg; } catch { /* not JSON */ }
      throw new Error(`attnmap: could not fetch a tile (${msg})`);
    }
    const rows = Number(r.headers.get("X-Tile-Rows") ?? req.rows), c = Number(r.headers.get("X-Tile-Cols") ?? cols);
    const buf = await r.arrayBuffer();
    if (buf.byteLength !== rows * c * 4) throw new Error("attnmap: a tile has the wrong size");
    return { rows, cols: c, vals: new Float32Array(buf) };
  }

  /**
   * @param {TileRequest} req
   * @returns {Promise<Tile>}
   */
  async tile(req) {
    const wantRest = req.ignoreFirst && req.k0 === 0;
    const [t, r] = await Promise.all([this.fetchTile(req, req.cols, false), wantRest ? this.fetchTile(req, 1, true) : null]);
    return { q0: req.q0, k0: req.k0, rows: t.rows, cols: t.cols, block: req.block, reduce: req.reduce, vals: t.vals, bound: null, rest: r ? r.vals : null };
  }
}

/**
 * The Jupyter widget's model, as far as tiles go: anywidget's custom messages.
 * @typedef {object} MessageModel
 * @property {(content: any, callbacks?: any, buffers?: ArrayBuffer[]) => void} send
 * @property {(event: string, fn: (msg: any, buffers?: ArrayLike<unknown>) => void) => void} on
 * @property {(event: string, fn: (msg: any, buffers?: ArrayLike<unknown>) => void) => void} [off]
 */

/** How long a tile request waits for the kernel (a cell may be running: it answers after). */
export const KERNEL_WAIT_MS = 120000;

/**
 * Tiles from the notebook's kernel (attnmap.viewer.widget): a custom message
 * { kind: "tile", id, stack, layer, head, block, q0, k0, rows, cols, reduce, ignore_first }
 * answered by { kind: "tile", id, rows, cols, block } with one buffer, float32 little-endian
 * [rows, cols] (NaN = masked), or by { kind: "tile", id, error } with a one-line message.
 * @implements {TileSource}
 */
export class KernelSource {
  /**
   * @param {MessageModel} model
   * @param {number} [waitMs]
   */
  constructor(model, waitMs = KERNEL_WAIT_MS) {
    /** @type {"kernel"} */
    this.kind = "kernel";
    this.model = model;
    this.waitMs = waitMs;
    this.next = 1;
    /** @type {Map<number, { resolve: (t: { rows: number, cols: number, vals: Float32Array }) => void, reject: (e: Error) => void, timer: ReturnType<typeof setTimeout> }>} */
    this.waiting = new Map();
    /** @param {any} msg @param {ArrayLike<unknown>} [buffers] */
    this.onMsg = (msg, buffers) => this.receive(msg, buffers);
    model.on("msg:custom", this.onMsg);
  }

  close() {
    this.model.off?.("msg:custom", this.onMsg);
    for (const w of this.waiting.values()) { clearTimeout(w.timer); w.reject(new Error("attnmap: the viewer was closed")); }
    this.waiting.clear();
  }

  /**
   * A reply from the kernel (messages that are not tile replies of ours are left alone).
   * @param {any} msg
   * @param {ArrayLike<unknown>} [buffers]
   */
  receive(msg, buffers) {
    if (!msg || msg.kind !== "tile") return;
    const w = this.waiting.get(msg.id);
    if (!w) return;
    this.waiting.delete(msg.id);
    clearTimeout(w.timer);
    if (typeof msg.error === "string") { w.reject(new Error(`attnmap: could not compute a tile (${msg.error})`)); return; }
    const b = buffers && buffers.length ? /** @type {ArrayBuffer | ArrayBufferView} */ (buffers[0]) : null;
    const rows = Number(msg.rows), cols = Number(msg.cols);
    if (!b || !(rows >= 1 && cols >= 1) || b.byteLength !== rows * cols * 4) { w.reject(new Error("attnmap: a tile has the wrong size")); return; }
    // a copy: a view into a message buffer may be unaligned for float32
    const bytes = ArrayBuffer.isView(b) ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength).slice() : new Uint8Array(b).slice();
    w.resolve({ rows, cols, vals: new Float32Array(bytes.buffer) });
  }

  /**
   * @param {TileRequest} req
   * @param {number} cols
   * @param {boolean} ignoreFirst
   * @returns {Promise<{ rows: number, cols: number, vals: Float32Array }>}
   */
  ask(req, cols, ignoreFirst) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`attnmap: the kernel did not answer a tile request in ${Math.round(this.waitMs / 1000)} s (is it busy or stopped? run the cell again)`));
      }, this.waitMs);
      this.waiting.set(id, { resolve, reject, timer });
      this.model.send({
        kind: "tile", id, stack: req.stack, layer: req.layer, head: req.head, block: req.block,
        q0: req.q0, k0: req.k0, rows: req.rows, cols, reduce: req.reduce, ignore_first: ignoreFirst,
      });
    });
  }

  /**
   * @param {TileRequest} req
   * @returns {Promise<Tile>}
   */
  async tile(req) {
    const wantRest = req.ignoreFirst && req.k0 === 0;
    const [t, r] = await Promise.all([this.ask(req, req.cols, false), wantRest ? this.ask(req, 1, true) : null]);
    return { q0: req.q0, k0: req.k0, rows: t.rows, cols: t.cols, block: req.block, reduce: req.reduce, vals: t.vals, bound: null, rest: r ? r.vals : null };
  }
}

/**
 * The block size for `cs` pixels per cell: the smallest power of two with a block ≥ 1 pixel.
 * @param {number} cs
 */
export function blockFor(cs) {
  let b = 1;
  while (b * cs < 1) b *= 2;
  return b;
}

/**
 * The largest exact value of a tile (for the colour scale), with the first block column
 * replaced by `rest` (key 0 left out) when the tile carries it; 0 when nothing is known.
 * @param {Tile} t
 */
export function tileMax(t) {
  let m = 0;
  for (let r = 0; r < t.rows; r++) {
    for (let c = 0; c < t.cols; c++) {
      const p = r * t.cols + c;
      let x = t.vals[p], upper = !!(t.bound && t.bound[p]);
      if (c === 0 && t.rest) { x = t.rest[r]; upper = false; }
      if (!upper && x > m) m = x;
    }
  }
  return m;
}
