"""Speakable: an answer's Markdown as speech, with no markup and no code read out."""

from __future__ import annotations

import random
import re

import pytest

from media.speakable import Speakable
from media.text import SentenceSplitter

ANSWER = """# Steps to **win**
Run `pip install numpy`, then call `print()` ([docs](https://docs.python.org/3/library/functions.html)).
See https://www.example.com/some/page?x=1 or <https://parley.test/help>.
- first *item*
- second_item
1. numbered
---
```python
print("hello")
x = [1, 2, 3]
```
| name | value |
|---|---|
| a | 1 |

After the table, <b>bold</b> text & a < b. ![a cat](http://img.test/cat.png) Done\\*.
> quoted line
~~~
plain code
~~~
The end."""

SPOKEN = """Steps to win
Run pip install numpy, then call print (docs).
See example.com or parley.test.
first item
second item
1. numbered


Python code shown on screen.

Table shown on screen.

After the table,  bold  text & a < b. a cat Done.
quoted line

Code shown on screen.
The end."""


def whole(text: str) -> str:
    speakable = Speakable()
    return speakable.feed(text) + speakable.flush()


def in_pieces(text: str, sizes: list[int]) -> str:
    speakable = Speakable()
    out, i = "", 0
    for size in sizes:
        out += speakable.feed(text[i : i + size])
        i += size
    return out + speakable.feed(text[i:]) + speakable.flush()


def test_markdown_becomes_plain_speech_and_code_is_never_read() -> None:
    assert whole(ANSWER) == SPOKEN
    assert not re.search(r"[`*#|\[\]_~>]", whole(ANSWER))
    assert "print(" not in whole(ANSWER) and "x = " not in whole(ANSWER)


def test_the_speech_is_the_same_however_the_answer_is_streamed() -> None:
    assert in_pieces(ANSWER, [1] * len(ANSWER)) == SPOKEN
    rng = random.Random(7)
    for _ in range(20):
        assert in_pieces(ANSWER, [rng.randint(1, 12) for _ in range(len(ANSWER) // 4)]) == SPOKEN


def test_prose_is_not_held_back() -> None:
    speakable = Speakable()
    assert speakable.feed("Hello there, how are") == "Hello there, how are"
    assert speakable.feed(" you? I am **fine**") == " you? I am fine"
    assert speakable.feed(" and `unfinished") == " and "  # an open backtick waits for its end
    assert speakable.feed(" code` too.") == "unfinished code too."


def test_a_whole_html_document_is_one_sentence() -> None:
    html = "<!DOCTYPE html>\n<html><head><script>alert('x')</script></head>\n<body><h1>Hi</h1></body></html>\nThat is the page."
    assert whole(html) == "\nAn HTML page, shown on screen.\n\nThat is the page."
    assert in_pieces(html, [1] * len(html)) == whole(html)


@pytest.mark.parametrize(
    ("fence", "said"),
    [("```js\nlet a = 1;\n```", "JavaScript code"), ("```\nls -la\n```", "Code"), ("~~~bash\necho hi\n~~~", "Shell code")],
)
def test_a_code_block_is_named_by_its_language(fence: str, said: str) -> None:
    assert whole(f"Here:\n{fence}\nDone.") == f"Here:\n\n{said} shown on screen.\nDone."


def test_a_code_block_is_announced_once_it_is_complete() -> None:
    speakable = Speakable()
    assert speakable.feed("Here:\n```python\nprint(1)\n") == "Here:\n"
    assert speakable.feed("```\nDone.") == "\nPython code shown on screen.\nDone."


def test_an_unclosed_code_block_is_not_read_either() -> None:
    assert whole("Look:\n```python\nsecret = 42\nprint(secret)") == "Look:\n\nPython code shown on screen.\n"


def test_long_inline_code_is_not_read() -> None:
    said = whole("Use `subprocess.run(['ls', '-la', '/tmp'], check=True, capture_output=True)` for that.")
    assert said == "Use the code shown on screen for that."


def test_lone_markup_characters_are_just_characters() -> None:
    assert whole("A [bracket and 3 < 4 and a `tick\nNext line.") == "A bracket and 3 < 4 and a tick\nNext line."


def test_source_at_maps_each_sentence_back_to_the_answer() -> None:
    answer = "**First** sentence here. Then `code` and [a link](https://x.test/).\n```py\nx = 1\n```\nLast one."
    speakable = Speakable()
    splitter = SentenceSplitter()
    found: list[tuple[str, int]] = []
    for ch in answer:
        found += splitter.feed_spans(speakable.feed(ch))
    found += splitter.feed_spans(speakable.flush()) + splitter.flush_spans()
    sentences = [s for s, _ in found]
    assert sentences == ["First sentence here.", "Then code and a link.", "Python code shown on screen.", "Last one."]
    ends = [speakable.source_at(end) for _, end in found]
    assert answer[: ends[0]] == "**First** sentence here."
    assert answer[: ends[1]].endswith("(https://x.test/).")
    assert answer[: ends[2]].endswith("```py\nx = 1\n```\n"), "the code's sentence spans the whole block"
    assert ends[3] == len(answer)
