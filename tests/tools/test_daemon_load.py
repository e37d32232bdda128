"""Fifty real Nix 2.8 clients at once against one `goalkeeper daemon`.

The clients mix `nix-build` of overlapping graphs (each top derivation asked for by
two clients, every leaf and middle derivation shared by several tops), `nix-store
--add` (each file added by three clients) and queries. Every builder appends a line
to a counter file outside the store, which is why the store is a plain one
(logical dir = real dir) built without the sandbox: the counters show that each
derivation was built exactly once, whoever asked for it.
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

from goalkeeper.tools.bench.daemon_queries import stop_daemon, wait_for_socket

pytestmark = [pytest.mark.nix, pytest.mark.timeout(120)]

LEAKY_ENV = ("NIX_REMOTE", "NIX_CONFIG", "NIX_STORE_DIR", "NIX_STORE", "NIX_STATE_DIR", "NIX_LOG_DIR",
             "NIX_CONF_DIR", "NIX_DAEMON_SOCKET_PATH")
CLIENT_OPTIONS = ["--option", "build-users-group", "", "--option", "substituters", ""]
NIX_COMMAND = ["--extra-experimental-features", "nix-command"]
LEAVES, MIDS, TOPS = 5, 10, 10

# Builders have no PATH (Nix sets /path-not-set): only shell builtins.
EXPR = r"""
{ count }:
let
  mk = name: script: derivation {
    inherit name; system = "x86_64-linux"; builder = "/bin/sh";
    args = ["-c" "echo built >> ${count}/${name}; ${script}"];
  };
  cat = f: "while IFS= read -r l; do echo \"$l\"; done < ${f}";
  mod = a: b: a - a / b * b;
  s = toString;
  leaf = i: mk "leaf${s i}" "echo leaf ${s i} > $out";
  mid = i: mk "mid${s i}" "{ ${cat (leaf (mod i 5))}; ${cat (leaf (mod (i + 1) 5))}; echo mid ${s i}; } > $out";
  top = k: mk "top${s k}" "{ ${cat (mid k)}; ${cat (mid (mod (k + 3) 10))}; echo top ${s k}; } > $out";
in {
  tops = builtins.genList top 10;
  pre = mk "pre" "{ ${cat (mk "preleaf" "echo pre leaf > $out")}; echo pre; } > $out";
}
"""


def _leaf(i: int) -> str:
    return f"leaf {i}\n"


def _mid(i: int) -> str:
    return _leaf(i % LEAVES) + _leaf((i + 1) % LEAVES) + f"mid {i}\n"


def _top(k: int) -> str:
    return _mid(k) + _mid((k + 3) % MIDS) + f"top {k}\n"


def env() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    environ["NIX_USER_CONF_FILES"] = ""
    return environ


@pytest.fixture
def plain_daemon(tmp_path):
    """`goalkeeper daemon` on a store whose logical dir is its real dir, unsandboxed."""
    if shutil.which("nix-build") is None:
        pytest.skip("real Nix is not installed")
    for sub in ("store", "var/nix", "var/log/nix", "count"):
        (tmp_path / sub).mkdir(parents=True)
    uri = f"local?store={tmp_path}/store&state={tmp_path}/var/nix&log={tmp_path}/var/log/nix"
    sock = str(tmp_path / "sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "goalkeeper.tools.cli", "--store", uri, "--option", "build-users-group", "",
         "--option", "sandbox", "false", "--option", "substituters", "", "--option", "max-jobs", "4",
         "daemon", "--socket", sock, "--quiet"],
        env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc, timeout=20)
        yield tmp_path, proc, f"unix://{sock}?store={tmp_path}/store"
    finally:
        if proc.poll() is None:
            stop_daemon(proc)


def nix_argv(uri: str, *argv) -> list[str]:
    return [str(argv[0]), "--store", uri, *CLIENT_OPTIONS, *map(str, argv[1:])]


def run(uri: str, *argv) -> bytes:
    proc = subprocess.run(nix_argv(uri, *argv), capture_output=True, timeout=60, env=env(),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{argv}: {proc.stderr.decode()}"
    return proc.stdout


def test_fifty_concurrent_clients(plain_daemon):
    top, proc, uri = plain_daemon
    (top / "g.nix").write_text(EXPR)
    files = []
    for i in range(5):
        f = top / f"file{i}.txt"
        f.write_text(f"file number {i}\n" * (i * 1000 + 1))
        files.append(f)
    count = ["--argstr", "count", str(top / "count")]

    # What the queries should answer, asked one at a time first.
    pre_file = top / "pre.txt"
    pre_file.write_text("queried while others build\n")
    pre_added = run(uri, "nix-store", "--add", pre_file).decode().strip()
    pre_out = run(uri, "nix-build", "--no-out-link", top / "g.nix", *count, "-A", "pre").decode().strip()
    queries = [["nix-store", "-q", "--hash", pre_added], ["nix-store", "-q", "--references", pre_out],
               ["nix-store", "-q", "--requisites", pre_out], ["nix", *NIX_COMMAND, "path-info", "--json", pre_out],
               ["nix-store", "-q", "--deriver", pre_out]]
    expected_queries = [run(uri, *q) for q in queries]
    shutil.rmtree(top / "count")
    (top / "count").mkdir()

    clients = []  # (kind, what, argv)
    for k in range(TOPS):
        for _ in range(2):
            clients.append(("build", k, ["nix-build", "--no-out-link", top / "g.nix", *count, "-A", f"tops.{k}"]))
    for i in range(15):
        clients.append(("add", i % 5, ["nix-store", "--add", files[i % 5]]))
    for i in range(15):
        clients.append(("query", i % 5, queries[i % 5]))
    assert len(clients) == 50
    started = time.monotonic()
    procs = [subprocess.Popen(nix_argv(uri, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
                              stdin=subprocess.DEVNULL) for _, _, argv in clients]
    outputs = [p.communicate(timeout=90) for p in procs]
    elapsed = time.monotonic() - started

    failures = [(kind, what, p.returncode, err.decode()[-2000:])
                for (kind, what, _), p, (_, err) in zip(clients, procs, outputs) if p.returncode != 0]
    assert not failures, failures
    built: dict[int, set[str]] = {}
    added: dict[int, set[str]] = {}
    for (kind, what, _), (out, _) in zip(clients, outputs):
        text = out.decode().strip()
        if kind == "build":
            built.setdefault(what, set()).add(text)
            assert text.endswith(f"-top{what}")
            assert (top / "store" / os.path.basename(text)).read_text() == _top(what)
        elif kind == "add":
            added.setdefault(what, set()).add(text)
        else:
            assert out == expected_queries[what], clients[what]
    assert all(len(paths) == 1 for paths in built.values()) and len(built) == TOPS
    for i, paths in added.items():
        nar_hash = run(uri, "nix-hash", "--type", "sha256", "--base32", files[i]).decode().strip()
        assert paths == {run(uri, "nix-store", "--print-fixed-path", "--recursive", "sha256", nar_hash,
                             files[i].name).decode().strip()}
        assert (top / "store" / os.path.basename(paths.pop())).read_text() == files[i].read_text()

    # Each derivation was built exactly once, however many clients wanted it at once.
    counts = {p.name: p.read_text() for p in (top / "count").iterdir()}
    names = [f"leaf{i}" for i in range(LEAVES)] + [f"mid{i}" for i in range(MIDS)] + [f"top{k}" for k in range(TOPS)]
    assert counts == {name: "built\n" for name in names}

    verify = subprocess.run(nix_argv(uri, "nix-store", "--verify", "--check-contents"), capture_output=True,
                            timeout=60, env=env())
    assert verify.returncode == 0 and b"error" not in verify.stderr, verify.stderr.decode()
    print(f"50 clients answered in {elapsed:.1f} s")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


LONG = r"""
{ marker }:
derivation {
  name = "long"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" "echo $$ > ${marker}; echo started; exec /bin/sleep 1000"];
}
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:\tZ") for line in f)
    except FileNotFoundError:
        return False


