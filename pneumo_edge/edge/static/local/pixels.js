// Pixels in the browser, exactly as pneumo_edge/edge/imaging.py makes them in Python:
// decode (the browser's own JPEG/PNG/BMP decoders), grey levels by Pillow's integer luma,
// the centre crop, Pillow's bilinear resample (same coefficients, same fixed-point rounding and pass
// order as Pillow 13's libImaging/Resample.c),
// then (grey / 255 - mean) / std in float32.

const MIN_SIDE = 8;  // imaging.MIN_SIDE
const MAX_PIXELS = 64_000_000;  // imaging.MAX_PIXELS
const RESIZE_RULES = ["center-crop-bilinear", "squash-bilinear"];

export class ImageError extends Error {}

// What the first bytes say the file is (DICOM is told apart before, in dicom.js). Only the formats the
// browser decodes exactly as Pillow does are accepted here; the others get a reason that names the server mode.
export function sniff(bytes) {
  const b = bytes, s = (at, text) => [...text].every((c, i) => b[at + i] === c.charCodeAt(0));
  if (b.length === 0) throw new ImageError("empty file (0 bytes)");
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (s(0, "\x89PNG")) {
    // 16-bit grey PNGs are stretched by percentiles in Python; the browser would cut them to 8 bits
    if (b.length > 25 && b[24] === 16 && (b[25] === 0 || b[25] === 4)) {
      throw new ImageError("16-bit grey PNG needs the server mode (its grey levels are stretched there)");
    }
    return "PNG";
  }
  if (s(0, "BM")) return "BMP";
  if (s(0, "II*\0") || s(0, "MM\0*")) throw new ImageError("TIFF needs the server mode (browsers do not decode it)");
  const other = [[0, "GIF8", "GIF"], [8, "WEBP", "WebP"], [0, "%PDF", "PDF"], [0, "%!PS", "PostScript/EPS"],
    [4, "ftyp", "HEIF/AVIF"]].find(([at, magic]) => s(at, magic));
  if (other) throw new ImageError(`unsupported format (${other[2]}); supported: JPEG, PNG, BMP, TIFF, DICOM`);
  throw new ImageError("not an image (unrecognised format)");
}

// RGBA of the decoded file, EXIF orientation applied, no colour management (Pillow applies none),
// transparent pixels composited on black (as imaging._pil_to_gray does).
export async function decodeRGBA(bytes) {
  const format = sniff(bytes);
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: "none", premultiplyAlpha: "none",
      imageOrientation: "from-image" });
  } catch (e) {
    throw new ImageError(`corrupt or truncated image (${format}: the browser cannot decode it)`);
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) throw new ImageError(`image too large (${width}x${height} pixels, limit 64,000,000)`);
  if (Math.min(width, height) < MIN_SIDE) throw new ImageError(`image too small (${width}x${height} pixels)`);
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true, alpha: false });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { rgba: ctx.getImageData(0, 0, width, height).data, width, height };
}

// Pillow's convert("L"): ITU-R 601-2 luma in 16-bit fixed point (libImaging/Convert.c, L24).
// A grey film decoded to R = G = B keeps its exact levels.
export function toGray({ rgba, width, height }) {
  const grey = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < grey.length; i++, j += 4) {
    grey[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >> 16;
  }
  return grey;
}

// imaging.chroma: mean (max - min) over RGB on a small copy; 0 for any grey image. The copy is a
// plain block average to at most 64 px, where Pillow's thumbnail uses reduce + bicubic: only colour
// images can differ, and those score far above the colour check's threshold either way.
export function chroma({ rgba, width, height }) {
  const step = Math.max(1, Math.ceil(Math.max(width, height) / 64));
  let total = 0, n = 0;
  for (let y0 = 0; y0 < height; y0 += step) {
    for (let x0 = 0; x0 < width; x0 += step) {
      const sum = [0, 0, 0];
      let count = 0;
      for (let y = y0; y < Math.min(y0 + step, height); y++) {
        for (let x = x0; x < Math.min(x0 + step, width); x++) {
          const j = 4 * (y * width + x);
          sum[0] += rgba[j]; sum[1] += rgba[j + 1]; sum[2] += rgba[j + 2];
          count++;
        }
      }
      const c = sum.map(v => Math.round(v / count));
      total += Math.max(...c) - Math.min(...c);
      n++;
    }
  }
  return total / n / 255;
}

