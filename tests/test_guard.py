"""Answers that cannot help (loops, copies of earlier answers, non-answers) are told apart, on words alone."""

from __future__ import annotations

import pytest

from parley.engine.guard import ReplyGuard, copies, loop_start, non_answer, worth_rereading
from parley.engine.sight import about_scene

STUCK = "I'm sorry, I'm not sure what to suggest. Can you please tell me what you're looking for?"


@pytest.mark.parametrize(
    "text",
    [
        'The note says "1:03:59:900 4798:10:10:10:10:10:10:10:10:10:10:10',
        "The answer is yes. The answer is yes. The answer is yes. The answer is yes.",
        "Bees make honey in their hives and they store it. Bees make honey in their hives and they store it.",
        "ha" * 20,
    ],
)
def test_a_loop_is_found_where_it_starts(text: str) -> None:
    start = loop_start(text)
    assert start is not None, text
    assert loop_start(text[:start]) is None, "what comes before the loop is kept and is no loop"


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris. Paris is a big city, and the capital is on the Seine.",
        "One, two, three, four, five, six, seven, eight, nine, ten.",
        "A table:\n|---|---|---|---|---|---|---|---|\n| a | b |",
        "It costs 1,000,000 dollars, or 2,000,000 with tax.",
        "",
    ],
)
def test_ordinary_answers_are_no_loop(text: str) -> None:
    assert loop_start(text) is None


def test_a_copy_needs_the_opening_words_or_most_of_the_answer_not_one_word() -> None:
    earlier = ["The capital of France is Paris.", STUCK]
    assert copies(STUCK, earlier) == 1
    near = "Sorry, I'm not sure what to suggest. Can you please tell me what you are looking for?"
    assert copies(near, earlier) == 1, "a near-verbatim copy with its first word changed"
    assert copies("The capital of Japan is Tokyo.", earlier) is None, "the same opening, another answer"
    assert copies("Yes.", ["Yes."]) is None, "a short answer may be said again"
    assert copies("The capital of France is Paris, a city on the Seine.", earlier) == 0


def test_a_first_sentence_that_is_an_earlier_one_but_for_one_word_is_a_copy() -> None:
    earlier = ["The freezer is a miracle.", "Paris is the capital of France."]
    assert copies("The time is a miracle.", earlier) == 0
    assert copies("The time is a miracle. It flies.", earlier) == 0
    assert copies("The time is a real miracle.", earlier) is None, "two words apart"
    assert copies("The capital of Spain is Madrid.", ["The capital of France is Paris."]) is None
    guard = ReplyGuard(earlier)
    assert [guard.check(t) for t in ("The ", "The time ", "The time is a ")] == ["hold"] * 3
    assert guard.check("The time is a miracle. ") == "copy" and guard.copied == 0


def test_the_guard_holds_only_while_a_reply_opens_like_an_earlier_answer() -> None:
    guard = ReplyGuard(["The capital of France is Paris.", STUCK])
    assert guard.check("The") == "hold", "a growing first word decides nothing"
    assert guard.check("The capital ") == "hold"
    assert guard.check("The capital of Japan ") == "hold", "it may still be that answer but for one word"
    assert guard.check("The capital of Japan is Tokyo, ") == "clear"
    assert guard.check("The capital of Japan is Tokyo, a city. The capital of Japan is Tokyo, a city. ") == "loop"
    copying = ReplyGuard(["The capital of France is Paris.", STUCK])
    said = ""
    verdicts = []
    for word in STUCK.split():
        said += word + " "
        verdicts.append(copying.check(said))
    assert verdicts[:5] == ["hold"] * 5 and verdicts[5] == "copy" and copying.copied == 1, "at its 8th word (I am: 2)"
    assert ReplyGuard([]).check("Anything at all ") == "clear"


@pytest.mark.parametrize(
    "answer",
    [
        STUCK,
        "Sorry, I didn't catch that.",
        "I don't understand the question. Could you rephrase it?",
        "Could you please repeat that?",
        "I'm afraid I can't help with that.",
        "L'Alma, la France, est la maison de la France.",
    ],
)
def test_non_answers(answer: str) -> None:
    assert non_answer(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Nice to meet you, Samira! How can I help you today?",
        "Paris is the capital of France.",
        "Hola is how you say hello in Spanish.",
        "I think the Pacific is the biggest ocean.",
        "Sorrento is a town in Italy.",
    ],
)
def test_answers(answer: str) -> None:
    assert not non_answer(answer)


