"""Telling a reply that answers from one that cannot: a loop, a copy of an earlier answer, a non-answer.

A small model that once gives a non-answer ("I'm sorry, I'm not sure what to suggest.") or echoes a
note tends to copy it into every later turn: the conversation locks in. These checks catch that
while a reply streams (`ReplyGuard`, used by `parley.engine.reply`) and keep such answers out of the
history the model reads again (`worth_rereading`, used by `parley.engine.conversation`).

Invariants:
- Every check is a pure function of the words (and the earlier answers), made on normalised words
  (lowercase, no punctuation), so a verdict does not depend on how the text streamed.
- No verdict rests on one word: a copy needs its first `COPY_WORDS` words (or all of a shorter
  earlier answer, at least `MIN_COPY_WORDS`) to match, its first sentence to be an earlier one's
  but for one word, or most of its word 4-grams; a loop needs a run of words or characters
  repeated several times. A misheard word in a question changes none.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
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
SENTENCE_COPY_WORDS = 6
"""A sentence this long taken word for word from an earlier answer ("It's a magical moment, and it
brings joy to people everywhere.", tacked onto every answer) is a copy."""

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_SENTENCE_END = re.compile(r"[.!?\n]")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?\n])")
_CHAR_LOOP = re.compile(rf"(.{{1,30}}?)\1{{{LOOP_REPEATS - 1},}}", re.DOTALL)
_SPELT_OUT = {"won't": ("will", "not"), "can't": ("can", "not"), "cannot": ("can", "not")}
_SUFFIXES = (("n't", "not"), ("'re", "are"), ("'m", "am"), ("'ll", "will"), ("'ve", "have"))

Verdict = Literal["hold", "clear", "copy", "loop", "repeat"]
"""hold: the reply so far may be becoming a copy (its opening, or the sentence being said), wait;
clear: it is not; copy: it copies an earlier answer; loop: it repeats itself; repeat: the sentence
it held, after others, is an earlier answer's (the reply should end before it)."""


def _spelt_out(token: str) -> tuple[str, ...]:
    """One lowercase token as words, its contraction spelt out ("you're": you, are)."""
    if token in _SPELT_OUT:
        return _SPELT_OUT[token]
    for suffix, word in _SUFFIXES:
        if token.endswith(suffix) and len(token) > len(suffix):
            return token[: -len(suffix)], word
    return (token,)


def _tokens(text: str, pos: int = 0, end: int | None = None) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, words) of each token of text[pos:end] ("’" read as "'")."""
    lower = text.lower().replace("\u2019", "'")
    return [(m.start(), m.end(), _spelt_out(m.group())) for m in _TOKEN.finditer(lower, pos, len(text) if end is None else end)]


def words(text: str) -> list[str]:
    """The words of `text`, lowercase, without punctuation, contractions spelt out ("you're": you are)."""
    return [w for _, _, ws in _tokens(text) for w in ws]


def _first_sentence(text: str) -> list[str]:
    """The words of `text`'s first sentence."""
    end = _SENTENCE_END.search(text.strip())
    return words(text.strip()[: end.end()] if end else text)


def _differ(a: Sequence[str], b: Sequence[str]) -> int:
    """How many words two runs differ by, place by place (a longer one's extra words count)."""
    return sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b))


def _grams(seq: Sequence[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)}


@functools.lru_cache(maxsize=4096)
def _profile(
    answer: str,
) -> tuple[tuple[str, ...], frozenset[tuple[str, ...]], tuple[str, ...], frozenset[tuple[str, ...]]]:
    """An earlier answer as the guard compares with it: its words, their 4-grams, its first sentence,
    its sentences of SENTENCE_COPY_WORDS or more (kept: the same answers are compared with every
    reply, and every prompt judges its history)."""
    said = tuple(words(answer))
    sentences = frozenset(s for s in (tuple(words(p)) for p in _SENTENCE_SPLIT.split(answer)) if len(s) >= SENTENCE_COPY_WORDS)
    return said, frozenset(_grams(said)), tuple(_first_sentence(answer)), sentences


