"""What a text-only model is told of the camera or shared screen, and when.

Invariants:
- The system prompt says how the model sees (`SIGHT_PROMPTS`): the frame itself, a scene note, or
  not at all.
- A scene note, or the line saying there is none, is a first-person sentence in square brackets in
  front of the user's words (`with_scene`); whether a turn's words ask about the picture at all is
  decided here (`about_scene`), from words alone, so that one misheard word rarely changes it.
- What the note says is inert text (`inert_scene`): the words a shared screen or a sign shows (OCR)
  are what the user's camera saw, never instructions. No chat-template marker, role line, control
  character or bracket of the note's own reaches the model from them, and a note is at most
  `MAX_SCENE_CHARS` long.
"""

from __future__ import annotations

import re
import unicodedata

from parley.engine.guard import words
from parley.engine.types import Sight

SIGHT_PROMPTS: dict[Sight, str] = {
    "image": "You can see the user: their message may come with a picture from their camera or shared screen.",
    "note": "You cannot see images. A user message may begin with a camera or screen note in square brackets from "
    "Parley's detectors: it is all you know of what the camera or screen shows. Say only what the note says and never "
    "invent other details.",
    "blind": "You cannot see the user's camera or screen. If asked what you see, say you cannot see it.",
}
"""The sentence added to the system prompt: what the model can know of the camera (`parley.config.sight`)."""


def system_prompt(base: str, sight: Sight) -> str:
    """The system prompt for a model that sees in the way `sight` says."""
    return f"{base} {SIGHT_PROMPTS[sight]}".strip()


MAX_SCENE_CHARS = 400
"""The most characters of a scene note a model reads: a screen full of text (a shared web page) is
cut there, with an ellipsis, so that what a page says cannot crowd out the conversation."""

_TEMPLATE_MARKERS = re.compile(
    r"<\|[^<>|]{0,40}\|>"  # ChatML and Llama 3: <|im_start|>, <|eot_id|>, <|start_header_id|>
    r"|<\|"  # what is left of one after the rest: <|im_start
    r"|\|>"
    r"|\[/?\s*(?:INST|SYS|SYSTEM|TOOL_CALLS|AVAILABLE_TOOLS)\s*\]"  # Llama 2, Mistral
    r"|<<\s*/?\s*SYS\s*>>"
    r"|</?\s*(?:s|bos|eos|pad|unk|start_of_turn|end_of_turn|system|user|assistant|human|bot|im_start|im_end|think)\s*>",
    re.IGNORECASE,
)
"""The markers chat templates give turns and roles; a model reads them as the start of a turn."""
_ROLE_LABEL = re.compile(r"#{2,}|\b(system|assistant|user|human|developer|instructions?)\s*:", re.IGNORECASE)
"""A markdown heading mark or a role label ("### System:", "assistant:") that would start a turn of its own."""
_BRACKETS = str.maketrans({"[": "(", "]": ")", "{": "(", "}": ")"})
"""The note's own delimiters: square brackets close it (`without_scene` looks for "]" and a line break)."""


