"""What of an answer is spoken: the LLM's Markdown turned into plain speech while it streams.

Invariants:
- Markdown syntax is never handed to TTS: emphasis, heading marks, list bullets, quote marks,
  rules, table pipes, backslash escapes, HTML tags and link targets are dropped; a link is spoken
  as its text, a bare URL as its host name.
- Code is never read out: a fenced block becomes one short sentence ("Python code shown on
  screen."), said when the block is complete, so does a whole HTML document ("An HTML page,
  shown on screen.") and a table ("Table shown on screen."); inline code keeps only its words,
  or "the code shown on screen" when it is long.
- Text is held back only while its meaning is undecided (the first characters of a line, an open
  backtick, bracket or tag, a word that may be a URL), so prose is spoken as soon as it streams,
  and the output is the same however the answer is cut into deltas.
- `source_at(n)` maps a position in the spoken text back to the answer's own text, so what was
  heard can be told in the answer's words.
"""

from __future__ import annotations

import bisect
import re

LANGUAGES = {
    "py": "Python", "python": "Python", "js": "JavaScript", "javascript": "JavaScript", "jsx": "JavaScript",
    "ts": "TypeScript", "typescript": "TypeScript", "tsx": "TypeScript", "html": "HTML", "css": "CSS",
    "sh": "Shell", "bash": "Shell", "shell": "Shell", "zsh": "Shell", "console": "Shell", "powershell": "PowerShell",
    "json": "JSON", "yaml": "YAML", "yml": "YAML", "toml": "TOML", "xml": "XML", "sql": "SQL", "c": "C",
    "cpp": "C plus plus", "c++": "C plus plus", "csharp": "C sharp", "cs": "C sharp", "java": "Java", "go": "Go",
    "rust": "Rust", "rs": "Rust", "ruby": "Ruby", "rb": "Ruby", "php": "PHP", "swift": "Swift", "kotlin": "Kotlin",
    "r": "R", "lua": "Lua", "dockerfile": "Dockerfile", "markdown": "Markdown", "md": "Markdown",
}  # fmt: skip
"""Fence info strings spoken by name: "Python code shown on screen."."""

TABLE_SENTENCE = "\nTable shown on screen.\n"
HTML_SENTENCE = "\nAn HTML page, shown on screen.\n"
LONG_INLINE_CODE = "the code shown on screen"
MAX_HOLD = 300
"""An opening bracket, backtick or tag still open after this many characters is not markup."""

