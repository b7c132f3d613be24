// DICOM in the browser, for the files whose decoding matches imaging._load_dicom exactly: one frame of a
// grey radiograph, uncompressed or JPEG baseline (the browser's own JPEG decoder), with at most a rescale
// (modality LUT as slope/intercept) and no VOI window. Anything else gets a reason that names the server
// mode. The header checks are imaging._check_dicom_header's. The parser is dicom-parser (npm, MIT,
// vendored in static/dicom/), a classic script loaded when the first DICOM arrives.

import { ImageError } from "./pixels.js";

const MAX_PIXELS = 64_000_000;  // imaging.MAX_PIXELS
const RADIOGRAPH_MODALITIES = ["CR", "DX", "DR", "RG", "OT", ""];  // imaging.RADIOGRAPH_MODALITIES
const CHEST_WORDS = ["CHEST", "THORAX", "TORAX", "LUNG"];  // imaging._CHEST_WORDS
const NOT_CHEST = new Set(("HEAD SKULL BRAIN FACE JAW TMJ SINUS ORBIT NECK SPINE CSPINE TSPINE LSPINE SSPINE "
  + "SACRUM COCCYX ABDOMEN PELVIS HIP SHOULDER CLAVICLE HUMERUS ARM ELBOW FOREARM WRIST HAND FINGER THUMB "
  + "LEG FEMUR KNEE TIBIA FIBULA ANKLE FOOT HEEL TOE BREAST EXTREMITY KIDNEY BLADDER").split(" "));  // imaging._NOT_CHEST
const NATIVE = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"];  // implicit / explicit VR little endian
const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
const SERVER = "needs the server mode";

export function isDicom(bytes, name) {
  return /\.(dcm|dicom)$/i.test(name) || (bytes.length > 132 && String.fromCharCode(...bytes.subarray(128, 132)) === "DICM");
}

function header(ds) {
  const str = tag => (ds.string(tag) ?? "").trim().toUpperCase();
  const modality = str("x00080060");
  if (!RADIOGRAPH_MODALITIES.includes(modality)) throw new ImageError(`DICOM modality ${modality} is not a chest radiograph`);
  const part = str("x00180015");
  const words = part.match(/[A-Z]+/g) ?? [];
  if (words.some(w => NOT_CHEST.has(w)) && !CHEST_WORDS.some(w => part.includes(w))) {
    throw new ImageError(`DICOM body part ${part} is not a chest radiograph`);
  }
  if (!ds.elements.x7fe00010) throw new ImageError("DICOM file has no pixel data");
  const frames = Number(ds.string("x00280008") || 1);
  if (frames > 1) throw new ImageError(`multi-frame image (${frames} frames): one frame per file is supported`);
  const rows = ds.uint16("x00280010") ?? 0, cols = ds.uint16("x00280011") ?? 0;
  const samples = ds.uint16("x00280002") ?? 1;
  if (rows * cols * samples > MAX_PIXELS) throw new ImageError(`image too large (${cols}x${rows} pixels, limit 64,000,000)`);
  return { rows, cols, samples, bits: ds.uint16("x00280101") ?? 8, signed: (ds.uint16("x00280103") ?? 0) === 1,
    allocated: ds.uint16("x00280100") ?? 8, photometric: str("x00280004") };
}

async function jpegFrame(ds, bytes, h) {
  const frame = ds.elements.x7fe00010.basicOffsetTable.length
    ? dicomParser.readEncapsulatedImageFrame(ds, ds.elements.x7fe00010, 0)
    : dicomParser.readEncapsulatedPixelDataFromFragments(ds, ds.elements.x7fe00010, 0, ds.elements.x7fe00010.fragments.length);
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([frame], { type: "image/jpeg" }), { colorSpaceConversion: "none" });
  } catch (e) {
    throw new ImageError("cannot decode DICOM pixel data (JPEG baseline frame)");
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const out = new Float64Array(bitmap.width * bitmap.height);
  for (let i = 0; i < out.length; i++) out[i] = rgba[4 * i];  // one grey component: R = G = B
  return { values: out, width: bitmap.width, height: bitmap.height };
}

