"""A microphone for Chromium that plays what a test or benchmark says, when it says it.

Invariant: installed with `page.add_init_script(INIT_JS)` before the page loads, it replaces the
audio of getUserMedia with a WebAudio stream (the camera stays Chromium's fake device), so speech
starts and ends at known times instead of looping a WAV at an unknown phase. It also times, on the
page's own clock, the first sound of the answer after a release, and records the socket's metrics,
recording, notice and state events. `window.__bench.say(Float32Array)` plays speech (48 kHz mono);
`window.__bench.setEcho(db)` mixes what the page plays back into the microphone.
"""

from __future__ import annotations

import base64

import numpy as np

# Runs before the page's own scripts, in every frame the page opens.
INIT_JS = """
(() => {
  if (window !== window.top || !navigator.mediaDevices) return;
  const LEAD_S = 0.05; // the question starts this long after say() is called
  const bench = (window.__bench = {
    ctx: null, mic: null, questions: [], metrics: [], recording: [], notices: [], hooked: null,
    watched: null, analyser: null, data: null, offsets: [], offset: 0,
    threshold: 0.01, releasedAt: null, heard: null, heardPoll: null, lastLoud: 0, floor: 0, noise: null,
    echoGain: 0, echo: null, echoSource: null, states: [],
  });

  const audio = () => {
    if (bench.ctx) return bench.ctx;
    bench.ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
    bench.mic = new MediaStreamAudioDestinationNode(bench.ctx, { channelCount: 1 });
    setInterval(tick, 5);
    return bench.ctx;
  };

  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints = {}) => {
    const tracks = [];
    if (constraints.video) tracks.push(...(await original({ video: constraints.video })).getVideoTracks());
    if (constraints.audio) {
      audio();
      tracks.push(bench.mic.stream.getAudioTracks()[0]);
    }
    return new MediaStream(tracks);
  };

  // performance.now() at which the graph renders context time t: the render thread advances
  // currentTime a block at a time, so now - currentTime is smallest right after a block.
  const perfAt = (t) => bench.offset + t * 1000;

  function tick() {
    const now = performance.now();
    bench.offsets.push(now - bench.ctx.currentTime * 1000);
    if (bench.offsets.length > 200) bench.offsets.shift();
    bench.offset = Math.min(...bench.offsets);
    const socket = window.parley?.socket;
    if (socket && socket !== bench.hooked) hook(socket);
    const pc = window.parley?.pc || null;
    if (pc !== bench.watched) attach(pc);
    if (bench.analyser) listen(now);
  }

  function hook(socket) {
    bench.hooked = socket;
    socket.on("state", (m) => bench.states.push({ id: String(m.id), state: m.state, at: performance.now() }));
    const at = (list) => (m) => list.push({ ...m, at: performance.now() });
    socket.on("metrics", at(bench.metrics));
    socket.on("recording", at(bench.recording));
    socket.on("notice", at(bench.notices));
  }

  function attach(pc) {
    bench.analyser?.disconnect();
    bench.analyser = null;
    const receiver = pc?.getReceivers().find((r) => r.track && r.track.kind === "audio");
    if (!receiver) return void (bench.watched = null); // no transceiver yet: try again next tick
    const ctx = bench.ctx;
    const source = ctx.createMediaStreamSource(new MediaStream([receiver.track]));
    bench.analyser = new AnalyserNode(ctx, { fftSize: 1024 });
    bench.data = new Float32Array(bench.analyser.fftSize);
    const mute = new GainNode(ctx, { gain: 0 }); // keeps the analyser pulled; the <audio> element plays
    source.connect(bench.analyser).connect(mute).connect(ctx.destination);
    // What the page plays, back into its own microphone (a loudspeaker beside it): `setEcho`. Only
    // connected while there is echo: a connected input, even at gain 0, keeps the microphone sending.
    bench.echoSource = source;
    bench.echo?.disconnect();
    bench.echo = null;
    connectEcho();
    bench.watched = pc;
  }

  function listen(now) {
    const data = bench.data;
    bench.analyser.getFloatTimeDomainData(data);
    let peak = 0;
    let first = -1;
    for (let i = 0; i < data.length; i++) {
      const a = Math.abs(data[i]);
      if (a > peak) peak = a;
      if (first < 0 && a > bench.threshold) first = i;
    }
    if (first < 0) {
      if (bench.releasedAt === null) bench.floor = Math.max(bench.floor, peak);
      return;
    }
    bench.lastLoud = now;
    if (bench.releasedAt === null || bench.heard !== null) return;
    const onset = perfAt(bench.ctx.currentTime - (data.length - first) / bench.ctx.sampleRate);
    bench.heard = Math.min(now, Math.max(onset, bench.releasedAt));
    bench.heardPoll = now;
  }

  /** The microphone's floor: "none" (nothing between words: Chromium then sends no packets), "dither"
   * (white noise at `dbfs`, inaudible at -80: it keeps sending, as a hardware microphone does) or
   * "brown" (a fan-like noise at `dbfs`). Made here, seeded, looping 10 s. */
  bench.setNoise = (kind, dbfs = -80) => {
    const ctx = audio();
    bench.noise?.stop();
    bench.noise = null;
    if (kind === "none") return;
    const length = ctx.sampleRate * 10;
    const buffer = new AudioBuffer({ length, numberOfChannels: 1, sampleRate: ctx.sampleRate });
    const data = new Float32Array(length);
    let seed = 12345;
    const uniform = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
    let level = 0;
    for (let i = 0; i < length; i++) {
      if (kind === "brown") level = 0.998 * level + 0.02 * uniform(); // leaky: it does not drift
      data[i] = kind === "brown" ? level : uniform();
    }
    let power = 0;
    for (let i = 0; i < length; i++) power += data[i] * data[i];
    const gain = Math.pow(10, dbfs / 20) / Math.sqrt(power / length);
    for (let i = 0; i < length; i++) data[i] *= gain;
    buffer.copyToChannel(data, 0);
    bench.noise = new AudioBufferSourceNode(ctx, { buffer, loop: true });
    bench.noise.connect(bench.mic);
    bench.noise.start();
  };

  /** Audio packets the page has sent so far (outbound-rtp). */
  bench.packetsSent = async () => {
    let sent = 0;
    (await window.parley?.pc?.getStats())?.forEach((r) => {
      if (r.type === "outbound-rtp" && r.kind === "audio") sent += r.packetsSent || 0;
    });
    return sent;
  };

  /** Parley's own voice back into the microphone at `db` relative to what the page plays (null: none),
   * as a speakerphone with no echo cancelling of its own. */
  bench.setEcho = (db) => {
    audio();
    bench.echoGain = db === null ? 0 : Math.pow(10, db / 20);
    bench.echo?.disconnect();
    bench.echo = null;
    connectEcho();
  };

  function connectEcho() {
    if (!bench.echoSource || bench.echoGain <= 0) return;
    bench.echo = new GainNode(bench.ctx, { gain: bench.echoGain });
    bench.echoSource.connect(bench.echo).connect(bench.mic);
  }

  bench.load = (encoded) => {
    bench.questions = encoded.map((b64) => new Float32Array(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer));
  };

  /** Play a question (Float32Array at 48 kHz, or a URL) into the microphone; resolves with when it ends. */
  bench.say = async (what) => {
    const ctx = audio();
    let buffer;
    if (typeof what === "string") buffer = await ctx.decodeAudioData(await (await fetch(what)).arrayBuffer());
    else {
      buffer = new AudioBuffer({ length: what.length, numberOfChannels: 1, sampleRate: ctx.sampleRate });
      buffer.copyToChannel(what, 0);
    }
    const node = new AudioBufferSourceNode(ctx, { buffer });
    node.connect(bench.mic);
    const ctxEnd = ctx.currentTime + LEAD_S + buffer.duration;
    const ended = new Promise((resolve) => node.addEventListener("ended", () => resolve(performance.now())));
    node.start(ctxEnd - buffer.duration);
    return { ctxEnd, perfEnd: perfAt(ctxEnd), ended };
  };

  const until = (at) => new Promise((resolve) => setTimeout(resolve, Math.max(0, at - performance.now())));

  /** Say question `index`, then release Space `releaseAfterMs` after its last sample; hands-free,
   * release nothing: the first audio is timed from the question's last sample. Also counts the
   * packets the microphone sent between the last sample and the release (none: it goes silent). */
  bench.turn = async (index, releaseAfterMs, handsFree = false) => {
    bench.releasedAt = bench.heard = bench.heardPoll = null;
    bench.floor = 0;
    const spoken = await bench.say(bench.questions[index]);
    await until(spoken.perfEnd + 20); // the last packet of speech leaves 20 ms after its audio
    const sentAtEnd = await bench.packetsSent();
    const target = spoken.perfEnd + releaseAfterMs;
    await until(target);
    const released = handsFree ? spoken.perfEnd : performance.now();
    const sentAtRelease = await bench.packetsSent();
    bench.releasedAt = released;
    const keyup = { code: "Space", key: " ", bubbles: true, cancelable: true };
    if (!handsFree) document.dispatchEvent(new KeyboardEvent("keyup", keyup));
    const endedAt = await Promise.race([spoken.ended, new Promise((resolve) => setTimeout(() => resolve(NaN), 5000))]);
    return { target, released, perfEnd: spoken.perfEnd, endedAt, floor: bench.floor, sentBetween: sentAtRelease - sentAtEnd };
  };
})();
"""


def encode(audio: np.ndarray) -> str:
    """Float32 little-endian samples as base64, for the page's Float32Array (`window.__bench.load`)."""
    return base64.b64encode(np.ascontiguousarray(audio, "<f4").tobytes()).decode()
