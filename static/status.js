// The one status the page shows, and why: a pure function of what the page knows about its
// socket, its media and its devices, so every part of the page agrees on it.
//
// Invariant: every state that waits has a time limit, after which its reason says what is wrong
// and what the user can do; the state itself names what the user can rely on now.

const CONNECT_LIMIT_MS = 10_000; // the server has not answered at all
const PERMISSION_LIMIT_MS = 20_000; // the browser's permission prompt is still open
const MEDIA_LIMIT_MS = 15_000; // audio and video have not started after the welcome
const LOST_TO_RECONNECTING_MS = 10_000; // media lost this long: say we are reconnecting

/**
 * [state, reason] from a snapshot of the page:
 * now, openedAt, welcomedAt, lostAt (when media that was up stopped; null if it is up or never was)
 * (performance.now() times); socket (the socket.io client, or null if it did not load); everConnected;
 * welcomed; refused (why the server refused the socket, or null); rejection ({code, reason} or null);
 * mediaUp; failures (negotiations failed in a row); local (media.js's tracks and problems).
 */
export function pageStatus(s) {
  const { now, socket, local } = s;
  if (s.refused && !socket?.connected) {
    if (!socket) return ["offline", `Parley can't start: ${s.refused}.`];
    return ["refused", `The server refused this page: ${s.refused}`];
  }
  if (s.rejection) return [s.rejection.code === "full" ? "full" : "refused", `${s.rejection.reason} Trying again every 10 s.`];
  if (s.mediaUp) {
    if (local.micDenied) return ["denied", `${local.micProblem}. You can still type.`];
    if (!local.mic) return ["ready", "No microphone: you can type, and Parley answers aloud."];
    return ["ready", local.mic.enabled ? "" : "Microphone muted."];
  }
  if (s.lostAt !== null) {
    const lostFor = now - s.lostAt;
    const why = socket?.connected ? "Parley's audio stopped arriving." : "The connection to Parley's server was lost.";
    if (lostFor < LOST_TO_RECONNECTING_MS) return ["media-lost", `${why} Reconnecting…`];
    return ["reconnecting", `${why} Still trying to reach it (${Math.round(lostFor / 1000)} s); your typed text stays in the box.`];
  }
  if (!socket?.connected) {
    if (s.everConnected) return ["reconnecting", "The connection to Parley's server was lost. Trying again…"];
    if (now - s.openedAt > CONNECT_LIMIT_MS)
      return ["connecting", "The server is not answering: check that Parley is running and the address is right. Still trying…"];
    return ["connecting", "Reaching Parley's server…"];
  }
  if (!s.welcomed) return ["connecting", "Joining the conversation…"];
  if (local.micDenied) return ["denied", `${local.micProblem}. You can still type.`];
  if (!local.settled) {
    if (now - s.welcomedAt > PERMISSION_LIMIT_MS)
      return ["connecting", "The browser is still waiting for you to allow the microphone and camera: answer its prompt. You can type meanwhile."];
    return ["connecting", "Waiting for the microphone and camera…"];
  }
  if (now - s.welcomedAt > MEDIA_LIMIT_MS)
    return ["media-lost", "Audio and video could not connect (a firewall may block UDP, or a TURN server is needed). Still trying; you can type meanwhile."];
  return ["connecting", s.failures > 0 ? "Setting up audio and video again…" : "Setting up audio and video…"];
}