class ReplyGuard:
    """Watches one reply as it streams, against earlier answers: each `check` reads only the text
    added since the last one (so a long reply costs the event loop a little per token, not its whole
    length again), and gives the verdict on all of it."""

    def __init__(self, earlier: Sequence[str]) -> None:
        profiles = [_profile(a) for a in earlier]
        self._earlier = [(i, list(p[0])) for i, p in enumerate(profiles) if len(p[0]) >= MIN_COPY_WORDS]
        self._their_grams = [profiles[i][1] for i, _ in self._earlier]
        self._shared = [0] * len(self._earlier)
        """For each earlier answer, how many of the reply's 4-grams it has."""
        self._matching = list(range(len(self._earlier)))
        """The earlier answers whose opening words the reply's still are (while it is held)."""
        self._firsts = [(i, list(p[2])) for i, p in enumerate(profiles) if len(p[2]) >= MIN_COPY_WORDS]
        self._near = list(range(len(self._firsts)))
        """The earlier answers whose first sentence the reply's first sentence may still become, but
        for one word ("The freezer is a miracle." / "The time is a miracle.")."""
        self._first_done = False
        self._their_sentences: dict[tuple[str, ...], int] = {}
        """Each earlier answer's sentences of SENTENCE_COPY_WORDS or more, and whose they are."""
        for i, p in enumerate(profiles):
            for sentence in p[3]:
                self._their_sentences.setdefault(sentence, i)
        self._sentence_matching: list[tuple[str, ...]] = []
        """The earlier sentences the sentence being said is still the start of (it is held meanwhile)."""
        self.repeat_at: int | None = None
        """Where the held sentence that repeats an earlier answer's begins, once one did."""
        self._words: list[str] = []
        self._word_at: list[int] = []
        """Where in the text each word's token starts."""
        self._read = 0
        """How far the text has been read into complete words."""
        self._sentence: list[str] = []
        self._sentence_at: int | None = None
        self._sentences: set[tuple[str, ...]] = set()
        self._eights: set[tuple[str, ...]] = set()
        self._fours: set[tuple[str, ...]] = set()
        self._cleared = False
        self.copied: int | None = None
        """Which earlier answer (index into `earlier` as given) the reply copied, once it did."""
        self.loop_at: int | None = None
        """Where the loop began in the reply's text, once it looped."""

    def check(self, text: str, *, final: bool = False) -> Verdict:
        """The verdict on the reply's text so far (`final`: all of it; each call sees the text of the
        one before and more). `hold` while the reply's opening words are an earlier answer's (at
        most COPY_WORDS words), while its first sentence may become an earlier first sentence but for
        one word, or while the sentence being said is the start of an earlier answer's sentence;
        otherwise `clear` unless it copies, loops or repeats. Only complete words count until the
        text is final."""
        for match in _CHAR_LOOP.finditer(text, 0 if final else max(0, self._read - 4 * LOOP_SPAN_CHARS)):
            unit = match.group(1)
            if len(match.group(0)) >= LOOP_SPAN_CHARS and any(ch.isalnum() for ch in unit):
                self.loop_at = match.start() + len(unit)
                return "loop"
        partial = False
        for start, end, spelt in _tokens(text, self._read):
            if not final and (end == len(text) or (end + 1 == len(text) and text[end] in "'\u2019")):
                partial = True  # the last word may still grow ("don" of "don't")
                break
            verdicts = [v for v in (self._ends_before(text, start),) if v is not None]
            verdicts += [v for v in (self._word(word, start) for word in spelt) if v is not None]
            self._read = end
            if verdicts:
                return verdicts[0]
        if final or (not partial and text[-1:].isspace()):  # nothing left to read but a sentence's end
            verdict = self._ends_before(text, len(text))
            self._read = len(text)
            if verdict is not None:
                return verdict
        if self.loop_at is not None:
            return "loop"
        held = bool(self._sentence_matching) and not final
        if not self._cleared:
            opening = len(self._words) < COPY_WORDS and self._matching
            if not final and (opening or (self._near and not self._first_done) or held):
                return "hold"
            self._cleared = True
        return "hold" if held else "clear"

    def _ends_before(self, text: str, at: int) -> Verdict | None:
        """The text between the last word read and `at` may end a sentence: one said again loops; a
        first sentence held for being near an earlier answer's first sentence copies it if it is."""
        if not self._sentence or not _SENTENCE_END.search(text, self._read, at):
            return None
        key = tuple(self._sentence)
        began = self._sentence_at
        if len(key) >= LOOP_SENTENCE_WORDS and key in self._sentences and self.loop_at is None:
            self.loop_at = began
        self._sentences.add(key)
        held, self._sentence_matching = key in self._sentence_matching, []
        self._sentence, self._sentence_at = [], None
        if held and self.copied is None and self.repeat_at is None:
            if not self._cleared:  # nothing of the reply was let through: it is a copy, to be asked again
                self.copied = self._their_sentences[key]
                return "copy"
            self.repeat_at = began
            return "repeat"
        if self._first_done:
            return None
        self._first_done = True
        near = [j for j in self._near if len(key) >= MIN_COPY_WORDS and _differ(list(key), self._firsts[j][1]) <= 1]
        if near and not self._cleared and self.copied is None:
            self.copied = self._firsts[near[0]][0]
            return "copy"
        return None

    def _word(self, word: str, at: int) -> Verdict | None:
        """Take one more complete word of the reply; a verdict if it settles one."""
        if self._sentence_at is None:
            self._sentence_at = at
        self._sentence.append(word)
        self._words.append(word)
        self._word_at.append(at)
        said = self._words
        n = len(said)
        if n >= LOOP_WORDS:
            eight = tuple(said[-LOOP_WORDS:])
            if eight in self._eights:
                self.loop_at = self._word_at[n - LOOP_WORDS]
                return "loop"
            self._eights.add(eight)
        self._matching = [j for j in self._matching if self._earlier[j][1][n - 1 : n] == [word]]
        k = len(self._sentence)
        pool = self._their_sentences if k == 1 else self._sentence_matching
        self._sentence_matching = [t for t in pool if t[k - 1 : k] == (word,)]
        if not self._first_done:
            first = self._sentence
            self._near = [j for j in self._near if _differ(first, self._firsts[j][1][: len(first)]) <= 1]
        for j in self._matching:
            theirs = self._earlier[j][1]
            if n == min(COPY_WORDS, len(theirs)):
                self.copied = self._earlier[j][0]
                return "copy"
        if n >= 4:
            four = tuple(said[-4:])
            if four not in self._fours:
                self._fours.add(four)
                for j, grams in enumerate(self._their_grams):
                    self._shared[j] += four in grams
        if n >= OVERLAP_MIN_WORDS:
            for j, shared in enumerate(self._shared):
                if shared >= OVERLAP_SHARE * len(self._fours):
                    self.copied = self._earlier[j][0]
                    return "copy"
        return None


