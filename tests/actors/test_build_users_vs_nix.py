"""Build users (`build-users-group` as root) against real Nix 2.8.

A session fixture makes a group of three system users (and an empty group) with unique
names and removes them at the end.  Both engines get `NIX_STATE_DIR` in a scratch
directory, so the userpool locks live there and not in the real /nix.  Stores are under a
world-traversable scratch directory: unsandboxed, the build user must reach the store.

Compared: what a recording builder sees (ids, groups, owners and modes of its build
directory, /build, / and the store dir, the id maps) and the output after registration,
sandbox false and true; waiting for a uid while every member is locked; a builder's
background process killed after the build; a hard link to a foreign file refused; the
errors for a missing and an empty group.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from goalkeeper.store.errors import StoreError

pytestmark = [pytest.mark.nix, pytest.mark.timeout(120),
              pytest.mark.skipif(os.getuid() != 0, reason="build users need root"),
              pytest.mark.skipif(shutil.which("useradd") is None, reason="no useradd")]

SANDBOX_PATHS = ("--option", "sandbox-paths", "/bin /lib /lib64 /usr")

RECORD = r'''
{ sandbox }:
derivation {
  name = "record";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  passAsFile = [ "big" ];
  big = "data";
  args = [ "-c" ''
    export PATH=/usr/bin:/bin
    echo "id: $(id -u) $(id -g) $(id -G)"
    for p in "$NIX_BUILD_TOP" "$bigPath" /build / /nix/store /tmp; do
      if [ -e "$p" ]; then
        echo "stat $(echo "$p" | sed 's,/tmp/nix-build-[^/]*,TOP,'): $(stat -c '%u %g %a' "$p")"
      else
        echo "stat $p: none"
      fi
    done
    echo "uid_map: $(cat /proc/self/uid_map)"
    echo "gid_map: $(cat /proc/self/gid_map)"
    grep -E '^(Uid|Gid|Groups)' /proc/self/status
    mkdir $out
    echo hi > $out/file
    ln -s file $out/link
    mkdir $out/dir
    chmod 700 $out/dir
  '' ];
}
'''

SIMPLE = r'''
{ script, tag ? "x" }:
derivation {
  name = "simple-${tag}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; ${script}" ];
}
'''


class BuildGroup:
    """A group with members (in /etc/group's order) and an empty group, made for the session."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"gkbu{tag}"
        self.empty = f"gkbe{tag}"
        self.members = [f"gkbu{tag}{c}" for c in "abc"]

    def create(self) -> None:
        for group in (self.name, self.empty):
            subprocess.run(["groupadd", "--system", group], check=True)
        for user in self.members:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "-G", self.name, user], check=True)

    def remove(self) -> None:
        from goalkeeper.actors.kill_user import kill_user

        for user in self.members:
            try:  # a failed test may have left a process of it, and userdel refuses then
                kill_user(pwd.getpwnam(user).pw_uid)
            except (KeyError, StoreError):
                pass
            subprocess.run(["userdel", user], stderr=subprocess.DEVNULL)
        for group in (self.name, self.empty):
            subprocess.run(["groupdel", group], stderr=subprocess.DEVNULL)

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid

    @property
    def gid(self) -> int:
        return grp.getgrnam(self.name).gr_gid


@pytest.fixture(scope="session")
def build_group():
    group = BuildGroup()
    try:
        group.create()
    except (subprocess.CalledProcessError, OSError) as e:
        group.remove()
        pytest.skip(f"cannot create build users: {e}")
    try:
        yield group
    finally:
        group.remove()


class World:
    """A scratch directory both engines share: NIX_STATE_DIR (the userpool) and stores."""

    def __init__(self, root: Path, group: BuildGroup, run_nix, gk):
        self.root, self.group, self._run_nix, self._gk = root, group, run_nix, gk
        self.state_dir = root / "state"
        self.state_dir.mkdir()

    def store(self, name: str, *, chroot: bool) -> tuple[str, str]:
        """A fresh store: (URI, real store dir)."""
        r = self.root / name
        if chroot:
            r.mkdir()
            return str(r), f"{r}/nix/store"
        for d in ("store", "var/nix", "var/log/nix"):
            (r / d).mkdir(parents=True)
        return f"local?store={r}/store&state={r}/var/nix&log={r}/var/log/nix", f"{r}/store"

    def instantiate(self, uri: str, expr: str, **args: str) -> str:
        path = self.root / "expr.nix"
        path.write_text(expr)
        argv = [a for k, v in args.items() for a in ("--argstr", k, v)]
        return self._run_nix("nix-instantiate", "--store", uri, *argv, str(path)).stdout.decode().strip()

    def options(self, group: str, sandbox: str) -> list[str]:
        return ["--option", "build-users-group", group, "--option", "substituters", "",
                "--option", "sandbox", sandbox, *SANDBOX_PATHS]

    def nix(self, uri: str, options: list[str], drv: str) -> tuple[int, str]:
        proc = self._run_nix("nix-store", "--store", uri, *options, "-r", drv, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).decode()

    def goalkeeper(self, uri: str, options: list[str], drv: str) -> tuple[int, str]:
        result = self._gk("--store", uri, *options, "realise", drv)
        return result.status, (result.stdout + result.stderr).decode()


