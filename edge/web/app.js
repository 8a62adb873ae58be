// The dashboard: camera in, one stream to the gateway, detections drawn over the video, live
// figures. Reconnects by itself with exponential backoff; WebRTC that cannot connect falls back
// to WebSocket. Tests read the figures from the elements' data-value and window.edgeLast.

import { openWebRTC, openWebSocket } from "./transports.js";

const $ = (id) => document.getElementById(id);
const video = $("video");
const overlay = $("overlay");

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STALE_BOXES_MS = 1000; // boxes with no newer result for this long are cleared
const STEADY_MS = 5000;
const TOKEN_KEY = "edge-token"; // sessionStorage: kept for this tab only, never in the URL
// A tracked detection's colour, picked by its track_id, the same on every frame; the same list
// as the gateway's (edge/inference/tracking.py, TRACK_COLOURS), which `edge stream --annotate`
// and the WebRTC return track draw with.
const TRACK_COLOURS = "#e6194b #f58231 #ffe119 #bfef45 #42d4f4 #4363d8 #911eb4 #f032e6".split(" ");

// Events per second over a sliding window.
function rate(windowMs = 2000) {
  const events = []; // [time, count]
  return {
    add(n, now = performance.now()) {
      events.push([now, n]);
    },
    perSecond(now = performance.now()) {
      while (events.length && events[0][0] < now - windowMs) events.shift();
      return (events.reduce((sum, [, n]) => sum + n, 0) * 1000) / windowMs;
    },
  };
}

// The last `size` values and their percentiles (nearest rank).
function samples(size = 200) {
  const values = [];
  return {
    add(v) {
      values.push(v);
      if (values.length > size) values.shift();
    },
    percentile(p) {
      if (!values.length) return NaN;
      const sorted = [...values].sort((a, b) => a - b);
      return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
    },
  };
}

const figures = { sent: rate(), results: rate(), latency: samples(), dropped: 0, errors: 0 };
let camera = null; // MediaStream
let session = null; // what transports.js open* returned
let generation = 0; // bumped to stop the running connect loop
let fellBack = false; // WebRTC failed to connect: WebSocket until the person picks again
let lastResultAt = 0;

function setState(state, text = state) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function setNotice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function show(id, value, text) {
  $(id).dataset.value = Number.isFinite(value) ? String(Math.round(value * 10) / 10) : "";
  $(id).textContent = text;
}

function render() {
  const ms = (v) => (Number.isFinite(v) ? `${v.toFixed(0)} ms` : "–");
  const sent = figures.sent.perSecond();
  const results = figures.results.perSecond();
  show("stat-sent", sent, sent.toFixed(1));
  show("stat-results", results, results.toFixed(1));
  show("stat-latency-p50", figures.latency.percentile(50), ms(figures.latency.percentile(50)));
  show("stat-latency-p95", figures.latency.percentile(95), ms(figures.latency.percentile(95)));
  show("stat-dropped", figures.dropped, String(figures.dropped));
  show("stat-errors", figures.errors, String(figures.errors));
  if (lastResultAt && performance.now() - lastResultAt > STALE_BOXES_MS) {
    lastResultAt = 0;
    draw(null);
  }
}

// The token for /v1/ (docs/security.md); the page itself holds no data and needs none.
function token() {
  return $("token-input").value.trim();
}

async function loadModels() {
  const select = $("model-select");
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch("/v1/models", { headers });
  if (response.status === 401) throw new Error("the gateway needs a token: enter it above");
  if (!response.ok) throw new Error(`/v1/models answered ${response.status}`);
  const { models } = await response.json();
  const wanted = select.value || new URLSearchParams(location.search).get("model");
  const names = new Map();
  for (const m of models) if (m.serving || !names.has(m.name)) names.set(m.name, m);
  select.replaceChildren(
    ...[...names.values()].map((m) => {
      const option = new Option(`${m.name}@${m.version}`, m.name);
      option.title = m.task;
      return option;
    }),
  );
  const fallback = names.has("blazeface") ? "blazeface" : select.options[0]?.value;
  select.value = names.has(wanted) ? wanted : fallback;
}

