"""The backchannel rule: what a listener says to keep the speaker going is told from an interruption."""

from __future__ import annotations

import pytest

from parley.engine.backchannel import BACKCHANNEL_MAX_S, is_backchannel, overlap_verdict, words_of


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
        "No, no.",
        "No, that is wrong.",
        "What?",
        "Yeah, but why?",
        "Um, wait.",
        "Hold on.",
        "Hang on a second.",
        "Sorry, what?",
        "No, no.",
        "Excuse me.",
        "Is it?",
    ],
)
def test_anything_else_interrupts(text: str) -> None:
    assert not is_backchannel(text, 0.6)


def test_speech_longer_than_a_backchannel_interrupts_whatever_it_says() -> None:
    assert not is_backchannel("yeah yeah", BACKCHANNEL_MAX_S + 0.1)


def test_the_conversation_language_picks_the_list() -> None:
    assert overlap_verdict("Genau.", 0.5, "de") == "a backchannel"
    assert overlap_verdict("Genau.", 0.5, "en") == "not sure"
    assert overlap_verdict("Stopp!", 0.5, "de") == "an interruption"
    assert is_backchannel("", 0.5, "ja") and not is_backchannel("はい", 0.5, "ja"), "no lists: only wordless sounds pass"


@pytest.mark.parametrize("text", ["here", "Hear.", "Year.", "Yeah, here.", "Thank you.", "Go on.", "Hello.", "Hey.", "No."])
def test_one_or_two_words_that_ask_for_nothing_never_cut_an_answer_short(text: str) -> None:
    """ "Yeah" read as "here" by a small Whisper (as a reviewer's voice was): no floor word, no
    question, too short to be a request: not sure, so the answer goes on."""
    assert overlap_verdict(text, 0.5) in ("a backchannel", "not sure")


def test_other_words_interrupt_only_when_longer_than_a_backchannel() -> None:
    """Words that neither ask for the floor nor acknowledge: "mm-hmm" misread as "and then them"
    (0.3-0.86 s on the overlap benchmark) goes on; "hold on" misread as "Oh, don't" (0.6-1.1 s), or
    a request, interrupts."""
    assert overlap_verdict("and then them", 0.5) == "not sure"
    assert overlap_verdict("Oh, don't", 0.8) == "an interruption"
    assert overlap_verdict("Tell me about the castle instead", 1.0) == "an interruption"
    assert overlap_verdict("Okay so what is the capital of France", 1.3) == "an interruption"


def test_words_whisper_was_guessing_at_never_interrupt() -> None:
    """A laugh read as "I'm not a real man." at a mean log-probability of -2.2: a guess at sounds."""
    from parley.engine.types import Transcript

    laugh = Transcript(text="I'm not a real man.", avg_logprob=-2.24)
    assert laugh.guessing and not Transcript(text="Oh, don't", avg_logprob=-1.2).guessing
    assert overlap_verdict(laugh.text, 0.8, guessing=laugh.guessing) == "not sure"
    assert overlap_verdict("What's wrong?", 0.5, guessing=True) == "not sure"
    assert overlap_verdict("What's wrong?", 0.5) == "an interruption"


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


def test_more_syllables_than_the_speech_could_hold_are_a_guess() -> None:
    """A 0.19 s laugh read as "I'm sorry." (3 syllables: 16 a second) is no request; "Wait." in
    0.19 s and "Wait, stop." in 0.26 s are."""
    assert overlap_verdict("I'm sorry.", 0.19) == "not sure"
    assert overlap_verdict("What's wrong?", 0.16) == "not sure"
    assert overlap_verdict("Wait.", 0.19) == "an interruption"
    assert overlap_verdict("Wait, stop.", 0.26) == "an interruption"
    assert overlap_verdict("I'm sorry.", 0.5) == "an interruption"
    assert overlap_verdict("Stop there, please. " * 3, 0.86) == "an interruption", "a decoder's loop says it once"
    assert overlap_verdict("No, no, no, no, no, no, no,", 0.64) == "an interruption"
