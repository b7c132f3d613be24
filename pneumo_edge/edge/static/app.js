// pneumo-edge web page: plain JavaScript, no libraries; uploads only to this server, or classifies in the browser.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const queue = [];
let busy = false;
let model = null;
const TOKEN_KEY = "pneumo-edge-token";  // kept for this tab only (sessionStorage), sent only to this server

function text(el, value) { el.textContent = value; return el; }

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  text($("#signin-msg"), message);
  $("#signin").hidden = false;
  $("#token").focus();
}

function useToken() {
  const token = $("#token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token").value = "";
  $("#signin").hidden = true;
  loadModel();
}

async function loadModel() {
  if (location.protocol === "file:") {
    text($("#model"), "Open this page through a web server (for example `python3 -m http.server` in its folder): "
      + "browsers do not run the model from a file:// page.");
    return;
  }
  if (window.pneumoLocal && await window.pneumoLocal.isStatic) return;  // static files: no server to ask
  try {
    const r = await fetch("/v1/model", { headers: authHeaders() });
    if (r.status === 401) {
      askToken((await r.json()).error);
      text($("#model"), "This box needs an API token before it answers.");
      return;
    }
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    model = await r.json();
    const digest = model.weights_sha256 ? model.weights_sha256.slice(0, 12) : "not recorded";
    const thr = model.metadata && typeof model.metadata.threshold === "number"
      ? `, threshold ${model.metadata.threshold.toFixed(3)}` : "";
    text($("#model"), `Model ${model.file} (${model.model}, pneumo-edge ${model.version}${thr}, weights ${digest})`
      + (model.heatmaps ? "" : ". This model file has no heat maps.")
      + (model.guard ? "" : ". The out-of-distribution guard is off."));
    text($("#limit"), `${Math.round(model.limits.max_upload_bytes / 1048576)} MB`);
    if (!model.heatmaps) { $("#heat").checked = false; $("#heat").disabled = true; }
  } catch (e) {
    text($("#model"), `Cannot reach the model: ${e.message}`);
  }
}

function addFiles(files) {
  for (const file of files) {
    const card = $("#card").content.firstElementChild.cloneNode(true);
    text($(".name", card), file.name || "unnamed file");
    text($(".label", card), "Waiting…");
    card.classList.add("pending");
    $("#results").prepend(card);
    queue.push({ file, card });
  }
  status();
  next();
}

function status() {
  const n = $("#results").children.length;
  const waiting = queue.length + (busy ? 1 : 0);
  text($("#status"), n === 0 ? "No images yet."
    : `${n} image${n === 1 ? "" : "s"}` + (waiting ? `, ${waiting} still being analysed.` : ", all analysed."));
}

async function next() {
  if (busy || queue.length === 0) return;
  busy = true;
  const { file, card } = queue.shift();
  text($(".label", card), "Analysing…");
  const heat = $("#heat").checked, here = $("#local").checked;
  card.dataset.where = here ? "browser" : "server";
  if (here) await classifyHere(card, file, heat);
  else await upload(card, file, heat);
  card.classList.remove("pending");
  busy = false;
  status();
  next();
}

// static/local/ui.js: the model in this browser, nothing uploaded
async function classifyHere(card, file, heat) {
  try {
    const progress = (done, total) => text($(".label", card), `Drawing the heat map in this browser: ${done} of ${total} model runs…`);
    showResult(card, file, await window.pneumoLocal.classify(file, heat, progress));
  } catch (e) {
    showError(card, file, e.message);
  }
}

async function upload(card, file, heat) {
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const ask = () => fetch(`/v1/predict${heat ? "?heatmap=1" : ""}`, { method: "POST", body: form, headers: authHeaders() });
    let r = await ask();
    for (let tries = 0; r.status === 503 && tries < 5; tries++) {  // busy: wait as told, then retry
      const wait = Number(r.headers.get("Retry-After") || "1");
      text($(".label", card), `Server busy, retrying in ${wait} s…`);
      await new Promise(ok => setTimeout(ok, wait * 1000));
      r = await ask();
    }
    const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
    if (r.status === 401) askToken(body.error);
    if (!r.ok) showError(card, file, body.error || `${r.status} ${r.statusText}`);
    else showResult(card, file, body);
  } catch (e) {
    showError(card, file, `cannot reach the server (${e.message})`);
  }
}

