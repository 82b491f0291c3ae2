// The device pickers (microphone, camera, speaker) and the voice's volume.
//
// Invariant: a choice takes effect at once on the live call (the new track replaces the old one in
// the connection's sender, no renegotiation) and is remembered for the next visit. The speaker
// picker is shown only where the browser can route audio (HTMLMediaElement.setSinkId), the
// volume only where the page may set it (not on iOS).

import { listDevices, local, startCamera, switchMic } from "./media.js";

const MIC_KEY = "parley.mic";
const CAMERA_KEY = "parley.camera";
const SPEAKER_KEY = "parley.speaker";
const VOLUME_KEY = "parley.volume";

export function setupDevices({ notify, load, save, audio, onMic, onCamera }) {
  const $ = (id) => document.getElementById(id);
  const mic = $("mic-select");
  const camera = $("camera-select");
  const speaker = $("speaker-select");
  const volume = $("volume");
  const canRoute = typeof audio.setSinkId === "function";
  $("speaker-row").hidden = !canRoute;
  $("speaker-row-label").hidden = !canRoute;

  // iOS Safari leaves a media element's volume to the device's buttons (it reads back 1).
  const probe = document.createElement("audio");
  probe.volume = 0.5;
  const canSetVolume = probe.volume === 0.5;
  volume.hidden = !canSetVolume;
  $("volume-label").hidden = !canSetVolume;

  local.micId = load(MIC_KEY);
  local.cameraId = load(CAMERA_KEY);
  const level = Number(load(VOLUME_KEY) ?? 100);
  volume.value = String(Number.isFinite(level) ? level : 100);
  audio.volume = Number(volume.value) / 100;

  function fill(select, list, current, none) {
    const options = list.map((d, i) => new Option(d.label || `${none} ${i + 1}`, d.deviceId));
    if (!options.length) options.push(new Option(`No ${none.toLowerCase()} found`, ""));
    select.replaceChildren(...options);
    if (current && list.some((d) => d.deviceId === current)) select.value = current;
    select.disabled = !list.length;
  }

  async function refill() {
    let found;
    try {
      found = await listDevices();
    } catch (err) {
      console.warn("enumerateDevices failed", err);
      return;
    }
    fill(mic, found.audioinput, local.mic?.getSettings?.().deviceId || local.micId, "Microphone");
    fill(camera, found.videoinput, local.camera?.getSettings?.().deviceId || local.cameraId, "Camera");
    if (canRoute) fill(speaker, found.audiooutput, audio.sinkId || load(SPEAKER_KEY), "Speaker");
  }

  /** A picker whose choice opens a new track (`open(deviceId)`) that replaces the old one (`use`). */
  function pick(select, key, open, use, what) {
    select.addEventListener("change", async () => {
      try {
        const track = await open(select.value);
        save(key, select.value);
        await use(track);
      } catch (err) {
        notify("error", `Could not use that ${what}: ${err?.message || err}`);
        refill();
      }
    });
  }
  pick(mic, MIC_KEY, switchMic, onMic, "microphone");
  pick(camera, CAMERA_KEY, startCamera, onCamera, "camera");
  speaker.addEventListener("change", async () => {
    try {
      await audio.setSinkId(speaker.value);
      save(SPEAKER_KEY, speaker.value);
    } catch (err) {
      notify("error", `Could not play through that speaker: ${err?.message || err}`);
    }
  });
  volume.addEventListener("input", () => {
    audio.volume = Number(volume.value) / 100;
    save(VOLUME_KEY, volume.value);
  });
  navigator.mediaDevices?.addEventListener?.("devicechange", refill);

  // The saved speaker, once the page may use it (setSinkId needs the media permission in some browsers).
  const savedSpeaker = load(SPEAKER_KEY);
  if (canRoute && savedSpeaker) audio.setSinkId(savedSpeaker).catch(() => {});

  return { refill };
}
