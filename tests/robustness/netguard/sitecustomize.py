"""Network guard for the robustness tests, loaded by Python at start-up through ``PYTHONPATH``.

With ``LSQBQ_NETGUARD_LOG`` set, an audit hook (``sys.addaudithook``) records every name lookup of, and every
connection to, a host that is not loopback in that file (one line per attempt) and refuses it with an
``OSError``. Child processes that inherit the environment are guarded too.
"""
import os
import sys

_LOG = os.environ.get("LSQBQ_NETGUARD_LOG")
_LOCAL = {"", "localhost", "ip6-localhost", "0.0.0.0", "::", "::1"}


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).lower().strip("[]")
    return host in _LOCAL or host.startswith("127.") or host.endswith(".localhost") or host.startswith("::ffff:127.")


def _host(event: str, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"):
        target = args[0]
        return target[0] if isinstance(target, tuple) else target
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if len(args) > 1 else None
        if isinstance(address, tuple) and address:
            return address[0]
        return None  # AF_UNIX paths and other local families
    return None


def _hook(event: str, args) -> None:
    if not event.startswith("socket."):
        return
    host = _host(event, args)
    if _is_local(host):
        return
    with open(_LOG, "a") as f:
        f.write(f"{event} {host!r} pid={os.getpid()} argv={sys.argv[:3]!r}\n")
    raise OSError(f"network guard: {event} to {host!r} refused")


if _LOG:
    sys.addaudithook(_hook)
