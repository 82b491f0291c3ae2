"""Telling a reply that answers from one that cannot: a loop, a copy of an earlier answer, a non-answer.

A small model that once gives a non-answer ("I'm sorry, I'm not sure what to suggest.") or echoes a
note tends to copy it into every later turn: the conversation locks in. These checks catch that
while a reply streams (`ReplyGuard`, used by `parley.engine.reply`) and keep such answers out of the
history the model reads again (`worth_rereading`, used by `parley.engine.conversation`).

Invariants:
- Every check is a pure function of the words (and the earlier answers), made on normalised words
  (lowercase, no punctuation), so a verdict does not depend on how the text streamed.
- No verdict rests on one word: a copy needs its first `COPY_WORDS` words (or all of a shorter
  earlier answer, at least `MIN_COPY_WORDS`) to match, or most of its word 4-grams; a loop needs a
  run of words or characters repeated several times. A misheard word in a question changes none.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

COPY_WORDS = 8
"""A reply whose first this many words are an earlier answer's first words copies it."""
MIN_COPY_WORDS = 4
"""An earlier answer shorter than this ("Yes.", "Sure thing.") may be said again."""
OVERLAP_MIN_WORDS = 12
"""A reply is compared word 4-gram by 4-gram with the earlier answers once it has this many words..."""
OVERLAP_SHARE = 0.75
"""...and copies one when this share of its 4-grams are that answer's."""
LOOP_SPAN_CHARS = 24
"""A run of characters repeated back to back ("10:10:10:10...") this long is a loop..."""
LOOP_REPEATS = 4
"""...when its unit comes this many times in a row."""
LOOP_WORDS = 8
"""A run of this many words said twice in one reply is a loop..."""
LOOP_SENTENCE_WORDS = 4
"""...and so is a sentence of this many words said again word for word."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?\n]")
"""A complete sentence (one still being written is not compared yet)."""
_CHAR_LOOP = re.compile(rf"(.{{1,30}}?)\1{{{LOOP_REPEATS - 1},}}", re.DOTALL)

Verdict = Literal["hold", "clear", "copy", "loop"]
"""hold: the reply so far starts as an earlier answer did, wait; clear: it does not; copy: it copies
one; loop: it repeats itself."""


_CONTRACTIONS = (
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
)


def words(text: str) -> list[str]:
    """The words of `text`, lowercase, without punctuation, contractions spelt out ("you're": you are)."""
    text = text.lower().replace("\u2019", "'")
    for contraction, full in _CONTRACTIONS:
        text = contraction.sub(full, text)
    return _WORD.findall(text)


def _grams(seq: Sequence[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)}


@functools.lru_cache(maxsize=256)
def loop_start(text: str, since: int = 0) -> int | None:
    """Where in `text` a loop begins (the first repeat, so text[:start] keeps one copy), or None: a
    unit of characters repeated LOOP_REPEATS times over LOOP_SPAN_CHARS ("10:10:10:10:10:10:10:10"),
    from `since` on (a streaming reply only checks its new end), a sentence said again, or a run of
    LOOP_WORDS words said a second time."""
    for match in _CHAR_LOOP.finditer(text, max(0, since)):
        unit = match.group(1)
        if len(match.group(0)) >= LOOP_SPAN_CHARS and any(ch.isalnum() for ch in unit):
            return match.start() + len(unit)
    said: set[tuple[str, ...]] = set()
    for sentence in _SENTENCE.finditer(text):
        key = tuple(words(sentence.group()))
        if len(key) >= LOOP_SENTENCE_WORDS and key in said:
            return sentence.start()
        said.add(key)
    spans = [(m.start(), m.group()) for m in _WORD.finditer(text.lower())]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(spans) - LOOP_WORDS + 1):
        gram = tuple(w for _, w in spans[i : i + LOOP_WORDS])
        if gram in seen:
            return spans[i][0]
        seen.add(gram)
    return None


def copies(reply: str, earlier: Sequence[str]) -> int | None:
    """The index of the earlier answer `reply` copies, or None: its first COPY_WORDS words (all of a
    shorter answer of at least MIN_COPY_WORDS) are that answer's first words, or, past
    OVERLAP_MIN_WORDS, most of its word 4-grams come from that answer."""
    said = words(reply)
    for index, answer in enumerate(earlier):
        theirs = words(answer)
        n = min(COPY_WORDS, len(theirs))
        if n >= MIN_COPY_WORDS and len(said) >= n and said[:n] == theirs[:n]:
            return index
    if len(said) >= OVERLAP_MIN_WORDS:
        mine = _grams(said)
        for index, answer in enumerate(earlier):
            if len(mine & _grams(words(answer))) >= OVERLAP_SHARE * len(mine):
                return index
    return None


def same_question(a: str, b: str) -> bool:
    """Whether two questions are (nearly) the same words: then the same answer is no copy."""
    wa, wb = words(a), words(b)
    return bool(wa) and difflib.SequenceMatcher(None, wa, wb).ratio() >= 0.8


class ReplyGuard:
    """Watches one reply as it streams, against the answers already in its prompt."""

    def __init__(self, earlier: Sequence[str]) -> None:
        self._earlier = [a for a in earlier if len(words(a)) >= MIN_COPY_WORDS]
        self.copied: int | None = None
        """Which earlier answer (index into `earlier` as given) the reply copied, once it did."""
        self._given = list(earlier)
        self._cleared = False
        self.loop_at: int | None = None
        """Where the loop began in the reply's text, once it looped."""

    def check(self, text: str, *, final: bool = False) -> Verdict:
        """The verdict on the reply's text so far (`final`: all of it). `hold` only until the reply's
        opening words differ from every earlier answer's (at most COPY_WORDS words); after that
        `clear` unless it copies or loops. Only complete words count until the text is final."""
        self.loop_at = loop_start(text, len(text) - 4 * LOOP_SPAN_CHARS)
        if self.loop_at is not None:
            return "loop"
        if not final and text and not (text[-1].isspace() or text[-1] in ".,!?;:"):
            text = text[: len(text) - len(re.split(r"[\s.,!?;:]", text)[-1])]  # the last word may still grow
        found = copies(text, self._earlier)
        if found is not None:
            self.copied = self._given.index(self._earlier[found])
            return "copy"
        if not self._cleared:
            said = words(text)
            if not final and len(said) < COPY_WORDS and any(words(a)[: len(said)] == said for a in self._earlier):
                return "hold"
            self._cleared = True
        return "clear"


