"""One session's conversation: what was said, what was heard, and the prompt built from it.

Invariants:
- An assistant entry's `text` is what the user got: every word, or, once an answer is interrupted,
  only the words that had been played; the rest is kept apart in `unspoken`, shown in the page and
  never sent to the LLM. The prompt is built here and nowhere else.
- The prompt leaves out what a small model would copy instead of answering: an exchange whose answer
  was a non-answer, a repeat of an earlier answer or a loop (`parley.engine.guard.worth_rereading`),
  and, with `llm.scene_note: asked`, the scene note (or the line saying there is none) of a turn whose
  words are not about the camera or screen (`parley.engine.sight.about_scene`).
"""

from __future__ import annotations

import abc
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from parley.config import LLMConfig
from parley.engine.guard import worth_rereading
from parley.engine.sight import about_scene, system_prompt, with_scene
from parley.engine.types import ChatMessage, ImagePart, ImageURL, Sight, TextPart

MessageState = Literal["streaming", "done", "interrupted", "error"]


@dataclass
class Entry:
    """One message of the conversation as the page shows it."""

    role: Literal["user", "assistant"]
    text: str
    state: MessageState = "done"
    image: str | None = None
    scene: str | None = None
    """User: the scene note made from the turn's frame ("" when it found nothing; None when none was made)."""
    blind: str | None = None
    """User, with a local (text-only) model: why this turn has no scene note (not stored)."""
    source: str = "camera"
    """User: what the frame showed, "camera" or "screen"."""
    scene_wait_s: float | None = None
    """User: how long the turn waited for its scene note once its words were ready (not stored)."""
    unspoken: str = ""
    """Assistant: the words of the answer the user never heard (after an interruption)."""
    cut: bool = False
    """Assistant: the model stopped at its length limit (`llm.max_tokens`), not at the end."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def public(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "role": self.role, "text": self.text, "state": self.state}
        if self.unspoken:
            data["unspoken"] = self.unspoken
        if self.cut:
            data["cut"] = True
        if self.scene:
            data["scene"] = self.scene
        return data


class ConversationStore(abc.ABC):
    """Where conversations outlive the process: messages by session id.

    The engine owns this interface; `parley.ingress.store` has the SQLite and Redis implementations.
    """

    @abc.abstractmethod
    def save(self, session: str, seq: int, entry: Entry) -> None:
        """Insert or update one message (its place in the conversation is `seq`)."""

    @abc.abstractmethod
    def load(self, session: str) -> list[Entry]:
        """The session's messages in order (none if it is unknown); `streaming` ones come back as `error`."""

    @abc.abstractmethod
    def forget(self, session: str) -> None:
        """Delete one conversation (the user asked for a new one)."""

    @abc.abstractmethod
    def forget_older_than(self, seconds: float) -> int:
        """Delete the conversations untouched for `seconds`; returns how many messages went."""

    def close(self) -> None:  # noqa: B027 - a store may hold nothing to close
        """Release connections and files."""


