"""`python -m parley.tools.token --name NAME --ttl 24h`: an invitation link for one person.
`python -m parley.tools.token --revoke ID`: withdraw one.

It prints a URL whose fragment holds a JWT signed with the server's secret ($PARLEY_AUTH_SECRET, or
the one the server made in its state directory); the page keeps the token and forgets the URL.
The fragment never reaches a server log: browsers do not send it. The invitation's id goes to
stderr (stdout holds the link alone): `--revoke ID` adds it to the state directory's
`revoked-tokens`, and the server refuses it from then on and closes the sockets it opened.
An invitation is valid for at most `auth.max_token_ttl_s` (30 days unless configured).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys

from parley.config import parse_args
from parley.ingress.auth import mint, new_token_id, revoke, signing_secret

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
DEFAULT_TTL_S = 24 * 3600.0


def seconds(text: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d` in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 24h, 7d, 15m)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _days(s: float) -> str:
    return f"{s / 86400:g} days" if s >= 86400 else f"{s / 3600:g} h"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parley.tools.token", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="who the invitation is for (shown in logs, limits per user)")
    parser.add_argument(
        "--ttl", type=seconds, default=None, help="how long it is valid (24h, 7d, 15m; default 24h, at most auth.max_token_ttl_s)"
    )
    parser.add_argument("--url", default=None, help="the server's page (default: from the config's host and port)")
    parser.add_argument("--revoke", metavar="ID", default=None, help="withdraw the invitation with this id (on this node)")
    ns, rest = parser.parse_known_args(argv)
    config = parse_args(rest)
    if ns.revoke is not None:
        try:
            path = revoke(config, ns.revoke)
        except ValueError as exc:
            sys.exit(f"parley: {exc}")
        print(
            f"parley: invitation {ns.revoke} withdrawn ({path}): refused from now on, its open connections close within "
            "seconds. On a cluster, withdraw it on every node or list it in auth.revoked_tokens.",
            file=sys.stderr,
        )
        return
    if not ns.name:
        parser.error("--name is required (or --revoke ID)")
    limit = config.auth.max_token_ttl_s
    ttl = min(DEFAULT_TTL_S, limit) if ns.ttl is None else ns.ttl
    if ttl > limit:
        sys.exit(
            f"parley: --ttl {_days(ttl)} is longer than auth.max_token_ttl_s ({_days(limit)}): shorten it, or raise the "
            "limit (--auth-max-token-ttl-s, the same on the server)"
        )
    secret = signing_secret(config, create=False)
    if secret is None:
        sys.exit(f"parley: no secret yet: set ${config.auth.secret_env} (the same as the server's), or start the server once")
    host = "localhost" if config.server.host in ("0.0.0.0", "::") else config.server.host
    url = ns.url or f"https://{host}:{config.server.port}/"
    token_id = new_token_id()
    token = mint(secret, ns.name, ttl, token_id=token_id, max_ttl_s=limit)
    until = (datetime.datetime.now() + datetime.timedelta(seconds=ttl)).strftime("%Y-%m-%d %H:%M")
    print(f"{url.rstrip('/')}/#token={token}")
    print(
        f"parley: invitation {token_id} for {ns.name}, valid until {until}; withdraw it with: "
        f"python -m parley.tools.token --revoke {token_id}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
