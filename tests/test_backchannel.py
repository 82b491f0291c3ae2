"""The backchannel rule: what a listener says to keep the speaker going is told from an interruption."""

from __future__ import annotations

import pytest

from parley.engine.backchannel import BACKCHANNEL_MAX_S, is_backchannel, words_of


@pytest.mark.parametrize(
    "text",
    [
        "Mm-hmm.",
        "Yeah.",
        "Okay.",
        "Right, right.",
        "Uh-huh",
        "I see.",
        "",
        "[coughing]",
        "(laughs)",
        "*sigh*",
        "Yeah, okay.",
        "Um...",
    ],
)
def test_acknowledgements_and_wordless_sounds_are_backchannels(text: str) -> None:
    assert is_backchannel(text, 0.6)


@pytest.mark.parametrize(
    "text",
    [
        "Wait.",
        "Stop.",
        "Wait, stop.",
        "No.",
        "What?",
        "Yeah, but why?",
        "Okay so what is the capital of France",
        "Hello.",
        "Um, wait.",
    ],
)
def test_anything_else_interrupts(text: str) -> None:
    assert not is_backchannel(text, 0.6)


def test_speech_longer_than_a_backchannel_interrupts_whatever_it_says() -> None:
    assert not is_backchannel("yeah yeah", BACKCHANNEL_MAX_S + 0.1)


def test_the_conversation_language_picks_the_list() -> None:
    assert is_backchannel("Genau.", 0.5, "de") and not is_backchannel("Genau.", 0.5, "en")
    assert is_backchannel("", 0.5, "ja") and not is_backchannel("はい", 0.5, "ja")


def test_words_of_drops_marks_for_sounds_and_punctuation() -> None:
    assert words_of("[Music] Mm-hmm, OKAY!") == ["mm-hmm", "okay"]