_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})[ \t]*([^\s`{]*)")
_RULE_CHARS = frozenset("-*_=")
_WORDS = re.compile(r"[A-Za-z0-9]+(?:['.][A-Za-z0-9]+)*")
_URL = re.compile(r"https?://([^\s/?#)\]>\"'<]+)[^\s)\]>\"'<]*")
_HTML_DOC = ("<!doctype", "<html")
_WORD_START = frozenset(("", " ", "\n", "\t", "(", '"', "'", ","))


def describe_code(info: str) -> str:
    """The sentence spoken for a fenced code block whose info string is `info`."""
    name = LANGUAGES.get(info.strip().lower().lstrip("{."))
    return f"\n{name} code shown on screen.\n" if name else "\nCode shown on screen.\n"


def speak_inline_code(code: str) -> str:
    """Inline code as words: `pip install` is said, `print()` is "print", a long snippet is not read."""
    words = _WORDS.findall(code.replace("_", " "))
    if len(words) > 6 or len(code) > 60:
        return LONG_INLINE_CODE
    return " ".join(words)


def _plain(label: str) -> str:
    """A link's text without its own markup."""
    return re.sub(r"[*_`~]+", "", label)


class Speakable:
    """Feeds on an answer's text deltas, returns what may be spoken of them (see the module)."""

    def __init__(self) -> None:
        self._buf = ""
        """Source text not yet decided."""
        self._final = False
        self._mode = "line"
        """line: at a line start; prose; fence: inside a code block; table; html: inside a whole document."""
        self._fence = ""
        self._block_sentence = ""
        """What to say when the current shown-not-read block ends."""
        self._src = 0
        self._out = 0
        self._marks_out: list[int] = [0]
        self._marks_src: list[int] = [0]
        self._parts: list[str] = []
        self._last = ""
        """The last character spoken: a URL can only start a word."""

    def feed(self, delta: str) -> str:
        """Add the next delta of the answer; returns the speech it made certain (maybe empty)."""
        self._buf += delta
        return self._run()

    def flush(self) -> str:
        """The answer is complete: return the speech of what was held back."""
        self._final = True
        out = self._run()
        if self._block_sentence:  # an unclosed code block, a table or a page at the very end
            self._close("line")
            out += self._run()
        return out

    def source_at(self, spoken: int) -> int:
        """The position in the answer's text where the first `spoken` characters of speech end."""
        i = bisect.bisect_left(self._marks_out, spoken)
        return self._marks_src[min(i, len(self._marks_src) - 1)]

    @property
    def source_length(self) -> int:
        """How much of the answer's text has been decided (consumed) so far."""
        return self._src

    # -- the work ---------------------------------------------------------------------------

    def _take(self, n: int, spoken: str = "") -> None:
        """`n` characters of source are decided and say `spoken`."""
        self._buf = self._buf[n:]
        self._src += n
        if spoken:
            self._parts.append(spoken)
            self._out += len(spoken)
            self._last = spoken[-1]
        self._marks_out.append(self._out)
        self._marks_src.append(self._src)

    def _run(self) -> str:
        while self._buf and self._step():
            pass
        out, self._parts = "".join(self._parts), []
        return out

    def _step(self) -> bool:
        """Decide some of the buffer; False when it must wait for more text (or it is empty)."""
        if self._mode == "line":
            return self._line_start()
        if self._mode == "fence":
            return self._in_fence()
        if self._mode == "table":
            return self._in_table()
        if self._mode == "html":
            return self._in_html()
        return self._prose()

    def _line(self, start: int = 0) -> str | None:
        """The rest of the current line from `start` (without its newline), or None if it has not ended."""
        end = self._buf.find("\n", start)
        if end >= 0:
            return self._buf[start:end]
        return self._buf[start:] if self._final else None

    def _line_start(self) -> bool:
        buf = self._buf
        indent = len(buf) - len(buf.lstrip(" \t"))
        rest = buf[indent:]
        if not rest:
            if self._final:
                self._take(indent)
            return False
        c = rest[0]
        if c == "\n":
            self._take(indent + 1, "\n")
            return True
        more = not self._final  # more text may still come to decide with
        if c in "`~" and rest[:3] in ("`", "``", "~", "~~") and len(rest) < 3 and more:
            return False
        if rest.startswith(("```", "~~~")):
            line = self._line(indent)
            if line is None:
                return False
            match = _FENCE_OPEN.match(line)
            assert match is not None
            self._open("fence", describe_code(match.group(2)), fence=match.group(1))
            self._take(indent + len(line) + 1 if len(buf) > indent + len(line) else len(buf))
            return True
        if c == "|":
            self._open("table", TABLE_SENTENCE)
            return True
        if c == "<":
            head = rest[:9].lower()
            if head.startswith(_HTML_DOC):
                self._open("html", HTML_SENTENCE)
                self._take(indent)
                return True
            if more and len(rest) < 9 and any(doc.startswith(head) for doc in _HTML_DOC):
                return False
        if c in _RULE_CHARS:
            line_so_far = rest.split("\n", 1)[0]
            if set(line_so_far) <= {c, " ", "\t"}:  # "---", "* * *", "===": a rule, or not yet known
                if "\n" not in rest and more:
                    return False
                if line_so_far.count(c) >= 3 or c == "=":
                    self._take(indent + len(line_so_far) + (1 if "\n" in rest else 0), "\n")
                    return True
        if c in "-*+":
            if len(rest) < 2 and more:
                return False
            if len(rest) >= 2 and rest[1] in " \t":
                self._mode = "prose"
                self._take(indent + 2)
                return True
        if c == "#":
            hashes = len(rest) - len(rest.lstrip("#"))
            if hashes == len(rest) and more:
                return False
            if hashes <= 6 and (hashes == len(rest) or rest[hashes] in " \t\n"):
                self._mode = "prose"
                self._take(indent + hashes + (1 if rest[hashes : hashes + 1] in (" ", "\t") else 0))
                return True
        if c == ">":
            self._take(indent + 1 + (1 if rest[1:2] == " " else 0))
            return True  # still at a line start: a quote may hold a list or a heading
        self._mode = "prose"
        self._take(indent)
        return True

    def _open(self, mode: str, sentence: str, *, fence: str = "") -> None:
        """A block that is shown, not read, begins; `sentence` is said when it ends (so the sentence's
        span in the answer is the whole block)."""
        self._mode = mode
        self._fence = fence
        self._block_sentence = sentence

    def _close(self, mode: str) -> None:
        """The block ends here: say its sentence."""
        sentence, self._block_sentence = self._block_sentence, ""
        self._mode = mode
        self._take(0, sentence)

    def _in_fence(self) -> bool:
        line = self._line()
        if line is None:
            return False
        stripped = line.strip()
        fence_char = self._fence[0]
        self._take(min(len(self._buf), len(line) + 1))
        if stripped.startswith(self._fence) and set(stripped) == {fence_char}:
            self._close("line")
        return True

    def _in_table(self) -> bool:
        rest = self._buf.lstrip(" \t")
        if not rest:
            if self._final:
                self._take(len(self._buf))
            return False
        if rest[0] != "|":
            self._close("line")
            return True
        line = self._line()
        if line is None:
            return False
        self._take(min(len(self._buf), len(line) + 1))
        return True

    def _in_html(self) -> bool:
        end = self._buf.lower().find("</html>")
        if end >= 0:
            self._take(end + len("</html>"))
            self._close("prose")
            return True
        keep = 0 if self._final else len("</html>") - 1  # the end tag may be arriving in pieces
        if len(self._buf) > keep:
            self._take(len(self._buf) - keep)
        return False

    def _prose(self) -> bool:
        buf = self._buf
        more = not self._final
        c = buf[0]
        if c == "\n":
            self._mode = "line"
            self._take(1, "\n")
        elif c in "*~#]":
            self._take(1)
        elif c == "_":
            self._take(1, " ")
        elif c == "|":
            self._take(1, ",")
        elif c == "\\":
            if len(buf) < 2 and more:
                return False
            nxt = buf[1:2]
            self._take(1 + len(nxt), "" if nxt in "\\`*_{}[]()#+-.!|~<>" else nxt)
        elif c == "`":
            return self._inline_code()
        elif c == "[" or (c == "!" and buf[1:2] == "["):
            return self._link()
        elif c == "!" and len(buf) == 1 and more:
            return False  # maybe an image: "![...]"
        elif c == "<":
            return self._tag()
        elif c in "hH" and self._last in _WORD_START:
            return self._url()
        else:
            self._take(1, c)
        return True

    def _inline_code(self) -> bool:
        buf = self._buf
        run = len(buf) - len(buf.lstrip("`"))
        more = not self._final
        if run == len(buf) and more:
            return False
        if run >= 3:  # a fence that did not start its line: a code block all the same
            line = self._line()
            if line is None:
                return False
            match = _FENCE_OPEN.match(line)
            assert match is not None
            self._open("fence", describe_code(match.group(2)), fence=match.group(1))
            self._take(min(len(buf), len(line) + 1))
            return True
        ticks = "`" * run
        close = re.compile(rf"(?<!`){ticks}(?!`)")
        found = close.search(buf, run)
        newline = buf.find("\n", run)
        if found is not None and (newline < 0 or found.start() < newline):
            self._take(found.end(), speak_inline_code(buf[run : found.start()]))
            return True
        if newline >= 0 or not more or len(buf) > MAX_HOLD:
            self._take(run)  # never closed: the backticks were just characters
            return True
        return False

    def _link(self) -> bool:
        buf = self._buf
        more = not self._final
        start = 2 if buf[0] == "!" else 1
        close = buf.find("]", start)
        blank = buf.find("\n\n", start)  # a link's text may wrap, but not across a paragraph
        if close < 0 or (0 <= blank < close):
            if blank >= 0 or not more or len(buf) > MAX_HOLD:
                self._take(start)  # a lone bracket
                return True
            return False
        label = _plain(buf[start:close])
        after = close + 1
        if after >= len(buf) and more:
            return False
        if buf[after : after + 1] == "(":
            end = buf.find(")", after)
            newline = buf.find("\n", after)
            if end < 0 or (0 <= newline < end):
                if newline >= 0 or not more or len(buf) > MAX_HOLD:
                    self._take(after, label)
                    return True
                return False
            self._take(end + 1, label)
            return True
        self._take(after, label)
        return True

    def _tag(self) -> bool:
        buf = self._buf
        more = not self._final
        if len(buf) < 2 and more:
            return False
        if not (buf[1:2].isalpha() or buf[1:2] in ("/", "!")):
            self._take(1, "<")
            return True
        end = buf.find(">")
        newline = buf.find("\n")
        if end >= 0 and (newline < 0 or end < newline):
            autolink = _URL.fullmatch(buf[1:end])  # <https://example.com/page>
            self._take(end + 1, autolink.group(1).lower().removeprefix("www.") if autolink else " ")
            return True
        if newline >= 0 or not more or len(buf) > MAX_HOLD:
            self._take(1)
            return True
        return False

    def _url(self) -> bool:
        buf = self._buf
        more = not self._final
        head = buf[:8].lower()
        if not ("https://".startswith(head) or "http://".startswith(head) or head.startswith(("http://", "https://"))):
            self._take(1, buf[0])
            return True
        match = _URL.match(buf)
        if match is None:
            if more and len(buf) <= len("https://"):
                return False
            self._take(1, buf[0])
            return True
        if match.end() == len(buf) and more:
            return False
        self._take(match.end(), match.group(1).lower().removeprefix("www."))
        return True
