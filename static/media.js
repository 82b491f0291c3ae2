// Local media (microphone, camera, shared screen) and building one offer's RTCPeerConnection.
//
// Invariant: local tracks outlive peer connections. A renegotiation builds a new connection from
// the tracks held here, so the user is asked for permission once, and a screen being shared stays
// shared across reconnects. Every connection has exactly one audio m-line (sendrecv with a mic,
// recvonly without) and one video m-line whose sender can later take another track.

const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 480 } };
const ICE_GATHERING_CAP_MS = 2000;

/** The tracks this page captures; null where unavailable. */
export const local = { mic: null, camera: null, screen: null, micProblem: null, settled: false };

let pending = null;

/**
 * Get the microphone and camera, once; concurrent callers share one attempt. Later calls only
 * retry when a device's track has ended. notify(level, text) reports what the user must know
 * (camera missing, microphone blocked).
 */
export function ensureMedia(notify) {
  const ended = (t) => t !== null && t.readyState === "ended";
  if (pending && !ended(local.mic) && !ended(local.camera)) return pending;
  pending = acquire(notify).finally(() => (local.settled = true));
  return pending;
}

async function acquire(notify) {
  local.mic = null;
  local.camera = null;
  local.micProblem = null;

  if (!navigator.mediaDevices?.getUserMedia) {
    local.micProblem = "This page needs a secure context (HTTPS, or http://localhost) to use the microphone.";
    notify("error", `${local.micProblem} You can still type.`);
    return;
  }

  try {
    const both = await getUserMedia({ audio: AUDIO_CONSTRAINTS, video: VIDEO_CONSTRAINTS });
    local.mic = both.getAudioTracks()[0] || null;
    local.camera = both.getVideoTracks()[0] || null;
    return;
  } catch (err) {
    try {
      const audioOnly = await getUserMedia({ audio: AUDIO_CONSTRAINTS });
      local.mic = audioOnly.getAudioTracks()[0] || null;
      notify("warn", `Camera unavailable (${describe(err)}): going on with audio only. Share your screen instead, or type.`);
      return;
    } catch (micErr) {
      local.micProblem = `Microphone unavailable: ${describe(micErr)}`;
      notify("error", `${local.micProblem}. Parley can't hear you; you can still type.`);
    }
  }
  try {
    const videoOnly = await getUserMedia({ video: VIDEO_CONSTRAINTS });
    local.camera = videoOnly.getVideoTracks()[0] || null;
  } catch {
    // Already told the user about the microphone; a missing camera adds nothing they can act on.
  }
}

/** The track the video sender should carry now: the shared screen, else the camera. */
export function currentVideoTrack() {
  return local.screen || local.camera;
}

/**
 * Build a peer connection with the local tracks, create and apply an offer, and wait for ICE
 * gathering (the server does not trickle). Returns { pc, videoSender }; pc.localDescription then
 * holds the complete SDP.
 */
export async function buildPeerConnection(iceServers, onNewPc) {
  const pc = new RTCPeerConnection({ iceServers: iceServers || [] });
  onNewPc(pc);
  const stream = new MediaStream([local.mic, currentVideoTrack()].filter(Boolean));

  if (local.mic) pc.addTrack(local.mic, stream);
  else pc.addTransceiver("audio", { direction: "recvonly" });

  const video = currentVideoTrack();
  const videoSender = video
    ? pc.addTrack(video, stream)
    : pc.addTransceiver("video", { direction: "sendonly", streams: [stream] }).sender;

  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await iceGatheringComplete(pc, ICE_GATHERING_CAP_MS);
  return { pc, videoSender };
}

/** Ask for a screen or window to share; resolves to its video track, or null if the user cancels. */
export async function pickScreen() {
  try {
    const display = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    const track = display.getVideoTracks()[0];
    if ("contentHint" in track) track.contentHint = "detail";
    return track;
  } catch (err) {
    if (err?.name === "NotAllowedError" || err?.name === "AbortError") return null;
    throw err;
  }
}

/** True when this browser can share a screen at all (most phones cannot). */
export function canShareScreen() {
  return typeof navigator.mediaDevices?.getDisplayMedia === "function";
}

const lastEnergy = new WeakMap();

/**
 * RMS level (0..1) of the audio the server sent since the previous call for this pc, from the
 * inbound RTP energy counters (audioLevel itself is smoothed and lags by about a second).
 */
export async function remoteAudioLevel(pc) {
  if (!pc || pc.connectionState !== "connected") return 0;
  let energy = 0;
  let duration = 0;
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      energy += s.totalAudioEnergy || 0;
      duration += s.totalSamplesDuration || 0;
    }
  });
  const prev = lastEnergy.get(pc) || { energy: 0, duration: 0 };
  lastEnergy.set(pc, { energy, duration });
  const dt = duration - prev.duration;
  return dt > 0 ? Math.sqrt(Math.max(0, energy - prev.energy) / dt) : 0;
}

function getUserMedia(constraints) {
  return navigator.mediaDevices.getUserMedia(constraints);
}

function iceGatheringComplete(pc, capMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onState);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const onState = () => pc.iceGatheringState === "complete" && done();
    const onCandidate = (e) => e.candidate === null && done();
    const timer = setTimeout(done, capMs);
    pc.addEventListener("icegatheringstatechange", onState);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

function describe(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "permission was denied; allow it in the browser's site settings and reload";
    case "NotFoundError":
    case "OverconstrainedError":
      return "no device found";
    case "NotReadableError":
    case "AbortError":
      return "the device is in use by another application";
    default:
      return err?.message || String(err);
  }
}
