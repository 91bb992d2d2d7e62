// The census (score badges and filters) and relations (word → word attention), as in
// attnmap.analysis; pure functions of the header and decoded layers. No DOM.

import { LEVELS, MASKED } from "./payload.js";

/** @typedef {import("./types.js").Layer} Layer */
/** @typedef {import("./types.js").StackInfo} StackInfo */

// Short names for badges; a thumbnail's badge is its highest "mass" score (0..1) unless a
// score is picked in the census bar. Distance and entropy are not masses, so they never win.
/** @type {Record<string, string>} */
export const ABBR = { self: "self", previous_token: "prev", next_token: "next", first_token: "first", duplicate_token: "dup", induction: "ind", locality: "local", mean_distance: "dist", entropy: "ent", entropy_norm: "ent/max", special: "spec" };
const BADGE_SCORES = ["self", "previous_token", "next_token", "first_token", "duplicate_token", "induction", "special"];

// What each badge means, in plain words (the legend and the thumbnails' tooltips).
/** @type {Record<string, string>} */
export const BADGE_HELP = {
  self: "attention to the token itself",
  prev: "attention to the token just before",
  next: "attention to the token just after (models that see both ways)",
  first: "attention to the first token (the attention sink)",
  dup: "attention to earlier copies of the same token",
  ind: "induction: attention to the token after an earlier copy",
  spec: "attention to special tokens ([CLS], [SEP], <s> …)",
  local: "attention to tokens nearby",
  dist: "mean distance to the keys looked at, in tokens",
  ent: "entropy of each row (nats): 0 = one key, larger = spread out",
  "ent/max": "entropy ÷ its maximum: 0 = one key, 1 = uniform",
};

/**
 * The words for a badge's text ("spec .10" → "spec .10: attention to special tokens …").
 * @param {string} text
 */
export function badgeWords(text) {
  const help = BADGE_HELP[text.split(" ")[0]];
  return help ? `${text}: ${help}` : text;
}

/**
 * @param {number | null | undefined} v
 */
export function fmtScore(v) {
  if (v === null || v === undefined) return "–";
  return Math.abs(v) < 1 ? v.toFixed(2).replace(/^(-?)0\./, "$1.") : v.toFixed(1);
}

/**
 * One head's score by name, or null.
 * @param {StackInfo} info
 * @param {number} layer
 * @param {number} head
 * @param {string} name
 * @returns {number | null}
 */
export function scoreOf(info, layer, head, name) {
  const sc = info.scores;
  if (!sc) return null;
  const H = info.shape[1], i = sc.names.indexOf(name);
  return i < 0 ? null : sc.values[layer * H + head][i] ?? null;
}

/**
 * The badge text of one head: the picked score, or the head's highest mass score.
 * @param {StackInfo} info
 * @param {number} layer
 * @param {number} head
 * @param {string | null} picked
 * @returns {string | null}
 */
export function badge(info, layer, head, picked) {
  if (!info.scores) return null;
  if (picked) return `${ABBR[picked] || picked} ${fmtScore(scoreOf(info, layer, head, picked))}`;
  let best = null, bv = -1;
  for (const n of BADGE_SCORES) { const v = scoreOf(info, layer, head, n); if (v !== null && v > bv) { bv = v; best = n; } }
  return best ? `${ABBR[best]} ${fmtScore(bv)}` : null;
}

/**
 * Whether a head passes the census filter (score ≥ threshold); every head without a filter.
 * @param {StackInfo} info
 * @param {number} layer
 * @param {number} head
 * @param {string | null} score
 * @param {number | null} min
 */
export function passes(info, layer, head, score, min) {
  if (!score || min === null || !info.scores) return true;
  const v = scoreOf(info, layer, head, score);
  return v !== null && v >= min;
}

/**
 * @typedef {{ word: string, key: string, s: number, e: number, occurrence: number, spec: string }} Word
 */

// Words of the text as attnmap.analysis.words.text_words finds them: runs of non-space,
// punctuation and symbols stripped from both ends, case folded. Offsets count code points,
// like Python's (and the payload's token offsets).
const PUNCT = /^[\p{P}\p{S}]$/u;

/**
 * @param {string | null | undefined} text
 * @returns {Word[]}
 */
export function textWords(text) {
  const cps = Array.from(text || "");
  /** @type {Word[]} */
  const out = [];
  let i = 0;
  while (i < cps.length) {
    if (/\s/u.test(cps[i])) { i++; continue; }
    let e = i;
    while (e < cps.length && !/\s/u.test(cps[e])) e++;
    let a = i, b = e;
    while (a < b && PUNCT.test(cps[a])) a++;
    while (b > a && PUNCT.test(cps[b - 1])) b--;
    if (b === a) { a = i; b = e; }
    const word = cps.slice(a, b).join("");
    out.push({ word, key: word.toLowerCase(), s: a, e: b, occurrence: 0, spec: word });
    i = e;
  }
  // Occurrence numbers make "mat#2" name the second "mat", as in attnmap relate.
  /** @type {Map<string, number>} */
  const seen = new Map();
  for (const w of out) { const n = (seen.get(w.key) || 0) + 1; seen.set(w.key, n); w.occurrence = n; }
  for (const w of out) w.spec = (seen.get(w.key) || 0) > 1 ? `${w.word}#${w.occurrence}` : w.word;
  return out;
}

/**
 * Token indexes whose character span overlaps [s, e).
 * @param {(([number, number]) | null)[]} offsets
 * @param {number} s
 * @param {number} e
 */
export function wordTokens(offsets, s, e) {
  /** @type {number[]} */
  const out = [];
  offsets.forEach((o, i) => { if (o && o[0] < e && o[1] > s) out.push(i); });
  return out;
}

/**
 * Attention from `src` tokens to `dst` tokens in every head of one decoded layer: summed over
 * the keys, averaged over the queries (attnmap.relate's definition). → [head]
 * @param {Layer} layer
 * @param {number[]} src
 * @param {number[]} dst
 */
export function relationMass(layer, src, dst) {
  const out = new Float64Array(layer.heads), n = layer.q * layer.k;
  for (let hd = 0; hd < layer.heads; hd++) {
    let acc = 0;
    for (const i of src) {
      const f = layer.scales[hd * layer.q + i] / LEVELS, row = hd * n + i * layer.k;
      for (const j of dst) { const c = layer.codes[row + j]; if (c !== MASKED) acc += c * f; }
    }
    out[hd] = acc / Math.max(1, src.length);
  }
  return out;
}

/**
 * Runs of consecutive tokens of one chat message (or one role, where messages are not
 * numbered), for the role bands. Tokens without a role make no band.
 * @param {(string | null)[] | undefined} roles
 * @param {(number | null)[] | undefined} messages
 * @returns {{ start: number, end: number, role: string, message: number | null }[]}  end exclusive
 */
export function roleRuns(roles, messages) {
  /** @type {{ start: number, end: number, role: string, message: number | null }[]} */
  const out = [];
  if (!Array.isArray(roles)) return out;
  for (let i = 0; i < roles.length; i++) {
    const r = typeof roles[i] === "string" ? /** @type {string} */ (roles[i]) : null;
    const raw = Array.isArray(messages) ? messages[i] : null;
    const m = typeof raw === "number" && Number.isFinite(raw) ? raw : null;
    if (r === null) continue;
    const last = out[out.length - 1];
    if (last && last.end === i && last.role === r && last.message === m) last.end = i + 1;
    else out.push({ start: i, end: i + 1, role: r, message: m });
  }
  return out;
}
