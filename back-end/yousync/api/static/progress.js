// The progress page: pick, drop or record audio; upload it with a byte-level bar; then follow the
// job over Server-Sent Events until it ends, and show the result or the error.
//
// Reconnects: EventSource reconnects by itself after a dropped connection (sending Last-Event-ID,
// so the server replays exactly what was missed). But a plain EventSource takes any non-200
// answer as final: the 503 + Retry-After the API sends while Redis is down (or a proxy's 502
// while the API restarts) fires one error, readyState becomes CLOSED, and it never tries again
// (Retry-After is ignored). The page then recovers by itself: it asks the result endpoint what
// happened — another 503 (Redis still down), any other error answer or a network error means
// "check again later", 404 means the job expired, a finished job is shown as such — and opens a
// new EventSource with ?last_event_id=… (so nothing is missed or repeated) once the job is
// readable again. Between checks it waits a base delay that doubles from 1 s up to
// MAX_RECONNECT_DELAY_MS, jittered per client uniformly in [base/2, 3·base/2] (as the server
// jitters its `retry:`), so the pages an outage cut off do not all come back in lockstep. The
// connection line says "reconnecting" the whole time.
"use strict";

const $ = (id) => document.getElementById(id);
// CONTRACT comes from /contract.js (the server's stage table and terminal statuses).
const TERMINAL = new Set(CONTRACT.terminalStatuses);
// The job's stream ends after these: terminal, or `deleted` (the job is gone).
const FINAL = new Set(CONTRACT.streamEndStatuses);
const RECENT_KEY = "yousync.recentJobs.v1";
const RECENT_MAX = 10;
const TOKEN_KEY = "yousync.token";
const API_KEY_KEY = "yousync.apiKey";
const MAX_RECONNECT_DELAY_MS = 10000;

const state = {
  file: null,
  job: null,
  source: null,
  lastEventId: null,
  finished: false,
  reconnectTimer: null,
  reconnectDelay: 1000,
  announced: null,
  lastStatus: null,
  recorder: null,
  recordTimer: null,
};

// --- formatting ------------------------------------------------------------------------------

