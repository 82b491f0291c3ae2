// How good the call's network link is, from the connection's statistics once a second, and the
// banner that says so when it is bad.
//
// Invariants: the link is judged over the last WINDOW_MS of statistics only (counters are
// differenced, never read as totals), and a window with too little in it judges nothing. The banner
// shows as soon as a window is poor (loss either way at or over POOR_LOSS, or the window's median
// round trip at or over POOR_RTT_S), and clears only after windows have been good for
// CLEAR_AFTER_MS, so it does not flicker. A new or closed connection starts afresh, its banner hidden. The server hears of each
// change of the banner once ("link"), and only of changes.
//
// Read from getStats, as Chromium and Firefox both name them: loss of Parley's voice coming in
// (inbound-rtp audio packetsLost and packetsReceived); loss of the page's audio going out, as the
// server's receiver reports tell it (remote-inbound-rtp audio packetsLost against its own
// packetsReceived where the browser gives it (Firefox), else against outbound-rtp packetsSent
// (Chromium), else its fractionLost); the round trip (remote-inbound-rtp roundTripTime, or the
// selected candidate pair's currentRoundTripTime).

const LOOK_MS = 1000;
const WINDOW_MS = 3000; // the link is judged over this much of the past
const MIN_SPAN_MS = 1800; // a shorter window (just connected) judges nothing yet
const MIN_PACKETS = 40; // fewer packets than this in a window give no loss figure (Parley sends 50 a second)
const POOR_LOSS = 0.05; // this share of packets lost, either way, is a poor link
const POOR_RTT_S = 0.5; // so is a round trip this long (the window's median: one late report from a busy server is no slow link)
const CLEAR_AFTER_MS = 4000; // the banner clears once the link has been good this long
const REWORD_POINTS = 5; // the shown loss is reworded when it moves this many percentage points

const isAudio = (r) => (r.kind || r.mediaType) === "audio";
const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);
const clamp01 = (x) => Math.min(1, Math.max(0, x));
const round3 = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

/** One look at the connection's counters: what the judgement needs, nothing else. */
async function sample(pc) {
  const stats = await pc.getStats();
  const s = { at: performance.now(), lostIn: 0, receivedIn: 0, sent: 0, rtt: null };
  Object.assign(s, { lostOut: null, receivedOut: null, fractionLost: null }); // the server's reports: null until one came
  let pairId = null;
  let pairRtt = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
  });
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && isAudio(r)) {
      s.lostIn += Math.max(0, num(r.packetsLost) ?? 0);
      s.receivedIn += num(r.packetsReceived) ?? 0;
    } else if (r.type === "outbound-rtp" && isAudio(r)) {
      s.sent += num(r.packetsSent) ?? 0;
    } else if (r.type === "remote-inbound-rtp" && isAudio(r)) {
      if (num(r.packetsLost) !== null) s.lostOut = (s.lostOut ?? 0) + Math.max(0, r.packetsLost);
      if (num(r.packetsReceived) !== null) s.receivedOut = (s.receivedOut ?? 0) + r.packetsReceived; // Firefox says it
      if (num(r.fractionLost) !== null) s.fractionLost = r.fractionLost;
      if (num(r.roundTripTime) !== null) s.rtt = r.roundTripTime;
    } else if (r.type === "candidate-pair" && (pairId ? r.id === pairId : r.selected || r.state === "succeeded")) {
      pairRtt = num(r.currentRoundTripTime) ?? pairRtt;
    }
  });
  if (s.rtt === null) s.rtt = pairRtt;
  return s;
}

/** The window's figures (null: not measured): { loss_in, loss_out, rtt_s }. */
function judge(samples) {
  const first = samples[0];
  const last = samples[samples.length - 1];
  const figures = { loss_in: null, loss_out: null, rtt_s: null };
  if (!first || last.at - first.at < MIN_SPAN_MS) return figures;

  const lostIn = Math.max(0, last.lostIn - first.lostIn);
  const expectedIn = lostIn + Math.max(0, last.receivedIn - first.receivedIn);
  if (expectedIn >= MIN_PACKETS) figures.loss_in = clamp01(lostIn / expectedIn);

  // What the server's receiver reports say it lost, of what it expected (Firefox) or of what was sent meanwhile (Chromium).
  const sent = last.sent - first.sent;
  const delta = (key) => (first[key] !== null && last[key] !== null ? Math.max(0, last[key] - first[key]) : null);
  const lostOut = delta("lostOut");
  const reported = lostOut !== null && delta("receivedOut") !== null ? lostOut + delta("receivedOut") : null;
  if (lostOut !== null && reported !== null && reported >= MIN_PACKETS) {
    figures.loss_out = clamp01(lostOut / reported);
  } else if (lostOut !== null && sent >= MIN_PACKETS) {
    figures.loss_out = clamp01(lostOut / sent);
  } else if (sent >= MIN_PACKETS && last.fractionLost !== null) {
    figures.loss_out = clamp01(last.fractionLost);
  }

  const rtts = samples
    .map((x) => x.rtt)
    .filter((x) => x !== null)
    .sort((a, b) => a - b);
  if (rtts.length) figures.rtt_s = rtts[Math.floor((rtts.length - 1) / 2)];
  return figures;
}

