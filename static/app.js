// Parley page: socket.io signalling, the WebRTC connection, the one status the user sees, and
// the controls around them.
//
// Invariants: nothing but hello is sent until the server's welcome for this connection has
// arrived, and nothing is queued while disconnected (a stale talk_start must never reach the
// next connection). window.parley.pc is always the page's current RTCPeerConnection. The status
// is computed in one place (status.js) from the socket, the media and the devices together.
// Talking needs media that flows; a typed message leaves the box only once the server
// acknowledged it.

import {
  appendDelta,
  hasMessages,
  isStreaming,
  markHistoryLost,
  onStreamingChange,
  renderHistory,
  setMetrics,
  setState,
  showSpeaking,
  transcriptMarkdown,
  upsertMessage,
} from "./chat.js";
import { setupDevices } from "./devices.js";
import { setupLayout } from "./layout.js";
import {
  audioStats,
  buildPeerConnection,
  canShareScreen,
  currentVideoTrack,
  ensureMedia,
  local,
  pickScreen,
  startCamera,
  stopCamera,
} from "./media.js";
import { notify, setStatus } from "./notices.js";
import { pageStatus } from "./status.js";
import { setupTalk } from "./talk.js";

const SESSION_KEY = "parley.session";
const SESSION_PROOF_KEY = "parley.sessionKey"; // the server's proof that this browser holds its session
const TOKEN_KEY = "parley.token"; // the invitation, from the link's #token=...
const VISION_KEY = "parley.vision";
const HANDS_FREE_KEY = "parley.handsFree";
const CAMERA_OFF_KEY = "parley.cameraOff";
const TURN_LABELS = { listening: "Listening", hearing: "Hearing you", thinking: "Thinking…", speaking: "Speaking" };
const REJECTED_RETRY_MS = 10_000;
const DISCONNECTED_GRACE_MS = 3000;
const ACK_MS = 5000; // a typed message the server has not confirmed by then stays in the box
const AUDIO_GONE_MS = 2000; // Parley sends audio all the time (silence too): none for this long is a loss
const WATCH_MS = 150;
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
  stop: $("stop"), form: $("text-form"), input: $("text-input"), banner: $("banner"), bannerText: $("banner-text"),
  model: $("model"), rejected: $("rejected"), speaking: $("speaking"), send: $("send"), handsFree: $("hands-free"),
  turnState: $("turn-state"), hint: $("hint"), mute: $("mute"), camera: $("camera"), micLevel: $("mic-level"),
  parleyLevel: $("parley-level"), newConversation: $("new-conversation"), download: $("download"), chat: $("chat"),
};

// For the console and the tests: the connection, the local tracks and the status shown.
const parley = (window.parley = { socket: null, pc: null, local, sessionId: load(SESSION_KEY), status: "connecting" });

let welcomed = false;
let everConnected = false;
let rejection = null; // { code, reason } from the server's "rejected", or the refusal of the connection itself
let refused = null; // why the server refused the socket (no invitation, an expired one, ...)
let iceServers = [];
let generation = 0; // bumps on every negotiation; a stale one stops at its next await
let awaitingAnswer = false;
let failures = 0;
let videoSender = null;
let audioSender = null;
let videoLimits = { max_fps: 2, max_width: 640 }; // the server's, from its welcome
let sharing = false;
let speaking = false;
let lastLoud = -Infinity; // no "Parley is speaking" before any audio came
let sending = false;
let forgetting = false;
let retryTimer = 0;
let renegotiateTimer = 0;
let disconnectedTimer = 0;
let watching = false;
// When each phase began (performance.now()), for the time limits of the waiting states.
const openedAt = performance.now();
let welcomedAt = 0;
let packets = { count: -1, at: 0 };
let mediaUp = false;
let lostAt = null; // when media that was up stopped; null while it is up, or if it never was

const talk = setupTalk(ui.talk, {
  canTalk: () => canTalk(),
  onStart: () => {
    unlockAudio();
    send("talk_start", {});
  },
  onEnd: () => send("talk_end", {}),
  onChange: () => refresh(),
});

// ---- signalling ---------------------------------------------------------------------------

