// Parley page: socket.io signalling, the WebRTC connection, the one status the user sees, and
// the wiring of the parts around them (senders.js: what the page sends and the media controls;
// flow.js: whether media flows; link.js: whether the network link is poor, and its banner;
// controls.js: the typed message, New conversation, Download).
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
  upsertMessage,
} from "./chat.js";
import { setupControls } from "./controls.js";
import { setupFlow } from "./flow.js";
import { setupLayout } from "./layout.js";
import { setupLink } from "./link.js";
import { buildPeerConnection, ensureMedia, local } from "./media.js";
import { notify, setStatus } from "./notices.js";
import { invitation, load, save, takeInvitation } from "./saved.js";
import { setupSenders } from "./senders.js";
import { pageStatus } from "./status.js";
import { setupTalk } from "./talk.js";

const SESSION_KEY = "parley.session";
const SESSION_PROOF_KEY = "parley.sessionKey"; // the server's proof that this browser holds its session
const VISION_KEY = "parley.vision";
const HANDS_FREE_KEY = "parley.handsFree";
const TURN_LABELS = { listening: "Listening", hearing: "Hearing you", thinking: "Thinking…", speaking: "Speaking" };
const REJECTED_RETRY_MS = 10_000;
const DISCONNECTED_GRACE_MS = 3000;
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
  link: $("link"), linkText: $("link-text"),
};

// For the console and the tests: the connection, the local tracks and the status shown.
const parley = (window.parley = { socket: null, pc: null, local, sessionId: load(SESSION_KEY), status: "connecting" });

// The socket.io connection, and what the server said about it.
const conn = {
  everConnected: false,
  welcomed: false,
  welcomedAt: 0, // when the welcome came (performance.now()), for the time limit of the media's start
  rejection: null, // { code, reason } from the server's "rejected", or the refusal of the connection itself
  refused: null, // why the server refused the socket (no invitation, an expired one, ...)
  iceServers: [],
  retryTimer: 0,
  source: null, // the video source the server was last told ("camera" or "screen")
};
// Negotiating the WebRTC connection (parley.pc).
const rtc = {
  generation: 0, // bumps on every negotiation; a stale one stops at its next await
  awaitingAnswer: false,
  failures: 0,
  renegotiateTimer: 0,
  disconnectedTimer: 0,
};
const openedAt = performance.now(); // for the time limits of the waiting states

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
    conn.refused = "the page could not load its socket client (/vendor/socket.io.min.js); is the Parley server running?";
    refresh();
    return;
  }
  // WebSocket only: a node may run several ingress processes on one port, and long-polling's
  // separate HTTP requests could reach different ones; one WebSocket is one process throughout.
  const socket = window.io({
    path: "/socket.io",
    transports: ["websocket"],
    auth: (send) => send({ token: invitation() }), // read on every (re)connection
  });
  parley.socket = socket;

  socket.on("connect", () => {
    conn.everConnected = true;
    conn.welcomed = false;
    conn.refused = null;
    ui.rejected.hidden = true;
    clearTimeout(conn.retryTimer);
    sayHello();
    refresh();
  });
  socket.on("disconnect", (reason) => {
    conn.welcomed = false;
    rtc.awaitingAnswer = false;
    talk.cancel();
    // After a server-side disconnect socket.io does not reconnect by itself.
    if (reason === "io server disconnect") retryLater(conn.rejection ? REJECTED_RETRY_MS : 2000);
    refresh();
  });
  socket.on("connect_error", (err) => {
    if (!socket.active) {
      // Refused by the server itself (no invitation, an expired one, too many connections): say why, where it stays.
      conn.refused = err.message;
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
    source: videoSource(),
    hands_free: ui.handsFree.checked,
  });
  conn.source = videoSource();
}

/** What the video sender carries, as the server's scene notes name it. */
const videoSource = () => (local.screen ? "screen" : "camera");

/** Tell the server when the video switches between the camera and a shared screen. */
function sendSourceIfChanged() {
  if (!ready() || conn.source === videoSource()) return;
  if (send("vision", { enabled: ui.vision.checked, source: videoSource() })) conn.source = videoSource();
}

