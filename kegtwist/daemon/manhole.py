"""The manhole: a Python shell inside the running daemon, over SSH only.

Off unless ``--manhole ENDPOINT`` is given (``tcp:2222:interface=127.0.0.1``
binds to localhost; an endpoint without ``interface=`` is made to bind to
127.0.0.1 too: listening on every address has to be asked for with
``interface=0.0.0.0``).  Only public-key authentication, from the
authorized_keys file ``--manhole-keys``: any user name, a key listed there.
The SSH host key lives in the state directory and is generated on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.internet.error import ProcessDone
from twisted.python.failure import Failure
from zope.interface import implementer

from kegtwist.errors import StartupError
from kegtwist.listen import localhost_by_default

HOST_KEY_FILE = "manhole_host_key"


class ManholeError(StartupError, ValueError):
    """A manhole setting that must stop start-up."""


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """Every key in one authorized_keys file, for whatever user name."""

    def __init__(self, keys_: list[keys.Key]) -> None:
        self.keys = keys_

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterable[keys.Key]:
        return self.keys


class TerminalSession(manhole_ssh.TerminalSession):  # type: ignore[misc]
    """Twisted's session, made to survive what ssh clients do.

    Twisted's own raises into the daemon's log (and drops the session) when
    a client asks for no pty (``echo 'status()' | ssh ...``: no width),
    resizes its window (``windowChanged``) or closes its input (``eofReceived``:
    end of a piped script).  Here no pty means 80x24, a resize reaches the
    terminal, and end of input ends the session with exit status 0 (ssh
    exits 0, not 255) once the output is sent.
    """

    width = 80
    height = 24
    _chained: Any = None
    _proto: Any = None

    def openShell(self, proto: Any) -> None:
        self._proto = proto
        self._chained = self.chainedProtocolFactory()
        self.transportFactory(
            proto, self._chained, IConchUser(self.original), self.width, self.height
        )

    def windowChanged(self, newWindowSize: tuple[int, int, int, int]) -> None:
        self.height, self.width = newWindowSize[:2]
        terminal = getattr(self._chained, "terminalProtocol", None)
        if terminal is not None:
            terminal.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        if self._proto is not None:
            # exit status 0, then close once the output is sent
            self._proto.processEnded(Failure(ProcessDone(0)))


def load_authorized_keys(path: str | Path) -> list[keys.Key]:
    try:
        with open(path, "rb") as f:
            found = list(readAuthorizedKeyFile(f))
    except OSError as e:
        raise ManholeError(f"--manhole-keys {path}: {e.strerror or e}") from None
    if not found:
        raise ManholeError(
            f"--manhole-keys {path} holds no public key; the manhole never opens without one"
        )
    return found


def host_key(state_dir: Path) -> keys.Key:
    """The manhole's SSH host key: made once, kept (mode 0600)."""
    path = state_dir / HOST_KEY_FILE
    if path.exists():
        existing: keys.Key = keys.Key.fromFile(str(path))
        return existing
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(key.toString("OPENSSH"))
    tmp.replace(path)
    return key


class ManholeService(Service):
    """An SSH manhole; ``namespace`` is called per session (fresh globals).

    The authorised keys are read when it is built (a missing or empty file
    stops start-up with one line); the host key is read or made, and the
    port opened, only in :meth:`startService`, after twistd has dropped
    privileges, so the key file belongs to the daemon's user."""

    name = "manhole"

    def __init__(
        self,
        endpoint: str,
        keys_path: str | Path,
        state_dir: Path,
        namespace: Callable[[], dict[str, Any]],
    ) -> None:
        authorized = load_authorized_keys(keys_path)
        checker = SSHPublicKeyChecker(AuthorizedKeys(authorized))
        realm: Any = manhole_ssh.TerminalRealm()
        realm.sessionFactory = TerminalSession

        def session() -> insults.ServerProtocol:
            return insults.ServerProtocol(manhole.ColoredManhole, namespace())

        realm.chainedProtocolFactory = session
        self.factory: Any = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))
        self.state_dir = state_dir
        self.listener: IService = strports.service(localhost_by_default(endpoint), self.factory)

    def startService(self) -> None:
        key = host_key(self.state_dir)
        # Instance dicts: ConchFactory's class-level ones are shared by all.
        self.factory.publicKeys = {key.sshType(): key.public()}
        self.factory.privateKeys = {key.sshType(): key}
        super().startService()
        self.listener.startService()

    def stopService(self) -> Any:
        super().stopService()
        return self.listener.stopService()
