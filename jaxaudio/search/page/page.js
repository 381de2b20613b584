// The search page: choose, drop or record a query, pick the part to use, see the model's
// labels for it and the ranked matches, hear each match from its matched window.
// No framework and no external asset: it must work offline, served by the same process.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const withToken = (url) => (token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url);

let query = null;        // {blob, name} (a file or a recording) or {id, name} (an indexed file)
let queryPeaks = null;   // {seconds, peaks} of the query, for its waveform
let selection = null;    // [start, end] seconds chosen on the query waveform
let searchSeq = 0;       // answers to an older search are dropped

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders, ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---- waveforms -------------------------------------------------------------------------

function drawPeaks(canvas, peaks, seconds, span) {
  // Bars of the peak envelope; those inside `span` (the matched window, or the selected part
  // of the query) in orange over a tinted band, the rest in blue.
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const x0 = span && seconds > 0 ? (span[0] / seconds) * w : -1;
  const x1 = span && seconds > 0 ? (span[1] / seconds) * w : -1;
  if (span) {
    ctx.fillStyle = "rgba(255, 170, 0, 0.25)";
    ctx.fillRect(x0, 0, Math.max(2, x1 - x0), h);
  }
  const bar = w / peaks.length;
  peaks.forEach((p, i) => {
    const y = Math.max(1, p * (h / 2 - 2));
    const mid = (i + 0.5) * bar;
    ctx.fillStyle = span && mid >= x0 && mid <= x1 ? "#d9480f" : "#1f6feb";
    ctx.fillRect(i * bar, h / 2 - y, Math.max(1, bar - 0.5), 2 * y);
  });
}

function peaksOf(buffer, bins) {
  const data = buffer.getChannelData(0);
  const step = Math.max(1, Math.floor(data.length / bins));
  const peaks = [];
  for (let i = 0; i < bins; i++) {
    let m = 0;
    for (let j = i * step; j < Math.min(data.length, (i + 1) * step); j++) m = Math.max(m, Math.abs(data[j]));
    peaks.push(m);
  }
  const top = Math.max(...peaks) || 1;
  return { seconds: buffer.duration, peaks: peaks.map((p) => p / top) };
}

async function decodeInBrowser(blob) {
  const ctx = new (window.AudioContext || window.webkitAudioContext)();
  try {
    return await ctx.decodeAudioData(await blob.arrayBuffer());
  } finally {
    ctx.close();
  }
}

function wavBlob(buffer) {
  // 16-bit PCM WAV of the first channel: recordings go to the server in a format it reads.
  return wavOf(buffer.getChannelData(0), buffer.sampleRate);
}

function wavOf(data, rate) {
  const out = new DataView(new ArrayBuffer(44 + data.length * 2));
  const text = (o, s) => [...s].forEach((c, i) => out.setUint8(o + i, c.charCodeAt(0)));
  text(0, "RIFF"); out.setUint32(4, 36 + data.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, rate, true); out.setUint32(28, rate * 2, true); out.setUint16(32, 2, true);
  out.setUint16(34, 16, true); text(36, "data"); out.setUint32(40, data.length * 2, true);
  data.forEach((v, i) => out.setInt16(44 + i * 2, Math.max(-1, Math.min(1, v)) * 0x7fff, true));
  return new Blob([out], { type: "audio/wav" });
}

function redrawQuery() {
  if (queryPeaks) drawPeaks($("query-wave"), queryPeaks.peaks, queryPeaks.seconds, selection);
}

function setSelection(start, end) {
  selection = start === null ? null : [Math.min(start, end), Math.max(start, end)];
  $("start").value = selection ? selection[0].toFixed(2) : "";
  $("end").value = selection ? selection[1].toFixed(2) : "";
  redrawQuery();
}

// ---- choosing the query ----------------------------------------------------------------

async function useBlob(blob, name) {
  query = { blob, name };
  queryPeaks = null;
  $("query-view").hidden = false;
  $("query-name").textContent = name;
  $("query-audio").src = URL.createObjectURL(blob);
  setSelection(null);
  try {
    const buffer = await decodeInBrowser(blob);
    queryPeaks = peaksOf(buffer, 300);
    $("query-seconds").textContent = `${buffer.duration.toFixed(2)} s`;
    redrawQuery();
  } catch (err) {
    $("query-seconds").textContent = "(this browser cannot draw it; the server may still decode it)";
    const ctx = $("query-wave").getContext("2d");
    ctx.clearRect(0, 0, $("query-wave").width, $("query-wave").height);
  }
  search();
}

