"""A local Ray that nothing outside this machine can reach: run the command in a private
network namespace.

Ray 2.60's GCS, raylet and worker servers take no bind address and listen on every
interface (``ray.init`` turns a loopback node IP into the host's address). A process in a
fresh network namespace has one interface, its own loopback, so everything Ray starts
there listens on 127.0.0.1 of that namespace only. When a command is about to start a local
Ray (an RLlib teacher, data-parallel training; episodes never need Ray without an address)
the CLI re-executes itself once as::

    unshare --user --map-root-user --net -- python -m robodistill.cli <same arguments>

with :data:`ISOLATED_ENV` set; the new process brings its loopback up
(:func:`bring_loopback_up`) and runs the command as before. Files it writes belong to the
invoking user (the namespace maps its root to that user). Nothing in robodistill needs the
network at run time; joining a cluster by address (``RAY_ADDRESS`` / ``--ray-address``)
never isolates. Where unprivileged user namespaces are unavailable (some containers,
hardened kernels) the command runs unisolated with a warning; ``ROBODISTILL_RAY_NETNS=0``
turns isolation off.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

ISOLATED_ENV = "ROBODISTILL_NETNS"
"""Set (to ``1``) in a process re-executed in its own network namespace."""
OPT_OUT_ENV = "ROBODISTILL_RAY_NETNS"
"""``0`` turns isolation off (a local Ray then listens on every interface)."""
UNSHARE = ("unshare", "--user", "--map-root-user", "--net", "--")

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def isolated() -> bool:
    """Whether this process was re-executed in its own network namespace."""
    return os.environ.get(ISOLATED_ENV) == "1"


def bring_loopback_up() -> None:
    """Set ``lo`` up (a new network namespace starts with it down); no-op when it is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def isolated_command(command: Sequence[str]) -> list[str] | None:
    """``command`` run in a private user + network namespace, or ``None`` when this machine
    cannot make one (no ``unshare``, or unprivileged user namespaces refused)."""
    if shutil.which(UNSHARE[0]) is None:
        return None
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [*UNSHARE, *command] if probe.returncode == 0 else None


def reexec_isolated(argv: Sequence[str], why: str) -> None:
    """Replace this process by ``python -m robodistill.cli argv`` in a private network
    namespace; returns (having logged a warning) when that is not possible or turned off."""
    if isolated() or os.environ.get(OPT_OUT_ENV) == "0":
        return
    command = isolated_command([sys.executable, "-m", "robodistill.cli", *argv])
    if command is None:
        log.warning("%s starts a local Ray, whose servers listen on every network interface "
                     "(this machine refuses a private network namespace; Ray's token "
                     "authentication guards them): firewall the host, or join a cluster "
                     "with --ray-address", why)  # fmt: skip
        return
    log.info("%s starts a local Ray: running in a private network namespace", why)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, {**os.environ, ISOLATED_ENV: "1"})
