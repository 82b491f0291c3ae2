"""`python -m parley.tools.token --name NAME --ttl 24h`: an invitation link for one person.

It prints a URL whose fragment holds a JWT signed with the server's secret ($PARLEY_AUTH_SECRET, or
the one the server made in its state directory); the page keeps the token and forgets the URL.
The fragment never reaches a server log: browsers do not send it.
"""

from __future__ import annotations

import argparse
import re
import sys

from parley.config import parse_args
from parley.ingress.auth import mint, signing_secret

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def seconds(text: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d` in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 24h, 7d, 15m)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parley.tools.token", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="who the invitation is for (shown in logs, limits per user)")
    parser.add_argument("--ttl", type=seconds, default=seconds("24h"), help="how long it is valid (24h, 7d, 15m)")
    parser.add_argument("--url", default=None, help="the server's page (default: from the config's host and port)")
    ns, rest = parser.parse_known_args(argv)
    config = parse_args(rest)
    secret = signing_secret(config, create=False)
    if secret is None:
        sys.exit(f"parley: no secret yet: set ${config.auth.secret_env} (the same as the server's), or start the server once")
    host = "localhost" if config.server.host in ("0.0.0.0", "::") else config.server.host
    url = ns.url or f"https://{host}:{config.server.port}/"
    print(f"{url.rstrip('/')}/#token={mint(secret, ns.name, ns.ttl)}")


if __name__ == "__main__":
    main()
