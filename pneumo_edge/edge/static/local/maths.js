// The model's maths after the network, as in Python: probability (edge/model.py), the guard
// (edge/guard.py, its statistics from the ONNX file's metadata) and the occlusion heat map (edge/heatmap.py).

export const CHECK_WORDS = {  // guard.CHECK_WORDS
  embedding: "unlike the chest X-rays the model was fitted on",
  intensity: "grey levels outside the range of X-rays",
  colour: "a colour image", orientation: "upside down or rotated",
  polarity: "grey levels inverted (a negative)",
  population: "film looks like an adult chest X-ray, outside this model's population",
};

// base64 float32 (guard._pack / cam._pack) -> Float64Array
export function unpack(text, length) {
  const raw = atob(text), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  const values = new Float32Array(bytes.buffer);
  if (length !== undefined && values.length !== length) {
    throw new Error(`packed array holds ${values.length} numbers, expected ${length}`);
  }
  return Float64Array.from(values);
}

// model.prob_from_logits: softmax over logits / T, written as a sigmoid of the margin (l1 - l0) / T
export const probability = margin => 1 / (1 + Math.exp(-margin));

const sigmoid = z => 0.5 * (1 + Math.tanh(0.5 * z));  // guard._sigmoid

// guard.image_stats for one resized uint8 image: mean, spread (0..1) and 64-bin entropy (bits)
export function imageStats(resized) {
  const n = resized.length, hist = new Float64Array(64);
  let sum = 0;
  for (let i = 0; i < n; i++) { sum += resized[i]; hist[resized[i] >> 2]++; }
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) { const d = resized[i] - mean; sq += d * d; }
  let ent = 0;
  for (const h of hist) if (h > 0) { const p = h / n; ent -= p * Math.log2(p); }
  return [mean / 255, Math.sqrt(sq / n) / 255, ent];
}

// guard.thumbnail for one resized uint8 image: grid x grid cell means, standardised by the image's mean and spread
export function thumbnail(resized, grid) {
  const n = resized.length, size = Math.round(Math.sqrt(n)), b = Math.floor(size / grid);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += resized[i];
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) { const d = resized[i] - mean; sq += d * d; }
  const sd = Math.sqrt(sq / n) + 1e-6, cells = new Float64Array(grid * grid);
  for (let r = 0; r < grid * b; r++) {
    for (let c = 0; c < grid * b; c++) cells[Math.floor(r / b) * grid + Math.floor(c / b)] += resized[r * size + c];
  }
  for (let i = 0; i < cells.length; i++) cells[i] = (cells[i] / (b * b) - mean) / sd;
  return cells;
}

export class Guard {
  constructor(m) {  // guard.Guard.from_meta
    for (const k of ["means", "classes", "dim", "components", "k", "eigvals", "residual_var", "threshold",
      "stat_lo", "stat_hi", "max_chroma"]) {
      if (!(k in m)) throw new Error(`metadata field 'ood.${k}' is missing`);
    }
    this.dim = m.dim;
    this.means = unpack(m.means, m.classes * m.dim);
    this.classes = m.classes;
    this.components = unpack(m.components, m.k * m.dim);
    this.k = m.k;
    this.eigvals = Float64Array.from(m.eigvals);
    this.residualVar = m.residual_var;
    this.threshold = m.threshold;
    this.statLo = m.stat_lo;
    this.statHi = m.stat_hi;
    this.maxChroma = m.max_chroma;
    const head = h => h ? { weights: unpack(h.weights, m.dim), bias: h.bias, threshold: h.threshold } : null;
    this.orientation = head(m.orientation);
    this.population = head(m.population);  // the page reads no header age: the image check applies to every film
    const p = m.polarity;
    this.polarity = p
      ? { weights: unpack(p.weights, p.grid * p.grid), bias: p.bias, threshold: p.threshold, grid: p.grid }
      : null;
  }

  embeddingDistance(emb) {
    let best = Infinity;
    const d = new Float64Array(this.dim);
    for (let c = 0; c < this.classes; c++) {
      let total = 0;
      for (let i = 0; i < this.dim; i++) { d[i] = emb[i] - this.means[c * this.dim + i]; total += d[i] * d[i]; }
      let inPlane = 0, projected = 0;
      for (let j = 0; j < this.k; j++) {
        let p = 0;
        for (let i = 0; i < this.dim; i++) p += d[i] * this.components[j * this.dim + i];
        projected += p * p;
        inPlane += p * p / this.eigvals[j];
      }
      best = Math.min(best, inPlane + Math.max(total - projected, 0) / this.residualVar);
    }
    return best;
  }

  // guard.Guard.check_scores for one image: each check scored 1.0 at its threshold
  checkScores(resized, emb, chromaValue) {
    const st = imageStats(resized);
    let outside = -Infinity;
    for (let i = 0; i < 3; i++) {
      const width = this.statHi[i] - this.statLo[i];
      outside = Math.max(outside, Math.max(this.statLo[i] - st[i], st[i] - this.statHi[i]) / width);
    }
    const out = {
      embedding: this.embeddingDistance(emb) / this.threshold,
      intensity: outside > 0 ? 1 + outside : 0,
      colour: chromaValue / this.maxChroma,
    };
    const onEmbedding = h => {  // OrientationHead.scores: a logistic head on the embedding, 1.0 at its threshold
      let z = h.bias;
      for (let i = 0; i < this.dim; i++) z += emb[i] * h.weights[i];
      return sigmoid(z) / h.threshold;
    };
    if (this.orientation) out.orientation = onEmbedding(this.orientation);
    if (this.polarity) {
      const t = thumbnail(resized, this.polarity.grid);
      let z = this.polarity.bias;
      for (let i = 0; i < t.length; i++) z += t[i] * this.polarity.weights[i];
      out.polarity = sigmoid(z) / this.polarity.threshold;
    }
    if (this.population) out.population = onEmbedding(this.population);
    return out;
  }