@functools.lru_cache(maxsize=512)
def loop_start(text: str) -> int | None:
    """Where in `text` a loop begins (the first repeat, so text[:start] keeps one copy), or None: a
    unit of characters repeated LOOP_REPEATS times over LOOP_SPAN_CHARS ("10:10:10:10:10:10:10:10"),
    a sentence of LOOP_SENTENCE_WORDS said again, or a run of LOOP_WORDS words said a second time."""
    guard = ReplyGuard([])
    return guard.loop_at if guard.check(text, final=True) == "loop" else None


def copies(reply: str, earlier: Sequence[str]) -> int | None:
    """The index of the earlier answer `reply` copies, or None: its first COPY_WORDS words (all of a
    shorter answer of at least MIN_COPY_WORDS) are that answer's first words, or, past
    OVERLAP_MIN_WORDS, most of its word 4-grams come from that answer."""
    guard = ReplyGuard(earlier)
    guard.check(reply, final=True)
    return guard.copied


def same_question(a: str, b: str) -> bool:
    """Whether two questions are (nearly) the same words: then the same answer is no copy."""
    wa, wb = words(a), words(b)
    return bool(wa) and difflib.SequenceMatcher(None, wa, wb).ratio() >= 0.8


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


@functools.lru_cache(maxsize=256)
def non_answer(text: str, english: bool = True) -> bool:
    """Whether an answer gives the user nothing to build on: it opens with an apology, a refusal or a
    request to repeat ("I'm sorry, I'm not sure...", "Could you rephrase that?"), or, in an `english`
    conversation, it is not in English (fewer than one word in ten is a common English word)."""
    plain = text.strip().lower().replace("\u2019", "'")
    if _NON_ANSWER.match(plain):
        return True
    said = words(plain)
    return english and len(said) >= 6 and sum(w in _ENGLISH for w in said) < 0.1 * len(said)


def worth_rereading(answers: Sequence[str], *, english: bool = True) -> list[bool]:
    """For each answer of a conversation, in order, whether the model should read it again: not when
    it was a non-answer (`non_answer`), talked about a scene note (`NOTE_TALK`), repeated an earlier
    answer, or looped. Such an answer, read again, is what a small model copies next."""
    return list(_worth_rereading(tuple(answers), english))


@functools.lru_cache(maxsize=128)
def _worth_rereading(answers: tuple[str, ...], english: bool) -> tuple[bool, ...]:
    """`worth_rereading`, kept: every speculative answer of a turn builds the same prompt again."""
    return tuple(
        not (
            non_answer(answer, english)
            or NOTE_TALK.search(answer) is not None
            or copies(answer, answers[:i]) is not None
            or loop_start(answer) is not None
        )
        for i, answer in enumerate(answers)
    )
