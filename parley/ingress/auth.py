"""Who may talk to Parley, and which conversation is whose.

Invariants:
- Off loopback, a browser needs an invitation (a JWT signed with the operator's secret, minted by
  `python -m parley.tools.token`) or, behind a trusted reverse proxy, a header naming the user; a
  loopback server that answers to loopback names only may stay open, and the startup line says which
  it is and why.
- An invitation is valid for at most `auth.max_token_ttl_s`, carries an id (`jti`), and is refused
  once that id is revoked (the config's list or the state directory's `revoked-tokens` file); sockets
  it opened are closed too (`Gate.still_valid`, asked by the server's housekeeping).
- Conversations are named by the server and bound to the user: the page proves it holds one with a
  session key (an HMAC of the user and the session id) that only the server can make. An id alone
  opens nothing.
- The secrets never leave the server: the signing secret comes from an environment variable or, on
  a single node without one, from a file made once in the state directory (mode 0600), published
  whole (written aside, then renamed under a lock), so processes starting together all read the same
  complete secret; a file left empty or short by a crash is replaced.
- Behind a trusted proxy a user's address is the one the proxy forwarded, so per-address limits
  count browsers, not the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.config import AuthConfig, ParleyConfig
from parley.ingress.tls import locked, publish
from parley.ingress.web import is_loopback

log = logging.getLogger("parley.auth")

AUDIENCE = "parley"
ANONYMOUS = "anonymous"
ISSUER = "parley"
MIN_SECRET_BYTES = 32
"""A secret file shorter than this is what a crash left behind, not a secret: it is replaced."""
MAX_TOKEN_TTL_S: float = AuthConfig.model_fields["max_token_ttl_s"].default
REVOKED_FILE = "revoked-tokens"
TOKEN_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
WITHDRAWN = "This invitation link was withdrawn. Ask for a new one."
EXPIRED = "Your invitation link has expired. Ask for a new one."


class Refused(Exception):
    """A connection without the right credentials; the message is for the page."""


@dataclass(frozen=True)
class User:
    name: str
    """Who: the token's subject, the proxy's header, or `anonymous` on an open server."""
    address: str
    """Where from: the socket's peer, or behind a trusted proxy the address it forwarded."""
    token_id: str | None = None
    """The invitation's id (`jti`); None without an invitation (or for one minted before they had ids)."""
    expires: float | None = None
    """When the invitation runs out (Unix time); None without one."""

    @property
    def account(self) -> str:
        """Whom per-user limits count: the name, or on an open server (everyone `anonymous`) the address."""
        return f"address {self.address}" if self.name == ANONYMOUS else f"user {self.name}"


def _loopback_name(host: str) -> bool:
    """localhost, 127.x.y.z or ::1 (as a Host header or allowed_hosts entry may spell them)."""
    return is_loopback(host.strip().strip("[]").lower().rstrip("."))


def _why_not_open(config: ParleyConfig) -> str | None:
    """Why `auto` asks for invitations here (None: it leaves the server open)."""
    host = config.server.host
    if not is_loopback(host):
        return f"{host} is not a loopback address"
    foreign = sorted(h for h in allowed_hosts(config) if not _loopback_name(h))
    if foreign:
        return (
            f"server.allowed_hosts names {', '.join(foreign)}, which is not loopback: whoever reaches that name (through "
            "a proxy in front) reaches this server"
        )
    return None


def auth_mode(config: ParleyConfig) -> str:
    """`open`, `token` or `proxy`: what `auto` means for this server: open only on a loopback address
    that answers to loopback names only, token otherwise."""
    mode = config.auth.mode
    if mode == "auto":
        return "open" if _why_not_open(config) is None else "token"
    return mode