async function startCamera() {
  if (!navigator.mediaDevices) {
    throw new Error("the camera needs HTTPS or localhost (serve with --tls-cert and --tls-key)");
  }
  setNotice("");
  for (const track of camera?.getTracks() ?? []) track.stop();
  camera = await navigator.mediaDevices.getUserMedia({
    audio: false,
    video: {
      facingMode: $("facing-select").value,
      width: { ideal: 640 },
      height: { ideal: 480 },
    },
  });
  video.srcObject = camera;
  await video.play();
}

// Where the frame's pixels land in the <video> element (object-fit: contain letterboxes it).
function displayed(frameWidth, frameHeight) {
  const w = video.clientWidth;
  const h = video.clientHeight;
  const scale = Math.min(w / frameWidth, h / frameHeight);
  const x0 = (w - frameWidth * scale) / 2;
  const y0 = (h - frameHeight * scale) / 2;
  return { w, h, map: ([x, y]) => [x0 + x * scale, y0 + y * scale] };
}

function draw(msg) {
  const dpr = window.devicePixelRatio || 1;
  const ctx = overlay.getContext("2d");
  const w = Math.round(overlay.clientWidth * dpr);
  const h = Math.round(overlay.clientHeight * dpr);
  if (overlay.width !== w || overlay.height !== h) [overlay.width, overlay.height] = [w, h];
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, overlay.clientWidth, overlay.clientHeight);
  overlay.dataset.boxes = "[]"; // what is drawn, in CSS pixels of the overlay, for tests
  overlay.dataset.colours = overlay.dataset.labels = overlay.dataset.texts = "[]";
  if (!msg) return;
  const { map } = displayed(msg.width, msg.height);
  const [boxes, colours, labels, texts] = [[], [], [], []];
  ctx.lineWidth = 3;
  ctx.font = "600 14px system-ui, sans-serif";
  for (const d of msg.detections ?? []) {
    const [x1, y1] = map(d.box.slice(0, 2));
    const [x2, y2] = map(d.box.slice(2, 4));
    boxes.push([x1, y1, x2, y2].map(Math.round));
    colours.push(colourOf(d));
    ctx.strokeStyle = ctx.fillStyle = colours.at(-1);
    if (d.polygon) {
      ctx.beginPath();
      d.polygon.map(map).forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.stroke();
    } else {
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    }
    for (const [x, y] of (d.keypoints ?? []).map(map)) ctx.fillRect(x - 2, y - 2, 4, 4);
    const track = d.track_id == null ? "" : ` #${d.track_id}`;
    labels.push(`${d.label}${track} ${d.score.toFixed(2)}`);
    label(ctx, labels.at(-1), x1, Math.max(18, y1 - 3));
    // what a reading model read, under its box; [x, y] of its plate's top left, for tests
    if (d.text) {
      texts.push([d.text, Math.round(x1), Math.round(y2 + 3)]);
      label(ctx, d.text, x1, y2 + 20);
    }
  }
  ctx.fillStyle = "#58a6ff";
  (msg.classes ?? []).forEach((c, i) => {
    label(ctx, `${c.label} ${c.score.toFixed(2)}`, 8, 26 + 20 * i);
  });
  overlay.dataset.boxes = JSON.stringify(boxes);
  overlay.dataset.colours = JSON.stringify(colours);
  overlay.dataset.labels = JSON.stringify(labels);
  overlay.dataset.texts = JSON.stringify(texts);
}

// A tracked detection in its track's colour (a stable hash of the ID: neighbouring IDs, the
// tracks most often in view together, differ); others in the colour of their kind.
function colourOf(d) {
  if (d.track_id == null) return d.label === "face" ? "#3fb950" : "#58a6ff";
  return TRACK_COLOURS[Math.abs(d.track_id) % TRACK_COLOURS.length];
}

// Text on a dark plate so it reads over any picture; (x, y) is its bottom left corner.
function label(ctx, text, x, y) {
  const colour = ctx.fillStyle;
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(x - 1, y - 17, ctx.measureText(text).width + 8, 18);
  ctx.fillStyle = colour;
  ctx.fillText(text, x + 3, y - 4);
}

function onReply(msg, latencyMs) {
  if (msg.type === "result") {
    const now = performance.now();
    figures.results.add(1, now);
    if (Number.isFinite(latencyMs)) figures.latency.add(latencyMs);
    lastResultAt = now;
    window.edgeLast = msg;
    $("model").textContent = msg.model;
    draw(msg);
  } else if (msg.type === "dropped") {
    figures.dropped += msg.seqs ? msg.seqs.length : 1;
  } else if (msg.type === "error") {
    figures.errors += 1;
  }
  if (msg.type !== "dropped") $("last").textContent = JSON.stringify(msg, null, 1);
}

