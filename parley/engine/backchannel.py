"""Backchannels: "mm-hmm", "yeah", "okay" said while Parley speaks are a listener's signals, not a
turn. Told apart from an interruption by what can be known within a few hundred milliseconds of
the speech ending: how long it lasted and the words of its transcript.

The rule: speech over an answer is a backchannel when it lasted at most `BACKCHANNEL_MAX_S` and its
transcript is empty (a cough, a laugh, a breath: nothing Whisper makes words of) or made only of
acknowledgement words in the conversation's language. Anything else ("wait", "stop", "no", a
question) interrupts.

Parley's own voice, when the echo canceller leaves some of it, is told apart the same way: speech
whose words are mostly among the words spoken in the last `ECHO_MEMORY_S` resumes the answer too.
Only content words count there: "is the capital of France?" shares "is", "the" and "of" with any
English answer, which made a real question over a story pass for its echo.

Limits: a real answer made of the same words ("yeah" to a question Parley asked mid-answer) is
taken as a backchannel, and the answer goes on; an acknowledgement the list lacks, or one the ASR
mishears as another word, interrupts. Languages without a list treat only wordless sounds as
backchannels.
"""

from __future__ import annotations

import re

ECHO_MEMORY_S = 3.0
"""Words spoken this long ago or less may be coming back through the microphone."""

BACKCHANNEL_MAX_S = 1.2
"""Speech longer than this over an answer is never a backchannel: it interrupts at once."""

ACKNOWLEDGEMENTS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "mm mmm mhm hm hmm mm-hmm mmhmm mm-hm uh-huh uh huh uhhuh um umm er erm aha ah oh ooh wow yeah yep yes yup ya "
        "okay ok kay right alright sure true cool nice great good fine i see got it exactly indeed".split()
    ),
    "de": frozenset("mhm hm hmm ja jaja genau okay ok gut klar stimmt aha ach so richtig".split()),
    "fr": frozenset("mhm hm hmm oui ouais d'accord ok okay ah oh bon voilà exactement".split()),
    "es": frozenset("mhm hm hmm sí si vale claro ok okay ajá ah oh bueno exacto".split()),
}

_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪")
"""What Whisper writes for sounds that are not words: [cough], (laughs), *sigh*, ♪."""
_WORD = re.compile(r"[\w'-]+")


def words_of(text: str) -> list[str]:
    """The spoken words of a transcript, lower-case, without marks for sounds or punctuation."""
    return [w.strip("-'") for w in _WORD.findall(_NON_SPEECH.sub(" ", text).lower()) if w.strip("-'")]


FUNCTION_WORDS = frozenset(
    "a an the and or but of to in on at by for with from as is are was were be been am it its it's this that these "
    "those there here i you he she we they me him her us them my your his our their what who which how when where why "
    "do does did not no so if then than can will would".split()
)
"""English words too common to tell whose speech it is (the rule falls back to every word when a
transcript has nothing else)."""


def is_own_words(transcript: str, spoken: str) -> bool:
    """Whether speech heard over an answer is the answer itself coming back (an echo the canceller
    left): at least half of its content words are among the words just spoken."""
    words = words_of(transcript)
    content = [w for w in words if w not in FUNCTION_WORDS] or words
    said = set(words_of(spoken))
    return bool(content) and sum(w in said for w in content) * 2 >= len(content)


def is_backchannel(transcript: str, speech_s: float, language: str | None = "en") -> bool:
    """Whether speech over an answer, `speech_s` long, that reads `transcript`, is a backchannel."""
    if speech_s > BACKCHANNEL_MAX_S:
        return False
    words = words_of(transcript)
    if not words:
        return True
    known = ACKNOWLEDGEMENTS.get((language or "en").split("-")[0].lower(), frozenset())
    return len(words) <= 4 and all(w in known for w in words)
