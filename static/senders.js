// What the page sends on the call: the peer connection's audio and video senders, which local
// track each carries, and what changes them (Mute, Start/Stop camera, Share screen, the device
// pickers), with the preview of the video sent.
//
// Invariants: once a connection is built, a track changes on it only through sendTrack (the new
// track replaces the old one in its sender, no renegotiation), and the video sent is limited to
// the frame rate and width of the server's welcome. The audio sender carries the microphone only
// while it is unmuted; muted, it carries nothing, so not even silence leaves the browser. While a
// screen is shared (local.screen), the video sender carries it, whatever the camera does.

import { setupDevices } from "./devices.js";
import { canShareScreen, currentVideoTrack, local, pickScreen, startCamera, stopCamera } from "./media.js";
import { notify } from "./notices.js";
import { load, save } from "./saved.js";

const CAMERA_OFF_KEY = "parley.cameraOff";

/**
 * Wire the media controls in ui. talk: push-to-talk (muting ends a hold); refresh(): recompute
 * the page's status after a change. Returns { attach, detach, limitVideo, useLimits, refill, show }.
 */
export function setupSenders(ui, { talk, refresh }) {
  const sent = {
    audio: null, // the current connection's senders; null without one
    video: null,
    limits: { max_fps: 2, max_width: 640 }, // the server's, from its welcome
  };
  const sharing = () => local.screen !== null;

  /** Take the senders of a connection built by media.js; a muted microphone stays off it. */
  async function attach(pc, videoSender) {
    sent.video = videoSender;
    sent.audio = pc.getTransceivers().find((t) => t.receiver.track.kind === "audio")?.sender || null;
    // Not through sendTrack: failing here fails the negotiation, which is then retried.
    if (local.mic && !local.mic.enabled) await sent.audio?.replaceTrack(null); // still muted
  }

  /** The connection is closed: nothing to send on. */
  function detach() {
    sent.audio = null;
    sent.video = null;
  }

  /** The server's video limits ({ max_fps, max_width }), from its welcome. */
  function useLimits(limits) {
    if (limits) sent.limits = limits;
  }

  /** The one way a track changes on the call: `track` (null: none) replaces the sender's, and video is limited. */
  async function sendTrack(kind, track) {
    await sent[kind]?.replaceTrack(track).catch((err) => console.error("replaceTrack", err));
    if (kind === "video") await limitVideo();
  }

  /**
   * Send only as much video as the server uses: it needs the picture when a turn starts, not a
   * smooth stream, and every frame sent is a frame it must decode.
   */
  async function limitVideo() {
    const sender = sent.video;
    if (!sender?.track) return;
    try {
      const params = sender.getParameters();
      if (!params.encodings?.length) params.encodings = [{}];
      const width = sender.track.getSettings().width || 0;
      params.encodings[0].maxFramerate = sent.limits.max_fps;
      params.encodings[0].scaleResolutionDownBy = width > sent.limits.max_width ? width / sent.limits.max_width : 1;
      await sender.setParameters(params);
    } catch (err) {
      console.warn("could not limit the video sent", err);
    }
  }

  async function toggleShare() {
    if (sharing()) return stopSharing();
    let track;
    try {
      track = await pickScreen();
    } catch (err) {
      notify("error", `Screen sharing failed: ${err?.message || err}`);
      return;
    }
    if (!track) return;
    local.screen = track;
    track.addEventListener("ended", () => local.screen === track && stopSharing());
    await sendTrack("video", track);
    refresh();
  }

  async function stopSharing() {
    const track = local.screen;
    local.screen = null;
    track?.stop();
    await sendTrack("video", local.camera);
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
    await sendTrack("audio", local.mic.enabled ? local.mic : null);
    notify("info", local.mic.enabled ? "Microphone on." : "Microphone muted: Parley hears nothing until you unmute.");
    refresh();
  }

  /** Camera off stops its track (the device's light goes out); on asks for it again. */
  async function toggleCamera() {
    if (local.camera) {
      stopCamera();
      if (!sharing()) await sendTrack("video", null);
    } else {
      try {
        const track = await startCamera();
        if (!sharing()) await sendTrack("video", track);
      } catch (err) {
        notify("error", `Could not start the camera: ${err?.message || err}`);
      }
    }
    save(CAMERA_OFF_KEY, local.cameraOff ? "1" : "0");
    refresh();
  }

  /** The buttons' labels and the preview of what the video sender carries. */
  function show() {
    ui.mute.disabled = !local.mic;
    ui.mute.textContent = local.mic && !local.mic.enabled ? "Unmute" : "Mute";
    ui.mute.classList.toggle("active", Boolean(local.mic && !local.mic.enabled));
    ui.camera.textContent = local.camera ? "Stop camera" : "Start camera";
    ui.camera.disabled = !local.settled;
    ui.share.textContent = sharing() ? (local.camera ? "Use camera" : "Stop sharing") : "Share screen";
    ui.share.classList.toggle("active", sharing());

    const track = currentVideoTrack();
    ui.video.classList.toggle("mirrored", track !== null && track === local.camera);
    ui.video.classList.toggle("empty", track === null && local.settled);
    ui.video.closest(".preview").dataset.empty = local.cameraOff && !track ? "Camera off" : "No camera";
    if (ui.video.srcObject?.getVideoTracks()[0] !== track) {
      ui.video.srcObject = track ? new MediaStream([track]) : null;
    }
  }

  // A choice in a picker has opened a new track (now local.mic or local.camera).
  const devices = setupDevices({
    notify,
    load,
    save,
    audio: ui.audio,
    onMic: async (track) => {
      await sendTrack("audio", track.enabled ? track : null);
      refresh();
    },
    onCamera: async (track) => {
      if (!sharing()) await sendTrack("video", track);
      save(CAMERA_OFF_KEY, "0");
      refresh();
    },
  });

  local.cameraOff = load(CAMERA_OFF_KEY) === "1";
  ui.share.addEventListener("click", toggleShare);
  ui.mute.addEventListener("click", toggleMute);
  ui.camera.addEventListener("click", toggleCamera);
  if (!canShareScreen()) {
    ui.share.disabled = true;
    ui.share.title = "This browser cannot share a screen";
  }

  return { attach, detach, limitVideo, useLimits, refill: devices.refill, show };
}
