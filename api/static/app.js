// xmodal search page: the search box, files, drag and drop, the microphone button and the results.
// Plain browser JavaScript modules: no build step, no libraries, nothing fetched from other sites
// (the server's Content-Security-Policy allows only this origin's scripts). The pieces with a seam
// of their own live beside this file: api.js talks to the service, results.js draws result cards
// (everything the server names reaches the DOM as text there), preview.js shows the query,
// record.js records the microphone and encodes WAV.

import { callApi, currentApiKey, saveApiKey } from "/static/api.js";
import { encodeWav, MAX_RECORD_SECONDS, mixToMono, startRecording } from "/static/record.js";
import { QueryPreview } from "/static/preview.js";
import { createResult } from "/static/results.js";

const IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff"];
const AUDIO_EXTENSIONS = ["wav", "wave", "flac", "ogg", "oga", "mp3"];

const $ = (id) => document.getElementById(id);
const ui = {
  info: $("info"),
  auth: $("auth"),
  authTitle: $("auth-title"),
  authForm: $("auth-form"),
  apiKey: $("api-key"),
  form: $("search-form"),
  query: $("query"),
  target: $("target"),
  k: $("k"),
  fileInput: $("file-input"),
  record: $("record"),
  recordLabel: document.querySelector("#record .record-label"),
  recordTimer: $("record-timer"),
  preview: $("query-preview"),
  status: $("status"),
  results: $("results"),
  decision: $("decision"),
  generated: $("generated"),
  generatedImage: $("generated-image"),
  generatedCaption: $("generated-caption"),
  dropOverlay: $("drop-overlay"),
};

const preview = new QueryPreview(ui.preview);
const state = {
  limits: { max_k: 1000, max_query_chars: 2000, max_upload_bytes: 0, max_audio_seconds: 0 },
  lastRequest: null,      // re-run after an API key is saved
  searchNumber: 0,        // only the newest search may paint results
  controller: null,
  recording: null,        // "starting" while the browser asks for the microphone, then {recording, timer}
};

// ---- Searching ----------------------------------------------------------------------------

function readK() {
  const value = Number.parseInt(ui.k.value, 10);
  const k = Number.isFinite(value) ? Math.min(Math.max(value, 1), state.limits.max_k || 1000) : 12;
  ui.k.value = String(k);
  return k;
}

// A request is {path, json} or {path, makeForm}: forms are rebuilt for a retry.
async function runSearch(request, { focusFirst = false } = {}) {
  state.lastRequest = request;
  const number = ++state.searchNumber;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  setStatus("searching…");
  ui.results.setAttribute("aria-busy", "true");
  try {
    const data = await callApi(request.path, {
      json: request.json,
      form: request.makeForm ? request.makeForm() : undefined,
      signal: controller.signal,
    });
    if (number !== state.searchNumber) return;
    state.lastRequest = null;
    renderResults(data);
    if (focusFirst) {
      const first = ui.results.querySelector(".result .open");
      if (first) first.focus({ preventScroll: true });
      preview.reveal();
    }
  } catch (error) {
    if (error.name === "AbortError" || number !== state.searchNumber) return;
    ui.results.replaceChildren();
    setStatus(error.message, true);
    if (error.status === 401) showAuth(unauthorizedTitle());
  } finally {
    if (number === state.searchNumber) ui.results.removeAttribute("aria-busy");
  }
}

function searchText() {
  const query = ui.query.value.trim();
  if (!query) {
    setStatus("Type something to search for, or search with a picture or a sound.", true);
    ui.query.focus();
    return;
  }
  preview.hide();
  const modality = ui.target.value;
  rememberInUrl(query, modality);
  runSearch({ path: "/search/text", json: { query, k: readK(), modality } });
}

function searchFile(file, label) {
  const kind = kindOfFile(file);
  if (!kind) {
    setStatus(`“${file.name}” is not a picture or a sound: choose an image, or a WAV, FLAC, OGG or MP3 file.`, true);
    return;
  }
  const limit = state.limits.max_upload_bytes;
  if (limit && file.size > limit) {
    setStatus(`“${file.name}” is ${formatBytes(file.size)}; this server takes files up to ${formatBytes(limit)}.`, true);
    return;
  }
  preview.showFile(file, kind, label);
  const k = readK();
  const modality = ui.target.value;
  runSearch({
    path: `/search/${kind}`,
    makeForm: () => {
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("k", String(k));
      form.append("modality", modality);
      return form;
    },
  });
}

