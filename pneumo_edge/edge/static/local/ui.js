// The switch "classify on this computer": which model file to open, and the hook app.js calls.
// page.json names the model: beside the page in a static folder (`pneumo-edge page --out DIR`), where the
// browser is the only runtime; `pneumo-edge serve` answers it with the served ONNX file and "server": true,
// and uploading stays the default there.

import { LocalModel, defaultThreads } from "./runtime.js";
import { loadParser } from "./dicom.js";

const $ = sel => document.querySelector(sel);
const TOKEN_KEY = "pneumo-edge-token";  // app.js's: the token the reader gave this tab

async function pageConfig() {
  try {
    const r = await fetch("page.json", { cache: "no-cache" });
    return r.ok ? await r.json() : null;
  } catch (e) {
    return null;
  }
}

const config = pageConfig();
let opening = null;
const heatmaps = new Map();  // file name -> the last heat map made here (Float32Array, [0, 1]), for scripts
const timings = new Map();  // file name -> where its milliseconds went (decode_ms, network_ms, guard_ms)
const heatTimes = new Map();  // file name -> milliseconds its heat map took

function open() {
  if (opening === null) {
    opening = config.then(c => {
      if (c === null) throw new Error("page.json is missing: write the page with `pneumo-edge page --out DIR`");
      const token = sessionStorage.getItem(TOKEN_KEY);  // under `serve --tokens` the model file needs it too
      const options = { headers: token ? { Authorization: `Bearer ${token}` } : {}, name: c.file || null };
      return Promise.all([LocalModel.open(c.model, defaultThreads(), options), loadParser()]).then(([model]) => model);
    });
    opening.then(describe, e => { $("#local-status").textContent = `The model cannot run here: ${e.message}`; });
  }
  return opening;
}

function describe(model) {
  const m = model.meta;
  const digest = m.weights_sha256 ? m.weights_sha256.slice(0, 12) : "not recorded";
  $("#local-status").textContent = `Model ${model.file} loaded in this browser (${m.model}, threshold `
    + `${m.threshold.toFixed(3)}, weights ${digest}; ${model.threads} thread${model.threads === 1 ? "" : "s"}).`
    + (model.guard ? "" : " This model file has no out-of-distribution guard.");
  return model;
}

window.pneumoLocal = {
  isStatic: config.then(c => c !== null && !c.server),
  ready: () => open(),
  async classify(file, heatmap, onProgress = null) {
    const model = await open();
    const answer = await model.classify(file, { heatmap, onProgress });
    if (answer.heat) { heatmaps.set(file.name, answer.heat); heatTimes.set(file.name, answer.heatmap_ms); }
    timings.set(file.name, answer.latency_parts);
    return answer;
  },
  heatmap: name => heatmaps.get(name) ?? null,
  timing: name => timings.get(name) ?? null,
  heatmapMs: name => heatTimes.get(name) ?? null,
};

document.addEventListener("DOMContentLoaded", async () => {
  const box = $("#local");
  if (await window.pneumoLocal.isStatic) {
    box.checked = true;
    box.disabled = true;  // there is no server to upload to
    $("#model").textContent = "This page is static files: every X-ray is classified in this browser.";
    open();
  }
  box.addEventListener("change", () => { if (box.checked) open(); });
  if (box.checked) open();
});