@pytest.fixture
def world(build_group, run_nix, gk, monkeypatch):
    # Unsandboxed, the build user must traverse every parent of the store: not pytest's
    # tmp_path (its top is 0700).
    root = Path(tempfile.mkdtemp(prefix="gk-build-users-", dir="/tmp"))
    root.chmod(0o755)
    try:
        w = World(root, build_group, run_nix, gk)
        monkeypatch.setenv("NIX_STATE_DIR", str(w.state_dir))
        yield w
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _normalise(text: str, store_dirs: list[str]) -> list[str]:
    """Nix's logger expands tabs; store dirs and hashes differ between the two stores."""
    lines = []
    for line in text.splitlines():
        for d in store_dirs:
            line = line.replace(d, "<store>")
        line = re.sub(r"/nix/store/[0-9a-z]{32}-", "<store>/<hash>-", line)
        line = re.sub(r"<store>/[0-9a-z]{32}-", "<store>/<hash>-", line)
        lines.append(" ".join(line.split()))
    return lines


def _ls(real_path: str) -> list[str]:
    """What `ls -ln` shows of an output (the directory itself and its entries)."""
    out = subprocess.run(["ls", "-lnR", "--time-style=+%s", real_path], check=True, capture_output=True,
                         text=True).stdout
    own = subprocess.run(["ls", "-lnd", "--time-style=+%s", real_path], check=True, capture_output=True,
                         text=True).stdout
    return [" ".join(line.replace(real_path, "<out>").split()) for line in (own + out).splitlines()]


def _output(log: str) -> str:
    return next(line for line in log.splitlines() if re.match(r".*/[0-9a-z]{32}-record$", line))