function nativeFrame(ds, bytes, h) {
  const el = ds.elements.x7fe00010, n = h.rows * h.cols, out = new Float64Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset + el.dataOffset, el.length);
  if (el.length < n * h.allocated / 8) throw new ImageError("cannot decode DICOM pixel data (shorter than Rows x Columns)");
  for (let i = 0; i < n; i++) {
    let v = h.allocated === 8 ? view.getUint8(i) : view.getUint16(2 * i, true);
    v &= (2 ** h.bits) - 1;  // bits above BitsStored are not pixel data
    if (h.signed && v >= 2 ** (h.bits - 1)) v -= 2 ** h.bits;
    out[i] = v;
  }
  return { values: out, width: h.cols, height: h.rows };
}

const roundHalfEven = x => {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
};

// imaging._scale_to_uint8 (float32 arithmetic, numpy's round half to even; robust: the 0.5 / 99.5
// percentiles with numpy's linear interpolation)
function toUint8(values, robust) {
  const f = Math.fround, a = Float32Array.from(values);
  let lo = Infinity, hi = -Infinity;
  for (const v of a) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (robust && hi > lo) {
    const sorted = Float32Array.from(a).sort();
    const pct = q => {
      const at = q / 100 * (sorted.length - 1), i = Math.floor(at), frac = at - i;
      return i + 1 < sorted.length ? sorted[i] + frac * (sorted[i + 1] - sorted[i]) : sorted[i];
    };
    const pLo = pct(0.5), pHi = pct(99.5);
    if (pHi > pLo) { lo = pLo; hi = pHi; }
  }
  const out = new Uint8Array(a.length);
  if (hi <= lo) return out;
  const scale = f(255 / (hi - lo)), flo = f(lo);
  for (let i = 0; i < a.length; i++) out[i] = Math.min(255, Math.max(0, roundHalfEven(f(f(a[i] - flo) * scale))));
  return out;
}

// -> { grey: Uint8Array, width, height }, as imaging._load_dicom
let parserLoaded = null;

// Loaded with the model, so that a DICOM given after the network went away still decodes.
export function loadParser() {
  parserLoaded ??= new Promise((ok, fail) => {
    const script = document.createElement("script");
    script.src = new URL("../dicom/dicomParser.min.js", import.meta.url).href;
    script.onload = ok;
    script.onerror = () => fail(new ImageError(`DICOM ${SERVER} (the DICOM parser did not load)`));
    document.head.append(script);
  });
  return parserLoaded;
}

export async function decodeDicom(bytes) {
  await loadParser();
  let ds;
  try {
    ds = dicomParser.parseDicom(bytes);
  } catch (e) {
    throw new ImageError(`not a readable DICOM file (${e.exception || e.message || e})`);
  }
  const h = header(ds);
  const syntax = (ds.string("x00020010") ?? "").replace(/\0/g, "").trim();
  if (h.samples !== 1 || !h.photometric.startsWith("MONOCHROME")) throw new ImageError(`colour DICOM ${SERVER}`);
  if (ds.elements.x00283010 || ds.elements.x00281050) throw new ImageError(`DICOM with a VOI window or LUT ${SERVER}`);
  if (ds.elements.x00283000) throw new ImageError(`DICOM with a modality LUT sequence ${SERVER}`);
  let frame;
  if (syntax === JPEG_BASELINE) frame = await jpegFrame(ds, bytes, h);
  else if (NATIVE.includes(syntax)) frame = nativeFrame(ds, bytes, h);
  else throw new ImageError(`DICOM transfer syntax ${syntax || "(none)"} ${SERVER}`);
  const slope = ds.elements.x00281053 ? Number(ds.string("x00281053")) : null;
  if (slope !== null) {  // pydicom's apply_modality_lut: x * slope + intercept
    const intercept = Number(ds.string("x00281052") || 0);
    for (let i = 0; i < frame.values.length; i++) frame.values[i] = frame.values[i] * slope + intercept;
  }
  const grey = toUint8(frame.values, h.bits > 8);
  if (h.photometric === "MONOCHROME1") for (let i = 0; i < grey.length; i++) grey[i] = 255 - grey[i];
  if (Math.min(frame.width, frame.height) < 8) throw new ImageError(`image too small (${frame.width}x${frame.height} pixels)`);
  return { grey, width: frame.width, height: frame.height };
}
