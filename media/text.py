"""Cutting an LLM's streamed reply into sentences that TTS can speak as soon as each one exists.

Invariant: a sentence boundary is decided from the text up to and including the character that
confirms it, never from text after that, so the sentences are the same however the reply is cut
into deltas (one character at a time or all at once). Every piece of the reply is returned exactly
once, in order, stripped of markdown emphasis.
"""

from __future__ import annotations

import re

MAX_SENTENCE_CHARS = 200
"""A run longer than this with no sentence end is cut at a comma or space, so TTS is not starved."""

TERMINATORS = frozenset(".!?:")
"""Characters that end a sentence when whitespace follows (after any closing quotes/brackets)."""

CLOSERS = frozenset("\"')]}\u201d\u2019*_`")
"""Characters that may sit between a terminator and the whitespace: `He said "no." Then`."""

ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "approx", "fig", "mt"})
"""Words (lowercase, final dot removed) whose dot does not end a sentence."""

_MARKDOWN = re.compile(r"[*#`]+")
_SPACES = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """`text` without markdown emphasis characters (`*`, `#`, backticks), whitespace collapsed."""
    return _SPACES.sub(" ", _MARKDOWN.sub("", text)).strip()


def _ends_sentence(text: str, dot: int, start: int) -> bool:
    """Whether the terminator at `dot` ends the sentence that began at `start` (whitespace follows)."""
    if text[dot] != ".":
        return True
    word = text[start:dot].rsplit(None, 1)[-1] if text[start:dot].strip() else ""
    word = word.lstrip("\"'([{*_`").lower()
    if word in ABBREVIATIONS:
        return False
    # "1. Buy milk": a list marker alone is not worth a TTS request.
    return not (word.isdigit() and text[start:dot].strip() == word)


def _find_boundary(text: str, limit: int) -> tuple[int, int] | None:
    """(end of the first sentence, where the next one starts) within text[:limit], if confirmed."""
    for i in range(min(len(text), limit)):
        ch = text[i]
        if ch == "\n":
            return i, i + 1
        if ch not in TERMINATORS:
            continue
        j = i + 1
        while j < limit and j < len(text) and (text[j] in CLOSERS or text[j] in TERMINATORS):
            j += 1  # "?!", "...", '."' and '.**' end together
        if j < limit and j < len(text) and text[j].isspace() and _ends_sentence(text, i, 0):
            return j, j + 1
    return None


def _cut_point(text: str) -> int:
    """Where to cut a run of MAX_SENTENCE_CHARS with no sentence end: a late comma, else a space."""
    head = text[:MAX_SENTENCE_CHARS]
    comma = head.rfind(", ")
    if comma >= MAX_SENTENCE_CHARS // 2:
        return comma + 1
    space = max(head.rfind(" "), head.rfind("\t"))
    return space if space > 0 else MAX_SENTENCE_CHARS


def _first_clause(text: str, min_words: int) -> int | None:
    """Where the reply's opening clause ends: just after a comma that whitespace follows and that
    has at least `min_words` words before it (so "Well, ..." does not count)."""
    for i, ch in enumerate(text[:-1]):
        if ch == "," and text[i + 1].isspace() and len(text[:i].split()) >= min_words:
            return i + 1
    return None


class SentenceSplitter:
    """Feeds on text deltas and hands back each complete sentence once, ready for speech.

    A sentence ends at `.`, `!`, `?` or `:` followed by whitespace (closing quotes, brackets and
    emphasis may come between), or at a newline. Decimals ("3.14"), common abbreviations
    ("e.g.", "Dr.") and "wait...what" do not end a sentence, nor does a list marker ("1. ").

    With `first_clause_words`, the reply's first piece may also end at a comma after that many
    words: a long opening sentence then starts being spoken after its first clause.
    """

    def __init__(self, *, first_clause_words: int | None = None) -> None:
        self._pending = ""
        self._offset = 0
        """Where `_pending` starts in everything fed so far."""
        self._clause_words = first_clause_words

    def feed(self, delta: str) -> list[str]:
        """Add the next delta; return every sentence it completed (stripped, non-empty), in order."""
        return [sentence for sentence, _ in self.feed_spans(delta)]

    def flush(self) -> list[str]:
        """End of the reply: return what is left as one last sentence (empty list if nothing)."""
        return [sentence for sentence, _ in self.flush_spans()]

    def feed_spans(self, delta: str) -> list[tuple[str, int]]:
        """As `feed`, each sentence with where it ends in the text fed so far (its last character + 1)."""
        self._strip(self._pending + delta)
        out: list[tuple[str, int]] = []
        while self._pending:
            over = len(self._pending) > MAX_SENTENCE_CHARS
            # Past the cap, decide from the first MAX+1 characters only, as a char-by-char feed would.
            found = _find_boundary(self._pending, MAX_SENTENCE_CHARS + 1 if over else len(self._pending))
            if self._clause_words is not None:
                clause = _first_clause(self._pending[: found[0] if found else MAX_SENTENCE_CHARS + 1], self._clause_words)
                if clause is not None:
                    found = (clause, clause + 1)
            if found is not None:
                end, rest = found
            elif over:
                end = rest = _cut_point(self._pending)
            else:
                break
            sentence = clean_for_speech(self._pending[:end])
            ends_at = self._offset + end
            self._offset += rest
            self._strip(self._pending[rest:])
            if sentence:
                out.append((sentence, ends_at))
                self._clause_words = None  # only the reply's first piece may end at a comma
        return out

    def flush_spans(self) -> list[tuple[str, int]]:
        """As `flush`, the last sentence with where it ends."""
        sentence = clean_for_speech(self._pending)
        ends_at = self._offset + len(self._pending.rstrip())
        self._offset += len(self._pending)
        self._pending = ""
        return [(sentence, ends_at)] if sentence else []

    def _strip(self, pending: str) -> None:
        """Keep `pending` without its leading whitespace, counting what was dropped."""
        self._pending = pending.lstrip()
        self._offset += len(pending) - len(self._pending)
