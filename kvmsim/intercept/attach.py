"""``kvmsim env`` / ``kvmsim run --server``: programs attached to a running ``kvmsim serve``
(``connect`` and ``ask_host`` here; what ``kvmsim env`` prints is the preload side's).

Each program then starts with only the preload shim and the socket: no interpreter, no
kernel model of its own.  What the shim is told about the host comes from the server (HELLO
→ HOST), and is trusted only as far as it must be:

- the server must be this user's (SO_PEERCRED: the peer's uid is ours), else nothing is taken;
- the shim itself (``LD_PRELOAD``) is always this side's own build, never a path from the server;
- ``machine`` must be an architecture kvmsim knows, ``root`` a directory of ours that no one
  else may write."""

from __future__ import annotations

import os
import socket
import stat

from ..kernel.errors import KvmsimError
from . import wire
from .server import peer_uid
from .wire import HostAnswer

CONNECT_TIMEOUT = 5.0


class AttachError(KvmsimError):
    """The server cannot be used; ``str()`` is one line naming the socket and why."""


def connect(socket_path: str) -> socket.socket:
    """A connection to the server at ``socket_path``, only if it is this user's (SO_PEERCRED)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise AttachError(f"{socket_path}: cannot connect: {exc.strerror or exc}") from None
        uid = peer_uid(sock)
        if uid != os.getuid():
            raise AttachError(f"{socket_path}: served by uid {uid}, not this user ({os.getuid()}): not trusted")
    except BaseException:
        sock.close()
        raise
    return sock


def ask_host(socket_path: str) -> HostAnswer:
    """What the server at ``socket_path`` serves, checked (see the module's docstring)."""
    sock = connect(socket_path)
    try:
        try:
            sock.sendall(wire.frame(wire.Msg.HELLO))
            msg, payload = wire.FrameReader(sock, max_payload=4096, stall=CONNECT_TIMEOUT).read()
        except (OSError, wire.ProtocolError) as exc:
            raise AttachError(f"{socket_path}: not a kvmsim server: {exc}") from None
        if msg != wire.Msg.HOST:
            raise AttachError(f"{socket_path}: not a kvmsim server: answered {msg.name} to HELLO")
    finally:
        sock.close()
    return _checked(socket_path, payload)


def _checked(socket_path: str, payload: bytes) -> HostAnswer:
    try:
        host = HostAnswer.decode(payload)
    except wire.ProtocolError as exc:
        raise AttachError(f"{socket_path}: {exc}") from None
    if host.root is not None:
        _check_private_dir(socket_path, host.root)
    return host


def _check_private_dir(socket_path: str, root: str) -> None:
    if not os.path.isabs(root):
        raise AttachError(f"{socket_path}: the host's files at {root!r}: not an absolute path")
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise AttachError(f"{socket_path}: the host's files at {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise AttachError(
            f"{socket_path}: the host's files at {root} are not a private directory of this user's: not trusted"
        )