// imaging.input_box: (left, top, right, bottom) of the film region the model sees.
export function inputBox(width, height, rule) {
  if (rule === "center-crop-bilinear") {
    const side = Math.min(width, height);
    const left = Math.floor((width - side) / 2), top = Math.floor((height - side) / 2);
    return [left, top, left + side, top + side];
  }
  return [0, 0, width, height];
}

// ---------------------------------------------------------------- Pillow's resample (libImaging/Resample.c)

const PRECISION_BITS = 32 - 8 - 2;

function bilinearFilter(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

// precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input pixel, the count, and
// integer weights in 22-bit fixed point.
function coefficients(inSize, in0, in1, outSize) {
  const support0 = 1.0;  // bilinear
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = support0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const w = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) { w[x] = bilinearFilter((x + xmin - center + 0.5) * ss); ww += w[x]; }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

const clip8 = ss => Math.min(255, Math.max(0, ss >> PRECISION_BITS));

// One horizontal pass (ImagingResampleHorizontal_8bpc): `rows` rows of src from row `first`, to out.width columns.
function horizontal(src, srcW, first, rows, co, outW) {
  const out = new Uint8Array(outW * rows);
  for (let yy = 0; yy < rows; yy++) {
    const row = (yy + first) * srcW;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = co.bounds[2 * xx], n = co.bounds[2 * xx + 1], k = xx * co.ksize;
      let ss = 1 << (PRECISION_BITS - 1);
      for (let x = 0; x < n; x++) ss += src[row + xmin + x] * co.kk[k + x];
      out[yy * outW + xx] = clip8(ss);
    }
  }
  return out;
}

// One vertical pass (ImagingResampleVertical_8bpc); `offset`: the first source row the bounds count from.
function vertical(src, srcW, offset, co, outH) {
  const out = new Uint8Array(srcW * outH);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = co.bounds[2 * yy] - offset, n = co.bounds[2 * yy + 1], k = yy * co.ksize;
    for (let xx = 0; xx < srcW; xx++) {
      let ss = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < n; y++) ss += src[(y + ymin) * srcW + xx] * co.kk[k + y];
      out[yy * srcW + xx] = clip8(ss);
    }
  }
  return out;
}

// Image.resize((size, size), BILINEAR, box=box) on a grey image (ImagingResampleInner): two passes, each
// rounding to uint8. Pillow runs the horizontal one first (over only the rows the vertical one needs) unless
// the height shrinks by more than twice what the width does; the order changes the rounding, so it is kept.
export function resizeGray(grey, width, height, size, rule) {
  if (!RESIZE_RULES.includes(rule)) throw new Error(`unknown resize rule '${rule}'`);
  if (width === size && height === size) return grey;
  const box = inputBox(width, height, rule);
  const needH = size !== width || box[0] !== 0 || box[2] !== size;  // Pillow compares box[2] with the output size
  const needV = size !== height || box[1] !== 0 || box[3] !== size;
  const horizontalFirst = !(height - size > 0 && height - size > (width - size) * 2);
  const vert = coefficients(height, box[1], box[3], size), hor = coefficients(width, box[0], box[2], size);
  let img = grey, w = width;
  if (horizontalFirst) {
    let offset = 0;
    if (needH) {
      const first = vert.bounds[0], last = vert.bounds[2 * size - 2] + vert.bounds[2 * size - 1];
      img = horizontal(img, w, first, last - first, hor, size);
      w = size;
      offset = first;
    }
    if (needV) img = vertical(img, w, offset, vert, size);
  } else {
    if (needV) img = vertical(img, w, 0, vert, size);
    if (needH) img = horizontal(img, w, 0, size, hor, size);
  }
  return img;
}

// imaging.normalize: float32 arithmetic step by step, as numpy does it.
export function normalize(resized, mean, std) {
  const f = Math.fround, inv = f(1 / 255), m = f(mean), s = f(std);
  const x = new Float32Array(resized.length);
  for (let i = 0; i < x.length; i++) x[i] = f(f(f(resized[i] * inv) - m) / s);
  return x;
}
