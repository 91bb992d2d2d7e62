// Colour: the colormaps travel from matplotlib in the payload header as 256-entry RGB tables, so
// a value gets the same colour on the page as in attnmap's PNGs. The value → entry rule is
// matplotlib's too: entry floor(t · 256), t in [0, 1], the top value in the last entry.
// No DOM here.

/** @typedef {import("./types.js").LutEntry} LutEntry */

/**
 * A colormap ready to paint with.
 * @typedef {object} Ramp
 * @property {string} name
 * @property {Uint8Array} rgb     [entry, channel] 256 × 3
 * @property {Uint32Array} words  256 ImageData pixels (little-endian RGBA words, opaque)
 */

export const LOG_DECADES = 3;

// Masked cells in thumbnails: flat grey, never a colour of the map (the big views hatch them).
export const MASK_A = rgba(200, 200, 200);

/**
 * An opaque ImageData pixel as a little-endian RGBA word.
 * @param {number} r
 * @param {number} g
 * @param {number} b
 */
export function rgba(r, g, b) {
  return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

/**
 * The table entry of t in [0, 1] (matplotlib's rule: floor(t · 256), 1 → 255). NaN → 0.
 * @param {number} t
 */
export function lutIndex(t) {
  if (!(t > 0)) return 0;
  if (t >= 1) return 255;
  return Math.min(255, Math.floor(t * 256));
}

/**
 * @param {string} name
 * @param {Uint8Array} rgb  768 bytes
 * @returns {Ramp}
 */
export function rampFromBytes(name, rgb) {
  if (rgb.length !== 768) throw new Error(`attnmap: colormap ${name} has ${rgb.length} bytes, not 256 × 3`);
  const words = new Uint32Array(256);
  for (let i = 0; i < 256; i++) words[i] = rgba(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
  return { name, rgb, words };
}

/**
 * @param {string} text  base64
 * @returns {Uint8Array}
 */
export function base64Bytes(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * A ramp linearly interpolated between evenly spaced stops (how matplotlib builds its
 * ColorBrewer maps), entry i at i / 255.
 * @param {string} name
 * @param {number[][]} stops  RGB 0..255
 * @returns {Ramp}
 */
export function rampFromStops(name, stops) {
  const rgb = new Uint8Array(768);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1), a = Math.min(Math.floor(t), stops.length - 2), f = t - a;
    for (let c = 0; c < 3; c++) rgb[3 * i + c] = Math.round(stops[a][c] + (stops[a + 1][c] - stops[a][c]) * f);
  }
  return rampFromBytes(name, rgb);
}

// Only for a payload that carries no table (written before tables travelled): matplotlib's own
// definitions of Blues and RdBu_r (ColorBrewer, evenly spaced).
const BLUES = [[247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214], [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]];
const RDBU_R = [[5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31]];

/**
 * The sequential and diverging ramps a payload header asks for.
 * @param {{ colormap?: LutEntry, diverging?: LutEntry } | null | undefined} header
 * @returns {{ seq: Ramp, div: Ramp }}
 */
export function rampsOf(header) {
  /**
   * @param {LutEntry | undefined} e
   * @param {string} name
   * @param {number[][]} stops
   */
  const one = (e, name, stops) => (e && typeof e.lut === "string" ? rampFromBytes(String(e.name), base64Bytes(e.lut)) : rampFromStops(name, stops));
  return { seq: one(header?.colormap, "Blues", BLUES), div: one(header?.diverging, "RdBu_r", RDBU_R) };
}

/**
 * Where value v sits on the colour scale, 0..1.
 * @param {number} v
 * @param {number} vmax
 * @param {string} scale  "unit" / "head" (linear) or "log" (LOG_DECADES decades below vmax)
 */
export function tOf(v, vmax, scale) {
  if (scale === "log") {
    if (v <= 0) return 0;
    return Math.max(0, Math.min(1, 1 + Math.log10(v / vmax) / LOG_DECADES));
  }
  return Math.max(0, Math.min(1, v / vmax));
}

/**
 * CSS colour of entry i.
 * @param {Ramp} ramp
 * @param {number} i
 */
export function css(ramp, i) {
  const j = 3 * Math.max(0, Math.min(255, i));
  return `rgb(${ramp.rgb[j]},${ramp.rgb[j + 1]},${ramp.rgb[j + 2]})`;
}

/**
 * Whether text on entry i should be white (dark cells) rather than dark grey.
 * @param {Ramp} ramp
 * @param {number} i
 */
export function darkEntry(ramp, i) {
  const j = 3 * i;
  return 0.299 * ramp.rgb[j] + 0.587 * ramp.rgb[j + 1] + 0.114 * ramp.rgb[j + 2] < 140;
}

// Chat roles: a fixed colour for the usual roles, others from a small palette by name.
/** @type {Record<string, string>} */
const ROLE = { system: "#8e7cc3", user: "#4c9a5a", assistant: "#d9822b", tool: "#5b8fb9", developer: "#a0787a" };
const EXTRA = ["#7f8c8d", "#b5a642", "#c06c84", "#3aa6a0"];

/**
 * @param {string | null} role
 */
export function roleColour(role) {
  if (!role) return "#bdbdbd";
  if (ROLE[role]) return ROLE[role];
  let h = 0;
  for (const ch of role) h = (h * 31 + (ch.codePointAt(0) || 0)) >>> 0;
  return EXTRA[h % EXTRA.length];
}