def test_sigterm_kills_running_builds_and_exits_cleanly(plain_daemon):
    top, proc, uri = plain_daemon
    (top / "long.nix").write_text(LONG)
    marker = top / "builder.pid"
    drv = run(uri, "nix-instantiate", top / "long.nix", "--argstr", "marker", marker).decode().strip()
    out = run(uri, "nix-store", "-q", "--outputs", drv).decode().strip()
    client = subprocess.Popen(nix_argv(uri, "nix-store", "-r", drv), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env(), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline and client.poll() is None, "the builder never started"
        time.sleep(0.05)
    builder = int(marker.read_text())
    assert _alive(builder)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    _, err = client.communicate(timeout=20)
    assert client.returncode != 0, err.decode()
    assert not _alive(builder), "the builder outlived the daemon"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        with pytest.raises(OSError):  # nobody accepts any more
            s.connect(str(top / "sock"))

    # Real Nix, opening the store directly, finds the output invalid and the store consistent.
    local = f"local?store={top}/store&state={top}/var/nix&log={top}/var/log/nix"
    check = subprocess.run(nix_argv(local, "nix-store", "--check-validity", out), capture_output=True,
                           timeout=60, env=env())
    assert check.returncode != 0 and b"is not valid" in check.stderr, check.stderr.decode()
    verify = subprocess.run(nix_argv(local, "nix-store", "--verify", "--check-contents"), capture_output=True,
                            timeout=60, env=env())
    assert verify.returncode == 0 and b"error" not in verify.stderr, verify.stderr.decode()


def test_store_recreated_between_real_nix_connections(plain_daemon):
    top, proc, uri = plain_daemon
    f = top / "f.txt"
    f.write_text("survives\n")
    path = run(uri, "nix-store", "--add", f).decode().strip()
    for sub in ("store", "var"):
        shutil.rmtree(top / sub)
    (top / "store").mkdir()  # as an administrator recreating it would; the daemon makes the rest
    check = subprocess.run(nix_argv(uri, "nix-store", "--check-validity", path), capture_output=True, timeout=60,
                           env=env())
    assert check.returncode == 1 and b"is not valid" in check.stderr, check.stderr.decode()
    assert run(uri, "nix-store", "--add", f).decode().strip() == path
    nar_hash = run(uri, "nix-hash", "--type", "sha256", "--base32", f)
    assert run(uri, "nix-store", "-q", "--hash", path) == b"sha256:" + nar_hash
    assert (top / "var" / "nix" / "db" / "db.sqlite").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
