// Shared JSDoc types of the viewer. This module has no code; it exists for the type checker.

/**
 * A per-stack entry of the payload header (attnmap.viewer.payload._stack_info).
 * @typedef {object} StackInfo
 * @property {string} name
 * @property {[number, number, number, number]} shape  [layer, head, query, key]
 * @property {string[]} query_tokens
 * @property {string[]} key_tokens
 * @property {boolean[]} query_special
 * @property {boolean[]} key_special
 * @property {(([number, number]) | null)[]} [query_offsets]
 * @property {(([number, number]) | null)[]} [key_offsets]
 * @property {{ names: string[], values: (number | null)[][] } | null} [scores]
 * @property {(string | null)[]} [query_roles]     chat role of each query token, when known
 * @property {(number | null)[]} [query_messages]  chat message index of each query token
 * @property {(string | null)[]} [key_roles]
 * @property {(number | null)[]} [key_messages]
 * @property {boolean[]} [query_generated]  per query token: written by the model
 * @property {boolean[]} [key_generated]
 * @property {{ names: string[], values: (number | null)[][] } | null} [scores_generated]  the
 *   census over the generated rows only
 */

/**
 * @typedef {object} Prediction
 * @property {number} position
 * @property {string} token
 * @property {{ token: string, p: number }[]} top
 * @property {{ token: string, p: number, rank: number, surprisal: number } | null} next
 * @property {number} [entropy]  of the distribution the next token was chosen from
 */

/**
 * A colormap as it travels in the header: 256 RGB entries, base64.
 * @typedef {{ name: string, lut: string }} LutEntry
 */

/**
 * @typedef {object} Header
 * @property {string} format
 * @property {number} version
 * @property {Record<string, unknown> & { id?: string }} model
 * @property {string} text
 * @property {string | null} target_text
 * @property {StackInfo[]} stacks
 * @property {{ stack: string, layer: number, length: number }[]} chunks
 * @property {Prediction[]} [predictions]
 * @property {string} [predictions_kind]
 * @property {string[]} [predictions_stacks]
 * @property {LutEntry} [colormap]
 * @property {LutEntry} [diverging]
 * @property {{ side: string, boundary: number, count: number, positions: number[] }} [generation]
 *   where the generated tokens are (runs from attnmap.generate)
 * @property {import("./vision.js").ImageInfo} [image]  runs of an image (attnmap.patches)
 */

/**
 * One decoded layer of one stack.
 * @typedef {object} Layer
 * @property {string} stack
 * @property {number} layer
 * @property {number} heads
 * @property {number} q
 * @property {number} k
 * @property {Float32Array} scales  [head, query] value = code / LEVELS * scale (full: the row's maximum)
 * @property {Uint8Array} codes     [head, query, key] 0..levels, MASKED
 * @property {Float32Array} peaks   [head, query] each row's maximum (full precision: scales itself)
 * @property {number} levels        the largest code that carries a value (128; compact 254)
 * @property {Map<string, HeadData>} derived  mean/max of heads, computed once
 */

/**
 * One head (or an aggregate of heads) of a layer: rows of codes with their scales.
 * @typedef {object} HeadData
 * @property {number} q
 * @property {number} k
 * @property {Float32Array} scales  [query]
 * @property {Uint8Array} codes     [query, key]
 * @property {Float32Array} peaks   [query] each row's maximum
 * @property {number} levels        the largest code that carries a value
 * @property {{ all: number, rest: number | null } | null} stats
 */

/** @typedef {number | "mean" | "max"} Head */
/** @typedef {"heatmap" | "heads" | "layers" | "diff" | "change"} View */
/** @typedef {"unit" | "head" | "log"} Scale */

/**
 * The whole view state. It changes only through Viewer.set(patch).
 * @typedef {object} State
 * @property {string} stack
 * @property {number} layer
 * @property {Head} head
 * @property {View} view
 * @property {Scale} scale
 * @property {"js" | "mean_abs"} metric
 * @property {boolean} ignoreFirst
 * @property {number | null} cs  cell size in CSS pixels; null = fit the whole matrix
 * @property {number} k0  first visible key (fractional, when zoomed)
 * @property {number} q0  first visible query
 * @property {{ q: number | null, k: number | null } | null} sel
 * @property {string | null} score  census score that sorts and filters head grids
 * @property {number | null} min    census threshold
 * @property {Mark | null} mark  cells outlined for the relation panel's opened head
 * @property {number | null} step  playback: the prompt and the first `step` generated tokens
 *   are shown; null = everything, no playback
 * @property {boolean} gen  the generated part only: the heatmap's rows, the census, relations
 * @property {"max" | "sum"} reduce  long runs: how a block of cells becomes one pixel
 */

/**
 * A block of cells: query rows [q[0], q[1]) × key columns [k[0], k[1]).
 * @typedef {{ q: [number, number], k: [number, number] }} Mark
 */

/**
 * The host's model, shaped like anywidget's.
 * @typedef {object} HostModel
 * @property {(key: string) => any} get
 * @property {(event: string, fn: () => void) => void} on
 * @property {(event: string, fn: () => void) => void} [off]
 */

/**
 * A diff page's head ranking entry.
 * @typedef {{ layer: number, head: number, mean_abs: number, js: number }} Change
 */

/**
 * @typedef {object} DiffOptions
 * @property {Change[]} ranking
 * @property {number} aligned
 * @property {string} a
 * @property {string} b
 * @property {string} stack
 * @property {boolean[]} [changed]  per aligned position: a substitution (A's token ≠ B's)
 */

/**
 * Something on the canvas that a click opens: a thumbnail or a change cell.
 * @typedef {{ x: number, y: number, w: number, h: number, layer: number, head: number, badge?: string | null, pass?: boolean }} HitBox
 */

export {};
