"""Scene notes for a text-only model (parley/vision, deployments/vision.py, the session's use of them).

The real detectors (MediaPipe, OpenCV's DNN, onnxruntime) run in a subprocess, `python -m
deployments.vision --json`, as a replica would load them: a native crash fails the test with its
signal instead of killing pytest. Photos: real ones copied out of the packages that ship them
(tests/support/photos.py says which), the sign and the screen drawn here with PIL.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from deployments.vision import Vision
from parley.config import VisionConfig
from parley.engine.messages import Entry
from parley.engine.sight import with_scene
from parley.engine.stages import look_or_say_blind, reply_to
from parley.local_models import LocalModelMissing
from parley.vision.scene import Found, note
from tests.support import photos
from tests.support.fake_services import ScriptedServices, make_session, wait_until

ROOT = Path(__file__).resolve().parent.parent


def describe(
    tmp_path: Path, images: dict[str, np.ndarray | Path], *, screen: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """(the replica's info, each image's note) from the real detectors, in a subprocess."""
    files = []
    for name, image in images.items():
        if isinstance(image, Path):
            files.append(str(image))
        else:
            file = tmp_path / f"{name}.png"
            Image.fromarray(image).save(file)
            files.append(str(file))
    done = subprocess.run(
        [sys.executable, "-m", "deployments.vision", "--json", *(["--screen"] if screen else []), *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the vision replica died ({done.returncode}): {done.stderr[-3000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    info, notes = lines[0], lines[1:]
    return info, {name: n["text"] for name, n in zip(images, notes, strict=True)}


def photo(name: str) -> Path:
    found = photos.path(name)
    if found is None:
        pytest.fail(f"the photo {name} is missing: scripts/install.sh --dev fetches it (python -m tests.support.photos)")
    return found


def test_real_photos_get_notes_with_what_they_show(tmp_path: Path) -> None:
    info, notes = describe(
        tmp_path,
        {
            "group": photo("group"),
            "dog": photo("dog"),
            "sign": photos.sign(),
            "blank": np.zeros((480, 640, 3), np.uint8),
            "grey": np.full((480, 640, 3), 128, np.uint8),
        },
    )
    assert info["finds"] == ["faces", "objects", "text"], info
    assert set(info["ms_per_frame"]) == {"faces", "objects", "text"} and info["memory_mb"] > 0
    assert "5 people" in notes["group"], notes  # five faces to the camera
    assert "dog" in notes["dog"] and "horse" in notes["dog"] and "1 person" in notes["dog"], notes
    assert "BAKERY" in notes["sign"] and "OPEN 7-3" in notes["sign"], notes
    assert "person" not in notes["sign"] and "dog" not in notes["group"], notes  # nothing that is not there
    assert notes["blank"] == "" and notes["grey"] == ""


def test_a_shared_screen_is_read_words_first(tmp_path: Path) -> None:
    _, notes = describe(tmp_path, {"screen": photos.screen()}, screen=True)
    text = notes["screen"]
    assert text.startswith("the words "), text
    for words in ("Quarterly report", "Revenue grew 12 percent", "Meeting on Friday at 10", "Maria"):
        assert words in text, text
    assert text.index("Quarterly") < text.index("Revenue") < text.index("Friday"), "reading order"


def test_the_note_names_what_was_found_and_counts_it() -> None:
    face = Found("face", 0.9, (0.1, 0.1, 0.2, 0.2))
    found = {
        "faces": [face, face],
        "objects": [
            Found("person", 0.9, (0, 0, 1, 1)),
            Found("person", 0.8, (0, 0, 1, 1)),
            Found("person", 0.7, (0, 0, 1, 1)),
            Found("dog", 0.95, (0, 0, 1, 1)),
            Found("dog", 0.6, (0, 0, 1, 1)),
            Found("bicycle", 0.45, (0, 0, 1, 1)),
        ],
        "text": [Found("OPEN", 1.0, (0, 0, 1, 1))],
    }
    assert note(found) == '3 people (2 faces visible), 2 dogs, maybe a bicycle and the words "OPEN"'
    assert note(found, "screen").startswith('the words "OPEN", 3 people')
    assert note({"objects": [Found("umbrella", 0.7, (0, 0, 1, 1))]}) == "an umbrella"
    assert note({}) == ""
    assert with_scene("What is this?", "a cup") == "[Camera note: I see a cup.]\nWhat is this?"
    assert with_scene("And now?", "", source="screen").startswith("[Screen note: my detectors recognise nothing")
    assert "I cannot see anything" in with_scene("Hi", None, "no picture is coming from the browser")
    assert with_scene("Hi", None) == "Hi"


async def test_missing_detectors_are_left_out_with_their_reason() -> None:
    def missing() -> Any:
        raise LocalModelMissing("the object detector is not installed: pip install it")

    class Dim:
        name = "faces"

        def find(self, rgb: np.ndarray) -> list[Found]:
            return [Found("face", 0.9, (0, 0, 1, 1))] if rgb.mean() > 10 else []

    vision = Vision(VisionConfig(), makers={"faces": Dim, "objects": missing})
    info = await vision.info()
    assert info.finds == ["faces"] and "not installed" in info.missing["objects"]
    bright = np.full((48, 64, 3), 200, np.uint8)
    bright[::2] = 100  # not a blank frame
    from media.image import frame_to_jpeg

    jpeg = frame_to_jpeg(av.VideoFrame.from_ndarray(bright, format="rgb24"))
    assert (await vision.describe(jpeg)).text == "1 person"
    with pytest.raises(ValueError, match="not an image"):
        await vision.describe(b"not a jpeg")
    nothing = Vision(VisionConfig(), makers={"objects": missing})
    assert (await nothing.info()).finds == []


def frame(value: int = 150) -> av.VideoFrame:
    picture = np.full((48, 64, 3), value, np.uint8)
    picture[::3] = 40
    return av.VideoFrame.from_ndarray(picture, format="rgb24")


async def test_a_text_only_model_gets_the_note_of_the_frame_taken_when_the_turn_began() -> None:
    services = ScriptedServices(["I see a dog."])
    session, _, _ = make_session(services, vision={"enabled": True})
    assert session.settings.sight == "note"
    session.on_video_frame(frame())
    await session.send_text("What do you see?")
    await wait_until(lambda: len(services.requests) == 1)
    system, user = services.requests[0][0], services.requests[0][-1]
    assert "cannot see images" in system.text() and "never invent" in system.text()
    assert user.text() == "[Camera note: I see a dog, a bicycle.]\nWhat do you see?"
    assert not user.has_image(), "a text-only model gets words, never the JPEG"
    assert len(services.described) == 1 and services.described[0][0][:2] == b"\xff\xd8"  # one JPEG, this turn's
    assert session.history[0].scene == "a dog, a bicycle"
    await session.close()


async def test_without_a_picture_or_a_note_the_model_is_told_it_cannot_see() -> None:
    services = ScriptedServices(["I cannot see."])
    session, _, _ = make_session(services, vision={"enabled": True, "wait_s": 0.05})
    await session.send_text("What do you see?")  # no video track yet
    await wait_until(lambda: len(services.requests) == 1)
    assert services.requests[0][-1].text().startswith("[Camera note: no picture (no picture is coming from the browser)")
    assert "I cannot see anything" in services.requests[0][-1].text()
    assert services.described == []

    session.on_video_frame(frame())
    services.scene_delay = 5.0  # the note takes longer than the turn may wait
    await session.send_text("And now, what is on my camera?")
    await wait_until(lambda: len(services.requests) == 2)
    assert services.requests[1][-1].text().startswith("[Camera note: no picture (its detectors could not look this time)")
    delivery = session.answering.delivery if session.answering is not None else None
    waited = None if delivery is None else delivery.metrics.vision_wait
    assert waited is not None and waited < 1.0, "the turn waited for its note at most vision.wait_s"

    session.set_vision(False)
    await session.send_text("Can you see me?")
    await wait_until(lambda: len(services.requests) == 3)
    assert "the user switched vision off" in services.requests[2][-1].text()
    assert len(services.described) == 1, "with vision off, no frame is described"
    await session.send_text("How are you today?")  # not about the camera: no line about it (tests/test_prompts.py)
    await wait_until(lambda: len(services.requests) == 4)
    assert services.requests[3][-1].text() == "How are you today?"
    await session.close()


async def test_a_shared_screen_is_described_as_a_screen() -> None:
    services = ScriptedServices(["It says hello."])
    services.scene = 'the words "hello"'
    session, _, _ = make_session(services, vision={"enabled": True})
    session.on_video_frame(frame())
    session.set_vision(True, "screen")
    await session.send_text("What does my screen say?")
    await wait_until(lambda: len(services.requests) == 1)
    assert services.described[0][1] == "screen"
    assert services.requests[0][-1].text().startswith('[Screen note: I see the words "hello".]')
    await session.close()


async def test_a_vision_backend_gets_the_jpeg_and_no_note() -> None:
    services = ScriptedServices(["A dog."])
    session, _, _ = make_session(services, llm={"backend": "openai"}, vision={"enabled": True})
    assert session.settings.sight == "image"
    session.on_video_frame(frame())
    await session.send_text("What do you see?")
    await wait_until(lambda: len(services.requests) == 1)
    user = services.requests[0][-1]
    assert user.has_image() and user.text() == "What do you see?"
    assert services.described == []
    await session.close()


def test_learning_sight_downgrades_to_blind_and_says_why() -> None:
    import socketio

    from parley.config import ParleyConfig
    from parley.engine.metrics import Meter
    from parley.engine.types import VisionInfo
    from parley.ingress.signalling import Signalling

    class NoModels(ScriptedServices):
        async def vision_info(self) -> VisionInfo | None:
            return VisionInfo(finds=[], missing={"faces": "mediapipe is not installed: pip install mediapipe"})

    def learn(services: ScriptedServices, config: ParleyConfig) -> Signalling:
        signalling = Signalling(config, services, socketio.AsyncServer(), meter=Meter(), store=None, process="p")
        asyncio.run(signalling.learn_sight())
        return signalling

    blind = learn(NoModels(["x"]), ParleyConfig())
    assert blind.settings.sight == "blind"
    assert blind.sight_problem is not None and "cannot see" in blind.sight_problem and "mediapipe" in blind.sight_problem
    seeing = learn(ScriptedServices(["x"]), ParleyConfig())
    assert seeing.settings.sight == "note" and seeing.sight_problem is not None and "detectors" in seeing.sight_problem
    endpoint = learn(ScriptedServices(["x"]), ParleyConfig.model_validate({"llm": {"backend": "openai"}}))
    assert endpoint.settings.sight == "image" and endpoint.sight_problem is None


async def test_while_the_user_talks_the_model_reads_ahead_up_to_their_words() -> None:
    services = ScriptedServices(["I see a dog."])
    session, _, _ = make_session(services, vision={"enabled": True})
    session.conversation.add(Entry(role="user", text="Hello."))
    session.conversation.add(Entry(role="assistant", text="I see a dog."))
    scene = look_or_say_blind(session.eyes, frame(), session.read_ahead)  # an utterance starts
    assert scene is not None and await scene is not None
    await wait_until(lambda: len(services.read_ahead_prompts) == 1)
    ahead = services.read_ahead_prompts[0]
    # The note goes only with words about the picture, which are not known yet; it is read ahead all
    # the same: a turn without it differs only where its words begin.
    assert ahead[-1].role == "user" and ahead[-1].text() == "[Camera note: I see a dog, a bicycle.]\n"
    assert [m.text() for m in ahead[1:-1]] == ["Hello.", "I see a dog."], "the history, as the turn will send it"
    services.then = [["A dog and a bicycle."], ["Light scatters."]]
    for words in ("What is this?", "Why is the sky blue?"):
        entry, _ = await session.eyes.user_entry(words, frame(), scene)
        turn = reply_to(session.stage, entry)
        await wait_until(lambda: len(services.requests) == 1)
        sent = services.requests.pop()
        assert [m.text() for m in sent[:-1]] == [m.text() for m in ahead[:-1]], "the turn's prompt starts as read ahead"
        assert sent[-1].text().endswith(words)
        assert sent[-1].text().startswith("[Camera note: I see a dog, a bicycle.]") is (words == "What is this?")
        await turn.stop()
    session.set_vision(False)
    assert look_or_say_blind(session.eyes, frame(), session.read_ahead) is None
    await wait_until(lambda: len(services.read_ahead_prompts) == 2)
    assert "the user switched vision off" in services.read_ahead_prompts[1][-1].text()
    await session.close()


async def test_a_local_model_that_cannot_see_at_all_is_told_so_with_every_turn() -> None:
    """Vision switched off in the configuration (or its models missing: `learn_sight` makes sessions
    blind): told only in the system prompt, SmolLM2 described "a person wearing a smartwatch"."""
    services = ScriptedServices(["I cannot see."])
    session, _, _ = make_session(services, llm={"backend": "local"}, vision={"enabled": False})
    assert session.settings.sight == "blind"
    session.on_video_frame(frame())
    await session.send_text("What do you see?")
    await wait_until(lambda: len(services.requests) == 1)
    assert services.requests[0][-1].text().startswith("[Camera note: no picture (Parley cannot see on this server).")
    assert "cannot see" in services.requests[0][0].text() and services.described == []
    await session.close()
