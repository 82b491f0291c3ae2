// Parley page: socket.io signalling, the WebRTC connection, and the controls around them.
//
// Invariant: nothing but hello is sent until the server's welcome for this connection has
// arrived, and nothing is queued while disconnected (a stale talk_start must never reach the
// next connection). window.parley.pc is always the page's current RTCPeerConnection.

import { appendDelta, isStreaming, onStreamingChange, renderHistory, setMetrics, setState, upsertMessage } from "./chat.js";
import { buildPeerConnection, canShareScreen, currentVideoTrack, ensureMedia, local, pickScreen, remoteAudioLevel } from "./media.js";
import { notify, setStatus } from "./notices.js";
import { setupTalk } from "./talk.js";

const SESSION_KEY = "parley.session";
const SESSION_PROOF_KEY = "parley.sessionKey"; // the server's proof that this browser holds its session
const TOKEN_KEY = "parley.token"; // the invitation, from the link's #token=...
const VISION_KEY = "parley.vision";
const HANDS_FREE_KEY = "parley.handsFree";
const TURN_LABELS = { listening: "Listening", hearing: "Hearing you", thinking: "Thinking…", speaking: "Speaking" };
const HINTS = {
  ptt: "Hold <kbd>Space</kbd> to talk · release to send",
  handsFree: "Hands-free: just talk, Parley answers when you pause · talk over it to interrupt",
};
const REJECTED_RETRY_MS = 10_000;
const DISCONNECTED_GRACE_MS = 3000;
const SPEAKING_LEVEL = 0.01;
const SPEAKING_HANGOVER_MS = 500;
// The local model's name and its score on Parley's spoken-assistant quiz come from the server.
const localModelBanner = (llm) =>
  `Running the embedded ${llm.model || "local model"}` +
  (llm.quality ? ` (${llm.quality})` : "") +
  ": fine for trying Parley, poor as an assistant. See the README to point Parley at a real model.";

const $ = (id) => document.getElementById(id);
const ui = {
  audio: $("audio"), video: $("video"), share: $("share"), vision: $("vision"), talk: $("talk"),
  stop: $("stop"), form: $("text-form"), input: $("text-input"), banner: $("banner"), model: $("model"),
  rejected: $("rejected"), speaking: $("speaking"), send: $("send"), handsFree: $("hands-free"),
  turnState: $("turn-state"), hint: $("hint"),
};

const parley = (window.parley = { socket: null, pc: null, sessionId: load(SESSION_KEY) });

let welcomed = false;
let everConnected = false;
let rejected = false;
let iceServers = [];
let generation = 0; // bumps on every negotiation; a stale one stops at its next await
let awaitingAnswer = false;
let failures = 0;
let videoSender = null;
let videoLimits = { max_fps: 2, max_width: 640 }; // the server's, from its welcome
let sharing = false;
let speaking = false;
let lastLoud = 0;
let retryTimer = 0;
let renegotiateTimer = 0;
let disconnectedTimer = 0;

const talk = setupTalk(ui.talk, {
  canTalk: () => ready() && local.mic !== null,
  onStart: () => {
    unlockAudio();
    send("talk_start", {});
  },
  onEnd: () => send("talk_end", {}),
});

// ---- signalling ---------------------------------------------------------------------------