/** What the conversation is doing now: listening, hearing you, thinking, speaking (idle: hidden). */
function showTurnState(state) {
  const label = TURN_LABELS[state];
  ui.turnState.dataset.state = state || "idle";
  ui.turnState.textContent = label || "";
  ui.turnState.hidden = !label;
}

function retryLater(ms) {
  clearTimeout(conn.retryTimer);
  conn.retryTimer = setTimeout(() => {
    const socket = parley.socket;
    if (socket.connected) sayHello();
    else socket.connect();
  }, ms);
}

function onWelcome(w) {
  const asked = load(SESSION_KEY);
  const shown = hasMessages();
  const history = w.history || [];
  conn.welcomed = true;
  conn.rejection = null;
  ui.rejected.hidden = true;
  conn.welcomedAt = performance.now();
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
  } else if (shown && !history.length && w.saved === false) {
    // The server is alive but its store is not answering: the messages are not lost, only not here now.
    markHistoryLost(
      "Parley could not read this conversation's earlier messages just now (its store is not answering), so it does not remember the messages above for now. Reload the page in a while to get them back.",
    );
  } else if (shown && !history.length && !controls.forgetting) {
    markHistoryLost("Parley's server no longer has this conversation: Parley will not remember the messages above. Go on from here.");
  } else {
    renderHistory(history, { earlier: w.earlier || 0 });
  }
  conn.iceServers = w.ice_servers || [];
  senders.useLimits(w.video);

  const maxChars = w.limits?.max_text_chars;
  if (maxChars > 0) ui.input.maxLength = maxChars;
  const maxRecord = w.limits?.max_record_s;
  if (maxRecord > 0) ui.talk.style.setProperty("--max-record", `${maxRecord}s`);

  if (typeof w.turn?.hands_free === "boolean" && w.turn.hands_free !== ui.handsFree.checked) {
    ui.handsFree.checked = w.turn.hands_free;
    layout.showMode();
  }
  // The turn state is the session's to say: it sends one right after this welcome.

  const llm = w.llm || {};
  // The banner says what limits this server's answers: a small local model, a missing turn model.
  const limits = [llm.backend === "local" ? localModelBanner(llm) : "", llm.sight_problem || "", w.turn?.problem || ""];
  layout.showBanner(limits.filter(Boolean).join(" "));
  ui.model.hidden = !llm.backend;
  const sees = llm.vision === false || llm.sight === "blind" ? "no vision" : llm.sight === "note" ? "sees through detectors" : "";
  ui.model.textContent = [llm.backend, llm.model, sees].filter(Boolean).join(" · ");

  rtc.failures = 0;
  negotiate();
}

function onRejected(r) {
  conn.rejection = { code: r.code || "refused", reason: r.reason || "the server refused it" };
  conn.welcomed = false;
  rtc.generation += 1;
  closePc();
  talk.cancel();
  ui.rejected.textContent = `Parley can't take this session: ${conn.rejection.reason} Trying again in 10 s…`;
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
  return Boolean(parley.socket?.connected) && conn.welcomed && !conn.rejection;
}

/** Speech can go: the connection is welcomed, the media flows, and the microphone is on. */
function canTalk() {
  return ready() && flow.up && local.mic !== null && local.mic.enabled;
}

// ---- WebRTC -------------------------------------------------------------------------------

async function negotiate() {
  const gen = ++rtc.generation;
  clearTimeout(rtc.renegotiateTimer);
  clearTimeout(rtc.disconnectedTimer);
  closePc();
  rtc.awaitingAnswer = false;
  try {
    await ensureMedia(notify);
    if (gen !== rtc.generation || !ready()) return;
    senders.refill();
    refresh();
    const built = await buildPeerConnection(conn.iceServers, (pc) => adoptPc(pc, gen));
    if (gen !== rtc.generation || !ready()) return;
    await senders.attach(built.pc, built.videoSender);
    const { sdp, type } = built.pc.localDescription;
    rtc.awaitingAnswer = true;
    send("offer", { sdp, type });
  } catch (err) {
    if (gen !== rtc.generation) return;
    console.error("negotiation failed", err);
    notify("error", `Could not set up audio and video: ${err?.message || err}`);
    renegotiateSoon();
  }
  refresh();
}

