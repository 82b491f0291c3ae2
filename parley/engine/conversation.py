"""One session's conversation: what was said, what was heard, and the prompt built from it.

Invariants:
- An assistant entry's `text` is what the user got: every word, or, once an answer is interrupted,
  only the words that had been played; the rest is kept apart in `unspoken`, shown in the page and
  never sent to the LLM. The prompt is built here and nowhere else.
- The prompt leaves out what a small model would copy instead of answering: an exchange whose answer
  was a non-answer, a repeat of an earlier answer or a loop (`parley.engine.guard.worth_rereading`),
  and, with `prompt.scene_note: asked`, the scene note (or the line saying there is none) of a turn whose
  words are not about the camera or screen (`parley.engine.sight.about_scene`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from parley.engine.guard import worth_rereading
from parley.engine.messages import Entry, StoreError, StoreQueue
from parley.engine.settings import ModelLimits, PromptSettings
from parley.engine.sight import about_scene, system_prompt, with_scene
from parley.engine.types import ChatMessage, ImagePart, ImageURL, Sight, TextPart

log = logging.getLogger("parley.store")


class Conversation:
    """The history and the prompt: recent messages, with the newest `keep_images` images.

    With a store, every message is written there (through the `StoreQueue`, never waiting) when
    added and when `save`d after a change; `load` and `reload` take the stored history back
    (another process, or this one before a restart, may have written it).

    Invariants:
    - Each message has a `seq`, given when it is added: one more than the last one's. Seqs only
      grow (dropping old messages never reuses one), and the stored order is the seq order.
    - At most `max_messages` are kept: adding past it drops the oldest, here and in the store.
    - While `saved` is False (the stored history could not be read) nothing is written: the
      messages are held in memory, and `resync` puts them after the stored ones once the store
      answers. So a conversation's stored messages never interleave.
    """

    def __init__(
        self,
        prompt: PromptSettings,
        model: ModelLimits,
        *,
        store: StoreQueue | None = None,
        session_id: str = "",
        language: str | None = "en",
        max_messages: int = 1000,
    ) -> None:
        self.prompt = prompt
        self.model = model
        self.language = language
        """The conversation's language (the ASR's; None: any): an English one judges answers' language too."""
        self.entries: list[Entry] = []
        self.max_messages = max_messages
        self.saved = True
        """False while the stored history could not be read: messages are held here, not stored (`resync`)."""
        self._store = store
        self._session = session_id
        self._next_seq = 0
        self._generation = 0
        """Counts `clear`s: a load that a clear overtook is not taken."""
        self._loading = asyncio.Lock()

    @property
    def store_ok(self) -> bool:
        """Whether the store works (`StoreQueue.ok`; True without one)."""
        return self._store is None or self._store.ok

    async def load(self, *, keep: Callable[[Entry], bool] | None = None) -> bool:
        """Take the stored history (its newest `max_messages`); the messages in memory that it lacks
        (those `keep` accepts; default all) go after it, renumbered, and are written. True on success
        (and without a store); on failure (`StoreError`) the memory is kept and `saved` turns False."""
        if self._store is None:
            return True
        async with self._loading:
            generation = self._generation
            try:
                stored = await self._store.load(self._session, self.max_messages)
            except StoreError as exc:
                log.warning("session %s: the stored conversation could not be read: %s", self._session[:8], exc)
                if keep is None:
                    self.saved = False
                return False
            if generation != self._generation:  # cleared meanwhile: what was read is forgotten
                return True
            ids = {e.id for e in stored}
            extra = [e for e in self.entries if e.id not in ids and (keep is None or keep(e))]
            self._next_seq = stored[-1].seq + 1 if stored else 0
            for entry in extra:
                entry.seq = self._next_seq
                self._next_seq += 1
            self.entries = stored + extra
            self.saved = True
            for entry in extra:
                self._store.save(self._session, entry)
            self._trim(force=bool(stored) and len(stored) >= self.max_messages)
            return True

    async def reload(self) -> bool:
        """Take the stored history back in place of the one in memory (another process may have added
        to it), keeping only messages added while it was read; on failure the memory stays as it is.
        Held (not saved) messages are `resync`'s to merge."""
        if self._store is None or not self.saved:
            return await self.resync()
        before = {id(e) for e in self.entries}
        held = list(self.entries)  # keeps the ids above meaningful
        ok = await self.load(keep=lambda e: id(e) not in before)
        del held
        return ok

    async def resync(self) -> bool:
        """While not `saved`: read the stored history again and, if it answers, put the messages held in
        memory after it and write them; True once saved (at once if it is)."""
        if self.saved:
            return True
        return await self.load()

    def clear(self) -> None:
        """Forget the whole conversation, here and in the store (the user started a new one)."""
        self.entries = []
        self._next_seq = 0
        self._generation += 1
        if self._store is not None:
            self._store.forget(self._session)  # in order before any new message: nothing old comes back
            self.saved = True

    def add(self, entry: Entry) -> Entry:
        entry.seq = self._next_seq
        self._next_seq += 1
        self.entries.append(entry)
        if entry.image:  # only the newest keep_images frames are ever sent: the rest need no memory
            with_images = [e for e in self.entries if e.role == "user" and e.image]
            for old in with_images[: max(0, len(with_images) - self.prompt.keep_images)]:
                old.image = None
        self.save(entry)
        self._trim()
        return entry

    def _trim(self, *, force: bool = False) -> None:
        """Past `max_messages`, drop the oldest here and in the store (`force`: in the store even if
        nothing is dropped here, in case it holds older ones)."""
        over = len(self.entries) - self.max_messages
        if over > 0:
            del self.entries[:over]
        if (over > 0 or force) and self.entries and self._store is not None and self.saved:
            self._store.trim(self._session, self.entries[0].seq)

    def save(self, entry: Entry) -> None:
        """Store a message after a change to its text or state (no-op without a store, while not
        `saved`, or once it has left the conversation)."""
        if self._store is not None and self.saved and any(e is entry for e in reversed(self.entries)):
            self._store.save(self._session, entry)

    def messages(self, *, sight: Sight, then: Entry | None = None, note: bool | None = None) -> list[ChatMessage]:
        """The prompt: the system prompt, then the recent history, then `then` (a user turn not yet
        in the history: a speculative one is only added once its turn is confirmed).

        `sight` "image": the newest `keep_images` user frames go as image parts. Otherwise the newest
        user turn's scene note, or why it has none (a local model, `Entry.blind`), goes in front of
        its words when they ask about the picture (`prompt.scene_note`; `note` True: whatever they ask);
        older notes describe frames no longer shown."""
        history = self._rereadable() + ([then] if then and then.text.strip() else [])
        entries = _within_budget(_window(history, self.prompt.history_messages), self.prompt_budget_tokens())
        keep = self.prompt.keep_images
        user_images = [e.id for e in entries if e.role == "user" and e.image]
        with_image = set(user_images[len(user_images) - keep :]) if keep else set()
        messages = [ChatMessage(role="system", content=system_prompt(self.prompt.system_prompt, sight))]
        users = [e for e in entries if e.role == "user"]
        newest_user = users[-1].id if users else None
        for entry in entries:
            wanted = note if note is not None else self._note_wanted(entry, users[:-1])
            if sight != "image" and entry.id == newest_user and wanted:
                messages.append(ChatMessage(role="user", content=with_scene(entry.text, entry.scene, entry.blind, entry.source)))
            elif entry.id in with_image and entry.image and sight == "image":
                parts: list[TextPart | ImagePart] = [
                    TextPart(text=entry.text),
                    ImagePart(image_url=ImageURL(url=entry.image, detail=self.prompt.image_detail)),
                ]
                messages.append(ChatMessage(role=entry.role, content=parts))
            else:
                messages.append(ChatMessage(role=entry.role, content=entry.text))
        return messages

    def _note_wanted(self, entry: Entry, earlier: list[Entry]) -> bool:
        """Whether the newest user turn gets its scene note (or the line saying it has none)."""
        if self.prompt.scene_note == "always":
            return True
        before = earlier[-1] if earlier else None
        follows = before is not None and about_scene(before.text, before.scene)
        return about_scene(entry.text, entry.scene, after_scene_question=follows)

    def prompt_start(self, *, sight: Sight, then: Entry) -> list[ChatMessage]:
        """The prompt a turn by `then` will begin with, up to where the user's words go: the system
        prompt, the history, and the scene note whether or not the words will ask for it (a local
        model reads it ahead, `Services.read_ahead`: a turn whose words do not ask for the note differs
        from it only after the history, where its words begin, so reading the note ahead costs that
        turn nothing and spares a turn that asks for it reading the note then)."""
        mark = "\x00"
        messages = self.messages(sight=sight, then=replace(then, text=mark), note=True)
        head = messages[-1].text().split(mark)[0]
        return [*messages[:-1], ChatMessage(role="user", content=head)]

    def prompt_budget_tokens(self) -> int:
        """Tokens the history may take: the model's context less the answer and the system prompt."""
        prompt = system_prompt(self.prompt.system_prompt, "note")  # the longest
        return max(256, self.model.context_tokens - self.model.max_tokens - estimate_tokens(prompt) - 96)

    def _rereadable(self) -> list[Entry]:
        """The answered history with text, less the exchanges whose answer the model should not read
        again (`worth_rereading`): the answer and the question it answered go together."""
        # Only the newest messages can reach the window, and judging costs: a few windows' worth.
        history = [e for e in self._answered()[-4 * self.prompt.history_messages :] if e.text.strip()]
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
