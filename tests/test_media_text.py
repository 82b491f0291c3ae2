"""SentenceSplitter: what TTS is asked to say, and when, while the LLM is still writing."""

from __future__ import annotations

import pytest

from media.text import MAX_SENTENCE_CHARS, SentenceSplitter


def split_whole(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.flush()


def split_by_chars(text: str) -> list[str]:
    splitter = SentenceSplitter()
    out = [s for ch in text for s in splitter.feed(ch)]
    return out + splitter.flush()


REPLY = (
    "Hello there! I can see you're holding a cup. Is that coffee? "
    "Pi is about 3.14, e.g. in school maths. Dr. Smith said so: trust him.\n"
    "# Steps\n1. Boil **water**.\n2. Pour it... then wait...ok? Done"
)


def test_sentences_come_out_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()

    assert splitter.feed("Hello there!") == []  # "!" is only an end once whitespace follows
    assert splitter.feed(" How are") == ["Hello there!"]
    assert splitter.feed(" you? I'm") == ["How are you?"]
    assert splitter.feed(" fine.") == []
    assert splitter.flush() == ["I'm fine."]


def test_a_reply_splits_the_same_however_it_is_streamed() -> None:
    expected = [
        "Hello there!",
        "I can see you're holding a cup.",
        "Is that coffee?",
        "Pi is about 3.14, e.g. in school maths.",
        "Dr. Smith said so:",
        "trust him.",
        "Steps",
        "1. Boil water.",
        "2. Pour it...",
        "then wait...ok?",
        "Done",
    ]
    assert split_whole(REPLY) == expected
    assert split_by_chars(REPLY) == expected
    splitter = SentenceSplitter()
    by_sevens = [s for i in range(0, len(REPLY), 7) for s in splitter.feed(REPLY[i : i + 7])]
    assert by_sevens + splitter.flush() == expected


@pytest.mark.parametrize(
    "text",
    ["It costs 3.50 dollars today.", "Version 2.0.1 is out.", "Ask Mr. Jones or Mrs. Lee.", "Use tools, i.e. a hammer."],
)
def test_decimals_and_abbreviations_do_not_end_a_sentence(text: str) -> None:
    assert split_whole(text + " Next one.") == [text, "Next one."]


def test_a_newline_ends_a_sentence_without_punctuation() -> None:
    splitter = SentenceSplitter()

    assert splitter.feed("Here is a list\n- apples\n\n- pears") == ["Here is a list", "- apples"]
    assert splitter.flush() == ["- pears"]


def test_closing_quotes_and_emphasis_stay_with_their_sentence() -> None:
    assert split_whole('He said "no." Then **this is key.** Fine') == ['He said "no."', "Then this is key.", "Fine"]


def test_markdown_emphasis_is_not_spoken() -> None:
    assert split_whole("## Title\nRun `pip install` **now**. *Really*.") == ["Title", "Run pip install now.", "Really."]


def test_a_long_run_without_punctuation_is_cut_at_a_comma() -> None:
    clause = "and then we walked a little further down the road"
    text = ", ".join([clause] * 8) + "."

    pieces = split_by_chars(text)

    assert len(pieces) > 1
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert all(p.endswith((",", ".")) for p in pieces)
    assert " ".join(pieces) == text
    assert split_whole(text) == pieces


def test_a_long_run_without_commas_is_cut_at_a_space() -> None:
    text = " ".join(["word"] * 120)

    pieces = split_by_chars(text)

    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert all(set(p.split()) == {"word"} for p in pieces)
    assert " ".join(pieces) == text
    assert split_whole(text) == pieces


def test_flush_returns_nothing_when_everything_was_said() -> None:
    splitter = SentenceSplitter()

    assert splitter.feed("All done. ") == ["All done."]
    assert splitter.flush() == []
    assert splitter.feed("  \n ") == []
    assert splitter.flush() == []


def test_the_splitter_can_be_reused_after_flush() -> None:
    splitter = SentenceSplitter()
    splitter.feed("First reply without an end")
    assert splitter.flush() == ["First reply without an end"]

    assert splitter.feed("Second. ") == ["Second."]


def test_a_long_first_sentence_is_spoken_from_its_first_clause() -> None:
    text = "The planet closest to the sun is Mercury, which is also the smallest planet. It is hot, and fast."
    splitter = SentenceSplitter(first_clause_words=6)
    out = [s for ch in text for s in splitter.feed(ch)] + splitter.flush()
    assert out == ["The planet closest to the sun is Mercury,", "which is also the smallest planet.", "It is hot, and fast."]


def test_a_short_opening_or_a_comma_inside_a_number_does_not_cut_the_first_sentence() -> None:
    for text in ("Well, that is a good question for sure. Yes.", "It costs 1,000,000 dollars today, they say it is true."):
        splitter = SentenceSplitter(first_clause_words=6)
        whole = splitter.feed(text) + splitter.flush()
        by_char = SentenceSplitter(first_clause_words=6)
        chars = [s for ch in text for s in by_char.feed(ch)] + by_char.flush()
        assert whole == chars
    splitter = SentenceSplitter(first_clause_words=6)
    assert splitter.feed("Well, that is a good question for sure. Yes.") + splitter.flush() == [
        "Well, that is a good question for sure.",
        "Yes.",
    ]


def test_the_first_clause_is_confirmed_by_the_whitespace_after_its_comma() -> None:
    splitter = SentenceSplitter(first_clause_words=6)
    assert splitter.feed("One two three four five six,") == []
    assert splitter.feed(" seven") == ["One two three four five six,"]


def pieces(text: str, **limits: int) -> list[str]:
    """`text` split as it streams one character at a time, checked against one feed of it all."""
    by_char = SentenceSplitter(**limits)
    out = [s for ch in text for s in by_char.feed(ch)] + by_char.flush()
    whole = SentenceSplitter(**limits)
    assert whole.feed(text) + whole.flush() == out, "the same however it streams"
    return out


def test_a_first_sentence_that_never_ends_is_spoken_after_a_bounded_number_of_words() -> None:
    text = "the sky looks blue to us on a clear day because the air scatters the short blue waves of sunlight more than red"
    out = pieces(text, first_clause_words=6, first_max_words=12)
    assert len(out[0].split()) <= 12, out
    assert out[0] == "the sky looks blue to us on a clear day", "cut before a joining word"
    assert " ".join(out) == text, "nothing lost or doubled"
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in out)