def auth_reason(config: ParleyConfig) -> str:
    """Why the server is in the mode `auth_mode` says, for the startup line."""
    if config.auth.mode != "auto":
        return f"auth.mode is {config.auth.mode}"
    why = _why_not_open(config)
    if why is None:
        return f"auth auto: open, because {config.server.host} is loopback and the server answers to loopback names only"
    return f"auth auto: invitations needed, because {why}"


def signing_secret(config: ParleyConfig, *, create: bool = True) -> bytes | None:
    """The secret tokens and session keys are signed with: the environment's, else the node's file.

    The file is made once, whole: under a lock, written aside and renamed into place, so processes
    of the node starting together all read the same complete secret. One left empty or short (a
    crash while it was made by an older Parley) is no secret: it is replaced (`create`) or ignored.
    """
    value = os.environ.get(config.auth.secret_env)
    if value:
        return value.encode()
    if not config.server.state_dir:
        return None
    path = Path(config.server.state_dir).expanduser() / "auth.secret"
    found = _read_secret(path)
    if found is not None or not create:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        found = _read_secret(path)  # another process of the node may have made it while this one waited
        if found is None:
            publish(path, secrets.token_hex(32).encode(), 0o600)
            found = _read_secret(path)
    if found is None:
        raise RuntimeError(f"could not make the signing secret {path}")
    return found


def _read_secret(path: Path) -> bytes | None:
    try:
        value = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    return value if len(value) >= MIN_SECRET_BYTES else None


# -- invitations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invitation:
    """What a valid token says."""

    name: str
    token_id: str | None
    issued: float
    expires: float


def new_token_id() -> str:
    """A random invitation id (`jti`): 16 URL-safe characters."""
    return secrets.token_urlsafe(12)


def _span(seconds: float) -> str:
    return f"{seconds / 86400:g} d" if seconds >= 86400 else f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def mint(
    secret: bytes,
    name: str,
    ttl_s: float,
    *,
    now: float | None = None,
    token_id: str | None = None,
    max_ttl_s: float = MAX_TOKEN_TTL_S,
) -> str:
    """An invitation: a JWT for `name`, valid for `ttl_s` (at most `max_ttl_s`: ValueError), with an
    id (`token_id`, else a new one) it can be withdrawn by."""
    import jwt

    if ttl_s > max_ttl_s:
        raise ValueError(f"an invitation valid for {_span(ttl_s)} is longer than auth.max_token_ttl_s ({_span(max_ttl_s)})")
    if token_id is not None and not TOKEN_ID.match(token_id):
        raise ValueError(f"not an invitation id: {token_id!r}")
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": name,
        "iat": issued,
        "exp": issued + int(ttl_s),
        "aud": AUDIENCE,
        "iss": ISSUER,
        "jti": token_id or new_token_id(),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def read_token(
    secret: bytes, token: object, *, max_ttl_s: float = MAX_TOKEN_TTL_S, revoked: Container[str] = frozenset()
) -> Invitation:
    """What a token says; raises Refused (with a reason for the page) when it does not hold: not
    signed with `secret`, expired, without its lifetime or with one longer than `max_ttl_s`, or its
    id `revoked`."""
    import jwt

    if not isinstance(token, str) or not token:
        raise Refused("This Parley needs an invitation link. Ask whoever runs it for one.")
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER, options={"require": ["exp", "iat"]}
        )
    except jwt.ExpiredSignatureError:
        raise Refused(EXPIRED) from None
    except jwt.InvalidTokenError:
        raise Refused("This invitation link is not valid for this Parley. Ask for a new one.") from None
    name, issued, expires, jti = claims.get("sub"), claims["iat"], claims["exp"], claims.get("jti")
    if not isinstance(name, str) or not name.strip():
        raise Refused("This invitation link names nobody. Ask for a new one.")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (issued, expires)):
        raise Refused("This invitation link is not valid for this Parley. Ask for a new one.")
    token_id = jti if isinstance(jti, str) and jti else None
    if token_id is not None and token_id in revoked:
        raise Refused(WITHDRAWN)
    if expires - issued > max_ttl_s:
        raise Refused("This invitation link is valid for longer than this Parley allows. Ask for a new one.")
    return Invitation(name, token_id, float(issued), float(expires))