class Conversation:
    """The history and the prompt: recent messages, with the newest `keep_images` images.

    With a store, every message is written there when added and when `save`d after a change, and
    `reload` takes the stored history back (another process, or this one before a restart, may
    have written it).
    """

    def __init__(
        self, llm: LLMConfig, *, store: ConversationStore | None = None, session_id: str = "", language: str | None = "en"
    ) -> None:
        self.llm = llm
        self.language = language
        """The conversation's language (the ASR's; None: any): an English one judges answers' language too."""
        self.entries: list[Entry] = []
        self._store = store
        self._session = session_id
        self.reload()

    def reload(self) -> None:
        if self._store is not None:
            self.entries = self._store.load(self._session)

    def clear(self) -> None:
        """Forget the whole conversation, here and in the store (the user started a new one)."""
        self.entries = []
        if self._store is not None:
            self._store.forget(self._session)

    def add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        if entry.image:  # only the newest keep_images frames are ever sent: the rest need no memory
            with_images = [e for e in self.entries if e.role == "user" and e.image]
            for old in with_images[: max(0, len(with_images) - self.llm.keep_images)]:
                old.image = None
        self.save(entry)
        return entry

    def save(self, entry: Entry) -> None:
        """Store a message after a change to its text or state (no-op without a store)."""
        if self._store is not None:
            seq = next((i for i, e in enumerate(self.entries) if e is entry), len(self.entries))
            self._store.save(self._session, seq, entry)

    def messages(self, *, sight: Sight, then: Entry | None = None, note: bool | None = None) -> list[ChatMessage]:
        """The prompt: the system prompt, then the recent history, then `then` (a user turn not yet
        in the history: a speculative one is only added once its turn is confirmed).

        `sight` "image": the newest `keep_images` user frames go as image parts. Otherwise the newest
        user turn's scene note, or why it has none (a local model, `Entry.blind`), goes in front of
        its words when they ask about the picture (`llm.scene_note`; `note` True: whatever they ask);
        older notes describe frames no longer shown."""
        history = self._rereadable() + ([then] if then and then.text.strip() else [])
        entries = _within_budget(_window(history, self.llm.history_messages), self.prompt_budget_tokens())
        keep = self.llm.keep_images
        user_images = [e.id for e in entries if e.role == "user" and e.image]
        with_image = set(user_images[len(user_images) - keep :]) if keep else set()
        messages = [ChatMessage(role="system", content=system_prompt(self.llm.system_prompt, sight))]
        users = [e for e in entries if e.role == "user"]
        newest_user = users[-1].id if users else None
        for entry in entries:
            wanted = note if note is not None else self._note_wanted(entry, users[:-1])
            if sight != "image" and entry.id == newest_user and wanted:
                messages.append(ChatMessage(role="user", content=with_scene(entry.text, entry.scene, entry.blind, entry.source)))
            elif entry.id in with_image and entry.image and sight == "image":
                parts: list[TextPart | ImagePart] = [
                    TextPart(text=entry.text),
                    ImagePart(image_url=ImageURL(url=entry.image, detail=self.llm.image_detail)),
                ]
                messages.append(ChatMessage(role=entry.role, content=parts))
            else:
                messages.append(ChatMessage(role=entry.role, content=entry.text))
        return messages

    def _note_wanted(self, entry: Entry, earlier: list[Entry]) -> bool:
        """Whether the newest user turn gets its scene note (or the line saying it has none)."""
        if self.llm.scene_note == "always":
            return True
        before = earlier[-1] if earlier else None
        follows = before is not None and about_scene(before.text, before.scene)
        return about_scene(entry.text, entry.scene, after_scene_question=follows)

    def prompt_start(self, *, sight: Sight, then: Entry) -> list[ChatMessage]:
        """The prompt a turn by `then` will begin with, up to where the user's words go: the system
        prompt, the history, and the scene note whether or not the words will ask for it (a local
        model reads it ahead, `Services.prime`: a turn whose words do not ask for the note differs
        from it only after the history, where its words begin, so reading the note ahead costs that
        turn nothing and spares a turn that asks for it reading the note then)."""
        mark = "\x00"
        messages = self.messages(sight=sight, then=replace(then, text=mark), note=True)
        head = messages[-1].text().split(mark)[0]
        return [*messages[:-1], ChatMessage(role="user", content=head)]

    def prompt_budget_tokens(self) -> int:
        """Tokens the history may take: the model's context less the answer and the system prompt."""
        prompt = system_prompt(self.llm.system_prompt, "note")  # the longest
        return max(256, self.llm.context_tokens - self.llm.max_tokens - estimate_tokens(prompt) - 96)

    def _rereadable(self) -> list[Entry]:
        """The answered history with text, less the exchanges whose answer the model should not read
        again (`worth_rereading`): the answer and the question it answered go together."""
        # Only the newest messages can reach the window, and judging costs: a few windows' worth.
        history = [e for e in self._answered()[-4 * self.llm.history_messages :] if e.text.strip()]
        answers = [i for i, e in enumerate(history) if e.role == "assistant" and e.state != "streaming"]
        verdicts = worth_rereading([history[i].text for i in answers], english=(self.language or "").startswith("en"))
        drop: set[int] = set()
        for i, keep in zip(answers, verdicts, strict=True):
            if not keep:
                drop |= {i - 1, i} if i and history[i - 1].role == "user" else {i}
        return [e for i, e in enumerate(history) if i not in drop]

    def _answered(self) -> list[Entry]:
        """The history without the turns the model failed to answer at all: a message that made
        the model fail (too long for it, say) must not make every later turn fail too."""
        out: list[Entry] = []
        for i, entry in enumerate(self.entries):
            following = self.entries[i + 1] if i + 1 < len(self.entries) else None
            failed = (
                entry.role == "user"
                and following is not None
                and following.role == "assistant"
                and following.state == "error"
                and not following.text.strip()
            )
            if not failed:
                out.append(entry)
        return out


def estimate_tokens(text: str) -> int:
    """A safe over-estimate of a text's tokens for the byte-level tokenizers LLMs use: a token per
    3 ASCII characters (English runs at ~4), and 3 per 4 bytes of anything else (an emoji, 4 bytes,
    is often 2-3 tokens; a CJK character, 3 bytes, 1-2)."""
    data = text.encode("utf-8", "replace")
    ascii_bytes = sum(1 for b in data if b < 128)
    return max(ascii_bytes // 3, len(text.split())) + (3 * (len(data) - ascii_bytes)) // 4 + 4


def _window(entries: list[Entry], limit: int) -> list[Entry]:
    """The newest of `entries`, at most `limit`, starting at a user message. Past the limit the window
    moves on by half the limit at once, not by one message a turn: a local model reads a prompt
    whose start it has already read from its cache, so the prompt's start changes once every few
    turns instead of every turn (a new start costs a whole prompt's reading, seconds on 2 cores)."""
    if len(entries) <= limit:
        return entries
    step = max(2, limit // 2)
    start = -(-(len(entries) - limit) // step) * step
    while start < len(entries) - 1 and entries[start].role != "user":
        start += 1
    return entries[start:]


def _within_budget(entries: list[Entry], budget: int) -> list[Entry]:
    """The newest entries whose estimated tokens fit the budget (the newest is always kept)."""
    kept: list[Entry] = []
    used = 0
    for entry in reversed(entries):
        cost = estimate_tokens(entry.text)
        if kept and used + cost > budget:
            break
        kept.append(entry)
        used += cost
    return kept[::-1]
