"""Imports from an untrusted client need a trusted signature, in goalkeeper's daemon as in nix-daemon.

Both daemons run with `trusted-users` empty (so the root client is untrusted) and
one key in `trusted-public-keys`. Real `nix copy` then brings input-addressed paths
built by real Nix into each: one signed with the trusted key, one unsigned, one
signed with another key. Both daemons must accept and refuse the same ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.nix, pytest.mark.timeout(120)]

OPTIONS = ["--option", "build-users-group", "", "--option", "substituters", ""]
NIX_COMMAND = ["--extra-experimental-features", "nix-command"]
EXPR = r"""
let mk = name: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh";
                            args = ["-c" "echo ${name} > $out"]; };
in { signed = mk "signed"; unsigned = mk "unsigned"; foreign = mk "foreign"; }
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env["NIX_USER_CONF_FILES"] = ""
    return env


def _run(*argv, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, timeout=60, env=_env(),
                          stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.stderr.decode()}"
    return proc


def _start(kind: str, root, sock: str, public_key: str) -> subprocess.Popen:
    env = _env()
    options = [*OPTIONS, "--option", "sandbox-paths", "/bin /lib /lib64 /usr", "--option", "trusted-users", "",
               "--option", "trusted-public-keys", public_key]
    if kind == "nix":
        env["NIX_DAEMON_SOCKET_PATH"] = sock
        argv = ["nix-daemon", "--store", str(root), *options]
    else:
        argv = [sys.executable, "-m", "goalkeeper.tools.cli", "--store", str(root), *options, "daemon",
                "--socket", sock, "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, f"{kind} daemon did not start"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(sock)
                return proc
        except OSError:
            time.sleep(0.05)


def test_untrusted_imports_need_a_trusted_signature(tmp_path):
    if shutil.which("nix-daemon") is None:
        pytest.skip("real Nix is not installed")
    for name in ("trusted", "other"):
        _run("nix-store", "--generate-binary-cache-key", f"{name}-key", tmp_path / f"{name}.sk", tmp_path / f"{name}.pk")
    public_key = (tmp_path / "trusted.pk").read_text()
    (tmp_path / "t.nix").write_text(EXPR)
    source = tmp_path / "source"
    outs = {}
    for attr in ("signed", "unsigned", "foreign"):
        outs[attr] = _run("nix-build", "--store", source, *OPTIONS, "--option", "sandbox-paths",
                          "/bin /lib /lib64 /usr", "--no-out-link", tmp_path / "t.nix", "-A", attr
                          ).stdout.decode().strip()
    _run("nix", *NIX_COMMAND, "store", "sign", "--store", source, *OPTIONS, "-k", tmp_path / "trusted.sk",
         outs["signed"])
    _run("nix", *NIX_COMMAND, "store", "sign", "--store", source, *OPTIONS, "-k", tmp_path / "other.sk",
         outs["foreign"])

    results = {}
    for kind in ("nix", "gk"):
        root, sock = tmp_path / kind, str(tmp_path / f"{kind}.sock")
        proc = _start(kind, root, sock, public_key)
        try:
            uri = f"unix://{sock}?root={root}"
            for attr, out in outs.items():
                copy = _run("nix", *NIX_COMMAND, "copy", *OPTIONS, "--from", source, "--to", uri, out, check=False)
                query = _run("nix-store", "--store", uri, *OPTIONS, "-q", "--hash", out, check=False)
                results[kind, attr] = (copy.returncode, query.returncode,
                                       b"because it lacks a valid signature" in copy.stderr)
            info = _run("nix", *NIX_COMMAND, "path-info", "--store", uri, *OPTIONS, "--sigs", outs["signed"])
            results[kind, "sigs"] = info.stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    assert results["nix", "signed"] == (0, 0, False)
    assert results["nix", "unsigned"] == results["nix", "foreign"] == (1, 1, True)
    for key in ("signed", "unsigned", "foreign", "sigs"):
        assert results["gk", key] == results["nix", key], key
    assert b"trusted-key:" in results["gk", "sigs"]
