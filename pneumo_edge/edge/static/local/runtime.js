// The whole model on this computer: the ONNX file Python uses, run by onnxruntime-web (WebAssembly,
// vendored beside this file), with its metadata read from the same file. Nothing is uploaded.
//
//   const model = await LocalModel.open("model.int8.onnx");
//   const r = await model.classify(file, { heatmap: true });   // the same fields as POST /v1/predict

import * as ort from "../ort/ort.wasm.min.mjs";
import { metadataProps } from "./onnx-metadata.js";
import { ImageError, chroma, decodeRGBA, normalize, resizeGray, toGray } from "./pixels.js";
import { decodeDicom, isDicom } from "./dicom.js";
import { Guard, OCCLUSION, occludedCopies, occlusionMap, overlayRGBA, probability } from "./maths.js";

const META_KEY = "pneumo_edge";  // meta.META_KEY
const REQUIRED = ["labels", "preprocess", "threshold", "temperature", "model", "pneumo_edge_version"];
const HEAT_ALPHA = 0.45;  // cam.ALPHA: how the overlay looks, not part of any decision
const PROB_DIGITS = 6, GUARD_DIGITS = 4;  // decision.PROB_DIGITS / GUARD_DIGITS: the record decides on these
const GUARD_WORDS = {  // serve.GUARD_WORDS
  off: "no out-of-distribution check (turned off, or this model file has none)",
  rejected: "this does not look like a frontal chest X-ray like those the model was trained on, "
    + "so no diagnosis and no heat map are given",
  accepted: "looks like a frontal chest X-ray like those the model was trained on",
};
const round = (x, digits) => Number(x.toFixed(digits));
// heatmap.caption("occlusion"): what every map shows, whatever the decision
const HEATMAP_MEANING = target => `map: evidence for ${target} (occlusion 7x7, grey); low = none found`;

ort.env.wasm.wasmPaths = new URL("../ort/", import.meta.url).href;  // never a CDN

// The bundle's rule, checked as meta.BundleMeta.from_dict checks it: a bad field fails at load, by name.
function readMeta(props, source) {
  const bad = (field, why) => new Error(`${source}: metadata field '${field}' ${why}`);
  if (!(META_KEY in props)) throw new Error(`${source} has no pneumo-edge metadata (key '${META_KEY}')`);
  let m;
  try { m = JSON.parse(props[META_KEY]); } catch (e) { throw new Error(`${source}: metadata is not valid JSON`); }
  for (const k of REQUIRED) if (!(k in m)) throw bad(k, "is missing");
  if (!Array.isArray(m.labels) || m.labels.length !== 2) throw bad("labels", "must be two class names");
  for (const [k, lo, hi] of [["threshold", 0, 1], ["temperature", 1e-3, 1e3]]) {
    if (typeof m[k] !== "number" || !(m[k] >= lo && m[k] <= hi)) throw bad(k, `must be a number in [${lo}, ${hi}]`);
  }
  const p = m.preprocess;
  for (const k of ["size", "mean", "std"]) if (typeof p[k] !== "number") throw bad(`preprocess.${k}`, "is missing");
  if ((p.channels ?? 1) !== 1) throw bad("preprocess.channels", "must be 1 (grey input)");
  // the flat keys other tools show must restate the JSON (meta.check_flat)
  for (const [key, value] of [["labels", m.labels], ["threshold", m.threshold], ["temperature", m.temperature],
    ["image_size", [p.size, p.size]]]) {
    if (key in props && JSON.stringify(JSON.parse(props[key])) !== JSON.stringify(value)) {
      throw new Error(`${source}: metadata key '${key}' disagrees with the '${META_KEY}' JSON; re-export the file`);
    }
  }
  return { ...m, preprocess: { resize: "center-crop-bilinear", ...p } };
}

