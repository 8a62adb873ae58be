// The two ways to reach the gateway. Each open* function resolves once replies can flow, with
//   {kind, model, ended, close()}
// `ended` resolves with {reason, retryAfterMs} however the stream ends; every JSON reply goes to
// onReply(msg, latencyMs) and every frame that leaves the page is counted with onSent(n).

const MAX_SIDE = 640; // frames are scaled down so that their long side is at most this
const JPEG_QUALITY = 0.8;
const HELLO_TIMEOUT_MS = 5000;
// WebRTC that is not connected by then counts as failed (`?ice_timeout_ms=` for a slow machine)
const ICE_TIMEOUT_MS =
  Number(new URLSearchParams(location.search).get("ice_timeout_ms")) || 5000;
const LOST_AFTER_MS = 5000; // an unanswered frame this old no longer holds a sending slot

function seqsOf(msg) {
  if (Array.isArray(msg.seqs)) return msg.seqs;
  return msg.seq === undefined ? [] : [msg.seq];
}

// Call fn once per new camera frame: requestVideoFrameCallback fires at the camera's rate.
function eachFrame(video, fn) {
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(fn);
  else requestAnimationFrame(fn);
}

function helloOf(ws) {
  return new Promise((resolve, reject) => {
    const fail = (error) => {
      clearTimeout(timer);
      ws.close();
      reject(error);
    };
    const timer = setTimeout(() => fail(new Error("no hello from the gateway")), HELLO_TIMEOUT_MS);
    ws.onmessage = (e) => {
      clearTimeout(timer);
      resolve(JSON.parse(e.data));
    };
    ws.onclose = (e) => fail(new Error(`WebSocket closed (${e.code}) before hello`));
  });
}

// WebSocket: one JPEG per binary message, drawn from the <video> into a canvas. Credit flow
// control (docs/protocol.md, "Clients"): the page asks for credits and sends a frame only when
// the camera has a new one, fewer than the granted n are unanswered and the socket's buffer is
// empty; camera frames in between are never encoded. Latency is measured exactly: from ws.send() to the reply with that seq.
// A token rides as a second subprotocol: a browser cannot set headers on a WebSocket, and the
// gateway answers with "edge.v1", never echoing the token.
export async function openWebSocket({ video, model, token, onReply, onSent }) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/v1/stream?model=${encodeURIComponent(model)}`;
  const ws = new WebSocket(url, token ? ["edge.v1", `bearer.${token}`] : ["edge.v1"]);
  let finish;
  const ended = new Promise((resolve) => (finish = resolve));
  let reason = "connection closed";
  let retryAfterMs = 0;

  const hello = await helloOf(ws);
  if (hello.type !== "hello") {
    ws.close();
    throw new Error(hello.message || `expected hello, got ${hello.type}`);
  }

  ws.send(JSON.stringify({ type: "config", credits: true }));
  let credit = 0; // frames the gateway lets us have unanswered: none until it says
  const unanswered = new Map(); // seq -> performance.now() at send
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  let seq = 0;
  let encoding = false;
  let stopped = false;

  function onFrame() {
    if (stopped) return;
    eachFrame(video, onFrame);
    const now = performance.now();
    for (const [s, at] of unanswered) if (now - at > LOST_AFTER_MS) unanswered.delete(s);
    if (encoding || unanswered.size >= credit || ws.bufferedAmount > 0) return;
    if (ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const w = Math.round(video.videoWidth * scale);
    const h = Math.round(video.videoHeight * scale);
    if (canvas.width !== w || canvas.height !== h) [canvas.width, canvas.height] = [w, h];
    ctx.drawImage(video, 0, 0, w, h);
    encoding = true;
    canvas.toBlob(
      (blob) => {
        encoding = false;
        if (!blob || stopped || ws.readyState !== WebSocket.OPEN) return;
        ws.send(blob);
        unanswered.set(seq++, performance.now());
        onSent(1);
      },
      "image/jpeg",
      JPEG_QUALITY,
    );
  }

  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    const msg = JSON.parse(e.data);
    const now = performance.now();
    let latencyMs;
    for (const s of seqsOf(msg)) {
      if (msg.type === "result" && unanswered.has(s)) latencyMs = now - unanswered.get(s);
      unanswered.delete(s);
    }
    if (msg.type === "credit") credit = msg.n;
    if (msg.type === "error" && msg.seq === undefined && !credit) credit = 1; // no credits here
    if (msg.type === "goaway") {
      reason = "the gateway is going away";
      retryAfterMs = msg.retry_after_ms || 0;
    }
    onReply(msg, latencyMs);
  };
  ws.onclose = (e) => {
    stopped = true;
    finish({ reason: `${reason} (${e.code})`, retryAfterMs });
  };
  eachFrame(video, onFrame);

  return {
    kind: "websocket",
    model: hello.model,
    ended,
    close() {
      stopped = true;
      ws.close(1000);
      finish({ reason: "closed by the page", retryAfterMs: 0 });
    },
  };
}

function iceGathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

function channelOpen(pc, channel, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not connected within ${ms / 1000} s`)), ms);
    channel.addEventListener("open", () => {
      clearTimeout(timer);
      resolve();
    });
    pc.addEventListener("iceconnectionstatechange", () => {
      if (pc.iceConnectionState !== "failed") return;
      clearTimeout(timer);
      reject(new Error("ICE failed"));
    });
  });
}