function number(value, digits = 1) {
  return new Intl.NumberFormat(LANG, { maximumFractionDigits: digits }).format(value);
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${number(n / 1024)} KB`;
  return `${number(n / (1024 * 1024))} MB`;
}

function duration(seconds) {
  if (seconds < 60) return t("seconds", { n: number(seconds, seconds < 10 ? 1 : 0) });
  return t("minutes", { m: Math.floor(seconds / 60), s: Math.round(seconds % 60) });
}

function percent(ratio) {
  return `${number(ratio * 100, 1)}%`;
}

// --- API ---------------------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function jobUrl(path, extra = {}) {
  const url = new URL(path, location.href);
  if (state.job && state.job.stream_token) url.searchParams.set("token", state.job.stream_token);
  for (const [name, value] of Object.entries(extra)) url.searchParams.set(name, value);
  return url.toString();
}

async function postJson(path) {
  const response = await fetch(jobUrl(path), { method: "POST", headers: authHeaders() });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { response, body };
}

function problem(response, body) {
  if (body && body.detail) return `${response.status} ${body.code || ""}: ${body.detail}`.trim();
  return `${response.status} ${response.statusText}`;
}

// --- recent jobs (localStorage) ---------------------------------------------------------------

function loadRecent() {
  try {
    const list = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch (_) {
    return [];
  }
}

function saveRecent(list) {
  try {
    localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX)));
  } catch (_) {
    // Private mode or full storage: the list is a convenience, the page works without it.
  }
  renderRecent();
}

function rememberJob(job) {
  const list = loadRecent().filter((entry) => entry.job_id !== job.job_id);
  list.unshift(job);
  saveRecent(list);
}

function updateRecent(jobId, patch) {
  const list = loadRecent();
  const entry = list.find((item) => item.job_id === jobId);
  if (!entry) return;
  Object.assign(entry, patch);
  saveRecent(list);
}

function renderRecent() {
  const list = loadRecent();
  const ul = $("recent-list");
  ul.replaceChildren();
  for (const entry of list) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.job = entry.job_id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.name || entry.job_id.slice(0, 8);
    const when = document.createElement("time");
    when.className = "muted";
    when.dateTime = new Date(entry.created).toISOString();
    when.textContent = new Date(entry.created).toLocaleString(LANG);
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = entry.status ? t(`status.${entry.status}`) || entry.status : "";
    button.append(name, when, status);
    button.addEventListener("click", () => openJob(entry));
    li.append(button);
    ul.append(li);
  }
  $("recent-empty").hidden = list.length > 0;
  $("clear-recent").hidden = list.length === 0;
}

// --- choosing a file: picker, drop, microphone ------------------------------------------------

function choose(file, message) {
  state.file = file;
  $("form-error").hidden = true;
  $("chosen").textContent = message || t("chosen", { name: file.name, size: bytes(file.size) });
}

function setupChooser() {
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) choose(event.target.files[0]);
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
  });
  $("record").addEventListener("click", toggleRecording);
}

function recordingType() {
  const wanted = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus"];
  return wanted.find((type) => MediaRecorder.isTypeSupported(type)) || "";
}

async function toggleRecording() {
  const button = $("record");
  if (state.recorder && state.recorder.state === "recording") {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
    $("form-error").textContent = t("micUnavailable", { error: "MediaRecorder" });
    $("form-error").hidden = false;
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    $("form-error").textContent = t("micUnavailable", { error: error.message || error.name });
    $("form-error").hidden = false;
    return;
  }
  const type = recordingType();
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  const chunks = [];
  const started = performance.now();
  recorder.ondataavailable = (event) => {
    if (event.data && event.data.size) chunks.push(event.data);
  };
  recorder.onstop = () => {
    clearInterval(state.recordTimer);
    for (const track of stream.getTracks()) track.stop();
    const mime = (recorder.mimeType || type || "audio/webm").split(";")[0];
    const extension = mime.includes("ogg") ? "ogg" : "webm";
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    const file = new File(chunks, `recording-${stamp}.${extension}`, { type: mime });
    const seconds = (performance.now() - started) / 1000;
    choose(file, t("recorded", { time: duration(seconds), size: bytes(file.size) }));
    button.setAttribute("aria-pressed", "false");
    $("record-label").textContent = t("record");
    $("record-time").textContent = "";
  };
  state.recorder = recorder;
  recorder.start(250);
  button.setAttribute("aria-pressed", "true");
  $("record-label").textContent = t("stopRecording");
  state.recordTimer = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    $("record-time").textContent = t("recording", { time: duration(seconds) });
  }, 200);
}

// --- upload (XHR: fetch has no upload progress) -----------------------------------------------

function setupUpload() {
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    const error = $("form-error");
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(token)) {
      error.textContent = t("badToken");
      error.hidden = false;
      $("token").focus();
      return;
    }
    if (!state.file) {
      error.textContent = t("noFile");
      error.hidden = false;
      return;
    }
    error.hidden = true;
    try {
      localStorage.setItem(TOKEN_KEY, token);
      localStorage.setItem(API_KEY_KEY, $("api-key").value.trim());
    } catch (_) {
      // ignore
    }
    upload(token, state.file);
  });
}

function upload(token, file) {
  stopFollowing();
  resetJobView();
  const meter = $("upload-meter");
  const bar = $("upload-bar");
  const text = $("upload-text");
  meter.hidden = false;
  bar.value = 0;
  text.textContent = t("uploadSent", { sent: bytes(0), total: bytes(file.size) });
  $("upload").disabled = true;

  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/tokens/${encodeURIComponent(token)}/upload-audio`);
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.onprogress = (event) => {
    if (event.lengthComputable) {
      bar.value = Math.round((event.loaded / event.total) * 100);
      text.textContent = t("uploadSent", { sent: bytes(event.loaded), total: bytes(event.total) });
    } else {
      bar.removeAttribute("value"); // indeterminate
    }
  };
  xhr.onload = () => {
    $("upload").disabled = false;
    let answer = null;
    try {
      answer = JSON.parse(xhr.responseText);
    } catch (_) {
      answer = null;
    }
    if (xhr.status !== 202 || !answer) {
      const reason = answer && answer.detail ? `${xhr.status} ${answer.code}: ${answer.detail}` : `${xhr.status}`;
      text.textContent = t("uploadFailed", { error: reason });
      $("form-error").textContent = t("uploadFailed", { error: reason });
      $("form-error").hidden = false;
      return;
    }
    bar.value = 100;
    text.textContent = t("uploadDone", { total: bytes(file.size) });
    const job = {
      job_id: answer.job_id,
      token_id: token,
      name: file.name,
      created: Date.now(),
      status: answer.status,
      progress_url: answer.progress_url,
      result_url: answer.result_url,
      stream_token: answer.stream_token || null,
    };
    rememberJob(job);
    openJob(job, { keepUploadMeter: true });
  };
  xhr.onerror = () => {
    $("upload").disabled = false;
    text.textContent = t("uploadFailed", { error: t("networkError") });
    $("form-error").textContent = t("uploadFailed", { error: t("networkError") });
    $("form-error").hidden = false;
  };
  const body = new FormData();
  body.append("file", file, file.name);
  xhr.send(body);
}

