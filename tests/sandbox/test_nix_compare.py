"""The same recording builder under real Nix 2.8's sandbox and ours, compared line by line.

The builder (tests/data/sandbox/record.nix) prints its env, ids, pid, uts names, network
devices, /dev, /proc/self/status security fields, /, /build, /etc, mountinfo, limits,
personality, fds and termios.  Only what must differ is normalised: timestamps, the host
paths of the chroot and build dirs, mount ids, /proc's link count, whitespace runs (Nix's log
expands tabs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from goalkeeper.sandbox import env as nixenv
from goalkeeper.sandbox import skeleton

from .conftest import needs_userns, run_build, sandbox_spec

pytestmark = [needs_userns, pytest.mark.nix, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("nix-store") is None, reason="no nix-store")]

RECORD_NIX = Path(__file__).parents[1] / "data" / "sandbox" / "record.nix"
NIX_OPTS = ["--option", "build-users-group", "", "--option", "substituters", "",
            "--option", "sandbox", "true", "--option", "sandbox-paths", "/bin /lib /lib64 /usr"]


def _normalise(text: str, host_paths: list[str]) -> list[str]:
    lines = []
    mount_ids: dict[str, str] = {}  # mount ids are global counters: renumber them
    # So are the anonymous devices (major 0) of proc, tmpfs, devpts: every live IPC
    # namespace holds one for its mqueue, so another sandbox being prepared (or another
    # build under Nix) shifts them.  Which mounts share one is still compared.
    anon_devs: dict[str, str] = {}
    # And so are peer group ids (shared:N) and the host's pty numbers (/dev/pts/N, the
    # lowest free): another sandbox or terminal alive at the time takes one.
    groups: dict[str, str] = {}
    for line in text.splitlines():
        line = re.sub(r"\b(shared|master|propagate_from):(\d+)",
                      lambda g: f"{g.group(1)}:g{groups.setdefault(g.group(2), str(len(groups)))}", line)
        line = re.sub(r" -> /dev/pts/\d+$", " -> /dev/pts/N", line)
        if m := re.match(r"^(\d+) (\d+) (\d+:\d+)( .*)$", line):
            ids = [mount_ids.setdefault(i, f"m{len(mount_ids)}") for i in m.group(1, 2)]
            dev = m.group(3)
            if dev.startswith("0:"):
                dev = anon_devs.setdefault(dev, f"0:a{len(anon_devs)}")
            line = f"{ids[0]} {ids[1]} {dev}{m.group(4)}"
        for path in host_paths:
            line = line.replace(path, "<HOST>")
        line = re.sub(r"[A-Z][a-z]{2} +\d+ +(\d\d:\d\d|\d{4})", "<TIME>", line)
        line = re.sub(r"^(dr-xr-xr-x) +\d+ (.* proc)$", r"\1 N \2", line)
        lines.append(" ".join(line.split()))
    return lines


def test_recording_builder_sees_the_same_as_under_nix(spawner, tmp_path):
    store = tmp_path / "nix"
    env = {**os.environ, "TERM": "dumb-caller"}
    drv = subprocess.run(["nix-instantiate", "--store", str(store), str(RECORD_NIX)],
                         check=True, capture_output=True, text=True, env=env).stdout.strip()
    shown = subprocess.run(["nix", "--extra-experimental-features", "nix-command",
                            "show-derivation", "--store", str(store), drv],
                           check=True, capture_output=True, text=True).stdout
    derivation = json.loads(shown)[drv]
    nix = subprocess.run(["nix-store", "--store", str(store), *NIX_OPTS, "-r", drv],
                         capture_output=True, text=True, env=env)
    assert nix.returncode == 0, nix.stderr
    nix_log = nix.stderr.split("...\n", 1)[1]  # after "building '...drv'..."

    built = nixenv.builder_env(drv_env=derivation["env"], store_dir="/nix/store",
                               build_cores=int(dict(_env_line(l) for l in nix_log.splitlines()
                                                    if l.startswith("NIX_BUILD_CORES="))
                                               ["NIX_BUILD_CORES"]),
                               build_dir_in_sandbox="/build", fixed_output=False,
                               structured_attrs=False)
    nix_paths = [str(store / "nix/store" / (Path(drv).name + ".chroot")),
                 re.search(r"/tmp/nix-build-rec\.drv-\d+", nix_log).group(0),
                 str(store / "nix/store")]
    theirs = _normalise(nix_log, nix_paths)
    # Nix's log ends with its own warning after the builder's output.
    assert theirs[-1].startswith("warning: you did not specify '--add-root'")

    # The first build gets a freshly cloned child; later ones a child the spawner
    # prepared meanwhile (as soon as it is idle, so within a few builds).  Every other
    # build's chroot is a skeleton made beforehand (as start_builder takes one), the
    # child populating nothing.  All must match.
    seen = set()
    skeletons = 0
    for attempt in range(10):
        ours_dir = tmp_path / f"ours{attempt}"
        ours_dir.mkdir()
        spec = sandbox_spec(ours_dir, derivation["args"][1])
        if attempt % 2:
            skeleton.make(skeleton.skeleton_of(spec.sandbox, "/nix/store"), spec.sandbox.root)
            spec = dataclasses.replace(spec, sandbox=skeleton.without_population(spec.sandbox))
            skeletons += 1
        for name, contents in built.build_dir_files:
            (Path(spec.build_dir) / name).write_bytes(contents)
        spec = type(spec)(**{**{f: getattr(spec, f) for f in spec.__slots__},
                             "env": built.as_bytes(), "argv": (b"sh", b"-c",
                                                               derivation["args"][1].encode())})
        out = run_build(spawner, spec, build_id=attempt)
        assert out.failed is None and out.exited.exit_status == 0, out.output
        our_paths = [spec.sandbox.root, spec.build_dir, str(ours_dir / "store")]
        ours = _normalise(out.output.decode(), our_paths)
        assert len(ours) > 140 and ours == theirs[:-1], f"prepared={out.started.prepared}, skeleton={attempt % 2}"
        seen.add(out.started.prepared)
        if seen == {False, True} and skeletons:
            break
    assert seen == {False, True} and skeletons


def _env_line(line: str) -> tuple[str, str]:
    key, _, value = line.partition("=")
    return key, value