function adoptPc(pc, gen) {
  parley.pc = pc;
  flow.newConnection();
  const current = () => gen === rtc.generation && parley.pc === pc;
  pc.addEventListener("track", (e) => {
    if (!current() || e.track.kind !== "audio") return;
    ui.audio.srcObject = e.streams[0] || new MediaStream([e.track]);
    unlockAudio();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (!current()) return;
    clearTimeout(rtc.disconnectedTimer);
    const state = pc.connectionState;
    if (state === "connected") {
      rtc.failures = 0;
      senders.limitVideo();
    }
    if (state === "failed") renegotiateSoon();
    if (state === "disconnected") {
      rtc.disconnectedTimer = setTimeout(() => {
        if (current() && pc.connectionState === "disconnected") renegotiateSoon();
      }, DISCONNECTED_GRACE_MS);
    }
    refresh();
  });
}

async function onAnswer(a) {
  const pc = parley.pc;
  if (!pc || !rtc.awaitingAnswer || pc.signalingState !== "have-local-offer") return;
  rtc.awaitingAnswer = false;
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
  clearTimeout(rtc.renegotiateTimer);
  const delay = Math.min(15_000, 500 * 2 ** rtc.failures);
  rtc.failures += 1;
  rtc.renegotiateTimer = setTimeout(() => ready() && negotiate(), delay);
  refresh();
}

function closePc() {
  const pc = parley.pc;
  if (!pc) return;
  parley.pc = null;
  senders.detach();
  pc.close();
}

/** Browsers block autoplay with sound until a user gesture; retry playback on each one. */
function unlockAudio() {
  if (ui.audio.srcObject && ui.audio.paused) ui.audio.play().catch(() => {});
}

// ---- the one status -------------------------------------------------------------------------

function refresh() {
  const now = performance.now();
  flow.track(now);
  const [state, reason] = pageStatus({
    now,
    openedAt,
    welcomedAt: conn.welcomedAt,
    lostAt: flow.lostAt,
    socket: parley.socket,
    everConnected: conn.everConnected,
    welcomed: conn.welcomed,
    refused: conn.refused,
    rejection: conn.rejection,
    mediaUp: flow.up,
    failures: rtc.failures,
    local,
  });
  parley.status = state;
  setStatus(state, reason);
  document.body.dataset.status = state;

  const talkable = canTalk();
  ui.talk.disabled = !talkable && !talk.holding;
  ui.talk.title = talkable ? "" : local.micProblem || (local.mic && !local.mic.enabled ? "Unmute to talk" : reason);
  ui.stop.disabled = !ready() || !(isStreaming() || flow.speaking);
  ui.speaking.hidden = !flow.speaking;
  document.body.dataset.speaking = String(flow.speaking);
  ui.send.disabled = controls.sending;
  ui.newConversation.disabled = !ready();
  senders.show();
  sendSourceIfChanged();
}

const layout = setupLayout(ui, { load, save });
const senders = setupSenders(ui, { talk, refresh });
const flow = setupFlow(ui, { parley, ready, talk, refresh });
const controls = setupControls(ui, { parley, ready, unlockAudio, refresh });
const link = setupLink(ui, { parley, send });

function init() {
  takeInvitation();
  ui.vision.checked = load(VISION_KEY) !== "0";
  ui.vision.addEventListener("change", () => {
    save(VISION_KEY, ui.vision.checked ? "1" : "0");
    send("vision", { enabled: ui.vision.checked, source: videoSource() });
  });

  ui.handsFree.checked = load(HANDS_FREE_KEY) === "1";
  layout.showMode();
  ui.handsFree.addEventListener("change", () => {
    save(HANDS_FREE_KEY, ui.handsFree.checked ? "1" : "0");
    send("hands_free", { enabled: ui.handsFree.checked });
    layout.showMode();
  });

  ui.stop.addEventListener("click", () => send("stop", {}));
  document.addEventListener("pointerdown", unlockAudio, true);
  document.addEventListener("keydown", unlockAudio, true);
  onStreamingChange(refresh);
  flow.start();
  link.start();

  refresh();
  connect();
  // Ask for the devices now, so the permission prompt overlaps the connection to the server.
  ensureMedia(notify).then(() => {
    senders.refill();
    refresh();
  });
}

init();