// --- following a job ---------------------------------------------------------------------------

function resetJobView() {
  const section = $("job");
  section.dataset.status = "idle";
  $("job-bar").value = 0;
  $("job-bar").removeAttribute("aria-valuetext");
  $("job-percent").textContent = "0%";
  $("stage").textContent = "";
  $("eta").textContent = "";
  $("message").textContent = "";
  $("outcome").hidden = true;
  $("result").hidden = true;
  $("error").hidden = true;
  $("cancel").hidden = true;
  $("retry").hidden = true;
  $("action-error").hidden = true;
  $("upload-meter").hidden = true;
  setConnection("idle");
  state.announced = null;
  state.lastStatus = null;
}

function setConnection(kind) {
  const line = $("conn");
  line.dataset.state = kind;
  line.textContent = kind === "idle" ? "" : t(`conn.${kind}`);
}

function stopFollowing() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (state.source) {
    state.source.close();
    state.source = null;
  }
}

function openJob(job, options = {}) {
  stopFollowing();
  if (!options.keepUploadMeter) resetJobView();
  else {
    const meter = $("upload-meter");
    resetJobView();
    meter.hidden = false;
  }
  state.job = job;
  state.lastEventId = null;
  state.finished = false;
  state.reconnectDelay = 1000;
  $("job").dataset.status = job.status || "queued";
  if (location.hash !== `#job=${job.job_id}`) history.replaceState(null, "", `#job=${job.job_id}`);
  connect();
}

function connect() {
  stopFollowing();
  const extra = state.lastEventId ? { last_event_id: state.lastEventId } : {};
  const source = new EventSource(jobUrl(state.job.progress_url, extra));
  state.source = source;
  if (!state.lastEventId) setConnection("connecting");
  source.onopen = () => {
    if (source !== state.source) return;
    setConnection("live");
    state.reconnectDelay = 1000;
  };
  source.onmessage = (event) => {
    if (source !== state.source) return;
    if (event.lastEventId) state.lastEventId = event.lastEventId;
    let snapshot;
    try {
      snapshot = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    render(snapshot);
    if (FINAL.has(snapshot.status)) finish(snapshot);
  };
  source.onerror = () => {
    if (source !== state.source || state.finished) return;
    setConnection("reconnecting");
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (non-200 answer): find out ourselves, then resume.
      source.close();
      state.source = null;
      scheduleCheck();
    }
    // Otherwise readyState is CONNECTING: the browser retries with Last-Event-ID itself.
  };
}

// Uniform in [base/2, 3·base/2]: every client draws its own wait.
function jittered(base) {
  return base / 2 + Math.random() * base;
}

function scheduleCheck() {
  clearTimeout(state.reconnectTimer);
  setConnection("reconnecting");
  const delay = jittered(state.reconnectDelay);
  state.reconnectDelay = Math.min(state.reconnectDelay * 2, MAX_RECONNECT_DELAY_MS);
  state.reconnectTimer = setTimeout(checkAndResume, delay);
}

async function checkAndResume() {
  const job = state.job;
  let response;
  try {
    response = await fetch(jobUrl(job.result_url), { headers: authHeaders(), cache: "no-store" });
  } catch (_) {
    if (job === state.job) scheduleCheck();
    return;
  }
  if (job !== state.job) return;
  if (response.status === 404) {
    expired();
    return;
  }
  if (!response.ok) {
    // 503 (Redis still down, or the API at its stream limit), a proxy's 502 while the API
    // restarts, or anything else: the job may still be running, so look again later.
    scheduleCheck();
    return;
  }
  let snapshot;
  try {
    snapshot = await response.json();
  } catch (_) {
    if (job === state.job) scheduleCheck(); // cut off mid-body: look again later
    return;
  }
  if (job !== state.job) return;
  if (TERMINAL.has(snapshot.status)) {
    // Finished while we were away: the result endpoint has the final snapshot.
    render(snapshot);
    finish(snapshot);
  } else {
    connect(); // resumes after state.lastEventId, so nothing is missed or repeated
  }
}