def test_only_the_first_piece_is_cut_early() -> None:
    first = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    out = pieces(
        f"{first}. Then a second sentence that is long, with many words and no end in sight at all here", first_max_words=8
    )
    assert out[0] == "one two three four five six seven eight"
    assert out[1] == "nine ten eleven twelve thirteen fourteen."
    assert out[2].startswith("Then a second sentence") and out[2].endswith("here")


def test_a_first_piece_prefers_a_comma_then_ends_at_its_limit() -> None:
    assert pieces("Well, it depends on many things that I could list for you", first_max_words=10)[0] == (
        "Well, it depends on many things"
    )
    assert pieces("so it is one two, three four five six seven eight nine ten", first_max_words=10)[0] == "so it is one two,"
    assert pieces("Short and done.", first_max_words=10) == ["Short and done."]


def test_a_run_without_spaces_is_cut_by_characters() -> None:
    loop = 'The note says "1:03:59:900 4798' + ":10" * 60
    out = pieces(loop, first_max_words=12)
    assert len(out[0]) <= 90, out[0]
    assert out[0].startswith("The note says"), out[0]
    assert "".join(out).replace(" ", "") == loop.replace(" ", ""), "nothing lost"
    bare = pieces("x" * 150, first_max_words=12)
    assert [len(p) for p in bare] == [90, 60]