  // guard.Guard.assess: the score (maximum over checks) and the reason naming each check past 1
  assess(resized, emb, chromaValue) {
    const checks = this.checkScores(resized, emb, chromaValue);
    const score = Math.max(...Object.values(checks));
    const reason = Object.entries(checks).filter(([, v]) => v > 1)
      .map(([k, v]) => `${CHECK_WORDS[k]} (${k} ${v.toFixed(2)}x threshold)`).join("; ");
    return { score, reason };  // the verdict is the record's (runtime.js decide), on the rounded score
  }
}

// cam._interp_matrix: linear interpolation with half-pixel centres, edges clamped (align_corners=False)
function interp(nIn, nOut) {
  const m = new Float64Array(nOut * nIn);
  for (let o = 0; o < nOut; o++) {
    const src = Math.max((o + 0.5) * (nIn / nOut) - 0.5, 0);
    const i0 = Math.min(Math.floor(src), nIn - 1), i1 = Math.min(i0 + 1, nIn - 1), frac = src - i0;
    m[o * nIn + i0] += 1 - frac;
    m[o * nIn + i1] += frac;
  }
  return m;
}

// cam.upsample_bilinear for one (h, w) map -> (size, size) Float32Array
export function upsampleBilinear(raw, h, w, size) {
  const ry = interp(h, size), rx = interp(w, size);
  const rows = new Float64Array(size * w);  // ry @ raw
  for (let o = 0; o < size; o++) {
    for (let i = 0; i < h; i++) {
      const c = ry[o * h + i];
      if (c !== 0) for (let j = 0; j < w; j++) rows[o * w + j] += c * raw[i * w + j];
    }
  }
  const heat = new Float32Array(size * size);  // (ry @ raw) @ rx.T
  for (let o = 0; o < size; o++) {
    for (let p = 0; p < size; p++) {
      let v = 0;
      for (let j = 0; j < w; j++) v += rows[o * w + j] * rx[p * w + j];
      heat[o * size + p] = v;
    }
  }
  return heat;
}

// heatmap.GREY, heatmap.FLOOR: what hides a cell, and the evidence (logits) that maps to full brightness at least
export const OCCLUSION = { grid: 7, grey: 128, floor: 1.0 };

// heatmap.cell_edges: round(linspace(0, size, grid + 1)), numpy rounding halves to even
function cellEdges(size, grid) {
  return Array.from({ length: grid + 1 }, (_, i) => {
    const v = i * size / grid, r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  });
}

// heatmap.occlusion_drops' copies: the film with one grid cell set to grey, for each cell in row-major order
export function occludedCopies(resized, size, grid = OCCLUSION.grid, grey = OCCLUSION.grey) {
  const e = cellEdges(size, grid), out = new Uint8Array(grid * grid * size * size);
  for (let r = 0; r < grid; r++) {
    for (let c = 0; c < grid; c++) {
      const copy = out.subarray((r * grid + c) * size * size, (r * grid + c + 1) * size * size);
      copy.set(resized);
      for (let y = e[r]; y < e[r + 1]; y++) copy.fill(grey, y * size + e[c], y * size + e[c + 1]);
    }
  }
  return out;
}

// heatmap.occlusion + scale_evidence: ReLU(drop in the margin per cell), upsampled, / max(largest drop, FLOOR)
export function occlusionMap(base, margins, size, grid = OCCLUSION.grid, floor = OCCLUSION.floor) {
  const drops = Float32Array.from(margins, m => Math.max(base - m, 0));
  const heat = upsampleBilinear(drops, grid, grid, size);
  let top = 0;
  for (let i = 0; i < heat.length; i++) { heat[i] = Math.max(heat[i], 0); top = Math.max(top, heat[i]); }
  const scale = Math.max(top, floor);
  for (let i = 0; i < heat.length; i++) heat[i] /= scale;
  return heat;
}

// cam._JET (matplotlib's jet segment data) and cam.overlay_rgb: the map blended over the grey crop
const JET = {
  r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
};

function jetAt(points, x) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    if (x <= x1) return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
  }
  return points[points.length - 1][1];
}

const JET_LUT = Array.from({ length: 256 }, (_, i) => ["r", "g", "b"].map(c => jetAt(JET[c], i / 255)));

export function overlayRGBA(grey, heat, alpha) {
  const out = new Uint8ClampedArray(grey.length * 4);
  for (let i = 0; i < grey.length; i++) {
    const lut = JET_LUT[Math.min(255, Math.max(0, Math.trunc(heat[i] * 255)))];
    for (let c = 0; c < 3; c++) {
      const v = Math.min(1, Math.max(0, grey[i] * (1 - alpha) / 255 + alpha * lut[c]));
      out[4 * i + c] = Math.trunc(v * 255 + 0.5);
    }
    out[4 * i + 3] = 255;
  }
  return out;
}
