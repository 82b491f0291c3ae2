// Whether the call's media flows, and how loud each side is: a look at the connection's audio
// statistics several times a second.
//
// Invariants: media is up only while the server has welcomed the connection, WebRTC is connected
// and Parley's audio keeps arriving (Parley sends audio all the time, silence too, so packets
// that stop mean a loss); lostAt marks when media that was up stopped (null while it is up, or
// if it never was). "Parley is speaking" lasts a short hangover past the last loud moment, so it
// does not flicker between words. A new connection starts its packet count afresh.

import { audioStats, local } from "./media.js";

const AUDIO_GONE_MS = 2000; // Parley sends audio all the time (silence too): none for this long is a loss
const WATCH_MS = 150;
const SPEAKING_LEVEL = 0.01;
const SPEAKING_HANGOVER_MS = 500;

/**
 * The watch of parley.pc, with the levels shown in ui; ready() says whether the server welcomed
 * the connection, talk whether the user holds to talk; refresh() follows each look. Returns the
 * state ({ up, lostAt, speaking }) with track(now), newConnection() and start().
 */
export function setupFlow(ui, { parley, ready, talk, refresh }) {
  const flow = {
    up: false,
    lostAt: null,
    speaking: false,
    packets: { count: -1, at: 0 },
    lastLoud: -Infinity, // no "Parley is speaking" before any audio came
    watching: false,
    track,
    newConnection() {
      flow.packets = { count: -1, at: 0 };
    },
    start() {
      setInterval(watch, WATCH_MS);
    },
  };

  /** Several times a second: is Parley's audio arriving, how loud are both sides. */
  async function watch() {
    if (flow.watching) return;
    flow.watching = true;
    try {
      const stats = await audioStats(parley.pc).catch(() => ({ level: 0, packets: -1, mic: null }));
      const now = performance.now();
      if (stats.packets > flow.packets.count) flow.packets = { count: stats.packets, at: now };
      if (stats.level > SPEAKING_LEVEL) flow.lastLoud = now;
      flow.speaking = now - flow.lastLoud < SPEAKING_HANGOVER_MS;
      ui.parleyLevel.value = Math.min(1, stats.level * 5);
      const listening = talk.holding || ui.handsFree.checked;
      ui.micLevel.value = listening && local.mic?.enabled ? Math.min(1, (stats.mic || 0) * 3) : 0;
      ui.micLevel.closest(".level-row").hidden = !listening || stats.mic === null;
    } finally {
      flow.watching = false;
    }
    refresh();
  }

  /** Is media flowing now (welcomed, WebRTC connected, Parley's audio arriving)? Marks when it stopped. */
  function track(now) {
    const up = Boolean(
      ready() && parley.pc?.connectionState === "connected" && flow.packets.count > 0 && now - flow.packets.at < AUDIO_GONE_MS,
    );
    if (up) flow.lostAt = null;
    else if (flow.up) flow.lostAt = now;
    flow.up = up;
  }

  return flow;
}