function browserCanShow(file) {
  return /^image\/(jpeg|png|bmp|gif|webp)$/.test(file.type);
}

// What scripts and tests read from each result: the file's name, the label and the probability.
function tag(card, file, label, probability, verdict, score, ms, input) {
  card.dataset.file = file.name;
  card.dataset.label = label;
  card.dataset.probability = probability === null ? "" : String(probability);
  card.dataset.guard = verdict || "";
  card.dataset.guardScore = typeof score === "number" ? String(score) : "";
  card.dataset.ms = typeof ms === "number" ? String(ms) : "";
  if (input) card.dataset.inputSha256 = input;
}

function showError(card, file, message) {
  tag(card, file, "ERROR", null);
  const label = text($(".label", card), "Not analysed");
  label.className = "label error";
  text($(".prob", card), message).classList.add("error-text");
  $(".meter", card).hidden = true;
  if (browserCanShow(file)) setPicture(card, URL.createObjectURL(file), `The file ${file.name}`, "");
}

function setPicture(card, src, alt, caption) {
  const img = $(".picture", card);
  img.src = src;
  img.alt = alt;
  text($(".caption", card), caption);
}

function showResult(card, file, r) {
  tag(card, file, r.label, r.probability, r.guard_verdict, r.guard_score, r.latency_ms, r.input_sha256);
  const label = $(".label", card);
  const positive = r.decision.match(/^P\(([^)]+)\)/);
  const pname = positive ? positive[1].toLowerCase() : "positive";
  if (r.label === "REJECTED_OOD") {
    text(label, "No result: not a chest X-ray like the training images");
  } else {
    text(label, r.label === "PNEUMONIA" ? "PNEUMONIA likely" : r.label === "NORMAL" ? "NORMAL (no pneumonia found)" : r.label);
  }
  label.className = `label ${r.label}`;
  const pct = (100 * r.probability).toFixed(1);
  const thr = (100 * r.threshold).toFixed(1);
  const side = r.decision.includes("at or above") ? "at or above" : "below";
  text($(".prob", card), `Probability of ${pname}: ${pct}%, ${side} the threshold of ${thr}%`
    + (r.label === "REJECTED_OOD" ? ` (the model alone would have said ${r.model_label}; ignore it)` : "."));
  $(".meter .fill", card).style.width = `${Math.max(0, Math.min(100, 100 * r.probability))}%`;
  $(".meter .tick", card).style.left = `${Math.max(0, Math.min(100, 100 * r.threshold))}%`;
  const score = typeof r.guard_score === "number" ? ` (score ${r.guard_score.toFixed(2)}; above 1 means rejected)` : "";
  text($(".guard", card), `Guard: ${r.guard_verdict}: `
    + `${r.guard_explanation}${score}${r.guard_reason ? `; ${r.guard_reason}` : ""}.`);
  text($(".meta", card), `${r.model.file}, weights ${(r.model.weights_sha256 || "").slice(0, 12)}, `
    + `${r.latency_ms.toFixed(0)} ms ${r.where || "on the server"}`);
  if (r.heatmap) {
    setPicture(card, r.heatmap.url || `data:image/png;base64,${r.heatmap.png_base64}`,
      `Heat map of the evidence for ${r.heatmap.class} over the centre square of ${file.name}`,
      `Heat ${r.heatmap.meaning || `map: regions that pushed the model towards ${r.heatmap.class}`} (red strongest), `
        + "over the square the model saw.");
  } else if (browserCanShow(file)) {
    setPicture(card, URL.createObjectURL(file), `The X-ray ${file.name}`, "");
  }
}

function setup() {
  const drop = $("#drop");
  const input = $("#files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", e => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, e => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, e => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", e => addFiles(e.dataTransfer.files));
  // dropping a file anywhere else must not navigate away from the page
  window.addEventListener("dragover", e => e.preventDefault());
  window.addEventListener("drop", e => e.preventDefault());
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  $("#clear").addEventListener("click", () => {
    queue.length = 0;
    for (const img of document.querySelectorAll(".picture")) {
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    }
    const list = $("#results");
    for (const card of [...list.children]) if (!card.classList.contains("pending")) card.remove();
    status();
  });
  $("#token-use").addEventListener("click", useToken);
  $("#token").addEventListener("keydown", e => { if (e.key === "Enter") { e.preventDefault(); useToken(); } });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