def test_the_history_keeps_answers_and_leaves_out_what_a_model_would_copy() -> None:
    answers = [
        STUCK,  # to a mumble
        "Paris is the capital of France.",
        STUCK,
        "Paris is the capital of France, a lovely city.",  # asked what bees make
        "One two three four five six seven eight, one two three four five six seven eight.",
        "The Pacific Ocean is the biggest.",
    ]
    assert worth_rereading(answers) == [False, True, False, False, False, True]
    french = ["Bonjour, je suis Parley, comment puis-je vous aider aujourd'hui?"]
    assert worth_rereading(french, english=False) == [True], "another language is no non-answer there"


@pytest.mark.parametrize(
    ("words", "scene", "asks"),
    [
        ("What do you see on my camera right now?", "a dog", True),
        ("What am I holding up?", "a cup", True),
        ("Is anyone here?", None, True),
        ("Is there an animal with me? Which one?", "a dog and a horse", True),
        ("What animal is this?", "a cat", True),
        ("Which vehicle is in front of me?", "a bus", True),
        ("What is on my desk?", "a laptop", True),
        ("Is that a dog?", None, True),
        ("What do these make?", 'the words "BAKERY" / "OPEN 7-3"', False),
        ("What colour is my shirt?", None, True),
        ("What does the sign say?", 'the words "BAKERY" / "OPEN 7-3"', True),
        ("When is it open?", 'the words "BAKERY" / "OPEN 7-3"', True),
        ("How many people can you see?", "5 people", True),
        ("Please tell me which ocean is the biggest one.", 'the words "0:00:52:100 1111"', False),
        ("What is the capital of France?", "1 person and a laptop", False),
        ("How many wheels does a bicycle have?", 'the words "Quarterly report" / "Revenue grew 12 percent"', False),
        ("Why is the sky blue?", None, False),
    ],
)
def test_words_about_the_camera_or_screen_are_told_from_everyday_questions(words: str, scene: str | None, asks: bool) -> None:
    assert about_scene(words, scene) is asks


def test_a_short_follow_up_right_after_a_question_about_the_picture_is_about_it_too() -> None:
    assert about_scene("And what colour is it?", "a car", after_scene_question=True)
    assert not about_scene("What colour are ripe bananas?", "a car", after_scene_question=False)
    assert about_scene("Is it big?", "a car", after_scene_question=True)
    assert not about_scene("Is it big?", "a car", after_scene_question=False)
    assert not about_scene("Which planet is closest to the sun and why is it so hot there?", None, after_scene_question=True)


@pytest.mark.parametrize(
    "text",
    [
        STUCK,
        "Sorry, I'm not sure what to suggest. Can you please tell me what you are looking for?",
        'The note says "1:03:59:900 4798:10:10:10:10:10:10:10:10:10:10:10',
        "Bees make honey in their hives and they store it. Bees make honey in their hives and they store it.",
        "The Pacific is the biggest ocean, and it isn't the saltiest. It's deep and wide.",
    ],
)
def test_a_reply_streamed_a_character_at_a_time_gets_the_verdict_of_the_whole(text: str) -> None:
    earlier = ["The capital of France is Paris.", STUCK]
    whole = ReplyGuard(earlier)
    expected = whole.check(text, final=True)
    streamed = ReplyGuard(earlier)
    verdict = "hold"
    for i in range(1, len(text) + 1):
        verdict = streamed.check(text[:i])
        if verdict in ("copy", "loop"):
            break
    else:
        verdict = streamed.check(text, final=True)
    assert (verdict, streamed.copied, streamed.loop_at) == (expected, whole.copied, whole.loop_at)


def test_a_sentence_taken_from_an_earlier_answer_is_held_and_the_reply_ends_before_it() -> None:
    tail = "It's a magical moment, and it brings joy to people everywhere."
    guard = ReplyGuard([f"The sky is new. {tail}"])
    text = f"The ocean is the biggest. {tail} And more."
    verdicts = {}
    for i in range(1, len(text) + 1):
        verdicts[text[:i]] = verdict = guard.check(text[:i])
        if verdict == "repeat":
            break
    assert verdicts["The ocean is the biggest. It"] == "clear"
    assert verdicts["The ocean is the biggest. It's a magical moment, and it brings "] == "hold"
    assert verdict == "repeat" and guard.repeat_at == text.index("It's"), verdicts
    assert copies(f"The ocean is the biggest. {tail}", [f"The sky is new. {tail}"]) == 0, "not read again either"
    assert ReplyGuard(["It is. A short one."]).check("Yes. A short one. ", final=True) == "clear", "a short sentence may recur"


def test_the_words_of_a_message_are_found_behind_its_scene_note() -> None:
    from parley.engine.sight import with_scene, without_scene

    for scene, blind in (("a dog", None), ("", None), (None, "no picture is coming from the browser"), (None, None)):
        assert without_scene(with_scene("What is that?", scene, blind)) == "What is that?"
    assert without_scene("[not a note]\nHello") == "[not a note]\nHello"
