"""Backchannels: "mm-hmm", "yeah", "okay" said while Parley speaks are a listener's signals, not a
turn. Told apart from an interruption by what can be known within a few hundred milliseconds of
the speech ending: how long it lasted, the words of its transcript, and how sure Whisper was of them.

The rule (`overlap_verdict`), for speech over an answer that lasted at most `BACKCHANNEL_MAX_S`:
- no words (a cough, a laugh, a breath: nothing Whisper makes words of), or words Whisper was only
  guessing at (`Transcript.guessing`: a mean token log-probability under -2, a laugh read as "I'm not a
  real man."; or more syllables than the speech could hold, `MAX_SYLLABLES_PER_S`: "I'm sorry."
  for 0.19 s of a laugh): no interruption;
- only acknowledgement words: a backchannel ("Okay? Okay?" too);
- a word that asks for the floor ("wait", "stop", "hold on", "sorry", "what", "no, no"; a lone
  "No." is not one) or a question of two words or more: an interruption;
- any other words: shorter than `BACKCHANNEL_LIKE_S` (as long as a backchannel: "yeah" read as
  "here", "mm-hmm" as "and then them") is not sure, so no interruption; longer ("hold on" read as
  "Oh, don't") is an interruption. Longer speech always is.
So one misread word cannot cut an answer short, and a clear "wait" or a question always does.
`benchmarks/overlap.py` measures it, with the hearing benchmark's voices, clean and in noise.

Parley's own voice, when the echo canceller leaves some of it, is told apart the same way: speech
whose words are mostly among the words spoken in the last `ECHO_MEMORY_S` resumes the answer too.
Only content words count there: "is the capital of France?" shares "is", "the" and "of" with any
English answer, which made a real question over a story pass for its echo.

Limits: a real answer made of the same words ("yeah" to a question Parley asked mid-answer) is
taken as a backchannel, and the answer goes on; a short interruption without a floor word
("Louder.") is not sure enough to stop it. Languages without lists
treat only wordless sounds as backchannels, and every word as an interruption.
"""

from __future__ import annotations

import re

ECHO_MEMORY_S = 3.0
"""Words spoken this long ago or less may be coming back through the microphone."""

BACKCHANNEL_MAX_S = 1.2
"""Speech longer than this over an answer is never a backchannel: it interrupts at once."""

BACKCHANNEL_LIKE_S = 0.7
"""Words that neither ask for the floor nor acknowledge interrupt only with at least this much
speech (benchmarks/overlap.py: backchannels misread took 0.3-0.86 s, interruptions misread 0.6-1.1 s;
chosen there, so it flatters itself somewhat)."""


ACKNOWLEDGEMENTS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "mm mmm mhm hm hmm mm-hmm mmhmm mm-hm uh-huh uh huh uhhuh um umm er erm aha ah oh ooh wow yeah yep yes yup ya "
        "okay ok kay right alright sure true cool nice great good fine i see got it exactly indeed really ha haha "
        "heh hehe thanks thank you interesting m em".split()
    ),
    "de": frozenset("mhm hm hmm ja jaja genau okay ok gut klar stimmt aha ach so richtig".split()),
    "fr": frozenset("mhm hm hmm oui ouais d'accord ok okay ah oh bon voilà exactement".split()),
    "es": frozenset("mhm hm hmm sí si vale claro ok okay ajá ah oh bueno exacto".split()),
}

FLOOR_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "wait stop hold hang sorry pardon excuse what why how who where when which no nope nah listen "
        "actually but enough quiet shush shh skip next repeat louder slower pause cancel parley".split()
    ),
    "de": frozenset("warte warten stopp halt moment nein was wie warum wer wo wann entschuldigung aber hallo hey".split()),
    "fr": frozenset("attends attendez arrête arrêtez stop non quoi comment pourquoi qui où quand pardon mais allô hé".split()),
    "es": frozenset("espera espere para pare alto no qué cómo por qué quién dónde cuándo perdón pero oye hola".split()),
}
"""Words that ask for the floor: said over an answer, even alone, they interrupt it (but `LONE_NO`)."""

LONE_NO = frozenset("no nope nah nein non".split())
"""A lone "no" is a floor word only with more words ("No, no.", "No, that's wrong"): alone, it is
what Whisper most often makes of a "mm-hmm" heard over Parley's own voice."""

Verdict = str
"""What speech over an answer was: "no words", "a backchannel", "not sure" (no interruption), or
"an interruption"."""

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


MAX_SYLLABLES_PER_S = 10.0
"""Faster than anyone speaks (quick speech runs at 6-7 syllables a second): words read into less
speech than that are Whisper's guess at a short sound ("I'm sorry." for a 0.19 s laugh)."""

_VOWELS = re.compile(r"[aeiouy]+")


def more_words_than_sound(words: list[str], speech_s: float) -> bool:
    """Whether `words` (two syllables or more) could not have been said in `speech_s` of speech.
    Each word counts once: Whisper repeats itself ("Stop Stop Stop ...") past what was said."""
    syllables = sum(max(1, len(_VOWELS.findall(w))) for w in dict.fromkeys(words))
    return syllables >= 2 and syllables > MAX_SYLLABLES_PER_S * max(speech_s, 1e-3)


def overlap_verdict(transcript: str, speech_s: float, language: str | None = "en", guessing: bool = False) -> Verdict:
    """What speech over an answer, `speech_s` long, that reads `transcript`, was (the module's rule);
    `guessing`: Whisper's words were a guess (`Transcript.guessing`)."""
    if speech_s > BACKCHANNEL_MAX_S:
        return "an interruption"
    words = words_of(transcript)
    if not words:
        return "no words"
    code = (language or "en").split("-")[0].lower()
    known, floor = ACKNOWLEDGEMENTS.get(code, frozenset()), FLOOR_WORDS.get(code)
    if floor is None:
        return "an interruption"  # no lists for this language: any word may be one
    if guessing or more_words_than_sound(words, speech_s):
        return "not sure"
    if all(w in known for w in words):
        return "a backchannel"  # "Okay? Okay?" too
    alone_unsure = len(words) == 1 and words[0] in LONE_NO  # "No." is what Whisper makes of "mm-hmm" over echo
    if (any(w in floor for w in words) and not alone_unsure) or (transcript.rstrip().endswith("?") and len(words) >= 2):
        return "an interruption"
    return "not sure" if speech_s < BACKCHANNEL_LIKE_S else "an interruption"


def is_backchannel(transcript: str, speech_s: float, language: str | None = "en", guessing: bool = False) -> bool:
    """Whether speech over an answer, `speech_s` long, that reads `transcript`, lets the answer go on."""
    return overlap_verdict(transcript, speech_s, language, guessing) != "an interruption"