function searchLikeItem(item) {
  preview.showItem(item);
  runSearch({ path: "/search/item", json: { id: item.id, k: readK(), modality: ui.target.value } },
    { focusFirst: true });
}

/** "image", "audio" or null, from the MIME type, else from the file name's extension. */
function kindOfFile(file) {
  const type = (file.type || "").toLowerCase();
  if (type.startsWith("image/")) return "image";
  if (type.startsWith("audio/") || type === "application/ogg" || type === "video/ogg") return "audio";
  const dot = file.name.lastIndexOf(".");
  const extension = dot >= 0 ? file.name.slice(dot + 1).toLowerCase() : "";
  if (IMAGE_EXTENSIONS.includes(extension)) return "image";
  if (AUDIO_EXTENSIONS.includes(extension)) return "audio";
  return null;
}

function rememberInUrl(query, modality) {
  const params = new URLSearchParams({ q: query });
  if (modality !== "all") params.set("in", modality);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

// ---- Status and results -------------------------------------------------------------------

function setStatus(message, isError = false) {
  ui.status.textContent = message;
  ui.status.classList.toggle("error", isError);
  if (ui.decision) ui.decision.hidden = true;  // a verdict belongs to the results it came with
  if (ui.generated) ui.generated.hidden = true;
}

function renderResults(data) {
  const results = Array.isArray(data.results) ? data.results.filter((item) => item && typeof item === "object") : [];
  ui.results.replaceChildren(...results.map((item) => createResult(item, searchLikeItem)));
  if (!results.length) {
    setStatus("nothing found");
    return;
  }
  const took = Number(data.took_ms);
  const time = Number.isFinite(took) ? ` in ${took < 10 ? took.toFixed(1) : Math.round(took)} ms` : "";
  setStatus(`${results.length} ${results.length === 1 ? "result" : "results"}${time}`);
  showDecision(data.decision);
  showGenerated(data.generated);
}

// A picture drawn because nothing matched: always labelled, never mistaken for a result.
function showGenerated(generated) {
  const url = generated && typeof generated.url === "string" && generated.url.startsWith("/generated/")
    ? generated.url : null;
  ui.generated.hidden = !url;
  if (!url) return;
  const score = Number(generated.score);
  ui.generatedImage.src = url;
  ui.generatedImage.alt = `A picture generated for “${String(generated.query_value ?? "")}”`;
  ui.generatedCaption.textContent = `Not from your collection: drawn for this query` +
    (Number.isFinite(score) ? ` (similarity ${score.toFixed(2)})` : "") + ".";
}

// The calibrated verdict: does the collection hold what was asked? Absent when the model has no
// calibration. The nearest items are listed either way.
function showDecision(decision) {
  const judged = decision && typeof decision === "object" && typeof decision.match === "boolean";
  ui.decision.hidden = !judged;
  if (!judged) return;
  const confidence = Number(decision.confidence);
  const percent = Number.isFinite(confidence) ? `${Math.round(confidence * 100)}%` : "unknown";
  ui.decision.textContent = decision.match
    ? `Match (confidence ${percent}).`
    : `No good match in this collection (confidence ${percent}): the nearest items are shown below.`;
  ui.decision.classList.toggle("no-match", !decision.match);
}

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}

