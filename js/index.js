// attnmap viewer: one ES module for three hosts (standalone page, web app, Jupyter/anywidget).
// It depends on nothing but the browser. Token text is data: it reaches the page only through
// textContent, option text, attributes and canvas fillText, never through markup.
//
// Host contract: export default { render({ model, el }) } returning a cleanup function, where
// model.get("payload") is the bytes of attnmap.viewer.payload.encode(run), model.get("options")
// the initial view and model.get("layer_url") an optional base URL for layers that the payload
// leaves out (GET layer_url/stack/layer → encode_layer bytes). A diff page adds
// model.get("payload_b") and options.diff.

import { Viewer } from "./viewer.js";

export { PAYLOAD_VERSION, b85decode, decodeLayer, parsePayload } from "./payload.js";
export { textWords } from "./analysis.js";

/**
 * @param {{ model: import("./types.js").HostModel, el: HTMLElement }} host
 * @returns {() => void}  cleanup
 */
function render({ model, el }) {
  const v = new Viewer(model, el);
  v.start();
  return () => v.destroy();
}

export default { render };