def check_token(
    secret: bytes, token: object, *, max_ttl_s: float = MAX_TOKEN_TTL_S, revoked: Container[str] = frozenset()
) -> str:
    """The user a token names; raises Refused (with a reason for the page) when it does not hold."""
    return read_token(secret, token, max_ttl_s=max_ttl_s, revoked=revoked).name


def revoked_tokens_path(config: ParleyConfig) -> Path | None:
    """The node's file of withdrawn invitation ids (None without a state directory)."""
    return Path(config.server.state_dir).expanduser() / REVOKED_FILE if config.server.state_dir else None


def revoke(config: ParleyConfig, token_id: str) -> Path:
    """Withdraw the invitation `token_id` on this node: its id is added to the state directory's
    `revoked-tokens` (under a lock, the whole file replaced at once). Returns the file."""
    if not TOKEN_ID.match(token_id):
        raise ValueError(f"not an invitation id: {token_id!r}")
    path = revoked_tokens_path(config)
    if path is None:
        raise ValueError("server.state_dir is null: list the id in auth.revoked_tokens instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        try:
            old = path.read_bytes()
        except FileNotFoundError:
            old = b""
        if token_id not in _ids(old.decode(errors="replace")):
            publish(path, old + (b"\n" if old and not old.endswith(b"\n") else b"") + f"{token_id}\n".encode(), 0o600)
    return path


def _ids(text: str) -> frozenset[str]:
    """The ids of a revoked-tokens file: one a line; blank lines and `#` comments are skipped."""
    return frozenset(word for line in text.splitlines() if (word := line.split("#", 1)[0].strip()))


class Revocations(Container[str]):
    """The withdrawn invitation ids: the config's, and the node's file, read again whenever it changes
    (its mtime, size or inode: `revoke` replaces it)."""

    def __init__(self, config: ParleyConfig) -> None:
        self.configured = frozenset(config.auth.revoked_tokens)
        self.path = revoked_tokens_path(config)
        self._seen: tuple[int, int, int] | None = None
        self._filed: frozenset[str] = frozenset()

    def __contains__(self, token_id: object) -> bool:
        return isinstance(token_id, str) and (token_id in self.configured or token_id in self.filed())

    def filed(self) -> frozenset[str]:
        """The file's ids, as of now."""
        if self.path is None:
            return self._filed
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._filed = None, frozenset()
            return self._filed
        except OSError as exc:
            log.warning("cannot read %s (%s): using the ids read before", self.path, exc)
            return self._filed
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen != self._seen:
            try:
                self._filed = _ids(self.path.read_text(errors="replace"))
            except OSError as exc:
                log.warning("cannot read %s (%s): using the ids read before", self.path, exc)
                return self._filed
            self._seen = seen
        return self._filed


# -- addresses -------------------------------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> Address | None:
    """An address as X-Forwarded-For or a socket names it (`a.b.c.d`, `a.b.c.d:port`, `v6`, `[v6]:port`);
    an IPv4-mapped IPv6 address as the IPv4 one. None: not an address."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not re.fullmatch(r"(:\d{1,5})?", text[end + 1 :]):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text, port = text.split(":")
        if not port.isdigit():
            return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip().strip("[]"), strict=False))
        except ValueError:
            raise ValueError(f"auth.trusted_proxies: {entry!r} is not an address or network") from None
    return networks


class Gate:
    """Decides, per socket.io connection, who is connecting (or refuses them), and later whether
    they still may be connected (`still_valid`)."""

    def __init__(self, config: ParleyConfig) -> None:
        self.config = config
        self.auth: AuthConfig = config.auth
        self.mode = auth_mode(config)
        self.revoked = Revocations(config)
        self._proxies = _networks(self.auth.trusted_proxies)
        secret = signing_secret(config, create=True)
        if self.mode == "token" and secret is None:
            raise RuntimeError(
                f"token authentication needs a secret: set ${self.auth.secret_env} or server.state_dir ({auth_reason(config)})"
            )
        self._secret = secret or secrets.token_bytes(32)  # open, no state dir: keys last as long as the process
        log.info("who may connect: %s (%s)", self.mode, auth_reason(config))

    def trusted(self, peer: str) -> bool:
        """Whether `peer` is one of auth.trusted_proxies."""
        ip = _ip(peer)
        return ip is not None and any(ip in network for network in self._proxies)

    def client_address(self, peer: str, forwarded: str | None) -> str:
        """Where a connection comes from: its peer, or when the peer is a trusted proxy, the right-most
        X-Forwarded-For address that is not a trusted proxy itself (the ones left of it are whatever
        the browser claimed). A header that is not a list of addresses counts for nothing."""
        if not forwarded or not self.trusted(peer):
            return peer
        hops = [_ip(hop) for hop in forwarded.split(",")]
        if any(hop is None for hop in hops):
            return peer
        known = [hop for hop in hops if hop is not None]
        for hop in reversed(known):
            if not any(hop in network for network in self._proxies):
                return str(hop)
        return str(known[0])  # proxies all the way: the first one the chain names

    def user(self, environ: dict[str, Any], auth: object) -> User:
        request = environ.get("aiohttp.request")
        peer = str(getattr(request, "remote", None) or environ.get("REMOTE_ADDR", ""))
        address = self.client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"))
        if self.mode == "open":
            return User(ANONYMOUS, address)
        if self.mode == "proxy":
            if not self.trusted(peer):
                raise Refused("This Parley is reached through its sign-in proxy only.")
            key = "HTTP_" + self.auth.proxy_user_header.upper().replace("-", "_")
            name = environ.get(key, "").split(",")[0].strip()
            if not name:
                raise Refused("Sign in first: the proxy in front of Parley did not say who you are.")
            return User(name, address)
        token = auth.get("token") if isinstance(auth, dict) else None
        invitation = read_token(self._secret, token, max_ttl_s=self.auth.max_token_ttl_s, revoked=self.revoked)
        return User(invitation.name, address, invitation.token_id, invitation.expires)

    def still_valid(self, user: User, *, now: float | None = None) -> str | None:
        """None while `user` may stay connected; else why not, for the page: their invitation was
        withdrawn (the revoked-tokens file is read again when it changed) or has run out."""
        if user.token_id is not None and user.token_id in self.revoked:
            return WITHDRAWN
        if user.expires is not None and (time.time() if now is None else now) >= user.expires:
            return EXPIRED
        return None

    def session_key(self, user: User, session_id: str) -> str:
        """The key that proves `user` holds `session_id` (made only here)."""
        digest = hmac.new(self._secret, f"session\n{user.name}\n{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def holds(self, user: User, session_id: str, key: object) -> bool:
        return isinstance(key, str) and hmac.compare_digest(key, self.session_key(user, session_id))


def allowed_hosts(config: ParleyConfig) -> set[str]:
    """The names and addresses browsers may reach the server by: the configured ones; on a loopback
    address the loopback names only (localhost, 127.0.0.1, ::1 and the address itself); else this
    machine's own (its host names, every interface address, loopback) and its public address."""
    if config.server.allowed_hosts:
        return {h.lower().strip("[]") for h in config.server.allowed_hosts}
    if is_loopback(config.server.host):
        return {"localhost", "127.0.0.1", "::1", config.server.host.lower().strip("[]")}
    from parley.ingress.tls import subject_names

    names = {str(n.value).lower() for n in subject_names(config.server.host)}
    if config.webrtc.public_address:
        names.add(config.webrtc.public_address.lower())
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
