"""One session's conversation: what was said, what was heard, and the prompt built from it.

Invariant: an assistant entry's `text` is what the user got: every word, or, once an answer is
interrupted, only the words that had been played; the rest is kept apart in `unspoken`, shown
in the page and never sent to the LLM. The prompt is built here and nowhere else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from parley.config import LLMConfig
from parley.types import ChatMessage, ImagePart, ImageURL, TextPart

if TYPE_CHECKING:
    from parley.store import ConversationStore

MessageState = Literal["streaming", "done", "interrupted", "error"]


@dataclass
class Entry:
    """One message of the conversation as the page shows it."""

    role: Literal["user", "assistant"]
    text: str
    state: MessageState = "done"
    image: str | None = None
    unspoken: str = ""
    """Assistant: the words of the answer the user never heard (after an interruption)."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def public(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "role": self.role, "text": self.text, "state": self.state}
        if self.unspoken:
            data["unspoken"] = self.unspoken
        return data


class Conversation:
    """The history and the prompt: recent messages, with the newest `keep_images` images.

    With a store, every message is written there when added and when `save`d after a change, and
    `reload` takes the stored history back (another process, or this one before a restart, may
    have written it).
    """

    def __init__(self, llm: LLMConfig, *, store: ConversationStore | None = None, session_id: str = "") -> None:
        self.llm = llm
        self.entries: list[Entry] = []
        self._store = store
        self._session = session_id
        self.reload()

    def reload(self) -> None:
        if self._store is not None:
            self.entries = self._store.load(self._session)

    def add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        self.save(entry)
        return entry

    def save(self, entry: Entry) -> None:
        """Store a message after a change to its text or state (no-op without a store)."""
        if self._store is not None:
            seq = next((i for i, e in enumerate(self.entries) if e is entry), len(self.entries))
            self._store.save(self._session, seq, entry)

    def messages(self, *, vision: bool, then: Entry | None = None) -> list[ChatMessage]:
        """The prompt: the system prompt, then the recent history, then `then` (a user turn not yet
        in the history: a speculative one is only added once its turn is confirmed)."""
        history = [e for e in [*self.entries, *([then] if then else [])] if e.text.strip()]
        entries = history[-self.llm.history_messages :]
        keep = self.llm.keep_images
        user_images = [e.id for e in entries if e.role == "user" and e.image]
        with_image = set(user_images[len(user_images) - keep :]) if keep else set()
        messages = [ChatMessage(role="system", content=self.llm.system_prompt)]
        for entry in entries:
            if entry.id in with_image and entry.image and vision:
                parts: list[TextPart | ImagePart] = [
                    TextPart(text=entry.text),
                    ImagePart(image_url=ImageURL(url=entry.image, detail=self.llm.image_detail)),
                ]
                messages.append(ChatMessage(role=entry.role, content=parts))
            else:
                messages.append(ChatMessage(role=entry.role, content=entry.text))
        return messages
