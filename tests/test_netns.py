"""A command that starts a local Ray re-executes itself in a private network namespace, so
Ray's servers (which take no bind address) are reachable from this machine only."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest

from robodistill import cli
from robodistill.config import load_config
from robodistill.core import netns


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(netns.ISOLATED_ENV, raising=False)
    monkeypatch.delenv(netns.OPT_OUT_ENV, raising=False)


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_what_starts_a_local_ray(monkeypatch):
    rllib = _cfg("teach.algo=ppo", "teach.backend=rllib", "env.id=Pendulum-v1")
    assert cli.local_ray_reason(rllib, ["teach"]) == "teach (teach.backend: rllib)"
    assert cli.local_ray_reason(rllib, ["collect", "eval"]) is None  # episodes: local workers
    assert cli.local_ray_reason(_cfg("teach.algo=ppo", "env.id=Pendulum-v1"), ["teach"]) is None
    assert cli.local_ray_reason(_cfg(), ["teach", "distill"]) is None  # the default pipeline
    dp = _cfg("distill.training.workers=2")
    assert cli.local_ray_reason(dp, ["distill"]) == "distill (distill.training.workers: 2)"
    assert cli.local_ray_reason(_cfg("teach.training.workers=2"), ["teach"]) is not None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # joining a cluster: never isolated
    assert cli.local_ray_reason(rllib, ["teach"]) is None


def test_only_the_real_command_line_re_executes(monkeypatch):
    calls = []
    monkeypatch.setattr(netns, "reexec_isolated", lambda argv, why: calls.append((argv, why)))
    cfg = _cfg("teach.algo=ppo", "teach.backend=rllib", "env.id=Pendulum-v1")
    argv = ["teach", "--set", "teach.backend=rllib"]
    cli.isolate_local_ray(argparse.Namespace(reexec=False, argv=argv), cfg, ["teach"])
    assert calls == []  # main(argv) from Python (tests, notebooks) runs in place
    cli.isolate_local_ray(argparse.Namespace(reexec=True, argv=argv), cfg, ["teach"])
    assert calls == [(argv, "teach (teach.backend: rllib)")]


def test_without_namespaces_the_command_warns_and_runs_in_place(monkeypatch, caplog):
    monkeypatch.setattr(netns, "isolated_command", lambda command: None)
    monkeypatch.setattr(netns.os, "execvpe", lambda *a: pytest.fail("must not re-execute"))
    with caplog.at_level(logging.WARNING, logger="robodistill.core.netns"):
        netns.reexec_isolated(["teach"], "teach (teach.backend: rllib)")
    assert "listen on every network interface" in caplog.text
    monkeypatch.setenv(netns.OPT_OUT_ENV, "0")  # opted out: silent, in place
    caplog.clear()
    netns.reexec_isolated(["teach"], "teach")
    assert caplog.text == ""


PROBE = """
import socket
from robodistill.core.netns import bring_loopback_up
bring_loopback_up()
bring_loopback_up()  # idempotent
server = socket.socket()
server.bind(("0.0.0.0", 0))  # what Ray's servers do
server.listen()
client = socket.create_connection(("127.0.0.1", server.getsockname()[1]), timeout=5)
print(sorted(name for _, name in socket.if_nameindex()), "connected")
"""


def test_the_namespace_has_only_its_own_loopback():
    command = netns.isolated_command([sys.executable, "-c", PROBE])
    if command is None:
        pytest.skip("this machine refuses unprivileged user + network namespaces")
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # A socket bound to every interface there is bound to that loopback alone.
    assert out.stdout.split() == ["['lo']", "connected"]