_NON_ANSWER = re.compile(
    r"^(?:(?:oh|hmm|well|ah|um|uh)[,.!]?\s+)?(?:"
    r"(?:i'?m|i am) (?:so |very |really )?sorry|sorry|i apologi[sz]e|my apologies"
    r"|(?:i'?m|i am) (?:not sure|afraid|unable|not able)|i (?:don'?t|do not|didn'?t|did not|cannot|can'?t) "
    r"(?:know|understand|catch|get|follow|help|answer|tell)"
    r"|(?:could|can|would) you (?:please )?(?:repeat|rephrase|clarify|say that|tell me what|provide|give me more)"
    r"|it (?:seems|sounds) like (?:you|there)|there (?:seems|appears) to be (?:a|some) (?:confusion|misunderstanding)"
    r")",
)
_ENGLISH = frozenset(
    "the a an is are was were be to of and in on it that this you i he she we they what which who how not for with "
    "as at by from or but my your its there their have has do does can will would so if no yes".split()
)


NOTE_TALK = re.compile(r"\b(?:camera|screen) note\b|\bthe note\b|\bnote says\b|\bmy detectors\b", re.IGNORECASE)
"""An answer that talks about a scene note: it was about a frame no longer shown, and a small model
that reads it again copies its form ('The camera note: "..."') into answers to other questions."""


@dataclass(frozen=True)
class Exchange:
    """One question and its answer, as the history keeps them."""

    question: str
    answer: str


@functools.lru_cache(maxsize=256)
def non_answer(text: str) -> bool:
    """Whether an answer gives the user nothing to build on: it opens with an apology, a refusal or a
    request to repeat ("I'm sorry, I'm not sure...", "Could you rephrase that?"), or it is not in
    English while the conversation is (fewer than one word in ten is a common English word)."""
    plain = text.strip().lower().replace("\u2019", "'")
    if _NON_ANSWER.match(plain):
        return True
    said = words(plain)
    return len(said) >= 6 and sum(w in _ENGLISH for w in said) < 0.1 * len(said)


def worth_rereading(exchanges: Sequence[Exchange], *, english: bool = True) -> list[bool]:
    """For each exchange, whether the model should read it again: not when its answer was a
    non-answer (`non_answer`; its language only judged in an English conversation), talked about a
    scene note (`NOTE_TALK`), repeated an earlier answer, or looped. Such an answer, read again, is
    what a small model copies next."""
    keep: list[bool] = []
    earlier: list[str] = []
    for exchange in exchanges:
        answer = exchange.answer
        bad = (
            (non_answer(answer) if english else bool(_NON_ANSWER.match(answer.strip().lower())))
            or NOTE_TALK.search(answer) is not None
            or copies(answer, earlier) is not None
            or loop_start(answer) is not None
        )
        keep.append(not bad)
        earlier.append(answer)
    return keep
