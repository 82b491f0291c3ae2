"""Cutting an LLM's streamed reply into sentences that TTS can speak as soon as each one exists.

Invariant: a sentence boundary is decided from the text up to and including the character that
confirms it, never from text after that, so the sentences are the same however the reply is cut
into deltas (one character at a time or all at once). Every piece of the reply is returned exactly
once, in order, stripped of markdown emphasis. With `first_max_words`, the reply's first piece
never waits for more than that many words (or FIRST_PIECE_CHARS without a space), whatever the
model writes: the first sound comes a bounded number of tokens after the first token.
"""

from __future__ import annotations

import re

MAX_SENTENCE_CHARS = 200
"""A run longer than this with no sentence end is cut at a comma or space, so TTS is not starved."""

FIRST_PIECE_CHARS = 90
"""With a word limit on the reply's first piece, the piece is also cut at this many characters: words
are not the only way a model keeps a sentence from ending ("10:10:10:...", a long number)."""

JOINERS = frozenset(
    "and but or so because which that who whom whose when where while if although though since unless until "
    "with without for to from in on at by about than as like after before".split()
)
"""Words a forced cut goes before, so each piece sounds like a phrase: "The sun is a star | which ..."."""

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


def _nth_word_end(text: str, n: int) -> int | None:
    """The index of the whitespace that ends the `n`th word of `text` (None: fewer words are complete)."""
    count = 0
    for match in re.finditer(r"\S+(?=\s)", text):
        count += 1
        if count == n:
            return match.end()
    return None


def _forced_cut(text: str, *, complete: bool) -> int:
    """Where to cut `text`, a first piece that ran too long without a sentence end: at its last
    comma, semicolon or dash after three words, else before its last joining word after four
    ("and", "which", "because"), else after its last word (its last complete one when `complete`
    is False: the limit fell inside a word); a run with no space at all after its last mark."""
    words = list(re.finditer(r"\S+", text))
    if not complete and len(words) > 1 and words[-1].end() == len(text):
        words.pop()
    if len(words) <= 1:
        marks = [i + 1 for i, ch in enumerate(text) if not ch.isalnum() and not ch.isspace() and i + 1 >= len(text) // 2]
        return marks[-1] if marks else len(text)
    for i in range(len(words) - 1, 2, -1):
        if words[i - 1].group().endswith((",", ";")) or words[i].group() in ("-", "\u2013", "\u2014"):
            return words[i - 1].end()
    for i in range(len(words) - 1, 3, -1):
        if words[i].group().lower().strip("\"'(") in JOINERS:
            return words[i - 1].end()
    return words[-1].end()


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
    words: a long opening sentence then starts being spoken after its first clause. With
    `first_max_words`, the first piece ends after at most that many words even with no punctuation
    at all (at a natural break where there is one: `_forced_cut`).
    """

    def __init__(self, *, first_clause_words: int | None = None, first_max_words: int | None = None) -> None:
        self._pending = ""
        self._offset = 0
        """Where `_pending` starts in everything fed so far."""
        self._clause_words = first_clause_words
        self._max_words = first_max_words
        """The first piece's word limit; None once the first piece is out (or with no limit)."""

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
            # Past a cap, decide from the text up to the character that reached it only, as a
            # char-by-char feed would.
            limit = MAX_SENTENCE_CHARS + 1 if over else len(self._pending)
            # The first piece ran too long: cut it at its word limit (early True: every word is
            # complete) or at its character limit (False: the last word may be cut off).
            early: bool | None = None
            if self._max_words is not None:
                word_end = _nth_word_end(self._pending[:limit], self._max_words)
                if word_end is not None and word_end < FIRST_PIECE_CHARS:
                    limit, early = word_end + 1, True
                elif len(self._pending) > FIRST_PIECE_CHARS:
                    limit, early = FIRST_PIECE_CHARS + 1, False
            found = _find_boundary(self._pending, limit)
            if self._clause_words is not None:
                clause = _first_clause(self._pending[: found[0] if found else limit], self._clause_words)
                if clause is not None:
                    found = (clause, clause + 1)
            if found is not None:
                end, rest = found
            elif early is not None:
                end = rest = _forced_cut(self._pending[: limit - 1], complete=early)
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
                self._clause_words = self._max_words = None  # only the reply's first piece is cut early
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