function stageLabel(snapshot) {
  if (snapshot.status === "failed" || snapshot.status === "cancelled") return t(`status.${snapshot.status}`);
  return t(`stage.${snapshot.stage}`);
}

function render(snapshot) {
  const section = $("job");
  section.dataset.status = snapshot.status;
  const bar = $("job-bar");
  const progress = Math.max(0, Math.min(100, Number(snapshot.progress) || 0));
  const label = stageLabel(snapshot);
  bar.value = progress;
  bar.setAttribute("aria-valuetext", `${progress}% — ${label}`);
  $("job-percent").textContent = `${progress}%`;
  $("stage").textContent = label;
  const running = !FINAL.has(snapshot.status);
  $("eta").textContent =
    running && snapshot.eta_seconds !== null && snapshot.eta_seconds !== undefined
      ? t("eta", { time: duration(Math.max(0, Number(snapshot.eta_seconds))) })
      : "";
  $("message").textContent = running && snapshot.stalled ? `${snapshot.message} — ${t("stalled")}` : snapshot.message || "";
  $("cancel").hidden = !running;
  $("retry").hidden = !(snapshot.status === "failed" || snapshot.status === "cancelled");
  const key = `${snapshot.status}/${snapshot.stage}`;
  if (key !== state.announced) {
    state.announced = key;
    $("live").textContent = `${label} ${progress}%`;
  }
  if (snapshot.status !== state.lastStatus) {
    state.lastStatus = snapshot.status;
    updateRecent(snapshot.job_id, { status: snapshot.status });
  }
}

function finish(snapshot) {
  state.finished = true;
  stopFollowing();
  setConnection("done");
  $("outcome").hidden = false;
  if (snapshot.status === "completed") {
    renderResult(snapshot.result || {});
  } else {
    const error = snapshot.error;
    let text;
    if (snapshot.status === "cancelled") text = t("cancelledText");
    else if (error) text = `${error.message} (${error.code}) — ${error.retryable ? t("retryable") : t("notRetryable")}`;
    else text = snapshot.message || "";
    $("error-text").textContent = text;
    $("error").hidden = false;
  }
  $("live").textContent = t(`status.${snapshot.status}`);
}

function expired() {
  state.finished = true;
  stopFollowing();
  setConnection("done");
  $("job").dataset.status = "expired";
  $("outcome").hidden = false;
  $("error-text").textContent = t("expired");
  $("error").hidden = false;
  $("cancel").hidden = true;
  $("retry").hidden = true;
  updateRecent(state.job.job_id, { status: "expired" });
}

// --- the result ----------------------------------------------------------------------------------

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function addRow(list, key, value, className) {
  const dt = document.createElement("dt");
  dt.textContent = t(key);
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.field = key;
  if (className) dd.className = className;
  list.append(dt, dd);
}

function clientWarnings(result) {
  // Older analysis servers send no `quality`: derive the obvious ones here.
  const codes = [];
  if (isNumber(result.clipping_ratio) && result.clipping_ratio > 0.01) codes.push("clipped");
  if (isNumber(result.loudness_dbfs) && result.loudness_dbfs < -40) codes.push("too_quiet");
  if (isNumber(result.silence_ratio) && result.silence_ratio > 0.8) codes.push("mostly_silence");
  return codes.map((code) => ({ code, message: "" }));
}

