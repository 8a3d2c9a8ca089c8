"""CurveZMQ encryption and authentication, and inbound size limits, applied by the socket itself.

Every socket this process makes from its transport context (``context()``, which is also what
``zmq.Context.instance()`` returns once ``configure`` ran) is a ``UdmlSocket``:

* ``ZMQ_MAXMSGSIZE`` is set from what the socket can legitimately receive: a SUB socket the
  largest frame the wire format allows (the 64 MiB payload limit), a PUB/XPUB socket only
  subscriptions and handshake commands (``PUBLISHER_MAX_INBOUND``). libzmq allocates a frame's
  full announced size as soon as its header arrives, so without this a peer that announces a
  1 GiB frame and sends nothing more makes the node reserve it.
* With CURVE on, a socket that *binds* is a CURVE server holding the server key pair and asks the
  process's ZAP authenticator, which admits only client public keys found in the allow-list
  folder; a socket that *connects* is a CURVE client that verifies the server's public key and
  presents its own key pair. ``inproc://`` never leaves the process and is left alone.

Programs call ``configure(security)`` once in their main; library code that creates sockets with
``zmq.Context.instance()`` (recorder, replay) or through ``Publisher``/``Subscriber`` then gets
the same policy without knowing about it.
"""

from __future__ import annotations

import atexit
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from udml_stream.errors import ConfigError
from udml_stream.messages.codec import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_TOPIC_BYTES

log = logging.getLogger(__name__)

#: The largest frame a subscriber can legitimately receive (a payload frame at the wire limit).
SUBSCRIBER_MAX_INBOUND = max(MAX_PAYLOAD_BYTES, MAX_HEADER_BYTES)
#: What a publisher receives: subscriptions (1 + topic ≤ 257 bytes, or the 10-byte ZMTP 3.1
#: SUBSCRIBE command name + topic). Measured: CURVE handshakes pass with a cap as low as 257.
PUBLISHER_MAX_INBOUND = 512
assert PUBLISHER_MAX_INBOUND > 1 + MAX_TOPIC_BYTES

ZAP_DOMAIN = "udml"
SERVER_NAME = "server"
ALLOW_DIR = "allowed"


@dataclass(frozen=True)
class Security:
    """The CURVE key material of one process (z85-encoded keys as ``zmq.auth`` loads them).

    ``server_*``: the key pair of binding sockets (absent on a host that only connects);
    ``server_public`` alone is what connecting sockets verify. ``client_*``: the key pair this
    host presents when it connects (absent on a host that only binds). ``allow_dir``: the folder
    of client public keys a binding socket admits.
    """

    server_public: bytes
    server_secret: bytes | None
    client_public: bytes | None
    client_secret: bytes | None
    allow_dir: Path | None

    @classmethod
    def from_keys_dir(cls, keys: Path, client: str = "client", allow: Path | None = None) -> Security:
        """Load the layout ``udml keys generate`` writes: ``server.key[_secret]``,
        ``<client>.key_secret`` and the allow-list folder ``allowed/``. Only ``server.key`` is
        required; a missing part is an error when a socket needs it."""
        keys = Path(keys)
        server_pub = keys / f"{SERVER_NAME}.key"
        if not server_pub.is_file():
            raise ConfigError(f"security.keys = {str(keys)!r}: no {server_pub.name} there; "
                              f"create keys with `udml keys generate {keys}`")
        spub, _ = _load(server_pub)
        ssec: bytes | None = None
        if (keys / f"{SERVER_NAME}.key_secret").is_file():
            _, ssec = _load(keys / f"{SERVER_NAME}.key_secret")
        cpub = csec = None
        if (keys / f"{client}.key_secret").is_file():
            cpub, csec = _load(keys / f"{client}.key_secret")
        allow_dir = Path(allow) if allow is not None else keys / ALLOW_DIR
        return cls(spub, ssec, cpub, csec, allow_dir if allow_dir.is_dir() else None)


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a CURVE certificate ({err}); "
                          "create keys with `udml keys generate`") from None


def generate_keys(keys: Path, clients: list[str], allow: bool = True) -> list[Path]:
    """Create the server key pair (if absent) and one key pair per name in ``clients`` under
    ``keys``; with ``allow``, copy each new client's public key into the allow-list folder.
    Never overwrites a key; returns the files written."""
    if not zmq.has("curve"):
        raise ConfigError("this libzmq was built without CURVE support")
    keys = Path(keys)
    for name in clients:
        if not name or not name.replace("-", "").replace("_", "").isalnum() or name == SERVER_NAME:
            raise ConfigError(f"client name {name!r}: expected letters, digits, '-' or '_' "
                              f"(and not {SERVER_NAME!r})")
        if (keys / f"{name}.key_secret").exists():
            raise ConfigError(f"{keys / (name + '.key_secret')} exists; pick another name or "
                              "remove it first (keys are never overwritten)")
    keys.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in ([] if (keys / f"{SERVER_NAME}.key_secret").exists() else [SERVER_NAME]) + clients:
        pub, sec = zmq.auth.create_certificates(keys, name)
        Path(sec).chmod(0o600)  # the secret half is for this host only
        written += [Path(pub), Path(sec)]
        if allow and name != SERVER_NAME:
            (keys / ALLOW_DIR).mkdir(exist_ok=True)
            written.append(Path(shutil.copy(pub, keys / ALLOW_DIR / Path(pub).name)))
    return written


