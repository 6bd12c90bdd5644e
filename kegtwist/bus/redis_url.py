"""``--redis-url`` parsed into a :class:`RedisTarget`, with no Twisted import.

Apart from :mod:`kegtwist.bus.redis` so that option parsing can check a URL
with the same parser the bus uses, before any networking module loads
(see :mod:`kegtwist.daemon.lean`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit

from kegtwist.errors import StartupError


class PasswordFileError(StartupError, ValueError):
    """``--redis-password-file`` cannot be used; the message names the path,
    never the password."""


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, parsed from ``--redis-url``."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    tls: bool = False

    def redacted(self) -> str:
        """The URL for log lines: never the password."""
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        if self.path is not None:
            return f"unix://{auth}{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisTarget | None:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://...`` (TLS),
    ``unix://[[USER]:PASSWORD@]/PATH[?db=N]``, or ``none`` (None)."""
    if url == "none":
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("the Redis URL cannot be parsed (a bad [IPv6] host?)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix://, or is none")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("a unix:// Redis URL needs a socket path: unix:///run/redis.sock")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    query = parse_qs(parts.query)
    try:
        if parts.scheme == "unix":
            db = int(query.get("db", ["0"])[0])
        else:
            db = int(parts.path.lstrip("/") or query.get("db", ["0"])[0])
            port = parts.port if parts.port is not None else 6379
    except ValueError:
        # The message never repeats the URL: it may hold a password.
        raise ValueError("bad port or database number in the Redis URL") from None
    if db < 0:
        raise ValueError("the Redis database number must be 0 or more")
    if parts.scheme == "unix":
        return RedisTarget(path=parts.path, db=db, password=password, username=username)
    if not 0 < port < 65536:
        raise ValueError("the Redis port must be 1 to 65535")
    return RedisTarget(
        host=parts.hostname or "localhost",
        port=port,
        db=db,
        password=password,
        username=username,
        tls=parts.scheme == "rediss",
    )


def read_password_file(path: str) -> str:
    """The password in ``path``: its content, stripped (a trailing newline
    from ``echo`` is no part of it)."""
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
        raise PasswordFileError(f"cannot read --redis-password-file {path}: {reason}") from None
    if not password:
        raise PasswordFileError(f"--redis-password-file {path} is empty")
    return password


def redis_target(url: str, password_file: str | None = None) -> RedisTarget | None:
    """``--redis-url`` with the password of ``--redis-password-file``, if
    given (with the URL's user name, if any: ``redis://kegbot@host/0`` sends
    ``AUTH kegbot <password>``).  Raises :class:`PasswordFileError`."""
    target = parse_redis_url(url)
    if target is None or not password_file:
        return target
    return replace(target, password=read_password_file(password_file))
