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


def test_its_own_words_coming_back_are_told_from_a_question_by_their_content_words() -> None:
    from parley.engine.backchannel import is_own_words

    story = "Once upon a time the dragon Zorath learned to bake bread in the oven of the old castle."
    assert is_own_words("the dragon learned to bake bread", story)
    assert is_own_words("learned to bake", story)
    assert not is_own_words("What is the capital of France?", story), "shared function words are no echo"
    assert not is_own_words("wait, stop", story)
    assert not is_own_words("", story)