async function useIndexed(result) {
  query = { id: result.id, name: result.name };
  $("query-view").hidden = false;
  $("query-name").textContent = `${result.name} (from the index)`;
  $("query-audio").src = withToken(result.audio_url);
  queryPeaks = await api(`/api/waveform/${result.id}?bins=300`).catch(() => null);
  $("query-seconds").textContent = queryPeaks ? `${queryPeaks.seconds.toFixed(2)} s` : "";
  setSelection(result.offset, result.end);
  search();
}

$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (f) useBlob(f, f.name);
});
$("drop").addEventListener("click", () => $("file").click());
$("drop").addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
});
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) useBlob(f, f.name);
});

// While recording: every half second the last window of audio goes to /api/classify and the
// model's labels for it show under the button (one request in flight; a slow server skips).
let recorder = null, liveBusy = false, windowSeconds = 1.0;
async function classifyLive(chunks) {
  if (liveBusy || !chunks.length) return;
  liveBusy = true;
  try {
    const buffer = await decodeInBrowser(new Blob(chunks, { type: chunks[0].type }));
    const data = buffer.getChannelData(0);
    const tail = data.subarray(Math.max(0, data.length - Math.round(windowSeconds * buffer.sampleRate)));
    const form = new FormData();
    form.append("audio", wavOf(tail, buffer.sampleRate), "live.wav");
    form.append("top_k", "3");
    const answer = await api("/api/classify", { method: "POST", body: form });
    if (recorder) {
      $("live-labels").textContent = "live: " + answer.top_k.map(
          (t) => `${t.label} ${(100 * t.probability).toFixed(0)}%`).join(" · ");
    }
  } catch (err) {
    // a partial recording the browser cannot decode yet: the next half second will do
  } finally {
    liveBusy = false;
  }
}

$("record").addEventListener("click", async () => {
  if (recorder) { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => { chunks.push(e.data); if (recorder) classifyLive(chunks); };
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      $("record").textContent = "● Record";
      $("record").setAttribute("aria-pressed", "false");
      try {
        const buffer = await decodeInBrowser(new Blob(chunks, { type: chunks[0]?.type }));
        useBlob(wavBlob(buffer), "recording.wav");
      } catch (err) {
        setStatus(`the recording could not be decoded (${err.message})`, true);
      }
    };
    recorder.start(500);
    $("live-labels").textContent = "live: listening…";
    $("record").textContent = "■ Stop";
    $("record").setAttribute("aria-pressed", "true");
  } catch (err) {
    setStatus(`no microphone: ${err.message}`, true);
  }
});

// Drag on the query waveform to select the part to search with.
let dragFrom = null;
const timeAt = (e) => {
  const r = $("query-wave").getBoundingClientRect();
  return Math.max(0, Math.min(1, (e.clientX - r.left) / r.width)) * (queryPeaks ? queryPeaks.seconds : 0);
};
$("query-wave").addEventListener("mousedown", (e) => { if (queryPeaks) { dragFrom = timeAt(e); setSelection(dragFrom, dragFrom); } });
$("query-wave").addEventListener("mousemove", (e) => { if (dragFrom !== null) setSelection(dragFrom, timeAt(e)); });
window.addEventListener("mouseup", () => {
  if (dragFrom === null) return;
  dragFrom = null;
  if (selection && selection[1] - selection[0] < 0.05) setSelection(null);
  search();
});
["start", "end"].forEach((id) => $(id).addEventListener("change", () => {
  const s = parseFloat($("start").value), e = parseFloat($("end").value);
  selection = Number.isFinite(s) && Number.isFinite(e) && e > s ? [s, e] : null;
  redrawQuery();
}));
$("search").addEventListener("click", () => search());

// ---- searching -------------------------------------------------------------------------

function queryForm() {
  const form = new FormData();
  if (query.blob) form.append("audio", query.blob, query.name);
  else form.append("id", query.id);
  const s = parseFloat($("start").value), e = parseFloat($("end").value);
  if (Number.isFinite(s)) form.append("start", s);
  if (Number.isFinite(e)) form.append("end", e);
  return form;
}

async function search() {
  if (!query) return;
  const seq = ++searchSeq;
  setStatus("searching…");
  const form = queryForm();
  form.append("k", $("k").value || "10");
  form.append("per_file", $("per-file").checked ? "true" : "false");
  const labelForm = queryForm();
  const started = performance.now();
  try {
    const [answer, labels] = await Promise.all([
      api("/api/query", { method: "POST", body: form }),
      api("/api/classify", { method: "POST", body: labelForm }).catch(() => null),
    ]);
    if (seq !== searchSeq) return;
    showLabels(labels);
    showResults(answer);
    setStatus(`${answer.results.length} results for ${answer.windows} query windows in ${Math.round(performance.now() - started)} ms`);
  } catch (err) {
    if (seq === searchSeq) setStatus(err.message, true);
  }
}