// WebRTC: the camera track goes to the gateway as video, replies come back on the DataChannel
// "results" (created before the offer, so it is in the SDP).
//
// Latency is estimated, not measured: a reply's seq is the index of the frame the gateway
// decoded, and the page cannot tell which captured frame that was (the encoder and the network
// may skip frames), so requestVideoFrameCallback timestamps cannot be matched to replies.
// The estimate is: the gateway's timing.total_ms (arrival to result)
//   + one RTT (half up for the frame, half down for the reply: candidate-pair currentRoundTripTime)
//   + the average encode time per frame (outbound-rtp totalEncodeTime / framesEncoded),
// all from getStats() once a second. It leaves out the gateway's jitter buffer and decoder.
export async function openWebRTC({ stream, model, token, onReply, onSent }) {
  const pc = new RTCPeerConnection();
  const channel = pc.createDataChannel("results");
  for (const track of stream.getVideoTracks()) pc.addTrack(track, stream);
  let finish;
  const ended = new Promise((resolve) => (finish = resolve));
  let reason = "connection closed";
  let retryAfterMs = 0;
  let sample = { framesSent: 0, encodeS: 0, encoded: 0, rttMs: 0, encodeMs: 0 };
  let timer; // getStats poll
  let lost; // fires when "disconnected" lasts too long

  async function poll() {
    const next = { ...sample };
    (await pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        next.framesSent = s.framesSent || 0;
        next.encodeS = s.totalEncodeTime || 0;
        next.encoded = s.framesEncoded || 0;
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        if (s.currentRoundTripTime !== undefined) next.rttMs = s.currentRoundTripTime * 1000;
      }
    });
    const frames = next.encoded - sample.encoded;
    if (frames > 0) next.encodeMs = ((next.encodeS - sample.encodeS) * 1000) / frames;
    if (next.framesSent > sample.framesSent) onSent(next.framesSent - sample.framesSent);
    sample = next;
  }

  function stop(why) {
    clearInterval(timer);
    clearTimeout(lost);
    pc.close();
    finish({ reason: why, retryAfterMs });
  }

  channel.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "goaway") {
      reason = "the gateway is going away";
      retryAfterMs = msg.retry_after_ms || 0;
    }
    const estimate = msg.timing ? msg.timing.total_ms + sample.rttMs + sample.encodeMs : undefined;
    onReply(msg, msg.type === "result" ? estimate : undefined);
  };

  let answer;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, 2000); // the gateway takes the candidates in the offer, no trickle
    const offer = pc.localDescription;
    const response = await fetch("/v1/webrtc/offer", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify({ sdp: offer.sdp, type: offer.type, model }),
      signal: AbortSignal.timeout(10000),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`offer answered ${response.status} ${body.message || body.error || ""}`);
    }
    answer = await response.json();
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    await channelOpen(pc, channel, ICE_TIMEOUT_MS);
  } catch (error) {
    pc.close();
    throw error;
  }

  channel.onclose = () => stop(reason);
  pc.onconnectionstatechange = () => {
    const state = pc.connectionState;
    clearTimeout(lost);
    if (state === "failed" || state === "closed") stop(`connection ${state}`);
    // a gateway that vanished without a goodbye shows as "disconnected" until ICE gives up
    if (state === "disconnected") lost = setTimeout(() => stop("connection lost"), LOST_AFTER_MS);
  };
  timer = setInterval(() => poll().catch(() => {}), 1000);
  poll().catch(() => {});

  return {
    kind: "webrtc",
    model: answer.model || model,
    ended,
    close: () => stop("closed by the page"),
  };
}