function connect() {
  if (typeof window.io !== "function") {
    refused = "the page could not load its socket client (/vendor/socket.io.min.js); is the Parley server running?";
    refresh();
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
    refused = null;
    ui.rejected.hidden = true;
    clearTimeout(retryTimer);
    sayHello();
    refresh();
  });
  socket.on("disconnect", (reason) => {
    welcomed = false;
    awaitingAnswer = false;
    talk.cancel();
    // After a server-side disconnect socket.io does not reconnect by itself.
    if (reason === "io server disconnect") retryLater(rejection ? REJECTED_RETRY_MS : 2000);
    refresh();
  });
  socket.on("connect_error", (err) => {
    if (!socket.active) {
      // Refused by the server itself (no invitation, an expired one, too many connections): say why, where it stays.
      refused = err.message;
      ui.rejected.textContent = `Parley can't let you in: ${err.message}`;
      ui.rejected.hidden = false;
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
  socket.on("speaking", showSpeaking);
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

function retryLater(ms) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => {
    const socket = parley.socket;
    if (socket.connected) sayHello();
    else socket.connect();
  }, ms);
}

function onWelcome(w) {
  const asked = load(SESSION_KEY);
  const shown = hasMessages();
  const history = w.history || [];
  welcomed = true;
  rejection = null;
  ui.rejected.hidden = true;
  welcomedAt = performance.now();
  parley.sessionId = w.session_id;
  save(SESSION_KEY, w.session_id);
  if (w.session_key) save(SESSION_PROOF_KEY, w.session_key);

  // A conversation the server no longer has is announced, never silently swapped for an empty one.
  if (asked && w.session_id !== asked) {
    markHistoryLost(
      shown
        ? "Parley's server no longer has this conversation (it was restarted or forgot it): Parley will not remember the messages above. Go on from here."
        : "The conversation you had in this browser is no longer on Parley's server (it was restarted or forgot it). This is a new one.",
    );
  } else if (shown && !history.length && !forgetting) {
    markHistoryLost("Parley's server no longer has this conversation: Parley will not remember the messages above. Go on from here.");
  } else {
    renderHistory(history);
  }
  iceServers = w.ice_servers || [];
  if (w.video) videoLimits = w.video;

  const maxChars = w.limits?.max_text_chars;
  if (maxChars > 0) ui.input.maxLength = maxChars;
  const maxRecord = w.limits?.max_record_s;
  if (maxRecord > 0) ui.talk.style.setProperty("--max-record", `${maxRecord}s`);

  if (typeof w.turn?.hands_free === "boolean" && w.turn.hands_free !== ui.handsFree.checked) {
    ui.handsFree.checked = w.turn.hands_free;
    layout.showMode();
  }
  showTurnState(ui.handsFree.checked ? "listening" : "idle");

  const llm = w.llm || {};
  // The banner says what limits this server's answers: a small local model, a missing turn model.
  const limits = [llm.backend === "local" ? localModelBanner(llm) : "", w.turn?.problem || ""];
  layout.showBanner(limits.filter(Boolean).join(" "));
  ui.model.hidden = !llm.backend;
  ui.model.textContent = [llm.backend, llm.model, llm.vision === false ? "no vision" : ""].filter(Boolean).join(" · ");

  failures = 0;
  negotiate();
}

function onRejected(r) {
  rejection = { code: r.code || "refused", reason: r.reason || "the server refused it" };
  welcomed = false;
  generation += 1;
  closePc();
  talk.cancel();
  ui.rejected.textContent = `Parley can't take this session: ${rejection.reason} Trying again in 10 s…`;
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

/** The server has welcomed this connection: typed messages and controls can go. */
function ready() {
  return Boolean(parley.socket?.connected) && welcomed && !rejection;
}

/** Speech can go: the connection is welcomed, the media flows, and the microphone is on. */
function canTalk() {
  return ready() && mediaUp && local.mic !== null && local.mic.enabled;
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
    devices.refill();
    refresh();
    const built = await buildPeerConnection(iceServers, (pc) => adoptPc(pc, gen));
    if (gen !== generation || !ready()) return;
    videoSender = built.videoSender;
    audioSender = built.pc.getTransceivers().find((t) => t.receiver.track.kind === "audio")?.sender || null;
    if (local.mic && !local.mic.enabled) await audioSender?.replaceTrack(null); // still muted
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
  packets = { count: -1, at: 0 };
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
  audioSender = null;
  pc.close();
}

// ---- media controls -----------------------------------------------------------------------

function showPreview() {
  const track = currentVideoTrack();
  ui.video.classList.toggle("mirrored", track !== null && track === local.camera);
  ui.video.classList.toggle("empty", track === null && local.settled);
  ui.video.closest(".preview").dataset.empty = local.cameraOff && !track ? "Camera off" : "No camera";
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
 * Mute: the microphone's track is disabled and taken off the connection, so nothing at all
 * leaves the browser (not even silence) until unmuted.
 */
async function toggleMute() {
  if (!local.mic) return;
  local.mic.enabled = !local.mic.enabled;
  if (!local.mic.enabled && talk.holding) talk.release();
  refresh();
  await audioSender?.replaceTrack(local.mic.enabled ? local.mic : null).catch((err) => console.error("replaceTrack", err));
  notify("info", local.mic.enabled ? "Microphone on." : "Microphone muted: Parley hears nothing until you unmute.");
  refresh();
}

/** Camera off stops its track (the device's light goes out); on asks for it again. */
async function toggleCamera() {
  if (local.camera) {
    stopCamera();
    if (!sharing) await videoSender?.replaceTrack(null).catch((err) => console.error("replaceTrack", err));
  } else {
    try {
      const track = await startCamera();
      if (!sharing) {
        await videoSender?.replaceTrack(track);
        await limitVideo(videoSender);
      }
    } catch (err) {
      notify("error", `Could not start the camera: ${err?.message || err}`);
    }
  }
  save(CAMERA_OFF_KEY, local.cameraOff ? "1" : "0");
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

/** Several times a second: is Parley's audio arriving, how loud are both sides. */
async function watchMedia() {
  if (watching) return;
  watching = true;
  try {
    const stats = await audioStats(parley.pc).catch(() => ({ level: 0, packets: -1, mic: null }));
    const now = performance.now();
    if (stats.packets > packets.count) packets = { count: stats.packets, at: now };
    if (stats.level > SPEAKING_LEVEL) lastLoud = now;
    speaking = now - lastLoud < SPEAKING_HANGOVER_MS;
    ui.parleyLevel.value = Math.min(1, stats.level * 5);
    const listening = talk.holding || ui.handsFree.checked;
    ui.micLevel.value = listening && local.mic?.enabled ? Math.min(1, (stats.mic || 0) * 3) : 0;
    ui.micLevel.closest(".level-row").hidden = !listening || stats.mic === null;
  } finally {
    watching = false;
  }
  refresh();
}

// ---- the one status -------------------------------------------------------------------------

/** Is media flowing now (welcomed, WebRTC connected, Parley's audio arriving)? Marks when it stopped. */
function trackMedia(now) {
  const up = Boolean(
    ready() && parley.pc?.connectionState === "connected" && packets.count > 0 && now - packets.at < AUDIO_GONE_MS,
  );
  if (up) lostAt = null;
  else if (mediaUp) lostAt = now;
  mediaUp = up;
}

function refresh() {
  const now = performance.now();
  trackMedia(now);
  const [state, reason] = pageStatus({
    now,
    openedAt,
    welcomedAt,
    lostAt,
    socket: parley.socket,
    everConnected,
    welcomed,
    refused,
    rejection,
    mediaUp,
    failures,
    local,
  });
  parley.status = state;
  setStatus(state, reason);
  document.body.dataset.status = state;

  const talkable = canTalk();
  ui.talk.disabled = !talkable && !talk.holding;
  ui.talk.title = talkable ? "" : local.micProblem || (local.mic && !local.mic.enabled ? "Unmute to talk" : reason);
  ui.stop.disabled = !ready() || !(isStreaming() || speaking);
  ui.speaking.hidden = !speaking;
  document.body.dataset.speaking = String(speaking);
  ui.send.disabled = sending;
  ui.newConversation.disabled = !ready();

  ui.mute.disabled = !local.mic;
  ui.mute.textContent = local.mic && !local.mic.enabled ? "Unmute" : "Mute";
  ui.mute.classList.toggle("active", Boolean(local.mic && !local.mic.enabled));
  ui.camera.textContent = local.camera ? "Stop camera" : "Start camera";
  ui.camera.disabled = !local.settled;
  ui.share.textContent = sharing ? (local.camera ? "Use camera" : "Stop sharing") : "Share screen";
  ui.share.classList.toggle("active", sharing);
  showPreview();
}

// ---- typed text and conversation controls ---------------------------------------------------

function submitText(e) {
  e.preventDefault();
  const text = ui.input.value.trim();
  if (!text || sending) return;
  if (!ready()) {
    notify("warn", "Not connected to Parley: your message is still in the box. Send it once the status says Ready.");
    return;
  }
  unlockAudio();
  sending = true;
  refresh();
  parley.socket.timeout(ACK_MS).emit("text", { text }, (err, ack) => {
    sending = false;
    if (err) notify("warn", "The server did not confirm your message, so it is still in the box. Send it again when Parley is back.");
    else if (ack?.ok && ui.input.value.trim() === text) ui.input.value = "";
    // Refused (too long, too many turns): the server's notice said why, and the text stays to fix.
    refresh();
  });
}

function newConversation() {
  if (!ready()) return notify("warn", "Not connected to Parley: try again once the status says Ready.");
  if (hasMessages() && !window.confirm("Start a new conversation? Parley will forget this one.")) return;
  forgetting = true;
  parley.socket.timeout(ACK_MS).emit("new_conversation", {}, (err, ack) => {
    forgetting = false;
    if (err || !ack?.ok) return notify("error", "The server did not confirm, so the conversation was not cleared. Try again.");
    renderHistory([], { all: true });
    notify("info", "New conversation: Parley has forgotten the previous one.");
    refresh();
  });
}

function downloadTranscript() {
  const blob = new Blob([transcriptMarkdown()], { type: "text/markdown;charset=utf-8" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `parley-${new Date().toISOString().slice(0, 16).replace(/[:T]/g, "-")}.md`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
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
    // Private mode: the setting simply will not survive a reload.
  }
}

/** An invitation link carries its token in the fragment: keep it, and take it out of the address bar. */
function takeInvitation() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  save(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

const layout = setupLayout(ui, { load, save });
const devices = setupDevices({
  notify,
  load,
  save,
  audio: ui.audio,
  onMic: async (track) => {
    await audioSender?.replaceTrack(track.enabled ? track : null).catch((err) => console.error("replaceTrack", err));
    refresh();
  },
  onCamera: async (track) => {
    if (!sharing) {
      await videoSender?.replaceTrack(track).catch((err) => console.error("replaceTrack", err));
      await limitVideo(videoSender);
    }
    save(CAMERA_OFF_KEY, "0");
    refresh();
  },
});

function init() {
  takeInvitation();
  local.cameraOff = load(CAMERA_OFF_KEY) === "1";
  ui.vision.checked = load(VISION_KEY) !== "0";
  ui.vision.addEventListener("change", () => {
    save(VISION_KEY, ui.vision.checked ? "1" : "0");
    send("vision", { enabled: ui.vision.checked });
  });

  ui.handsFree.checked = load(HANDS_FREE_KEY) === "1";
  layout.showMode();
  ui.handsFree.addEventListener("change", () => {
    save(HANDS_FREE_KEY, ui.handsFree.checked ? "1" : "0");
    send("hands_free", { enabled: ui.handsFree.checked });
    layout.showMode();
  });

  ui.form.addEventListener("submit", submitText);
  ui.stop.addEventListener("click", () => send("stop", {}));
  ui.share.addEventListener("click", toggleShare);
  ui.mute.addEventListener("click", toggleMute);
  ui.camera.addEventListener("click", toggleCamera);
  ui.newConversation.addEventListener("click", newConversation);
  ui.download.addEventListener("click", downloadTranscript);
  if (!canShareScreen()) {
    ui.share.disabled = true;
    ui.share.title = "This browser cannot share a screen";
  }
  document.addEventListener("pointerdown", unlockAudio, true);
  document.addEventListener("keydown", unlockAudio, true);
  onStreamingChange(refresh);
  setInterval(watchMedia, WATCH_MS);

  refresh();
  connect();
  // Ask for the devices now, so the permission prompt overlaps the connection to the server.
  ensureMedia(notify).then(() => {
    devices.refill();
    refresh();
  });
}

init();