def _hold(world: World, users: list[str]) -> list[int]:
    """Lock these members' userpool files, as another build would."""
    pool = world.state_dir / "userpool"
    pool.mkdir(exist_ok=True)
    fds = []
    for user in users:
        fd = os.open(pool / str(world.group.uid(user)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)
    return fds


@pytest.mark.parametrize("sandbox", ["false", "true"])
def test_recording_builder_sees_the_same_as_under_nix(world, sandbox):
    g = world.group
    held = []
    if sandbox == "true":
        held = _hold(world, g.members[:1])  # the first is busy: both take the second
    try:
        seen = {}
        for engine in ("nix", "goalkeeper"):
            uri, real = world.store(engine, chroot=sandbox == "true")
            drv = world.instantiate(uri, RECORD, sandbox=sandbox)
            status, log = getattr(world, engine)(uri, world.options(g.name, sandbox), drv)
            assert status == 0, log
            out_real = real + "/" + _output(log).rsplit("/", 1)[1]
            seen[engine] = (_normalise(log, [real]), _ls(out_real))
            assert not os.path.exists(f"{real}/{Path(drv).name}.chroot")
    finally:
        for fd in held:
            os.close(fd)
    assert seen["goalkeeper"] == seen["nix"]
    log, listing = seen["nix"]
    member = g.members[1] if sandbox == "true" else g.members[0]
    if sandbox == "true":
        assert f"uid_map: 1000 {g.uid(member)} 1" in log and f"gid_map: 100 {g.gid} 1" in log
        assert "stat /: 65534 100 750" in log and "stat /nix/store: 65534 100 1775" in log
    else:
        assert f"id: {g.uid(member)} {g.gid} " in "\n".join(log)
        assert f"stat TOP: {g.uid(member)} {g.gid} 700" in log
    assert all(" 0 0 " in line for line in listing if line.startswith(("d", "-", "l")))


def test_all_members_busy_both_wait_for_a_uid(world):
    """Every member locked: "waiting for UID to build" (once), then the build runs as the
    member released."""
    g = world.group
    results = {}
    for engine in ("nix", "goalkeeper"):
        uri, real = world.store(engine, chroot=False)
        drv = world.instantiate(uri, SIMPLE, script='echo "uid $(id -u)"; touch $out', tag="wait")
        fds = _hold(world, g.members)
        release = threading.Timer(1.0, os.close, (fds[1],))
        release.start()
        started = time.monotonic()
        try:
            # Nix polls every build-poll-interval seconds; goalkeeper every 5 s (its worker's).
            status, log = getattr(world, engine)(uri, [*world.options(g.name, "false"), "--option",
                                                       "build-poll-interval", "1"], drv)
        finally:
            release.join()
            for fd in fds[:1] + fds[2:]:
                os.close(fd)
        assert time.monotonic() - started >= 1.0
        assert status == 0, log
        assert log.count("waiting for UID to build '") == 1, log
        assert f"uid {g.uid(g.members[1])}" in log
        results[engine] = _normalise(log, [real])
    assert results["goalkeeper"] == results["nix"]


def test_background_process_of_the_build_user_is_killed_after_the_build(world):
    script = ("setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > $out")
    for engine in ("nix", "goalkeeper"):
        uri, real = world.store(engine, chroot=False)
        drv = world.instantiate(uri, SIMPLE, script=script, tag="bg")
        status, log = getattr(world, engine)(uri, world.options(world.group.name, "false"), drv)
        assert status == 0, log
        out = next(line for line in log.splitlines() if line.endswith("-simple-bg"))
        pid = int(Path(out).read_text())
        assert not _alive(pid), f"{engine} left the builder's background process {pid} running"


def _alive(pid: int) -> bool:
    """A process that is neither gone nor a zombie (its killer need not reap it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def test_hard_link_to_a_foreign_file_is_refused(world):
    """canonicalisePathMetaData with the build uid: "invalid ownership on file" (unsandboxed,
    where the builder can link a world-writable root file into its output)."""
    foreign = world.root / "foreign"
    foreign.write_text("root's\n")
    foreign.chmod(0o666)  # protected_hardlinks: a user may link what it can read and write
    errors = {}
    for engine in ("nix", "goalkeeper"):
        uri, real = world.store(engine, chroot=False)
        drv = world.instantiate(uri, SIMPLE, script=f"mkdir $out; ln {foreign} $out/foo", tag="ln")
        status, log = getattr(world, engine)(uri, world.options(world.group.name, "false"), drv)
        assert status == 1, log
        errors[engine] = [line for line in _normalise(log, [real]) if line.startswith("error:")]
    assert errors["goalkeeper"] == errors["nix"] == ["error: invalid ownership on file '<store>/<hash>-simple-ln/foo'"]


@pytest.mark.parametrize("which", ["missing", "empty"])
def test_bad_group_errors(world, which):
    group = "gk-no-such-group" if which == "missing" else world.group.empty
    seen = {}
    for engine in ("nix", "goalkeeper"):
        uri, real = world.store(engine, chroot=False)
        drv = world.instantiate(uri, SIMPLE, script="touch $out", tag="bad")
        status, log = getattr(world, engine)(uri, world.options(group, "false"), drv)
        seen[engine] = (status, [line for line in _normalise(log, [real]) if "error" in line])
    assert seen["goalkeeper"] == seen["nix"]
    expected = (f"error: the group '{group}' specified in 'build-users-group' does not exist" if which == "missing"
                else f"error: the build users group '{group}' has no members")
    assert seen["nix"][0] == 1 and expected in seen["nix"][1]


@pytest.mark.parametrize("sandbox", ["false", "true"])
def test_builder_can_reopen_its_own_stderr(world, sandbox):
    """Nix gives the pty slave to the build user (chmod 0600, chown uid:0), so a builder may
    reopen /dev/stderr; root's, it could not (EACCES)."""
    script = "echo via-dev-stderr > /dev/stderr; stat -L -c 'slave %u %a' /dev/stderr; touch $out"
    seen = {}
    for engine in ("nix", "goalkeeper"):
        uri, real = world.store(engine, chroot=sandbox == "true")
        drv = world.instantiate(uri, SIMPLE, script=script, tag="reopen")
        status, log = getattr(world, engine)(uri, world.options(world.group.name, sandbox), drv)
        seen[engine] = (status, [line for line in log.splitlines() if line.startswith(("via-", "slave ", "sh:"))])
    # Sandboxed, the build user is uid 1000 inside its user namespace.
    owner = 1000 if sandbox == "true" else world.group.uid(world.group.members[0])
    assert seen["nix"] == (0, ["via-dev-stderr", f"slave {owner} 600"])
    assert seen["goalkeeper"] == seen["nix"]


# -- the spawner's fast path for an unsandboxed build user's build ----------------------------

CRED_PROBE = (b"id -u; id -g; id -G; grep -E '^(SigBlk|SigIgn|SigCgt|NoNewPrivs):' /proc/self/status; "
              b"set -- $(cat /proc/$$/stat); [ $1 = $6 ] && echo session; "
              b"echo x > /dev/stderr; ls /proc/self/fd")


def _member_spec(group: BuildGroup, script: bytes):
    from goalkeeper.sandbox.seccomp import nix_policy
    from goalkeeper.sandbox.spec import BuildSpec, Credentials

    user = group.members[0]
    uid, gid = group.uid(user), group.gid
    return BuildSpec(builder=b"/bin/sh", argv=(b"sh", b"-c", script), env=((b"PATH", b"/usr/bin:/bin"),),
                     build_dir="/", build_dir_in_sandbox="/", cwd="/", seccomp=nix_policy(required=False),
                     credentials=Credentials(uid=uid, gid=gid, supplementary_gids=tuple(os.getgrouplist(user, gid))),
                     pty_owner=uid)


def _events(spawner, build_id: int) -> dict:
    """Every event of the build by type name, and its output."""
    from goalkeeper.sandbox.messages import Exited

    seen = {}
    while "Exited" not in seen:
        for event in spawner.wait_event(20):
            seen[type(event).__name__] = event
    master = seen["Spawned"].pty_master
    out = bytearray()
    try:
        while chunk := os.read(master, 4096):
            out += chunk
    except OSError:  # EIO: every slave closed
        pass
    os.close(master)
    seen["output"] = bytes(out)
    assert isinstance(seen["Exited"], Exited)
    return seen


def test_an_unsandboxed_build_user_build_launches_directly_as_a_forked_child_would(build_group):
    """Launched through subprocess (setgroups, setgid, setuid, then exec) by a spawner with a
    launch profile: the builder sees what a forked child's builder sees."""
    from goalkeeper.sandbox.process import Spawner
    from goalkeeper.sandbox.seccomp import nix_policy
    from goalkeeper.sandbox.spec import LaunchProfile

    spec = _member_spec(build_group, CRED_PROBE)
    seen = {}
    for name, profile in (("direct", LaunchProfile(seccomp=nix_policy(required=False))), ("forked", None)):
        with Spawner(profile) as spawner:
            spawner.spawn(1, spec)
            seen[name] = _events(spawner, 1)
    direct, forked = seen["direct"], seen["forked"]
    assert direct["Started"].setup_ns == 0 and forked["Started"].setup_ns > 0  # the paths taken
    assert direct["Exited"].result.exit_status == forked["Exited"].result.exit_status == 0
    assert direct["output"] == forked["output"]
    uid, gid = build_group.uid(build_group.members[0]), build_group.gid
    assert direct["output"].startswith(f"{uid}\n{gid}\n".encode()) and b"\nsession\nx\n" in direct["output"]


def test_a_directly_launched_build_user_builder_dies_with_its_spawner(build_group):
    """The uid change clears PR_SET_PDEATHSIG; it is set again before exec, so a spawner
    SIGKILLed (no _kill_all, no engine to clean up) still takes the builder with it."""
    from goalkeeper.sandbox.process import Spawner
    from goalkeeper.sandbox.seccomp import nix_policy
    from goalkeeper.sandbox.spec import LaunchProfile

    spawner = Spawner(LaunchProfile(seccomp=nix_policy(required=False)))
    spawner.start()
    try:
        spawner.spawn(1, _member_spec(build_group, b"echo $$; exec sleep 60"))
        events = {}
        while "Started" not in events:
            for event in spawner.wait_event(20):
                events[type(event).__name__] = event
        assert events["Started"].setup_ns == 0
        master = events["Spawned"].pty_master
        line = b""
        while not line.endswith(b"\n"):
            line += os.read(master, 64)
        os.close(master)
        pid = int(line)
        os.kill(spawner.pid, 9)
    finally:
        spawner.stop()
    assert not _alive(pid), "the builder outlived its SIGKILLed spawner"