function connect() {
  if (typeof window.io !== "function") {
    setStatus("offline");
    notify("error", "Could not load the socket client (/vendor/socket.io.min.js). Is the Parley server running?");
    return;
  }
  // WebSocket only: a node may run several ingress processes on one port, and long-polling's
  // separate HTTP requests could reach different ones; one WebSocket is one process throughout.
  const socket = window.io({
    path: "/socket.io",
    transports: ["websocket"],
    auth: (send) => send({ token: load(TOKEN_KEY) }), // read on every (re)connection
  });
  parley.socket = socket;

  socket.on("connect", () => {
    everConnected = true;
    welcomed = false;
    clearTimeout(retryTimer);
    sayHello();
    refresh();
  });
  socket.on("disconnect", (reason) => {
    welcomed = false;
    awaitingAnswer = false;
    talk.cancel();
    // After a server-side disconnect socket.io does not reconnect by itself.
    if (reason === "io server disconnect") retryLater(rejected ? REJECTED_RETRY_MS : 2000);
    refresh();
  });
  socket.on("connect_error", (err) => {
    if (!socket.active) {
      // Refused by the server itself (no invitation, an expired one, too many connections): say why, where it stays.
      ui.rejected.textContent = `Parley can't let you in: ${err.message}`;
      ui.rejected.hidden = false;
      notify("error", `The server refused the connection: ${err.message}`);
      retryLater(REJECTED_RETRY_MS);
    }
    refresh();
  });

  socket.on("welcome", onWelcome);
  socket.on("rejected", onRejected);
  socket.on("answer", onAnswer);
  socket.on("message", upsertMessage);
  socket.on("delta", appendDelta);
  socket.on("state", setState);
  socket.on("metrics", setMetrics);
  socket.on("notice", (n) => notify(n.level, n.text));
  socket.on("turn", (t) => showTurnState(t.state));
  socket.on("recording", (r) => {
    talk.serverRecording(Boolean(r.active));
    if (r.reason) notify("info", r.reason);
  });
}

function sayHello() {
  parley.socket.emit("hello", {
    session_id: load(SESSION_KEY),
    session_key: load(SESSION_PROOF_KEY),
    vision: ui.vision.checked,
    hands_free: ui.handsFree.checked,
  });
}

/** What the conversation is doing now: listening, hearing you, thinking, speaking (idle: hidden). */
function showTurnState(state) {
  const label = TURN_LABELS[state];
  ui.turnState.dataset.state = state || "idle";
  ui.turnState.textContent = label || "";
  ui.turnState.hidden = !label;
}

function showMode() {
  ui.hint.innerHTML = ui.handsFree.checked ? HINTS.handsFree : HINTS.ptt;
  document.body.dataset.handsFree = String(ui.handsFree.checked);
}

function retryLater(ms) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => {
    const socket = parley.socket;
    if (socket.connected) sayHello();
    else socket.connect();
  }, ms);
}

function onWelcome(w) {
  welcomed = true;
  rejected = false;
  ui.rejected.hidden = true;
  parley.sessionId = w.session_id;
  save(SESSION_KEY, w.session_id);
  if (w.session_key) save(SESSION_PROOF_KEY, w.session_key);
  renderHistory(w.history);
  iceServers = w.ice_servers || [];
  if (w.video) videoLimits = w.video;

  const maxChars = w.limits?.max_text_chars;
  if (maxChars > 0) ui.input.maxLength = maxChars;
  const maxRecord = w.limits?.max_record_s;
  if (maxRecord > 0) ui.talk.style.setProperty("--max-record", `${maxRecord}s`);

  if (typeof w.turn?.hands_free === "boolean" && w.turn.hands_free !== ui.handsFree.checked) {
    ui.handsFree.checked = w.turn.hands_free;
    showMode();
  }
  showTurnState(ui.handsFree.checked ? "listening" : "idle");

  const llm = w.llm || {};
  ui.banner.hidden = llm.backend !== "local";
  ui.banner.textContent = llm.backend === "local" ? localModelBanner(llm) : "";
  ui.model.hidden = !llm.backend;
  ui.model.textContent = [llm.backend, llm.model, llm.vision === false ? "no vision" : ""].filter(Boolean).join(" · ");

  failures = 0;
  negotiate();
}

function onRejected(r) {
  rejected = true;
  welcomed = false;
  generation += 1;
  closePc();
  talk.cancel();
  ui.rejected.textContent = `Parley can't take this session: ${r.reason || "the server refused it"}. Trying again in 10 s…`;
  ui.rejected.hidden = false;
  retryLater(REJECTED_RETRY_MS);
  refresh();
}

/** Send an event for this connection; dropped (and false) when there is no welcomed connection. */
function send(event, data) {
  if (!ready()) return false;
  parley.socket.emit(event, data);
  return true;
}

function ready() {
  return Boolean(parley.socket?.connected) && welcomed && !rejected;
}

// ---- WebRTC -------------------------------------------------------------------------------