def _is_network(addr: str) -> bool:
    return not addr.startswith("inproc://")


def _beyond_loopback(addr: str) -> bool:
    if not addr.startswith("tcp://"):
        return False
    host = addr[len("tcp://"):].rsplit(":", 1)[0]
    return not (host.startswith("127.") or host in ("localhost", "lo", "::1", "[::1]"))


class UdmlSocket(zmq.Socket):
    """A socket with the inbound size limit of its type and, when the process has ``Security``,
    CURVE set up at bind/connect time (a socket may bind and connect; each takes its role)."""

    security: ClassVar[Security | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.type in (zmq.PUB, zmq.XPUB):
            self.setsockopt(zmq.MAXMSGSIZE, PUBLISHER_MAX_INBOUND)
        elif self.type in (zmq.SUB, zmq.XSUB):
            self.setsockopt(zmq.MAXMSGSIZE, SUBSCRIBER_MAX_INBOUND)

    def bind(self, addr: str) -> Any:
        """Bind; as a CURVE server (ZAP allow-list) when the process has ``Security``."""
        sec = self.security
        if sec is not None and _is_network(addr):
            if sec.server_secret is None:
                raise ConfigError(f"binding {addr} with CURVE on needs the server secret key "
                                  "(server.key_secret in security.keys); copy it to this host")
            self.setsockopt(zmq.CURVE_SERVER, 1)
            self.setsockopt(zmq.CURVE_PUBLICKEY, sec.server_public)
            self.setsockopt(zmq.CURVE_SECRETKEY, sec.server_secret)
            self.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        elif sec is None and _beyond_loopback(addr):
            log.warning("binding %s without encryption: any host that reaches it can read and "
                        "inject messages (see docs/security.md)", addr)
        return super().bind(addr)

    def connect(self, addr: str) -> Any:
        """Connect; as a CURVE client verifying the server key when the process has ``Security``."""
        sec = self.security
        if sec is not None and _is_network(addr):
            if sec.client_secret is None or sec.client_public is None:
                raise ConfigError(f"connecting to {addr} with CURVE on needs a client key pair "
                                  "(security.client in security.keys); create one with "
                                  "`udml keys generate`")
            # libzmq copies these options into the connection at connect() time.
            self.setsockopt(zmq.CURVE_SERVERKEY, sec.server_public)
            self.setsockopt(zmq.CURVE_PUBLICKEY, sec.client_public)
            self.setsockopt(zmq.CURVE_SECRETKEY, sec.client_secret)
        return super().connect(addr)


_authenticators: dict[int, ThreadAuthenticator] = {}


def secure_context(security: Security | None, ctx: zmq.Context | None = None) -> zmq.Context:
    """Make ``ctx`` (a new context when None) create ``UdmlSocket``s with ``security``; with
    CURVE, start its ZAP authenticator loaded with the allow-list. Returns the context."""
    ctx = ctx if ctx is not None else zmq.Context()
    ctx._socket_class = type("UdmlSocket", (UdmlSocket,), {"security": security})
    old = _authenticators.pop(id(ctx), None)
    if old is not None:
        old.stop()
    if security is not None:
        if security.allow_dir is None:
            log.warning("CURVE on but no allow-list folder: binding sockets admit no client")
        elif not any(security.allow_dir.glob("*.key")):
            log.warning("the allow-list %s is empty: binding sockets admit no client",
                        security.allow_dir)
        auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".zap"))
        auth.start()
        # A folder that does not exist allows no one (zmq.auth logs and loads nothing).
        auth.configure_curve(domain=ZAP_DOMAIN, location=str(security.allow_dir or "/nonexistent"))
        _authenticators[id(ctx)] = auth
    return ctx


def stop_authenticator(ctx: zmq.Context) -> None:
    """Stop the ZAP thread of ``ctx`` (before destroying the context)."""
    auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


_process_security: Security | None = None


def configure(security: Security | None) -> zmq.Context:
    """Apply ``security`` (None: size limits only) to this process's shared context,
    ``zmq.Context.instance()``, which every program and library socket uses by default."""
    global _process_security
    _process_security = security
    ctx = secure_context(security, zmq.Context.instance())
    if security is not None:
        atexit.register(stop_authenticator, ctx)
    log.log(logging.INFO if security is not None else logging.DEBUG, "transport security: %s",
            "CURVE (encrypted, allow-listed clients)" if security is not None
            else "none (plain TCP; loopback and ipc only are safe)")
    return ctx


def context() -> zmq.Context:
    """The process's shared transport context (``zmq.Context.instance()``)."""
    return zmq.Context.instance()


def new_context() -> zmq.Context:
    """A fresh context with this process's policy (for code that must own and terminate its
    context, e.g. to wait for linger); release it with ``close_context``."""
    return secure_context(_process_security)


def close_context(ctx: zmq.Context, linger_ms: int | None = None) -> None:
    """Stop ``ctx``'s ZAP thread, then terminate it (waiting up to each socket's linger)."""
    stop_authenticator(ctx)
    if linger_ms is None:
        ctx.term()
    else:
        ctx.destroy(linger=linger_ms)
