"""Whether a conversation is being saved, as its user is told.

Invariants:
- A failing store never stops a conversation: while the stored history cannot be read the session
  goes on unsaved, and the user is told once (`NOT_SAVED`); while writes fail, once (`NOT_STORING`);
  when it works again, once (`SAVED_AGAIN`).
- Notices made while no page is attached are kept and said when one is welcomed (`unsaid`); an
  outage over by then goes unsaid.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from parley.engine.conversation import Conversation

log = logging.getLogger("parley.session")

Level = Literal["info", "warn", "error"]

NOT_SAVED = (
    "Your earlier messages could not be loaded and this conversation is not being saved right now; Parley will keep trying."
)
NOT_STORING = "Your latest messages are not being saved right now; Parley will keep trying."
SAVED_AGAIN = "Your conversation is being saved again."


class Saving:
    """One conversation's saving, and what its user has been told of it."""

    def __init__(
        self,
        conversation: Conversation,
        *,
        say: Callable[[str, Level], Awaitable[None]],
        attached: Callable[[], bool],
        who: str,
    ) -> None:
        self._conversation = conversation
        self._say = say
        """Tells the attached page (a notice)."""
        self._who = who
        self._attached = attached
        """Whether a page is attached now (else a notice waits for the next one)."""
        self._unsaid: list[tuple[str, Level]] = []
        self._told_failing = False

    @property
    def saved(self) -> bool:
        """False while the conversation is not being stored (its stored history could not be read)."""
        return self._conversation.saved

    def unsaid(self) -> list[tuple[str, Level]]:
        """The notices made while no page was attached (now said, so forgotten here)."""
        unsaid, self._unsaid = self._unsaid, []
        return unsaid

    async def load(self) -> None:
        """Take the stored history (once, after creating the session; off the event loop)."""
        if not await self._conversation.load():
            await self._notice(NOT_SAVED, "warn")

    async def reload(self, busy: bool) -> None:
        """Take the stored history back, unless an answer is being given (another ingress process of
        this node may have added to it); while not saved, `resync`."""
        if not self.saved:
            await self.resync()
        elif not busy:
            await self._conversation.reload()

    async def resync(self) -> None:
        """Called every few seconds (the server's housekeeping). While not saved: try the store
        again; once it answers, the history held here is stored after the stored one and the user
        is told. While saved: tell the user when the store starts failing (their messages wait to
        be written) and when it works again."""
        if not self.saved:
            if await self._conversation.resync():
                self._told_failing = False
                await self._notice(SAVED_AGAIN, "info")
            return
        failing = not self._conversation.store_ok
        if failing != self._told_failing:
            self._told_failing = failing
            await self._notice(NOT_STORING if failing else SAVED_AGAIN, "warn" if failing else "info")

    async def _notice(self, text: str, level: Level) -> None:
        if not self._attached():  # said when a page is welcomed; an outage over by then goes unsaid
            log.info("%s: %s", self._who, text)
            unsaid = [(t, lv) for t, lv in self._unsaid if t not in (NOT_SAVED, NOT_STORING, SAVED_AGAIN)]
            self._unsaid = unsaid if len(unsaid) < len(self._unsaid) and text == SAVED_AGAIN else [*unsaid, (text, level)]
        else:
            await self._say(text, level)