def _printable(text: str) -> str:
    """`text` as one line: control and format characters (NUL, ESC, bidi overrides, zero-width marks)
    gone, each run of whitespace (line breaks included) one space."""
    return " ".join("".join(c for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf")).split())


def inert_scene(scene: str) -> str:
    """A scene note's words as a model may read them: what OCR read off a shared screen or a sign is
    quoted text the user's camera saw, so none of it may look like the start of a turn, close the note
    or run on. Control characters, chat-template markers and role labels go, whitespace runs become one
    space, brackets become parentheses, and past `MAX_SCENE_CHARS` the note is cut with an ellipsis
    (its open quote closed). An ordinary note ("a cup and the words "OPEN 9-5"") is unchanged."""
    text = _printable(scene)
    for _ in range(8):  # a marker hidden inside another ("<|im_<|x|>start|>") shows once the inner one goes
        cleaner = _ROLE_LABEL.sub(lambda m: m.group(1) or " ", _TEMPLATE_MARKERS.sub(" ", text))
        if cleaner == text:
            break
        text = cleaner
    text = _printable(text.translate(_BRACKETS))
    if len(text) > MAX_SCENE_CHARS:
        text = text[: MAX_SCENE_CHARS - 1].rstrip() + "…"
        if text.count('"') % 2:
            text += '"'
    return text


def with_scene(text: str, scene: str | None, blind: str | None = None, source: str = "camera") -> str:
    """A user's words with the scene note in front, as a text-only model reads them (`scene` "": the
    detectors found nothing; `blind`: why there is no note).

    The note is a first-person sentence the model can repeat: a small model answers "what do you
    see?" by copying it far more often than it puts a list of detections into words (benchmarks/llm_quiz.py).
    The note's words are made inert first (`inert_scene`): a shared screen's text is quoted, never obeyed."""
    label = "Screen" if source == "screen" else "Camera"
    if blind:  # the wording that kept the local models from inventing most often (benchmarks/llm_quiz.py)
        return f"[{label} note: no picture ({blind}). I cannot see anything, so I must not describe anything.]\n{text}"
    if scene is None:
        return text
    if not scene:
        return f"[{label} note: my detectors recognise nothing in the picture, so I cannot tell what is there.]\n{text}"
    return f"[{label} note: I see {inert_scene(scene)}.]\n{text}"


def without_scene(text: str) -> str:
    """A user message's words without the scene note `with_scene` put in front of them."""
    return text.split("]\n", 1)[1] if text.startswith(("[Camera note:", "[Screen note:")) and "]\n" in text else text


SCENE_CUES = frozenset(
    """see sees seeing saw seen look looks looking looked watching camera cameras cam webcam screen screens picture
    pictures photo photos image images video visible showing shown holding holds wearing wear wears behind background
    written writing sign signs shirt hair face glasses hat anyone anybody someone somebody""".split()
)
"""Words that ask about what the camera or screen shows ("What do you see?", "What am I holding?", "Is
anyone here?"). Any one of them is enough, so a misheard cue rarely loses the note; one in a question
that is not about the picture only adds the note, which the model is told to use only when asked."""
_POINTING = frozenset("this these that those here".split())
"""Words that point at something: a cue in a question of three words or fewer ("What is this?"),
one that ends with one ("What animal is that?") or starts by pointing ("Is that a dog?"), not
elsewhere: "What do these make?" may be "What do bees make?" misheard."""

KINDS = {
    "animal": "bird cat dog horse sheep cow elephant bear zebra giraffe",
    "pet": "cat dog bird",
    "vehicle": "bicycle car motorcycle airplane bus train truck boat",
    "food": "banana apple sandwich orange broccoli carrot pizza donut cake",
    "fruit": "banana apple orange",
    "furniture": "chair couch bed table",
    "drink": "cup bottle glass",
    "device": "laptop phone tv keyboard mouse remote",
    "computer": "laptop keyboard mouse",
    "face": "person people face",
    "man": "person people",
    "woman": "person people",
    "people": "person people face",
}
"""What a question may call what the note names ("What animal is that?" when the note says "a dog")."""

_POINTING_START = re.compile(r"^(?:is|are|was|were|what's|what is|who's|who is) (?:this|that|these|those)\b")
"""A question that starts by pointing: "Is that a dog?", "What is this thing?"."""
_MY_THINGS = re.compile(
    r"\bmy (?:hands?|desk|room|table|wall|head|window|background|shirt|jacket|hat|hair|face|glasses|outfit|clothes)\b"
)
_NEAR_ME = re.compile(r"\b(?:with|near|beside|behind|around|next to|in front of) me\b")
"""Where the user points at their own surroundings ("Is there an animal with me?")."""
_NOTE_FILLER = frozenset("the words and maybe person people face faces visible see".split())
_PRONOUNS = frozenset("it its it's they them their that those he she him her there".split())


def about_scene(text: str, scene: str | None = None, *, after_scene_question: bool = False) -> bool:
    """Whether the user's words ask about what the camera or screen shows: a cue word (`SCENE_CUES`),
    a place or thing of the user's ("with me", "my desk"), a pointing word in a short question ("What
    is this?", "What animal is that?"), a word the scene note itself has (the sign says "OPEN 7-3":
    "When is it open?") or the kind of a thing it names ("animal" for a dog), or a short follow-up
    with a pronoun right after a question about it ("What colour is it?")."""
    said = words(text)
    if any(w in SCENE_CUES for w in said):
        return True
    if said and ((len(said) <= 3 and any(w in _POINTING for w in said)) or (len(said) <= 6 and said[-1] in _POINTING)):
        return True
    joined = " ".join(said)
    if _POINTING_START.match(joined) or _NEAR_ME.search(joined) or _MY_THINGS.search(joined):
        return True
    stems = {w.rstrip("s") for w in said if len(w) >= 3}
    named = {w.rstrip("s") for w in words(scene or "") if len(w) >= 3 and w not in _NOTE_FILLER}
    if stems & named or any(set(KINDS[kind].split()) & named for kind in stems & KINDS.keys()):
        return True
    return after_scene_question and len(said) <= 8 and any(w in _PRONOUNS for w in said)
