"""How many turns a user may take in a minute (`limits.turns_per_minute`), across all their sessions.

Invariant: one `TurnBudgets` per ingress process holds every user's budget; a session takes from its
user's `TurnBudget` and nothing else writes it. A user with no session left is forgotten (`keep_only`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

WINDOW_S = 60.0


class TurnBudget:
    """One user's turns in the last minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._started: deque[float] = deque()
        """When the user's recent turns started, oldest first."""

    def take(self) -> bool:
        """Count a turn starting now; False (and nothing counted) if the minute's turns are used up."""
        now = self._clock()
        while self._started and now - self._started[0] > WINDOW_S:
            self._started.popleft()
        if len(self._started) >= self.per_minute:
            return False
        self._started.append(now)
        return True


class TurnBudgets:
    """Every user's budget, by account."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._by_user: dict[str, TurnBudget] = {}

    def of(self, account: str) -> TurnBudget:
        """The user's budget (made on first use)."""
        budget = self._by_user.get(account)
        if budget is None:
            budget = self._by_user[account] = TurnBudget(self.per_minute, self._clock)
        return budget

    def keep_only(self, accounts: Iterable[str]) -> None:
        """Forget the budgets of users other than these (their sessions are gone)."""
        keep = set(accounts)
        for account in [a for a in self._by_user if a not in keep]:
            del self._by_user[account]
