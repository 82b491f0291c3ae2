// Local media (microphone, camera, shared screen) and building one offer's RTCPeerConnection.
//
// Invariant: local tracks outlive peer connections. A renegotiation builds a new connection from
// the tracks held here, so the user is asked for permission once, and a screen being shared stays
// shared across reconnects. Every connection has exactly one audio m-line (sendrecv with a mic,
// recvonly without) and one video m-line whose sender can later take another track.

const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 480 } };
const ICE_GATHERING_CAP_MS = 2000;

/**
 * The tracks this page captures; null where unavailable. micDenied: the user (or a policy) refused
 * the microphone. cameraOff: the user turned the camera off (its track is stopped, not just hidden).
 * micId and cameraId: the devices chosen (null: the browser's default).
 */
export const local = {
  mic: null,
  camera: null,
  screen: null,
  micProblem: null,
  micDenied: false,
  settled: false,
  cameraOff: false,
  micId: null,
  cameraId: null,
};

let pending = null;

/**
 * Get the microphone and camera, once; concurrent callers share one attempt. Later calls only
 * retry when a device's track has ended. notify(level, text) reports what the user must know
 * (camera missing, microphone blocked).
 */
export function ensureMedia(notify) {
  const ended = (t) => t !== null && t.readyState === "ended";
  if (pending && !ended(local.mic) && !ended(local.camera)) return pending;
  pending = acquireChosen(notify).finally(() => (local.settled = true));
  return pending;
}

/** The devices chosen last time; if one of them is gone, the browser's defaults instead. */
async function acquireChosen(notify) {
  if (local.micId || local.cameraId) {
    const quiet = [];
    await acquire((level, text) => quiet.push([level, text]));
    if (local.mic && (local.camera || local.cameraOff || !local.cameraId)) return;
    for (const t of [local.mic, local.camera]) t?.stop();
    local.micId = null;
    local.cameraId = null;
    await acquire(notify);
    if (local.mic) notify("info", "The microphone or camera you chose last time was not found: using the browser's default.");
    return;
  }
  await acquire(notify);
}

const audioConstraints = () => ({ ...AUDIO_CONSTRAINTS, ...(local.micId ? { deviceId: { exact: local.micId } } : {}) });
const videoConstraints = () => ({ ...VIDEO_CONSTRAINTS, ...(local.cameraId ? { deviceId: { exact: local.cameraId } } : {}) });

async function acquire(notify) {
  local.mic = null;
  local.camera = null;
  local.micProblem = null;
  local.micDenied = false;

  if (!navigator.mediaDevices?.getUserMedia) {
    local.micProblem = "This page needs a secure context (HTTPS, or http://localhost) to use the microphone.";
    notify("error", `${local.micProblem} You can still type.`);
    return;
  }

  try {
    if (local.cameraOff) throw new Error("camera off");
    const both = await getUserMedia({ audio: audioConstraints(), video: videoConstraints() });
    local.mic = both.getAudioTracks()[0] || null;
    local.camera = both.getVideoTracks()[0] || null;
    return;
  } catch (err) {
    try {
      const audioOnly = await getUserMedia({ audio: audioConstraints() });
      local.mic = audioOnly.getAudioTracks()[0] || null;
      if (local.cameraOff) return;
      notify("warn", `Camera unavailable (${describe(err)}): going on with audio only. Share your screen instead, or type.`);
      return;
    } catch (micErr) {
      local.micDenied = micErr?.name === "NotAllowedError" || micErr?.name === "SecurityError";
      local.micProblem = `Microphone unavailable: ${describe(micErr)}`;
      notify("error", `${local.micProblem}. Parley can't hear you; you can still type.`);
    }
  }
  if (local.cameraOff) return;
  try {
    const videoOnly = await getUserMedia({ video: videoConstraints() });
    local.camera = videoOnly.getVideoTracks()[0] || null;
  } catch {
    // Already told the user about the microphone; a missing camera adds nothing they can act on.
  }
}

/** The microphones, cameras and speakers the browser lists (labels appear once permission is given). */
export async function listDevices() {
  const found = { audioinput: [], videoinput: [], audiooutput: [] };
  if (!navigator.mediaDevices?.enumerateDevices) return found;
  for (const d of await navigator.mediaDevices.enumerateDevices()) {
    if (found[d.kind] && d.deviceId) found[d.kind].push(d);
  }
  return found;
}

/** Capture from another microphone; the old track is stopped. Returns the new track. */
export async function switchMic(deviceId) {
  local.micId = deviceId || null;
  const stream = await getUserMedia({ audio: audioConstraints() });
  const track = stream.getAudioTracks()[0];
  const old = local.mic;
  track.enabled = old ? old.enabled : true; // a muted microphone stays muted
  local.mic = track;
  local.micProblem = null;
  local.micDenied = false;
  old?.stop();
  return track;
}

/** Capture from another camera (or turn it back on); the old track is stopped. Returns the new track. */
export async function startCamera(deviceId = local.cameraId) {
  local.cameraId = deviceId || null;
  const stream = await getUserMedia({ video: videoConstraints() });
  const old = local.camera;
  local.camera = stream.getVideoTracks()[0];
  local.cameraOff = false;
  old?.stop();
  return local.camera;
}

/** Turn the camera off: its track is stopped, so the device's light goes out. */
export function stopCamera() {
  local.camera?.stop();
  local.camera = null;
  local.cameraOff = true;
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

/**
 * One look at the connection's audio statistics: `level`, the RMS (0..1) of what the server sent
 * since the previous call; `packets`, the audio packets received so far (Parley sends packets all
 * the time, silence included, so a count that stops growing means the media is gone; -1 with no
 * connection); `mic`, the microphone's level as the browser measures what it sends (null where
 * the browser does not report it).
 */
export async function audioStats(pc) {
  if (!pc || pc.connectionState !== "connected") return { level: 0, packets: -1, mic: null };
  let energy = 0;
  let duration = 0;
  let packets = 0;
  let mic = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      energy += s.totalAudioEnergy || 0;
      duration += s.totalSamplesDuration || 0;
      packets += s.packetsReceived || 0;
    } else if (s.type === "media-source" && s.kind === "audio" && typeof s.audioLevel === "number") {
      mic = s.audioLevel;
    }
  });
  const dt = duration - lastInbound.duration; // negative on a new connection: its counters restart
  const level = dt > 0 ? Math.sqrt(Math.max(0, energy - lastInbound.energy) / dt) : 0;
  lastInbound = { energy, duration };
  return { level, packets, mic };
}

let lastInbound = { energy: 0, duration: 0 };

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
