"""Does a conversation hold up when packets go missing? Parley's voice, the user's, and the wait.

Three parts, for each loss level (--loss, default 0,3,10,20 % of packets, random):

- **hearing** (no browser, no root): the hearing benchmark's clips (benchmarks/hearing.py: its
  sentences and voices, clean) are encoded as a browser sends them (Opus 32 kb/s with in-band FEC,
  as Chromium's encoder adds once the server's reports show loss, sized for 10 % at every level so
  that only the losses differ; and RED with one earlier packet, as Chromium sends it to Parley),
  packets are dropped at random (seeded), and
  what is left goes through a receiver into the session's `Recorder` and the app's default ASR:
  - `aiortc`: what the server did before: the packets that came, decoded; a hole is silence;
  - `fec+plc`: `parley.ingress.loss.MicrophoneBuffer` without RED (Firefox sends none);
  - `red`: the same buffer reading Chromium's RED.
  It prints, per receiver and loss, the words each clip's transcript has that differ from the same
  clip heard with no loss (mean, worst, and the share within one word), and the word error rate.
- **browser** (--browser; as root, in a loopback-only namespace: `unshare --net`): the app on a
  local Ray and headless Chromium (benchmarks/browser_voice.py's page and hooks), with that share of
  UDP datagrams dropped both ways by nftables (tests/support/loss.py) from before the page
  connects: per level, push-to-talk turns (--turns) and for each, release -> first audio heard;
  the share of Parley's voice Chromium had to conceal (getStats: concealedSamples -
  silentConcealedSamples over totalSamplesReceived), the FEC packets it received, and the
  transcripts against the loss-free level's.
- **firefox** (--firefox; as root, likewise): the same turns (the same questions, hibari) in Debian's
  Firefox ESR (tests/support/firefox_driver.py, its own PulseAudio null sink), a fresh browser per
  level connecting under the loss, with tests/support/browser_mic.py's microphone: Space held by the
  driver until the server records, then `__bench.turn` says the question and releases Space in the
  page, as in Chromium. Firefox offers no RED, so Parley's voice comes with Opus in-band FEC only. Per
  level: release -> first audio heard (the same hooks: an AnalyserNode on the received track), with
  release -> the first rise of getStats totalAudioEnergy (polled every 20 ms) beside it as a check;
  the share of Parley's voice concealed, as for Chromium; fecPacketsReceived, which counts every
  packet that came carrying FEC, used or not, and those less fecPacketsDiscarded (FEC used); packets
  lost/received; and the transcripts against the loss-free level's (turns it did not hear left out).
  A turn is given FIREFOX_TURN_S; one that runs over, or a page that does not connect, gives its level
  up with the problem printed under the table.

    python benchmarks/network.py                                   # hearing only
    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/network.py --browser --turns 4'
    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/network.py --no-hearing --firefox --turns 4'

A benchmark, not a test: it prints numbers and passes or fails nothing. Flags it does not know go to
the app it starts (`--asr-model tiny.en`, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.asr_noise import edit_distance, normalise  # noqa: E402
from benchmarks.hearing import AFTER_S, LEAD_S, MIC_RATE, SENTENCES, VOICES  # noqa: E402
from deployments.asr import SAMPLE_RATE, FasterWhisperBackend, resolve_model  # noqa: E402
from media.echo import EchoCanceller  # noqa: E402
from media.opus import OpusEncoder, decode_opus_frames  # noqa: E402
from media.speech import trim  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from parley.engine.recorder import Recorder  # noqa: E402
from parley.engine.settings import TurnSettings  # noqa: E402
from parley.engine.utterance import END_PAD_S  # noqa: E402

RED_TYPE, OPUS_TYPE = 63, 111
RECEIVERS = ("aiortc", "fec+plc", "red")


# -- hearing -----------------------------------------------------------------------------------


def _frame(pcm: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = MIC_RATE
    frame.pts = pts
    frame.time_base = Fraction(1, MIC_RATE)
    return frame


def received(stream: np.ndarray, loss: float, seed: int, receiver: str, fec_pct: int = 10) -> list[av.AudioFrame]:
    """The microphone frames the server's recorder gets for `stream` sent over a link losing `loss` %
    (encoded alike at every loss level, so only the losses differ)."""
    encoder = OpusEncoder(MIC_RATE, bitrate=32000, fec_loss_pct=fec_pct)
    packets = [p.data for p in encoder.encode(stream) + encoder.flush()]
    rng = np.random.default_rng(seed)
    arrives = [i == 0 or rng.random() >= loss / 100 for i in range(len(packets))]
    if receiver == "aiortc":
        # aiortc's buffer handed on the packets that came to one decoder, which knew nothing of the holes.
        came = [(i, p) for i, (p, ok) in enumerate(zip(packets, arrives, strict=True)) if ok]
        pcm = decode_opus_frames([p for _, p in came])
        return [_frame(pcm[960 * n : 960 * (n + 1)], 960 * i) for n, (i, _) in enumerate(came)]
    from parley.ingress.loss import MicrophoneBuffer, RedPacker

    frames: list[av.AudioFrame] = []
    buffer = MicrophoneBuffer(lambda: True, frames.append, red_types={RED_TYPE} if receiver == "red" else set())
    packer = RedPacker(OPUS_TYPE, depth=1)  # Chromium sends one earlier packet
    for i, (data, ok) in enumerate(zip(packets, arrives, strict=True)):
        payload_type = OPUS_TYPE
        if receiver == "red":
            packet = av.Packet(data)
            packet.pts, packet.time_base = 960 * i, Fraction(1, MIC_RATE)
            data, payload_type = packer.pack(packet)[0][0], RED_TYPE
        if ok:
            from aiortc.rtp import RtpPacket

            rtp = RtpPacket(payload_type=payload_type, sequence_number=i, timestamp=960 * i, payload=data)
            rtp._data = data  # type: ignore[attr-defined]
            buffer.add(rtp)
    return frames


def turn_audio(frames: list[av.AudioFrame]) -> np.ndarray:
    """The push-to-talk turn's audio as the app cuts it (hearing.turn_audio, from frames that may have holes)."""
    recorder = Recorder(TurnSettings(hands_free=False), max_record_s=60.0, canceller=EchoCanceller(lambda: None))
    lead = round(LEAD_S * MIC_RATE)
    before = [f for f in frames if (f.pts or 0) < lead]
    recorder.preload(np.concatenate([f.to_ndarray().reshape(-1) for f in before]), MIC_RATE)
    start = recorder.press().sample
    for frame in frames:
        if (frame.pts or 0) >= lead:
            recorder.feed(frame)
    end = recorder.release()
    assert end is not None
    return recorder.audio(start, end.sample + round(END_PAD_S * SAMPLE_RATE))