const isPoor = (f) => (f.loss_in ?? 0) >= POOR_LOSS || (f.loss_out ?? 0) >= POOR_LOSS || (f.rtt_s ?? 0) >= POOR_RTT_S;

/** What the banner says about these figures: what is wrong, and what to expect. */
export function linkText(f) {
  const loss = Math.max(f.loss_in ?? 0, f.loss_out ?? 0);
  const slow = (f.rtt_s ?? 0) >= POOR_RTT_S;
  const trip = slow ? `takes ${f.rtt_s.toFixed(1)}\u00a0s to reach Parley and back` : "";
  if (loss >= POOR_LOSS) {
    const lost = `Poor connection: ${Math.round(loss * 100)}\u00a0% of audio is being lost.`;
    return `${lost} Parley may mishear you or sound choppy; answers may take longer.${trip ? ` Audio ${trip}.` : ""}`;
  }
  if (slow) return `Slow connection: audio ${trip}. Answers will start later than usual, and Stop takes longer to be heard.`;
  return "";
}

/**
 * The watch of parley.pc and the banner in ui.link (its words in ui.linkText); send(event, data)
 * tells the server (false when it cannot now: the change is sent at the next look). Returns
 * { start() }; parley.link is the state, for the console and the tests.
 */
export function setupLink(ui, { parley, send }) {
  const link = (parley.link = {
    state: "good", // what the banner shows: "poor" (shown) or "good" (hidden)
    reported: "good", // what the server was last told
    figures: { loss_in: null, loss_out: null, rtt_s: null },
    shown: null, // { kind, loss } of the banner's words, to reword only when they would say something else
    goodSince: null, // while poor: since when the windows have been good
  });
  let samples = [];
  let pc = null;
  let looking = false;

  function show(poor, figures) {
    const text = poor ? linkText(figures) : "";
    if (text) {
      // Reworded when what is wrong changes, or the loss moves enough: not every second (it is a live region).
      const loss = Math.round(Math.max(figures.loss_in ?? 0, figures.loss_out ?? 0) * 100);
      const kind = `${loss >= POOR_LOSS * 100}/${(figures.rtt_s ?? 0) >= POOR_RTT_S}`;
      const shown = link.shown;
      if (ui.link.hidden || !shown || shown.kind !== kind || Math.abs(shown.loss - loss) >= REWORD_POINTS) {
        ui.linkText.textContent = text;
        link.shown = { kind, loss };
      }
    }
    if (!poor) link.shown = null;
    ui.link.hidden = !poor;
    document.body.dataset.link = poor ? "poor" : "good";
  }

  function change(state) {
    link.state = state;
    link.goodSince = null;
  }

  function reset() {
    samples = [];
    change("good");
    show(false, link.figures);
  }

  async function look() {
    if (looking) return;
    looking = true;
    try {
      const current = parley.pc;
      if (current !== pc) {
        pc = current;
        reset();
      }
      if (!pc || pc.connectionState !== "connected") {
        if (samples.length || link.state === "poor") reset();
        return;
      }
      const s = await sample(pc).catch(() => null);
      if (!s || parley.pc !== pc) return;
      samples.push(s);
      while (samples.length > 1 && s.at - samples[0].at > WINDOW_MS) samples.shift();

      const figures = judge(samples);
      if (figures.loss_in === null && figures.loss_out === null && figures.rtt_s === null) return; // nothing to go on yet
      link.figures = figures;
      if (isPoor(figures)) {
        change("poor");
      } else if (link.state === "poor") {
        link.goodSince ??= s.at;
        if (s.at - link.goodSince >= CLEAR_AFTER_MS) change("good");
      }
      show(link.state === "poor", figures);
      if (link.state !== link.reported) {
        const { loss_in, loss_out, rtt_s } = figures;
        if (send("link", { state: link.state, loss_in: round3(loss_in), loss_out: round3(loss_out), rtt_s: round3(rtt_s) })) {
          link.reported = link.state;
        }
      }
    } finally {
      looking = false;
    }
  }

  return {
    start() {
      setInterval(look, LOOK_MS);
    },
  };
}