function showLabels(labels) {
  const box = $("labels");
  box.textContent = "";
  if (!labels) return;
  const title = document.createElement("span");
  title.textContent = "model's labels: ";
  box.append(title);
  for (const item of labels.top_k || []) {
    const chip = document.createElement("span");
    chip.className = "label-chip";
    chip.textContent = `${item.label} ${item.probability.toFixed(2)}`;
    box.append(chip);
  }
}

function showResults(answer) {
  const list = $("results");
  list.textContent = "";
  current = null;
  answer.results.forEach((r, i) => {
    const li = document.createElement("li");
    li.dataset.name = r.name;
    li.dataset.offset = r.offset;
    li.innerHTML = `<span class="rank">${i + 1}</span>
      <div class="meta"><span class="name"></span><span class="score"></span><span class="muted at"></span></div>
      <canvas class="thumb" width="600" height="48" role="img"></canvas>
      <div class="actions"><button type="button" class="play"></button>
        <audio preload="metadata" controls></audio>
        <button type="button" class="again">Search with this</button></div>`;
    li.querySelector(".name").textContent = r.name;
    li.querySelector(".name").title = r.file || r.name;   // the path only with --show_paths
    li.querySelector(".score").textContent = r.score === undefined ? "" : `score ${r.score.toFixed(3)}`;
    li.querySelector(".at").textContent = `match ${r.offset.toFixed(2)}–${r.end.toFixed(2)} s`;
    const canvas = li.querySelector("canvas");
    canvas.setAttribute("aria-label", `waveform of ${r.name}, matched ${r.offset.toFixed(2)} to ${r.end.toFixed(2)} s highlighted`);
    const audio = li.querySelector("audio");
    audio.src = withToken(r.audio_url);
    // The player starts at the matched window.
    audio.addEventListener("loadedmetadata", () => { if (audio.currentTime < r.offset) audio.currentTime = r.offset; }, { once: true });
    const play = li.querySelector(".play");
    play.textContent = `▶ Play from ${r.offset.toFixed(2)} s`;
    play.addEventListener("click", () => {
      document.querySelectorAll("#results audio").forEach((a) => { if (a !== audio) a.pause(); });
      audio.currentTime = r.offset;
      audio.play().catch((err) => setStatus(`cannot play ${r.name}: ${err.message}`, true));
    });
    li.querySelector(".again").addEventListener("click", () => useIndexed(r));
    addVerdictButtons(li, r, audio);
    list.append(li);
    api(`/api/waveform/${r.id}?bins=200`).then((env) => drawPeaks(canvas, env.peaks, env.seconds, [r.offset, r.end])).catch(() => {});
  });
}

// ---- labelling: verdicts on results, learn, rank, review, detections -------------------

let current = null;      // {li, r, audio}: the result the y / n keys label
const className = () => $("class").value.trim();

function addVerdictButtons(li, r, audio) {
  const box = document.createElement("div");
  box.className = "verdict";
  const yes = document.createElement("button"), no = document.createElement("button");
  yes.type = no.type = "button";
  yes.className = "yes";
  no.className = "no";
  const words = () => { const c = className() || "class"; yes.textContent = `✓ yes, ${c}`; no.textContent = `✗ not ${c}`; };
  words();
  $("class").addEventListener("input", words);
  yes.addEventListener("click", () => verdict({ li, r, audio }, true));
  no.addEventListener("click", () => verdict({ li, r, audio }, false));
  const mark = () => { current = { li, r, audio }; };
  audio.addEventListener("play", mark);
  li.addEventListener("focusin", mark);
  li.tabIndex = -1;
  box.append(yes, no);
  li.querySelector(".actions").append(box);
}

async function verdict(item, positive) {
  const label = className();
  if (!label) { setStatus("type a class name in the class box first", true); $("class").focus(); return; }
  try {
    await api("/api/labels", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: item.r.id, start: item.r.offset, end: item.r.end, label, positive }),
    });
    item.li.dataset.verdict = positive ? "yes" : "no";
    item.li.classList.toggle("labelled-yes", positive);
    item.li.classList.toggle("labelled-no", !positive);
    setStatus(`${positive ? "yes" : "not"} ${label}: ${item.r.name} ${item.r.offset.toFixed(2)}–${item.r.end.toFixed(2)} s`);
    refreshCounts();
  } catch (err) {
    setStatus(err.message, true);
  }
}

function playNext() {
  const items = [...document.querySelectorAll("#results li")];
  const at = current ? items.indexOf(current.li) : -1;
  const next = items[at + 1];
  if (!next) return;
  next.focus();
  const audio = next.querySelector("audio");
  audio.currentTime = parseFloat(next.dataset.offset) || 0;
  audio.play().catch(() => {});
}