@dataclass
class Heard:
    receiver: str
    loss: float
    clip: int
    sentence: str
    text: str
    errors: int
    words: int
    off_clean: int = 0
    """Words that differ from the same clip heard with no loss."""


def hearing(args: argparse.Namespace) -> list[Heard]:
    engine = FasterWhisperBackend(ASRConfig())
    model = resolve_model(ASRConfig().model) or "tiny.en"
    voices = [v for v in args.voices.split(",") if v]
    print(
        f"hearing: {args.sentences} sentences x {len(voices)} voices, ASR {model}; receivers {', '.join(RECEIVERS)}", flush=True
    )
    clips: list[tuple[str, np.ndarray]] = []
    for sentence in SENTENCES[: args.sentences]:
        for voice in voices:
            lead, after = np.zeros(round(LEAD_S * MIC_RATE), np.float32), np.zeros(round(AFTER_S * MIC_RATE), np.float32)
            clips.append((sentence, np.concatenate([lead, trim(VOICES[voice](sentence)), after])))
    results: list[Heard] = []
    started = time.perf_counter()
    for n, (sentence, stream) in enumerate(clips):
        for receiver in RECEIVERS:
            clean: list[str] | None = None
            for loss in args.levels:
                text = engine.transcribe(turn_audio(received(stream, loss, seed=1000 + n, receiver=receiver))).text
                ref, got = normalise(sentence), normalise(text)
                if clean is None:
                    clean = got
                results.append(
                    Heard(receiver, loss, n, sentence, text, edit_distance(ref, got), len(ref), edit_distance(clean, got))
                )
                if args.verbose and results[-1].off_clean > 1:
                    print(f"    {receiver:8s} {loss:4.0f} % {sentence!r} -> {text!r}", flush=True)
        print(f"  {n + 1}/{len(clips)} clips ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def print_hearing(results: list[Heard], levels: list[float]) -> None:
    print("\nthe user's words through loss (words off the loss-free transcript: mean / worst / clips within one; WER)")
    print(f"{'receiver':10s}" + "".join(f"{f'{loss:g} %':>26s}" for loss in levels))
    for receiver in RECEIVERS:
        cells = []
        for loss in levels:
            rs = [r for r in results if r.receiver == receiver and r.loss == loss]
            off = [r.off_clean for r in rs]
            within = sum(o <= 1 for o in off)
            wer = 100 * sum(r.errors for r in rs) / max(1, sum(r.words for r in rs))
            cells.append(f"{statistics.mean(off):.2f}/{max(off)}/{within}of{len(off)} {wer:4.1f}%")
        print(f"{receiver:10s}" + "".join(f"{c:>26s}" for c in cells))


# -- browser -------------------------------------------------------------------------------------


@dataclass
class Level:
    loss: float
    heard_ms: list[float] = field(default_factory=list)
    concealed: float | None = None
    fec: int = 0
    lost: int = 0
    packets: int = 0
    transcripts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rise_ms: list[float] = field(default_factory=list)
    """Firefox: release -> first rise of getStats' totalAudioEnergy (a cross-check of heard_ms)."""
    fec_discarded: int | None = None
    """Firefox: FEC packets it received and threw away (their primary had come)."""
    asked: int = 0
    """Firefox: turns begun (fewer than --turns when the level was given up)."""
    buffer_ms: float | None = None
    """The browser's jitter buffer: its mean delay over the samples it played in the level."""


def account(level: Level, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The level's concealment, FEC and packet counts between two CONCEALMENT_JS readings."""
    made_up = (after["concealed"] - after["silentConcealed"]) - (before["concealed"] - before["silentConcealed"])
    samples = after["received"] - before["received"]
    level.concealed = made_up / samples if samples > 0 else None
    level.fec = after["fec"] - before["fec"]
    level.lost, level.packets = after["lost"] - before["lost"], after["packets"] - before["packets"]
    emitted = after.get("jbEmitted", 0) - before.get("jbEmitted", 0)
    if emitted > 0:
        level.buffer_ms = 1000 * (after.get("jbDelay", 0) - before.get("jbDelay", 0)) / emitted


async def browser(args: argparse.Namespace, url: str) -> list[Level]:
    from benchmarks.browser_voice import QUESTIONS, one_turn, opened, say, wait_quiet
    from tests.support.browser_mic import encode
    from tests.support.loss import CONCEALMENT_JS, udp_loss

    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    audio = {q: say(q, "hibari") for q in dict.fromkeys(questions)}
    order = list(audio)
    levels = []
    for loss in args.levels:
        level = Level(loss)
        log: list[str] = []
        with udp_loss(loss):
            async with opened(url, 0.01, log, False) as page:
                await page.evaluate("(list) => window.__bench.load(list)", [encode(audio[q]) for q in order])
                await page.evaluate("([k, db]) => window.__bench.setNoise(k, db)", ["none", -80.0])
                await wait_quiet(page)
                before = await page.evaluate(CONCEALMENT_JS)
                for question in questions:
                    turn = await one_turn(page, question, order.index(question), 0.3, False)
                    if turn.problem:
                        level.problems.append(turn.problem)
                    elif turn.heard_ms is not None:
                        level.heard_ms.append(turn.heard_ms)
                    level.transcripts.append(turn.transcript)
                    await wait_quiet(page)
                after = await page.evaluate(CONCEALMENT_JS)
        account(level, before, after)
        levels.append(level)
        p50 = statistics.median(level.heard_ms) if level.heard_ms else float("nan")
        print(
            f"  {loss:g} %: release -> first audio p50 {p50:.0f} ms of {len(level.heard_ms)}; problems {level.problems}",
            flush=True,
        )
    return levels


# -- Firefox --------------------------------------------------------------------------------------

FIREFOX_CONNECT_S = 45
FIREFOX_TURN_S = 150
CLOCK_SETTLE_S = 2.5
"""Seconds the bench microphone's clock runs before the first turn (> 200 ticks of its 5 ms timer)."""
"""A turn longer than this gives its level up (the page is left as it is; the next level starts afresh)."""
ENERGY_S = 1e-6
"""A rise of totalAudioEnergy this big counts as sound: 10 ms at the hooks' 0.01 threshold."""
INBOUND_ENERGY_JS = """async () => {
    let energy = 0;
    (await window.parley.pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') energy += r.totalAudioEnergy || 0;
    });
    return energy;
}"""
WATCH_ENERGY_JS = f"""(eps) => {{
    const b = window.__bench, energy = {INBOUND_ENERGY_JS};
    if (b.energyWatch) b.energyWatch.stop = true;
    b.releasedAt = null; // the last turn's; __bench.turn sets it anew at its release
    const w = (b.energyWatch = {{ base: null, rise: null, polls: 0, stop: false, began: performance.now() }});
    const poll = async () => {{
        if (w.stop || performance.now() - w.began > {FIREFOX_TURN_S * 1000}) return;
        const e = await energy();
        w.polls++;
        if (b.releasedAt === null || w.base === null) w.base = e;
        else if (e > w.base + eps) return void (w.rise = performance.now());
        setTimeout(poll, 20);
    }};
    poll();
    return true;
}}"""
"""From now until the page's release (`__bench.turn` sets releasedAt) and after it, poll the received
audio's energy every 20 ms; `__bench.energyWatch.rise` is when it first rose over its value at the release."""
QUIET_JS = f"""async (q) => {{
    const b = window.__bench, e = await ({INBOUND_ENERGY_JS})(), now = performance.now();
    if (b.quietEnergy === undefined || e > b.quietEnergy + {ENERGY_S}) {{ b.quietEnergy = e; b.quietSince = now; }}
    return now - b.quietSince > q && now - b.lastLoud > q;
}}"""
"""Nothing above the hooks' threshold and no rise of the received energy for `q` ms."""
FEC_DISCARDED_JS = """(async () => {
    let discarded = null;
    (await window.parley.pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio' && r.fecPacketsDiscarded !== undefined)
            discarded = (discarded || 0) + r.fecPacketsDiscarded;
    });
    return discarded;
})()"""
RECORDING_JS = "(n) => window.__bench.recording.slice(n).some((r) => r.active)"
DONE_JS = "([m, n]) => window.__bench.metrics.length > m || window.__bench.notices.length > n"


FIREFOX_NOTES = """first audio: release -> the hooks' AnalyserNode first above 0.01; energy: release -> the first rise of
totalAudioEnergy (getStats, polled every 20 ms). FEC pkts: Firefox's fecPacketsReceived, which (libwebrtc's
NetEq) counts every arriving packet that carries Opus in-band FEC, used or not; FEC used: less fecPacketsDiscarded
(FEC whose own packet had come). concealed: (concealedSamples - silentConcealedSamples) / totalSamplesReceived."""


class GiveUp(Exception):
    """The level cannot go on (a turn ran out of time, Firefox or its driver failed)."""


async def firefox_turn(page: Any, level: Level, index: int) -> None:
    """One push-to-talk turn in Firefox, as browser_voice.press_and_speak does it in Chromium: Space
    held by the driver until the server records, then `__bench.turn` says the question and releases
    Space in the page 0.3 s after its last word. Adds what it measured to `level`."""
    from benchmarks.browser_voice import STATE_JS, TEXTS_JS
    from tests.support.firefox_driver import DriverError

    seen, notices = await page.evaluate("[window.__bench.metrics.length, window.__bench.notices.length]")
    recordings = await page.evaluate("window.__bench.recording.length")
    await page.evaluate(WATCH_ENERGY_JS, ENERGY_S)
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    await page.key_down(" ")
    try:
        try:
            await page.wait_for(RECORDING_JS, recordings, timeout_ms=10000, polling_ms=20)
        except DriverError:
            level.problems.append(f"turn {index + 1}: the server did not start recording within 10 s of Space going down")
            level.transcripts.append("")
            return
        timing = await page.evaluate("([i, ms]) => window.__bench.turn(i, ms)", [index, 300])
    finally:
        await page.key_up(" ")  # the page saw its keyup already; this lets the driver's Space up
    try:
        await page.wait_for(DONE_JS, [seen, notices], timeout_ms=120000, polling_ms=50)
    except DriverError:
        raise GiveUp(f"turn {index + 1}: no metrics within 120 s") from None
    state = await page.evaluate(STATE_JS)
    if len(state["metrics"]) <= seen:
        said = "; ".join(n.get("text", "") for n in state["notices"][notices:])
        late = timing["endedAt"] - timing["perfEnd"]  # > 0: the question played on past the release
        level.problems.append(f"turn {index + 1}: server notice: {said} (question ended {late:+.0f} ms from its scheduled end)")
        level.transcripts.append("")
        return
    metrics = state["metrics"][seen]
    if state["heard"] is not None:
        level.heard_ms.append(state["heard"] - state["releasedAt"])
    rise = await page.evaluate("window.__bench.energyWatch.rise")
    if rise is None:  # the answer's metrics come once it is sent; its sound may be a moment later
        try:
            rise = await page.wait_for("window.__bench.energyWatch.rise", timeout_ms=10000, polling_ms=20)
        except DriverError:
            rise = None
    if rise is not None:
        level.rise_ms.append(rise - state["releasedAt"])
    if state["heard"] is None and rise is None:
        level.problems.append(f"turn {index + 1}: answer finished but nothing was heard")
    transcript, _ = await page.evaluate(TEXTS_JS, metrics["id"])
    level.transcripts.append(transcript)
    try:
        await page.wait_for(QUIET_JS, 1000, timeout_ms=30000, polling_ms=50)
    except DriverError:
        level.problems.append(f"turn {index + 1}: the answer's audio was still coming 30 s on")


async def firefox_level(
    loss: float, url: str, sound: dict[str, str], folder: Path, questions: list[str], encoded: list[str]
) -> Level:
    """One loss level in a fresh Firefox that connects under the loss; problems noted, never raised."""
    from tests.support.browser_mic import INIT_JS
    from tests.support.firefox_driver import BENCH_READY, DriverError, firefox
    from tests.support.loss import CONCEALMENT_JS, udp_loss

    level = Level(loss)
    order = list(dict.fromkeys(questions))
    with udp_loss(loss):
        try:
            async with firefox(folder, sound) as page:
                await page.init_script(INIT_JS)
                await page.goto(url)
                try:
                    await page.wait_for(BENCH_READY, timeout_ms=FIREFOX_CONNECT_S * 1000)
                except DriverError:
                    status = await page.evaluate(
                        "document.getElementById('status')?.title || document.getElementById('status')?.textContent"
                    )
                    raise GiveUp(f"the page did not connect in {FIREFOX_CONNECT_S} s ({status})") from None
                await page.evaluate("(list) => window.__bench.load(list)", encoded)
                await page.evaluate("([k, db]) => window.__bench.setNoise(k, db)", ["none", -80.0])
                await page.evaluate("(t) => { window.__bench.threshold = t; }", 0.01)
                try:
                    await page.wait_for("window.__bench.ctx?.state === 'running'", timeout_ms=10000)
                except DriverError:
                    raise GiveUp("the bench microphone's AudioContext did not run within 10 s") from None
                # The hooks date the question's end by the lowest (performance.now - currentTime) of the last
                # 200 ticks (5 ms each); ticks from the context's start-up make it end early: the first
                # turn, asked at once, was released before most of the question had played.
                await asyncio.sleep(CLOCK_SETTLE_S)
                await page.wait_for(QUIET_JS, 1000, timeout_ms=30000, polling_ms=50)
                before = await page.evaluate(f"({CONCEALMENT_JS})()")
                discarded = await page.evaluate(FEC_DISCARDED_JS)
                try:
                    for question in questions:
                        level.asked += 1
                        await asyncio.wait_for(firefox_turn(page, level, order.index(question)), FIREFOX_TURN_S)
                except TimeoutError:
                    level.problems.append(f"turn {level.asked}: over {FIREFOX_TURN_S} s; level given up")
                except GiveUp as problem:
                    level.problems.append(f"{problem}; level given up")
                after = await page.evaluate(f"({CONCEALMENT_JS})()")
                account(level, before, after)
                later = await page.evaluate(FEC_DISCARDED_JS)
                if discarded is not None and later is not None:
                    level.fec_discarded = later - discarded
                errors = [e for e in page.errors if "pageerror" in e]
                if errors:
                    level.problems.append(f"the page raised: {errors[:3]}")
        except GiveUp as problem:
            level.problems.append(f"{problem}; level given up")
        except (DriverError, TimeoutError, OSError) as failed:
            level.problems.append(f"Firefox failed: {str(failed)[:200]}; level given up")
    return level


async def in_firefox(args: argparse.Namespace, url: str) -> list[Level]:
    """Each loss level in Debian's Firefox ESR (tests/support/firefox_driver.py) with the bench microphone."""
    import tempfile

    from benchmarks.browser_voice import QUESTIONS, say
    from tests.support.browser_mic import encode
    from tests.support.firefox_driver import missing, pulse_server

    if (why := missing()) is not None:
        raise SystemExit(f"network.py --firefox: {why}")
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    audio = {q: say(q, "hibari") for q in dict.fromkeys(questions)}
    encoded = [encode(audio[q]) for q in audio]
    levels = []
    print(
        "Firefox ESR: first audio from browser_mic's hooks (an AnalyserNode on the received track, 0.01 threshold), "
        "and, as a cross-check, from the first rise of getStats totalAudioEnergy polled every 20 ms",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="parley-firefox-") as folder, pulse_server(Path(folder) / "pulse") as sound:
        for loss in args.levels:
            started = time.perf_counter()
            budget = FIREFOX_CONNECT_S + 120 + FIREFOX_TURN_S * len(questions)
            try:
                level = await asyncio.wait_for(
                    firefox_level(loss, url, sound, Path(folder) / f"loss-{loss:g}", questions, encoded), budget
                )
            except TimeoutError:
                level = Level(loss, problems=[f"over {budget} s in all; level given up"])
            levels.append(level)
            p50 = statistics.median(level.heard_ms) if level.heard_ms else float("nan")
            rise = statistics.median(level.rise_ms) if level.rise_ms else float("nan")
            print(
                f"  {loss:g} %: release -> first audio p50 {p50:.0f} ms of {len(level.heard_ms)} (energy rise p50 {rise:.0f} ms "
                f"of {len(level.rise_ms)}); {time.perf_counter() - started:.0f} s; problems {level.problems}",
                flush=True,
            )
    return levels


def print_browser(levels: list[Level], title: str = "in Chromium (push-to-talk; loss both ways)", firefox: bool = False) -> None:
    print(f"\n{title}")
    header = f"{'loss':>6s} {'first audio p50':>16s} {'max':>6s} {'buffer':>7s} {'concealed':>10s} {'FEC pkts':>9s}"
    header += f" {'lost/recv':>11s}"
    if firefox:
        header = (
            f"{'loss':>6s} {'first audio p50':>16s} {'max':>6s} {'energy p50':>11s} {'concealed':>10s} "
            f"{'FEC pkts':>9s} {'FEC used':>9s} {'lost/recv':>11s}"
        )
    print(f"{header} {'words off':>10s}")
    clean = levels[0].transcripts if levels else []
    misread: list[str] = []
    for level in levels:
        pairs = list(zip(clean, level.transcripts, strict=False))
        pairs = [(a, b) for a, b in pairs if a.strip()]  # a turn the reference level did not hear is no reference
        off = [edit_distance(normalise(a), normalise(b)) for a, b in pairs]
        misread += [f"{level.loss:5g}%  {a!r} -> {b!r}" for (a, b), o in zip(pairs, off, strict=True) if o]
        p50 = f"{statistics.median(level.heard_ms):.0f} ms" if level.heard_ms else "-"
        worst = f"{max(level.heard_ms):.0f}" if level.heard_ms else "-"
        share = f"{100 * level.concealed:.2f} %" if level.concealed is not None else "-"
        buffer = f"{level.buffer_ms:.0f} ms" if level.buffer_ms is not None else "-"
        if not firefox:
            print(
                f"{level.loss:5g}% {p50:>16s} {worst:>6s} {buffer:>7s} {share:>10s} {level.fec:>9d} "
                f"{level.lost:>5d}/{level.packets:<5d} "
                f"{sum(off)}/{len(off)} turns"
            )
            continue
        rise = f"{statistics.median(level.rise_ms):.0f} ms" if level.rise_ms else "-"
        used = f"{level.fec - level.fec_discarded}" if level.fec_discarded is not None else "-"
        print(
            f"{level.loss:5g}% {p50:>16s} {worst:>6s} {rise:>11s} {share:>10s} {level.fec:>9d} {used:>9s} "
            f"{level.lost:>5d}/{level.packets:<5d} {sum(off)}/{len(off)} turns"
            + (f"  ({len(level.heard_ms)} heard of {len(level.transcripts)} turns)" if len(level.heard_ms) < level.asked else "")
        )
        for problem in level.problems:
            print(f"{'':7s}problem: {problem}")
    for line in misread:
        print(f"  read otherwise than at {levels[0].loss:g} %: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="0,3,10,20", help="loss levels in %% (the first is the reference)")
    parser.add_argument("--sentences", type=int, default=6, help="hearing: sentences per voice")
    parser.add_argument("--voices", default="hibari,rp-160,us-f4-185,lancaster-195", help="hearing: voices (hearing.py's)")
    parser.add_argument("--no-hearing", action="store_true", help="skip the hearing part")
    parser.add_argument("--browser", action="store_true", help="also run Chromium conversations under loss (root)")
    parser.add_argument("--firefox", action="store_true", help="also run Firefox ESR conversations under loss (root)")
    parser.add_argument("--turns", type=int, default=4, help="browser, firefox: push-to-talk turns per level")
    parser.add_argument("--verbose", action="store_true")
    args, app_flags = parser.parse_known_args()
    args.levels = [float(x) for x in args.loss.split(",") if x]
    if not args.no_hearing:
        print_hearing(hearing(args), args.levels)
    if args.browser or args.firefox:
        from benchmarks.browser_voice import app

        with app(None, app_flags) as url:
            if args.browser:
                print_browser(asyncio.run(browser(args, url)))
            if args.firefox:
                levels = asyncio.run(in_firefox(args, url))
                print_browser(
                    levels, "in Firefox ESR (push-to-talk; loss both ways; no RED: Opus in-band FEC only)", firefox=True
                )
                print(FIREFOX_NOTES)


if __name__ == "__main__":
    main()