async function negotiate() {
  const gen = ++generation;
  clearTimeout(renegotiateTimer);
  clearTimeout(disconnectedTimer);
  closePc();
  awaitingAnswer = false;
  try {
    await ensureMedia(notify);
    if (gen !== generation || !ready()) return;
    refresh();
    const built = await buildPeerConnection(iceServers, (pc) => adoptPc(pc, gen));
    if (gen !== generation || !ready()) return;
    videoSender = built.videoSender;
    const { sdp, type } = built.pc.localDescription;
    awaitingAnswer = true;
    send("offer", { sdp, type });
  } catch (err) {
    if (gen !== generation) return;
    console.error("negotiation failed", err);
    notify("error", `Could not set up audio and video: ${err?.message || err}`);
    renegotiateSoon();
  }
  refresh();
}

function adoptPc(pc, gen) {
  parley.pc = pc;
  const current = () => gen === generation && parley.pc === pc;
  pc.addEventListener("track", (e) => {
    if (!current() || e.track.kind !== "audio") return;
    ui.audio.srcObject = e.streams[0] || new MediaStream([e.track]);
    unlockAudio();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (!current()) return;
    clearTimeout(disconnectedTimer);
    const state = pc.connectionState;
    if (state === "connected") {
      failures = 0;
      limitVideo(videoSender);
    }
    if (state === "failed") renegotiateSoon();
    if (state === "disconnected") {
      disconnectedTimer = setTimeout(() => {
        if (current() && pc.connectionState === "disconnected") renegotiateSoon();
      }, DISCONNECTED_GRACE_MS);
    }
    refresh();
  });
}

async function onAnswer(a) {
  const pc = parley.pc;
  if (!pc || !awaitingAnswer || pc.signalingState !== "have-local-offer") return;
  awaitingAnswer = false;
  try {
    await pc.setRemoteDescription({ type: a.type || "answer", sdp: a.sdp });
  } catch (err) {
    console.error("bad answer", err);
    notify("warn", `The server's media answer did not fit: ${err?.message || err}. Retrying.`);
    renegotiateSoon();
  }
  refresh();
}

/** Renegotiate after a growing pause, so a server that keeps failing is not hammered. */
function renegotiateSoon() {
  clearTimeout(renegotiateTimer);
  const delay = Math.min(15_000, 500 * 2 ** failures);
  failures += 1;
  renegotiateTimer = setTimeout(() => ready() && negotiate(), delay);
  refresh();
}

function closePc() {
  const pc = parley.pc;
  if (!pc) return;
  parley.pc = null;
  videoSender = null;
  pc.close();
}

// ---- media controls -----------------------------------------------------------------------

function showPreview() {
  const track = currentVideoTrack();
  ui.video.classList.toggle("mirrored", track !== null && track === local.camera);
  ui.video.classList.toggle("empty", track === null && local.settled);
  if (ui.video.srcObject?.getVideoTracks()[0] !== track) {
    ui.video.srcObject = track ? new MediaStream([track]) : null;
  }
}

async function toggleShare() {
  if (sharing) return stopSharing();
  let track;
  try {
    track = await pickScreen();
  } catch (err) {
    notify("error", `Screen sharing failed: ${err?.message || err}`);
    return;
  }
  if (!track) return;
  local.screen = track;
  sharing = true;
  track.addEventListener("ended", () => local.screen === track && stopSharing());
  await videoSender?.replaceTrack(track).catch((err) => console.error("replaceTrack", err));
  await limitVideo(videoSender);
  refresh();
}

async function stopSharing() {
  const track = local.screen;
  local.screen = null;
  sharing = false;
  track?.stop();
  await videoSender?.replaceTrack(local.camera).catch((err) => console.error("replaceTrack", err));
  await limitVideo(videoSender);
  refresh();
}

/**
 * Send only as much video as the server uses: it needs the picture when a turn starts, not a
 * smooth stream, and every frame sent is a frame it must decode.
 */
async function limitVideo(sender) {
  if (!sender?.track) return;
  try {
    const params = sender.getParameters();
    if (!params.encodings?.length) params.encodings = [{}];
    const width = sender.track.getSettings().width || 0;
    params.encodings[0].maxFramerate = videoLimits.max_fps;
    params.encodings[0].scaleResolutionDownBy = width > videoLimits.max_width ? width / videoLimits.max_width : 1;
    await sender.setParameters(params);
  } catch (err) {
    console.warn("could not limit the video sent", err);
  }
}