export function defaultThreads() {
  const asked = Number(new URLSearchParams(location.search).get("threads"));
  if (asked >= 1) return Math.floor(asked);
  // several threads need SharedArrayBuffer, which only a cross-origin isolated page has
  return globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

export class LocalModel {
  // `headers`: the API token where the server asks for one; `name`: the file's own name when the URL is not it
  static async open(url, threads = defaultThreads(), { headers = {}, name = null } = {}) {
    const response = await fetch(url, { headers });
    if (!response.ok) throw new Error(`cannot read the model ${url} (${response.status} ${response.statusText})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const file = name || decodeURIComponent(new URL(url, location.href).pathname.split("/").pop());
    ort.env.wasm.numThreads = threads;
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"],
      graphOptimizationLevel: "all" });
    return new LocalModel(session, readMeta(metadataProps(bytes), file), file, await sha256(bytes), threads);
  }

  constructor(session, meta, file, fileSha256, threads) {
    this.session = session;
    this.meta = meta;
    this.file = file;
    this.fileSha256 = fileSha256;
    this.threads = threads;
    this.guard = meta.ood ? new Guard(meta.ood) : null;
    if (this.guard && !session.outputNames.includes("embedding")) {
      throw new Error(`${file}: metadata has a guard but the graph has no 'embedding' output`);
    }
  }

  // decision.decide: the one record for a scored image, on the numbers as every output reports them
  decide(probability, guardScore, guardReason) {
    const p = round(probability, PROB_DIGITS), m = this.meta;
    const score = guardScore === null ? null : round(guardScore, GUARD_DIGITS);
    const modelLabel = m.labels[p >= m.threshold ? 1 : 0];
    const verdict = score === null ? "off" : score > 1 ? "rejected" : "accepted";  // Guard.rejects
    return { status: verdict === "rejected" ? "rejected" : "ok", label: verdict === "rejected" ? "REJECTED_OOD" : modelLabel,
             model_label: modelLabel, probability: p, threshold: m.threshold, guard_score: score,
             guard_verdict: verdict, guard_reason: verdict === "rejected" ? guardReason || null : null,
             model_sha256: this.fileSha256 };
  }

  // Decode, classify, guard (and the raw heat map): the numbers of one film, as Python makes them.
  async score(bytes, name, useGuard = true) {
    const t0 = performance.now();
    let grey, width, height, colour = 0;  // imaging.load_image: (grey, chroma); a DICOM has no colour
    if (isDicom(bytes, name)) ({ grey, width, height } = await decodeDicom(bytes));
    else {
      const decoded = await decodeRGBA(bytes);
      ({ width, height } = decoded);
      grey = toGray(decoded);
      colour = chroma(decoded);
    }
    const p = this.meta.preprocess;
    const resized = resizeGray(grey, width, height, p.size, p.resize);
    const t1 = performance.now();
    const input = new ort.Tensor("float32", normalize(resized, p.mean, p.std), [1, 1, p.size, p.size]);
    const wanted = this.session.outputNames.filter(n => ["logits", "embedding"].includes(n));
    const out = await this.session.run({ [this.session.inputNames[0]]: input }, wanted);
    const t2 = performance.now();
    const margin = this.margin(out.logits.data, 0);
    const prob = probability(margin);
    const guard = useGuard && this.guard ? this.guard.assess(resized, out.embedding.data, colour) : null;
    const t3 = performance.now();  // decoding and preprocessing, the network, the guard
    for (const t of Object.values(out)) t.dispose?.();
    return { resized, prob, margin, guard, ms: t3 - t0,
             parts: { decode_ms: t1 - t0, network_ms: t2 - t1, guard_ms: t3 - t2 } };
  }

  // heatmap.margin_score: (l_PNEUMONIA - l_NORMAL) / T of film i of a batch of logits
  margin(logits, i) {
    return (logits[2 * i + 1] - logits[2 * i]) / this.meta.temperature;
  }

  // The shipped heat map (heatmap.SHIPPED, "occlusion"): the drop in the evidence for PNEUMONIA when each cell of
  // a 7 x 7 grid is hidden by grey, one model run per cell, run `chunk` cells at a time; onProgress(done, total).
  async heatmap(scored, { chunk = 7, onProgress = null } = {}) {
    const p = this.meta.preprocess, size = p.size, cells = OCCLUSION.grid * OCCLUSION.grid;
    const copies = occludedCopies(scored.resized, size), margins = new Float64Array(cells);
    for (let start = 0; start < cells; start += chunk) {
      const n = Math.min(chunk, cells - start);
      const x = normalize(copies.subarray(start * size * size, (start + n) * size * size), p.mean, p.std);
      const out = await this.session.run({ [this.session.inputNames[0]]: new ort.Tensor("float32", x, [n, 1, size, size]) },
        ["logits"]);
      for (let i = 0; i < n; i++) margins[start + i] = this.margin(out.logits.data, i);
      out.logits.dispose?.();
      if (onProgress) onProgress(start + n, cells);
    }
    return occlusionMap(scored.margin, margins, size);
  }

  // The answer of POST /v1/predict (serve.Service.answer), made here.
  async classify(file, { heatmap = false, guard = true, onProgress = null } = {}) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const s = await this.score(bytes, file.name, guard);
    const m = this.meta, positive = m.labels[1];
    const record = this.decide(s.prob, s.guard ? s.guard.score : null, s.guard ? s.guard.reason : "");
    const side = record.model_label === positive ? "at or above" : "below";
    const answer = {
      ...record, guard_explanation: GUARD_WORDS[record.guard_verdict],
      decision: `P(${positive}) ${record.probability.toFixed(3)} is ${side} the threshold ${m.threshold.toFixed(3)}: `
        + record.model_label,
      model: { weights_sha256: m.weights_sha256, version: m.pneumo_edge_version, file: this.file,
               quantization: m.quantization ?? null },
      latency_ms: s.ms, latency_parts: s.parts, where: "on this computer",
      input_sha256: await sha256(s.resized),  // of the grey input the network saw: compare with Python's
    };
    if (heatmap && record.guard_verdict !== "rejected") {  // Scored.heatmap_allowed
      const t0 = performance.now();
      answer.heat = await this.heatmap(s, { onProgress });
      answer.heatmap = { class: positive, url: await overlayURL(s.resized, answer.heat, m.preprocess.size),
                         method: "occlusion", meaning: HEATMAP_MEANING(positive) };
      answer.heatmap_ms = performance.now() - t0;
    }
    return answer;
  }
}

async function sha256(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map(b => b.toString(16).padStart(2, "0")).join("");
}

async function overlayURL(grey, heat, size) {
  const canvas = new OffscreenCanvas(size, size);
  canvas.getContext("2d").putImageData(new ImageData(overlayRGBA(grey, heat, HEAT_ALPHA), size, size), 0, 0);
  return URL.createObjectURL(await canvas.convertToBlob({ type: "image/png" }));
}

export { ImageError };