document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  if ((e.key === "y" || e.key === "n") && current) {
    e.preventDefault();
    const item = current;
    verdict(item, e.key === "y").then(() => { current = item; playNext(); });
  }
});

async function refreshCounts() {
  try {
    const { counts } = await api("/api/labels?limit=0");   // the counts alone
    const names = Object.keys(counts);
    $("class-names").textContent = "";
    names.forEach((n) => { const o = document.createElement("option"); o.value = n; $("class-names").append(o); });
    $("counts").textContent = names.length
      ? "labels so far: " + names.map((n) => `${n} ${counts[n].positive} yes / ${counts[n].negative} no`).join(" · ")
      : "no labels yet";
  } catch (err) {
    $("counts").textContent = err.message;
  }
}

function drawHistogram(hist, threshold) {
  const canvas = $("histogram"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, n = hist.counts.length;
  const top = Math.log1p(Math.max(...hist.counts)) || 1;
  ctx.clearRect(0, 0, w, h);
  hist.counts.forEach((c, i) => {
    const y = (Math.log1p(c) / top) * (h - 14);
    ctx.fillStyle = hist.edges[i] >= threshold ? "#d9480f" : "#1f6feb";
    ctx.fillRect((i / n) * w + 1, h - 12 - y, w / n - 2, y);
  });
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(threshold * w, 0, 2, h - 12);
  ctx.font = "11px system-ui";
  ctx.fillText("0", 2, h - 1);
  ctx.fillText("score 1", w - 44, h - 1);
  ctx.fillText(`threshold ${threshold.toFixed(2)}`, Math.min(threshold * w + 4, w - 90), 11);
}

async function learnClass() {
  const label = className();
  if (!label) { setStatus("type a class name in the class box first", true); return; }
  setStatus(`learning ${label}…`);
  try {
    const answer = await api("/api/learn", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ labels: [label] }),
    });
    const c = answer.classes[label];
    const pr = c.precision_at_threshold === null ? "not estimated (label more windows, yes and no)"
      : `precision ${c.precision_at_threshold.toFixed(2)}, recall ${c.recall_at_threshold.toFixed(2)} on the labels`;
    $("learned").hidden = false;
    $("learned-text").textContent = `${label}: threshold ${c.threshold.toFixed(3)} (${c.threshold_from}); ${pr}; ${c.above_threshold} of ${c.archive_windows} windows above it.`;
    drawHistogram(c.histogram, c.threshold);
    $("detections").href = withToken(`/api/detect?label=${encodeURIComponent(label)}`);
    await rank("top");
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function rank(strategy) {
  const label = className();
  if (!label) { setStatus("type a class name in the class box first", true); return; }
  const seq = ++searchSeq;
  try {
    const answer = await api(`/api/rank?label=${encodeURIComponent(label)}&k=${$("k").value || 10}&strategy=${strategy}`);
    if (seq !== searchSeq) return;
    showResults(answer);
    setStatus(`${answer.results.length} windows to label next (${strategy === "top" ? "the classifier's best" : "the least certain"}) for ${label}`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function showCollection() {
  const seq = ++searchSeq;   // a search started meanwhile wins: its answer is the newer one
  try {
    const c = await api(`/api/collection?sample=${$("k").value || 10}&seed=${Math.floor(Math.random() * 1e6)}`);
    if (seq !== searchSeq) return;
    showResults({ results: c.sample });
    setStatus(`${c.files} files, ${c.hours.toFixed(1)} h, ${c.windows} windows: a random sample of ${c.sample.length} to listen to`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

$("learn").addEventListener("click", learnClass);
$("rank-top").addEventListener("click", () => rank("top"));
$("rank-margin").addEventListener("click", () => rank("margin"));
$("collection").addEventListener("click", showCollection);
$("detections").addEventListener("click", (e) => {
  if (!className()) { e.preventDefault(); setStatus("type a class name and learn it first", true); return; }
  $("detections").href = withToken(`/api/detect?label=${encodeURIComponent(className())}`);
});

// ---- start -----------------------------------------------------------------------------

refreshCounts();
showCollection();   // opened without a query: the collection itself, to start from

api("/api/index").then((info) => {
  windowSeconds = info.window_seconds;
  $("index-info").textContent = `${info.model} · ${info.files} files · ${info.windows} windows of ${info.window_seconds.toFixed(2)} s · ${info.classes.length} classes` +
    (info.ann_recall_at_10 !== null ? ` · approximate search recall@10 ${info.ann_recall_at_10.toFixed(3)}` : "");
}).catch((err) => { $("index-info").textContent = err.message; });