function formatClock(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

// ---- Recording button ---------------------------------------------------------------------

async function beginRecording() {
  state.recording = "starting";  // a second click while the browser asks for the microphone waits
  let recording;
  try {
    recording = await startRecording();
  } catch (error) {
    state.recording = null;
    setStatus(error.message, true);
    return;
  }
  const timer = setInterval(() => {
    ui.recordTimer.textContent = formatClock(recording.seconds);
    if (recording.seconds >= MAX_RECORD_SECONDS) endRecording();
  }, 200);
  state.recording = { recording, timer };
  ui.record.setAttribute("aria-pressed", "true");
  ui.recordLabel.textContent = "Stop";
  ui.recordTimer.textContent = formatClock(0);
  setStatus(`recording… press Stop when done (at most ${MAX_RECORD_SECONDS} s)`);
  // Settles however the recording ends: Stop, the time limit, or a microphone that went away
  // (then the button still says Stop, hence the endRecording here).
  const isCurrent = () => state.recording && state.recording.recording === recording;
  recording.file.then(
    (file) => {
      if (isCurrent()) endRecording();
      searchFile(file, "Searching with your recording");
    },
    (error) => {
      if (isCurrent()) endRecording();
      setStatus(error.message, true);
    },
  );
}

/** Stop the running recording; its file arrives through the handlers set in beginRecording. */
function endRecording() {
  const current = state.recording;
  if (!current || current === "starting") return;
  state.recording = null;
  clearInterval(current.timer);
  current.recording.stop();
  ui.record.setAttribute("aria-pressed", "false");
  ui.recordLabel.textContent = "Record";
  setStatus("preparing the recording…");
}

// ---- API key ------------------------------------------------------------------------------

function unauthorizedTitle() {
  return currentApiKey() ? "That API key was not accepted" : "This server needs an API key";
}

function showAuth(title, { focus = true } = {}) {
  ui.authTitle.textContent = title;
  ui.auth.hidden = false;
  if (currentApiKey() && !ui.apiKey.value) ui.apiKey.value = currentApiKey();
  if (focus) ui.apiKey.focus();
}

function saveKey(event) {
  event.preventDefault();
  const key = ui.apiKey.value.trim();
  if (!key) return;
  try {
    saveApiKey(key);
  } catch (error) {
    setStatus(error.message, true);
    ui.apiKey.focus();
    return;
  }
  ui.authTitle.textContent = "API key saved";
  setStatus("API key saved.");
  loadInfo();
  if (state.lastRequest) runSearch(state.lastRequest);
  else if (ui.query.value.trim()) searchText();
}

// ---- Start-up -----------------------------------------------------------------------------

/** Fetch /info for counts and limits; false when the server cannot be used yet. */
async function loadInfo() {
  let info;
  try {
    info = await callApi("/info");
  } catch (error) {
    if (error.status === 401) {
      // On load nothing else on the page works without the key, so the cursor goes there.
      showAuth(unauthorizedTitle());
      setStatus("Enter the API key to search.", true);
    } else {
      setStatus(error.message, true);
    }
    return false;
  }
  if (info.limits) Object.assign(state.limits, info.limits);
  ui.k.max = String(state.limits.max_k || 1000);
  if (state.limits.max_query_chars) ui.query.maxLength = state.limits.max_query_chars;
  if (info.auth && ui.auth.hidden) showAuth("This server uses an API key", { focus: false });
  const items = info.items || {};
  const parts = [];
  if (Number.isFinite(items.image)) parts.push(`${items.image.toLocaleString()} images`);
  if (Number.isFinite(items.audio)) parts.push(`${items.audio.toLocaleString()} sounds`);
  if (info.model) parts.push(`model ${info.model}`);
  ui.info.textContent = parts.join(" · ");
  ui.info.hidden = !parts.length;
  return true;
}

function hasFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
}

function wireDragAndDrop() {
  let depth = 0;  // dragenter/dragleave fire for every child element crossed
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    ui.dropOverlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) ui.dropOverlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    ui.dropOverlay.hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) searchFile(file, "");
  });
}

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function start() {
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchText();
  });
  ui.fileInput.addEventListener("change", () => {
    const file = ui.fileInput.files && ui.fileInput.files[0];
    if (file) searchFile(file, "");
    ui.fileInput.value = "";  // choosing the same file again should search again
  });
  ui.record.addEventListener("click", () => (state.recording ? endRecording() : beginRecording()));
  ui.authForm.addEventListener("submit", saveKey);
  wireDragAndDrop();
  // Pasting a copied picture searches with it, unless the user is typing somewhere.
  window.addEventListener("paste", (event) => {
    if (isTyping(event.target)) return;
    const file = event.clipboardData && event.clipboardData.files[0];
    if (file) searchFile(file, "Searching with the pasted file");
  });
  // "/" jumps to the search box, as on many search sites.
  window.addEventListener("keydown", (event) => {
    if (event.key === "/" && !event.ctrlKey && !event.metaKey && !event.altKey && !isTyping(event.target)) {
      event.preventDefault();
      ui.query.focus();
    }
  });
  // One sound at a time.
  document.addEventListener("play", (event) => {
    for (const audio of document.querySelectorAll("audio")) if (audio !== event.target) audio.pause();
  }, true);

  const params = new URLSearchParams(location.search);
  if (["image", "audio", "all"].includes(params.get("in"))) ui.target.value = params.get("in");
  const query = params.get("q");
  if (query) ui.query.value = query;
  loadInfo().then((ready) => {
    if (query && ready) searchText();
  });
}

// Stable hooks for tests and for anyone scripting the page.
window.xmodalPage = Object.freeze({ encodeWav, kindOfFile, mixToMono });

start();