/** Browsers block autoplay with sound until a user gesture; retry playback on each one. */
function unlockAudio() {
  if (ui.audio.srcObject && ui.audio.paused) ui.audio.play().catch(() => {});
}

async function watchSpeaking() {
  let level = 0;
  try {
    level = await remoteAudioLevel(parley.pc);
  } catch {
    level = 0;
  }
  const now = performance.now();
  if (level > SPEAKING_LEVEL) lastLoud = now;
  const next = now - lastLoud < SPEAKING_HANGOVER_MS;
  if (next !== speaking) {
    speaking = next;
    refresh();
  }
}

// ---- page state ---------------------------------------------------------------------------

function refresh() {
  const socket = parley.socket;
  const media = parley.pc?.connectionState || "none";
  const detail = `signalling: ${socket?.connected ? (welcomed ? "ready" : "waiting for welcome") : "offline"}; media: ${media}`;
  if (rejected) setStatus("rejected", detail);
  else if (!socket?.connected) setStatus(everConnected ? "reconnecting" : "connecting", detail);
  else if (media === "connected") setStatus("connected", detail);
  else if (failures > 0) setStatus("reconnecting", detail);
  else setStatus("connecting", detail);

  ui.talk.disabled = !ready() || local.mic === null;
  ui.talk.title = local.micProblem || "";
  ui.stop.disabled = !ready() || !(isStreaming() || speaking);
  ui.speaking.hidden = !speaking;
  document.body.dataset.speaking = String(speaking);

  ui.share.textContent = sharing ? (local.camera ? "Use camera" : "Stop sharing") : "Share screen";
  ui.share.setAttribute("aria-pressed", String(sharing));
  showPreview();
}

function submitText(e) {
  e.preventDefault();
  const text = ui.input.value.trim();
  if (!text) return;
  if (!send("text", { text })) {
    notify("warn", "Not connected yet: your message was not sent.");
    return;
  }
  unlockAudio();
  ui.input.value = "";
}

function load(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // Private mode: the session simply will not survive a reload.
  }
}

/** An invitation link carries its token in the fragment: keep it, and take it out of the address bar. */
function takeInvitation() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  save(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

function init() {
  takeInvitation();
  ui.vision.checked = load(VISION_KEY) !== "0";
  let visionByPointer = false;
  ui.vision.closest("label").addEventListener("pointerdown", () => (visionByPointer = true));
  ui.vision.addEventListener("change", () => {
    save(VISION_KEY, ui.vision.checked ? "1" : "0");
    send("vision", { enabled: ui.vision.checked });
    // After a click, hand Space back to push-to-talk instead of toggling the box again.
    if (visionByPointer) ui.vision.blur();
    visionByPointer = false;
  });

  ui.handsFree.checked = load(HANDS_FREE_KEY) === "1";
  showMode();
  let handsFreeByPointer = false;
  ui.handsFree.closest("label").addEventListener("pointerdown", () => (handsFreeByPointer = true));
  ui.handsFree.addEventListener("change", () => {
    save(HANDS_FREE_KEY, ui.handsFree.checked ? "1" : "0");
    send("hands_free", { enabled: ui.handsFree.checked });
    showMode();
    if (handsFreeByPointer) ui.handsFree.blur(); // Space goes back to push-to-talk, not to this box
    handsFreeByPointer = false;
  });

  ui.form.addEventListener("submit", submitText);
  ui.stop.addEventListener("click", () => send("stop", {}));
  ui.share.addEventListener("click", toggleShare);
  if (!canShareScreen()) {
    ui.share.disabled = true;
    ui.share.title = "This browser cannot share a screen";
  }
  document.addEventListener("pointerdown", unlockAudio, true);
  document.addEventListener("keydown", unlockAudio, true);
  onStreamingChange(refresh);
  setInterval(watchSpeaking, 250);

  refresh();
  connect();
  // Ask for the devices now, so the permission prompt overlaps the connection to the server.
  ensureMedia(notify).then(refresh);
}

init();