function onSent(n) {
  figures.sent.add(n);
}

async function connect() {
  await loadModels(); // every time: the gateway may have been restarted with other models
  const model = $("model-select").value;
  const options = { video, stream: camera, model, token: token(), onReply, onSent };
  if ($("transport-select").value !== "webrtc" || fellBack) return openWebSocket(options);
  try {
    return await openWebRTC(options);
  } catch (error) {
    // If WebSocket fails too, the gateway is away: back off and try WebRTC again next time.
    const ws = await openWebSocket(options);
    fellBack = true;
    setNotice(`WebRTC could not connect (${error.message}); fell back to WebSocket.`);
    return ws;
  }
}

function backoff(attempt) {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ms * (0.8 + 0.4 * Math.random());
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The connect loop: one stream at a time; after it ends, or fails to open, wait and go again.
// The backoff doubles on each failure and starts over once a stream has stayed up STEADY_MS.
async function run(gen) {
  let attempt = 0;
  while (gen === generation) {
    let why;
    let retryAfterMs = 0;
    setState(attempt ? "reconnecting" : "connecting");
    try {
      const s = await connect();
      if (gen !== generation) return s.close();
      session = s;
      $("transport").textContent = fellBack ? "websocket (fallback)" : s.kind;
      $("transport").dataset.fallback = String(fellBack);
      $("model").textContent = s.model;
      $("latency-method").textContent =
        s.kind === "webrtc"
          ? "Latency estimated: gateway time + RTT + encode time (getStats)."
          : "Latency measured: frame sent → its result.";
      setState("open", `open · ${s.kind}`);
      const openedAt = performance.now();
      const end = await s.ended;
      if (session === s) session = null;
      if (performance.now() - openedAt > STEADY_MS) attempt = 0;
      [why, retryAfterMs] = [end.reason, end.retryAfterMs];
    } catch (error) {
      why = error.message;
    }
    if (gen !== generation) return;
    const wait = Math.max(retryAfterMs, backoff(attempt++));
    draw(null);
    setState("reconnecting", `${why}; retrying in ${(wait / 1000).toFixed(1)} s`);
    await sleep(wait);
  }
}

function restart() {
  generation += 1;
  session?.close();
  session = null;
  $("toggle").textContent = "Stop";
  run(generation);
}

function stop() {
  generation += 1;
  session?.close();
  session = null;
  draw(null);
  $("toggle").textContent = "Start";
  setState("closed", "stopped");
}

async function main() {
  const params = new URLSearchParams(location.search);
  for (const key of ["transport", "facing"]) {
    const select = $(`${key}-select`);
    if (params.has(key)) select.value = params.get(key);
  }
  $("transport-select").onchange = () => {
    fellBack = false;
    setNotice("");
    restart();
  };
  $("model-select").onchange = restart;
  $("token-input").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
  $("token-input").onchange = () => {
    sessionStorage.setItem(TOKEN_KEY, token());
    restart();
  };
  $("facing-select").onchange = () => startCamera().then(restart, cameraFailed);
  $("toggle").onclick = () => ($("toggle").textContent === "Stop" ? stop() : start());
  setInterval(render, 500);
  // The models first: the list is filled whether or not a camera comes.
  await loadModels().catch((error) => setNotice(error.message));
  start();
}

// Start streaming, asking for the camera first unless it is already live.
function start() {
  const live = camera?.getVideoTracks().some((t) => t.readyState === "live");
  return live ? restart() : startCamera().then(restart, cameraFailed);
}

// No camera, no stream: say how to get one; the button offers Start again.
function cameraFailed(error) {
  const how = {
    NotAllowedError:
      "Camera access is blocked. Allow it for this site (the camera icon in the address bar, " +
      "or the browser's site settings), then press Start.",
    NotFoundError: "No camera found. Connect one, then press Start.",
    NotReadableError: "The camera is in use by another program. Close it, then press Start.",
    OverconstrainedError: "This camera cannot be used; pick the other one above.",
  };
  setNotice(how[error.name] ?? `The camera cannot start: ${error.message}.`);
  setState("error", "no camera");
  $("toggle").textContent = "Start";
}

main();