function renderResult(result) {
  const list = $("result-list");
  list.replaceChildren();
  const sync = result.sync || null;
  const score = sync && isNumber(sync.sync_score) ? sync.sync_score : result.sync_score;
  if (isNumber(score)) addRow(list, "r.sync", `${number(score, 0)} / 100`, "score");
  if (sync && isNumber(sync.offset_ms)) {
    const ms = Math.round(sync.offset_ms);
    const side = ms === 0 ? "" : ` (${ms > 0 ? t("late") : t("early")})`;
    addRow(list, "r.offset", `${ms > 0 ? "+" : ""}${ms} ms${side}`);
  }
  if (isNumber(result.duration_ms)) addRow(list, "r.duration", duration(result.duration_ms / 1000));
  const loudness = [];
  if (isNumber(result.loudness_lufs)) loudness.push(`${number(result.loudness_lufs)} LUFS`);
  if (isNumber(result.loudness_dbfs)) loudness.push(`${number(result.loudness_dbfs)} dBFS`);
  if (loudness.length) addRow(list, "r.loudness", loudness.join(" · "));
  if (isNumber(result.peak_dbfs)) addRow(list, "r.peak", `${number(result.peak_dbfs)} dBFS`);
  if (isNumber(result.pitch_hz)) {
    let pitch = `${number(result.pitch_hz, 0)} Hz`;
    if (isNumber(result.pitch_low_hz) && isNumber(result.pitch_high_hz)) {
      pitch += ` (${number(result.pitch_low_hz, 0)}–${number(result.pitch_high_hz, 0)} Hz)`;
    }
    addRow(list, "r.pitch", pitch);
  }
  if (isNumber(result.silence_ratio)) addRow(list, "r.silence", percent(result.silence_ratio));
  if (isNumber(result.clipping_ratio)) addRow(list, "r.clipping", percent(result.clipping_ratio));
  if (Array.isArray(result.voiced_segments)) addRow(list, "r.voiced", String(result.voiced_segments.length));
  if (result.stored && result.stored.format) {
    addRow(list, "r.stored", `${result.stored.format.toUpperCase()}, ${bytes(result.stored.bytes || 0)}`);
  }

  const warnings = $("warnings");
  warnings.replaceChildren();
  const found = result.quality && Array.isArray(result.quality.warnings) ? result.quality.warnings : clientWarnings(result);
  for (const warning of found) {
    const li = document.createElement("li");
    li.className = "warn";
    li.dataset.code = warning.code;
    const known = t(`w.${warning.code}`);
    li.textContent = known !== `w.${warning.code}` ? known : warning.message || warning.code;
    warnings.append(li);
  }
  if (!found.length) {
    const li = document.createElement("li");
    li.className = "ok";
    li.textContent = t("noWarnings");
    warnings.append(li);
  }
  $("raw").textContent = JSON.stringify(result, null, 2);
  $("result").hidden = false;
}

// --- cancel and retry ------------------------------------------------------------------------

function setupActions() {
  $("cancel").addEventListener("click", async () => {
    if (!state.job) return;
    $("action-error").hidden = true;
    $("cancel").disabled = true;
    try {
      const { response, body } = await postJson(`/tokens/analysis-cancel/${state.job.job_id}`);
      // 409: it finished first; the stream brings the final state either way.
      if (!response.ok && response.status !== 409) throw new Error(problem(response, body));
    } catch (error) {
      $("action-error").textContent = t("cancelFailed", { error: error.message });
      $("action-error").hidden = false;
    } finally {
      $("cancel").disabled = false;
    }
  });
  $("retry").addEventListener("click", async () => {
    if (!state.job) return;
    $("action-error").hidden = true;
    $("retry").disabled = true;
    try {
      const { response, body } = await postJson(`/tokens/analysis-retry/${state.job.job_id}`);
      if (!response.ok) throw new Error(problem(response, body));
      // Same job, new run: resume the stream after the last event we saw.
      state.finished = false;
      $("outcome").hidden = true;
      $("result").hidden = true;
      $("error").hidden = true;
      if (body && body.status) render(body);
      connect();
    } catch (error) {
      $("action-error").textContent = t("retryFailed", { error: error.message });
      $("action-error").hidden = false;
    } finally {
      $("retry").disabled = false;
    }
  });
  $("clear-recent").addEventListener("click", () => saveRecent([]));
}

// --- start ---------------------------------------------------------------------------------------

function jobFromHash() {
  const match = /^#job=([0-9a-f-]{36})$/.exec(location.hash);
  if (!match) return null;
  const id = match[1];
  return (
    loadRecent().find((entry) => entry.job_id === id) || {
      job_id: id,
      progress_url: `/tokens/analysis-progress/${id}`,
      result_url: `/tokens/analysis-result/${id}`,
    }
  );
}

function start() {
  applyLabels();
  try {
    $("token").value = localStorage.getItem(TOKEN_KEY) || $("token").value;
    $("api-key").value = localStorage.getItem(API_KEY_KEY) || "";
  } catch (_) {
    // ignore
  }
  setupChooser();
  setupUpload();
  setupActions();
  renderRecent();
  const job = jobFromHash();
  if (job) openJob(job);
}

start();
