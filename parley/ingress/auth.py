"""Who may talk to Parley, and which conversation is whose.

Invariants:
- Off loopback, a browser needs an invitation (a JWT signed with the operator's secret, minted by
  `python -m parley.tools.token`) or, behind a trusted reverse proxy, a header naming the user; loopback
  runs may stay open, and the startup line says which it is.
- Conversations are named by the server and bound to the user: the page proves it holds one with a
  session key (an HMAC of the user and the session id) that only the server can make. An id alone
  opens nothing.
- The secrets never leave the server: the signing secret comes from an environment variable or, on
  a single node without one, from a file made once in the state directory (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.config import AuthConfig, ParleyConfig
from parley.ingress.web import is_loopback

AUDIENCE = "parley"
ANONYMOUS = "anonymous"
ISSUER = "parley"


class Refused(Exception):
    """A connection without the right credentials; the message is for the page."""


@dataclass(frozen=True)
class User:
    name: str
    """Who: the token's subject, the proxy's header, or `anonymous` on an open server."""
    address: str

    @property
    def account(self) -> str:
        """Whom per-user limits count: the name, or on an open server (everyone `anonymous`) the address."""
        return f"address {self.address}" if self.name == ANONYMOUS else f"user {self.name}"


def auth_mode(config: ParleyConfig) -> str:
    """`open`, `token` or `proxy`: what `auto` means for this server's host."""
    mode = config.auth.mode
    if mode == "auto":
        return "open" if is_loopback(config.server.host) else "token"
    return mode


def signing_secret(config: ParleyConfig, *, create: bool = True) -> bytes | None:
    """The secret tokens and session keys are signed with: the environment's, else the node's file."""
    value = os.environ.get(config.auth.secret_env)
    if value:
        return value.encode()
    if not config.server.state_dir:
        return None
    path = Path(config.server.state_dir).expanduser() / "auth.secret"
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another ingress process of the node made it first
            return path.read_bytes().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def mint(secret: bytes, name: str, ttl_s: float, *, now: float | None = None) -> str:
    """An invitation: a JWT for `name`, valid for `ttl_s`."""
    import jwt

    issued = int(now if now is not None else time.time())
    claims = {"sub": name, "iat": issued, "exp": issued + int(ttl_s), "aud": AUDIENCE, "iss": ISSUER}
    return jwt.encode(claims, secret, algorithm="HS256")


def check_token(secret: bytes, token: object) -> str:
    """The user a token names; raises Refused (with a reason for the page) when it does not hold."""
    import jwt

    if not isinstance(token, str) or not token:
        raise Refused("This Parley needs an invitation link. Ask whoever runs it for one.")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    except jwt.ExpiredSignatureError:
        raise Refused("Your invitation link has expired. Ask for a new one.") from None
    except jwt.InvalidTokenError:
        raise Refused("This invitation link is not valid for this Parley. Ask for a new one.") from None
    name = claims.get("sub")
    if not isinstance(name, str) or not name.strip():
        raise Refused("This invitation link names nobody. Ask for a new one.")
    return name


class Gate:
    """Decides, per socket.io connection, who is connecting (or refuses them)."""

    def __init__(self, config: ParleyConfig) -> None:
        self.config = config
        self.auth: AuthConfig = config.auth
        self.mode = auth_mode(config)
        secret = signing_secret(config, create=True)
        if self.mode == "token" and secret is None:
            raise RuntimeError(f"token authentication needs a secret: set ${self.auth.secret_env} or server.state_dir")
        self._secret = secret or secrets.token_bytes(32)  # open, no state dir: keys last as long as the process

    def user(self, environ: dict[str, Any], auth: object) -> User:
        request = environ.get("aiohttp.request")
        address = str(getattr(request, "remote", None) or environ.get("REMOTE_ADDR", ""))
        if self.mode == "open":
            return User(ANONYMOUS, address)
        if self.mode == "proxy":
            if address not in self.auth.trusted_proxies:
                raise Refused("This Parley is reached through its sign-in proxy only.")
            key = "HTTP_" + self.auth.proxy_user_header.upper().replace("-", "_")
            name = environ.get(key, "").split(",")[0].strip()
            if not name:
                raise Refused("Sign in first: the proxy in front of Parley did not say who you are.")
            return User(name, address)
        token = auth.get("token") if isinstance(auth, dict) else None
        return User(check_token(self._secret, token), address)

    def session_key(self, user: User, session_id: str) -> str:
        """The key that proves `user` holds `session_id` (made only here)."""
        digest = hmac.new(self._secret, f"session\n{user.name}\n{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def holds(self, user: User, session_id: str, key: object) -> bool:
        return isinstance(key, str) and hmac.compare_digest(key, self.session_key(user, session_id))


def allowed_hosts(config: ParleyConfig) -> set[str]:
    """The names and addresses browsers may reach the server by: the configured ones, or this
    machine's own (its host names, every interface address, loopback) and its public address."""
    if config.server.allowed_hosts:
        return {h.lower().strip("[]") for h in config.server.allowed_hosts}
    from parley.ingress.tls import subject_names

    names = {str(n.value).lower() for n in subject_names(config.server.host)}
    if config.server.public_address:
        names.add(config.server.public_address.lower())
    return names


def host_allowed(host: str, allowed: set[str]) -> bool:
    """Whether `host` is one of `allowed`, where `*.example.com` allows any name under example.com."""
    return host in allowed or any(a.startswith("*.") and host.endswith(a[1:]) and host != a[2:] for a in allowed)


def host_of(header: str) -> str:
    """The host name or address of a Host header, without its port or IPv6 brackets, lowercase."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
