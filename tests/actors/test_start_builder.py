"""start_builder: the build directory, environment, scratch paths and rewrites of Nix 2.8's
startBuilder, and (with real Nix) the very same view of the world for an unsandboxed builder."""

from __future__ import annotations

import os
import queue
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from goalkeeper.actors import deferred_delete
from goalkeeper.actors.build_runner import BuildRunner
from goalkeeper.actors.derivation_goal_state import (BuildExited, BuildMode, BuildStarted, KnownOutput,
                                                     PathStatus)
from goalkeeper.actors.user_lock import BuildUser
from goalkeeper.actors.start_builder import (BuildSetupError, delete_build_dir, make_fallback_path,
                                             start_builder, structured_attrs_shell)
from goalkeeper.sandbox.spec import ADDR_NO_RANDOMIZE, BindMount
from goalkeeper.store.derivation import CAFixed, Derivation, InputAddressed, hash_placeholder, write_derivation
from goalkeeper.store.hashes import sha256
from goalkeeper.store.derivation_hash import fill_in_outputs
from goalkeeper.store.local import LocalStore
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

DATA = Path(__file__).parents[1] / "data" / "builder"
SYSTEM = Settings().system
pytestmark = pytest.mark.timeout(30)


class Env:
    """A local store whose logical and real store dirs are the same (so sandbox = false is
    really unsandboxed, as for Nix), and TMPDIR under tmp_path."""

    def __init__(self, tmp_path: Path, uri: str | None = None, **overrides: str):
        self.root = tmp_path / "s"
        for d in ("store", "var/nix", "var/log/nix"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        self.uri = uri or f"local?store={self.root}/store&state={self.root}/var/nix&log={self.root}/var/log/nix"
        options = {"build-users-group": "", "sandbox": "false", "substituters": "", **overrides}
        self.options = [x for kv in options.items() for x in ("--option", *kv)]
        self.settings = Settings.load(overrides=list(options.items()))
        self.store = LocalStore.open(parse_store_uri(self.uri), self.settings)

    def drv(self, name: str, script: str = "echo x > $out", *, outputs=("out",), **env: str) -> tuple[Derivation, StorePath]:
        d = Derivation(name=name, outputs={o: InputAddressed(_DUMMY) for o in outputs}, platform=SYSTEM,
                       builder="/bin/sh", args=("-c", script),
                       env={"name": name, "builder": "/bin/sh", "system": SYSTEM, **env})
        d = fill_in_outputs(self.store.store_dir, d, self.store.read_derivation)
        return d, write_derivation(self.store, d)

    def plan(self, drv: Derivation, drv_path: StorePath, status=PathStatus.ABSENT, mode=BuildMode.Normal,
             initial=None, inputs=frozenset(), build_user=None):
        if initial is None:
            initial = {o: KnownOutput(path, status)
                       for o, (_, path) in drv.outputs_and_opt_paths(self.store.store_dir).items()}
        return start_builder(self.store, self.settings, drv=drv, drv_path=drv_path, initial_outputs=initial,
                             build_mode=mode, input_paths=inputs, build_user=build_user)


_DUMMY = StorePath("0" * 32 + "-dummy")


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = Env(tmp_path)
    monkeypatch.setenv("TMPDIR", str(e.tmpdir))
    yield e
    e.store.close()


def test_environment_and_build_dir_as_init_env(env):
    drv, drv_path = env.drv("hello", passAsFile="big", big=f"at {hash_placeholder('out')}/x")
    plan = env.plan(drv, drv_path)
    out = env.store.print(drv.outputs["out"].path)
    build_dir = f"{env.tmpdir}/nix-build-hello.drv-0"
    assert plan.build_dir == build_dir and not plan.use_chroot and plan.chroot_root is None
    assert stat.S_IMODE(os.stat(build_dir).st_mode) == 0o700
    attr = ".attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a"  # seen under Nix
    assert dict(plan.spec.env) == {
        b"HOME": b"/homeless-shelter", b"NIX_BUILD_CORES": str(env.settings.cores).encode(),
        b"NIX_BUILD_TOP": build_dir.encode(), b"NIX_LOG_FD": b"2", b"NIX_STORE": env.store.store_dir.path.encode(),
        b"PATH": b"/path-not-set", b"PWD": build_dir.encode(), b"TEMP": build_dir.encode(),
        b"TEMPDIR": build_dir.encode(), b"TMP": build_dir.encode(), b"TMPDIR": build_dir.encode(),
        b"TERM": b"xterm-256color", b"bigPath": f"{build_dir}/{attr}".encode(), b"builder": b"/bin/sh",
        b"name": b"hello", b"out": out.encode(), b"passAsFile": b"big", b"system": SYSTEM.encode()}
    assert [k for k, _ in plan.spec.env] == sorted(k for k, _ in plan.spec.env)
    assert Path(build_dir, attr).read_bytes() == f"at {out}/x".encode()  # placeholder rewritten
    assert stat.S_IMODE(os.stat(Path(build_dir, attr)).st_mode) == 0o644
    spec = plan.spec
    assert (spec.builder, spec.argv, spec.cwd) == (b"/bin/sh", (b"sh", b"-c", b"echo x > $out"), build_dir)
    assert spec.sandbox is None and spec.credentials is None
    assert spec.personality_or == ADDR_NO_RANDOMIZE and spec.seccomp is not None and not spec.seccomp.required
    # createTempDir counts up past directories that exist
    assert env.plan(drv, drv_path).build_dir == f"{env.tmpdir}/nix-build-hello.drv-1"


def test_fallback_path_matches_nix():
    # Nix 2.8 built ca.drv's floating output at this scratch path (spec §2.7).
    store_dir = StoreDir("/nix/store")
    drv_path = StorePath("l0rmpk482f2kbf3r6b1plhx1gkfzpjd7-ca.drv")
    assert make_fallback_path(store_dir, drv_path, "ca", output_name="out").base == \
        "k54g8hr5nkhacl6zg5klqshhk1wzrpah-ca"


@pytest.mark.parametrize("status, mode, sandboxed, redirected", [
    (PathStatus.ABSENT, BuildMode.Normal, False, False),  # nothing there: build in place
    (PathStatus.CORRUPT, BuildMode.Normal, False, False),  # deleted before the build: in place
    (PathStatus.VALID, BuildMode.Check, True, False),  # the sandbox can always use the real path
    (PathStatus.VALID, BuildMode.Check, False, True),  # valid and visible: build beside it
    (PathStatus.CORRUPT, BuildMode.Repair, False, True),  # repairing keeps the corrupt one until done
])
def test_scratch_path_rule(env, status, mode, sandboxed, redirected):
    if sandboxed:
        env.settings.set("sandbox", "true")
    drv, drv_path = env.drv("scratch", "echo $out", outputs=("out", "dev"), ref=hash_placeholder("dev"))
    final = drv.outputs["out"].path
    plan = env.plan(drv, drv_path, status=status, mode=mode)
    scratch = plan.scratch_outputs["out"]
    env_map = dict(plan.spec.env)
    if not redirected:
        assert scratch == final and plan.redirected_outputs == {}
        assert plan.input_rewrites[hash_placeholder("out")] == env.store.print(final)
        assert env_map[b"out"] == env.store.print(final).encode()
    else:
        expected = make_fallback_path(env.store.store_dir, drv_path, "scratch", path=final)
        assert scratch == expected and scratch.name == final.name
        dev = drv.outputs["dev"].path
        assert plan.redirected_outputs == {final: scratch, dev: plan.scratch_outputs["dev"]}
        assert plan.input_rewrites == dict(sorted({
            hash_placeholder("out"): env.store.print(scratch), final.hash_part: scratch.hash_part,
            hash_placeholder("dev"): env.store.print(plan.scratch_outputs["dev"]),
            dev.hash_part: plan.scratch_outputs["dev"].hash_part}.items()))
        assert list(plan.input_rewrites) == sorted(plan.input_rewrites)  # std::map order
        # the builder sees the scratch paths, through the hash rewrite
        assert env_map[b"out"] == env.store.print(scratch).encode()
        assert env_map[b"ref"] == env.store.print(plan.scratch_outputs["dev"]).encode()
    delete_build_dir(plan, keep=False)


def test_unknown_output_is_built_at_its_fallback_path(env):
    drv, drv_path = env.drv("floating", "echo $out", x=hash_placeholder("out"))
    plan = env.plan(drv, drv_path, initial={"out": None})
    expected = make_fallback_path(env.store.store_dir, drv_path, "floating", output_name="out")
    assert plan.scratch_outputs == {"out": expected} and plan.redirected_outputs == {}
    assert dict(plan.spec.env)[b"x"] == env.store.print(expected).encode()
    assert plan.input_rewrites == {hash_placeholder("out"): env.store.print(expected)}


def test_fixed_output_gets_impure_env_vars_from_the_caller(env, monkeypatch):
    monkeypatch.setenv("FOO", "from caller")
    monkeypatch.delenv("http_proxy", raising=False)
    d = Derivation(name="fetch", outputs={"out": CAFixed("flat", sha256(b"x"))}, platform=SYSTEM,
                   builder="/bin/sh", env={"impureEnvVars": "FOO http_proxy", "FOO": "from drv"})
    d = fill_in_outputs(env.store.store_dir, d, env.store.read_derivation)
    drv_path = write_derivation(env.store, d)
    env.settings.set("sandbox", "relaxed")  # fixed outputs are not sandboxed when relaxed
    plan = env.plan(d, drv_path)
    env_map = dict(plan.spec.env)
    assert not plan.use_chroot
    assert (env_map[b"FOO"], env_map[b"http_proxy"], env_map[b"NIX_OUTPUT_CHECKED"]) == (b"from caller", b"", b"1")
    env.settings.set("sandbox", "true")  # ...but are with true, keeping the network
    plan = env.plan(d, drv_path)
    assert plan.use_chroot and not plan.spec.sandbox.private_network
    delete_build_dir(plan, keep=False)


def test_args_are_rewritten_and_argv0_is_the_builders_base_name(env):
    drv, drv_path = env.drv("args", f"echo {hash_placeholder('out')}")
    plan = env.plan(drv, drv_path, status=PathStatus.VALID)
    scratch = env.store.print(plan.scratch_outputs["out"])
    assert plan.spec.argv == (b"sh", b"-c", f"echo {scratch}".encode())
    assert plan.spec.builder == b"/bin/sh"  # never rewritten


def test_build_dir_is_deleted_or_kept_with_nixs_note(env):
    drv, drv_path = env.drv("keep")
    plan = env.plan(drv, drv_path)
    assert delete_build_dir(plan, keep=False) is None and not os.path.exists(plan.build_dir)
    plan = env.plan(drv, drv_path)
    Path(plan.build_dir, "sub").mkdir(mode=0o500)  # read-only leftovers are removed too
    note = delete_build_dir(plan, keep=True)
    assert note == f"note: keeping build directory '{plan.build_dir}'"
    assert stat.S_IMODE(os.stat(plan.build_dir).st_mode) == 0o755
    assert delete_build_dir(plan, keep=False) is None and not os.path.exists(plan.build_dir)
    # The trees went to a trash directory beside them and were deleted in the background;
    # once that is done, nothing of them (nor the trash directory) is left.
    deferred_delete.drain()
    assert os.listdir(env.tmpdir) == []


def test_a_discarded_tree_is_deleted_or_never_lost(tmp_path):
    tree = tmp_path / "tree"
    (tree / "ro").mkdir(parents=True)
    (tree / "ro" / "f").write_text("x")
    (tree / "ro").chmod(0o500)
    deferred_delete.discard(str(tree))
    assert not tree.exists()
    deferred_delete.discard(str(tmp_path / "absent"))  # nothing to do
    deferred_delete.drain()
    assert os.listdir(tmp_path) == []
    # Its trash directory removed behind its back (a garbage collector): made again.
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        deferred_delete.discard(str(tmp_path / str(i)))
        for trash in tmp_path.glob(".goalkeeper-trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
    deferred_delete.drain()
    assert os.listdir(tmp_path) == []


def test_setup_errors_carry_nixs_messages_and_leave_nothing_behind(env):
    drv, drv_path = env.drv("nochroot", __noChroot="1")
    env.settings.set("sandbox", "true")
    with pytest.raises(BuildSetupError) as e:
        env.plan(drv, drv_path)
    assert e.value.message == (f"derivation '{env.store.print(drv_path)}' has '__noChroot' set, "
                               "but that's not allowed when 'sandbox' is 'true'")
    env.settings.set("sandbox", "relaxed")
    assert not env.plan(drv, drv_path).use_chroot  # relaxed: __noChroot is honoured
    env.settings.set("sandbox", "false")
    drv, drv_path = env.drv("odd", exportReferencesGraph="refs")
    with pytest.raises(BuildSetupError) as e:
        env.plan(drv, drv_path)
    assert e.value.message == "odd number of tokens in 'exportReferencesGraph': 'refs'"
    assert e.value.is_build_error
    assert sorted(os.listdir(env.tmpdir)) == ["nix-build-nochroot.drv-0"]  # only the relaxed one
    # structured attrs: each key is exported (prepareStructuredAttrs), only from the input closure
    drv, drv_path = env.drv("not-string", __json='{"exportReferencesGraph": {"g": [1]}}')
    with pytest.raises(BuildSetupError) as e:
        env.plan(drv, drv_path)
    assert e.value.message == "[json.exception.type_error.302] type must be string, but is number"
    outside = env.store.print(drv_path)
    drv, drv_path = env.drv("not-input", __json='{"exportReferencesGraph": {"g": ["%s"]}}' % outside)
    with pytest.raises(BuildSetupError) as e:
        env.plan(drv, drv_path)
    assert e.value.message == (f"cannot export references of path '{outside}' because it is "
                               "not in the input closure of the derivation")


def test_platform_and_features_are_checked(env):
    d = Derivation(name="arm", outputs={"out": InputAddressed(_DUMMY)}, platform="aarch64-darwin",
                   builder="/bin/sh", env={"requiredSystemFeatures": "kvm-x big-parallel"})
    d = fill_in_outputs(env.store.store_dir, d, env.store.read_derivation)
    drv_path = write_derivation(env.store, d)
    with pytest.raises(BuildSetupError) as e:
        env.plan(d, drv_path)
    features = ", ".join(sorted(env.settings.system_features))
    assert e.value.message == (f"a 'aarch64-darwin' with features {{big-parallel, kvm-x}} is required to build "
                               f"'{env.store.print(drv_path)}', but I am a '{SYSTEM}' with features {{{features}}}")
    assert not e.value.is_build_error


def test_structured_attrs_shell_as_nix_writes_it():
    attrs = {"str": "it's", "int": 42, "float": 1.5, "whole": 2.0, "yes": True, "no": False, "nothing": None,
             "list": ["a", 1, True], "nested": [[1]], "obj": {"b": "x", "a": 2}, "bad-name": "x"}
    assert structured_attrs_shell(attrs) == (
        "declare int=42\ndeclare -a list=('a' 1 1 )\ndeclare no=\ndeclare nothing=''\n"
        "declare -A obj=(['a']=2 ['b']='x' )\ndeclare str='it'\\''s'\ndeclare whole=2\ndeclare yes=1\n")


def test_sandboxed_plan_binds_inputs_and_links_files(env):
    env.settings.set("sandbox", "true")
    env.settings.set("sandbox-paths", "/bin /usr")
    src = env.store.add_text_to_store("input-file", b"contents", [])
    drv, drv_path = env.drv("boxed", f"cat {env.store.print(src)}")
    out_dir = env.store.real_path(drv.outputs["out"].path)
    plan = env.plan(drv, drv_path, inputs=frozenset([src]))
    assert plan.use_chroot and plan.chroot_root == env.store.real_path(drv_path) + ".chroot"
    env_map = dict(plan.spec.env)
    assert env_map[b"NIX_BUILD_TOP"] == env_map[b"PWD"] == b"/build" and plan.spec.cwd == "/build"
    assert plan.spec.build_dir == plan.build_dir and plan.spec.build_dir_in_sandbox == "/build"
    assert (plan.spec.credentials.uid, plan.spec.credentials.gid) == (1000, 100)
    # a non-directory input is hard-linked into the chroot's store
    linked = Path(plan.chroot_root + env.store.print(src))
    assert linked.read_bytes() == b"contents"
    assert os.stat(linked).st_ino == os.stat(env.store.real_path(src)).st_ino
    binds = {m.target: m.source for m in plan.spec.sandbox.mounts if isinstance(m, BindMount)}
    assert binds[plan.chroot_root + "/build"] == plan.build_dir
    assert binds[plan.chroot_root + "/bin"] == "/bin"
    assert plan.chroot_root + out_dir not in binds
    delete_build_dir(plan, keep=False)
    assert not os.path.exists(plan.chroot_root) and not os.path.exists(plan.build_dir)


# uids no account uses: chown needs none
USER = BuildUser(user="bu1", uid=64123, gid=64100, supplementary_gids=(64123, 64100, 64200))
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="chown to a build user needs root")


def _owner(path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@needs_root
def test_build_user_owns_the_build_dir_and_runs_the_builder(env):
    drv, drv_path = env.drv("as-user", passAsFile="big", big="data", exportReferencesGraph="")
    plan = env.plan(drv, drv_path, build_user=USER)
    assert plan.build_user == USER
    assert _owner(plan.build_dir) == (USER.uid, USER.gid, 0o700)  # chownToBuilder(tmpDir)
    attr = ".attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a"
    assert _owner(Path(plan.build_dir, attr)) == (USER.uid, USER.gid, 0o644)  # and each passAsFile file
    creds = plan.spec.credentials
    assert (creds.uid, creds.gid, creds.supplementary_gids) == (USER.uid, USER.gid, USER.supplementary_gids)
    assert plan.spec.seccomp.required  # Nix ignores a filter failing to load only without a build user
    delete_build_dir(plan, keep=False)


@needs_root
def test_build_user_owns_structured_attrs_files(env):
    drv, drv_path = env.drv("attrs", __json='{"a": 1}')
    plan = env.plan(drv, drv_path, build_user=USER)
    for name in (".attrs.json", ".attrs.sh"):
        assert _owner(Path(plan.build_dir, name))[:2] == (USER.uid, USER.gid)
    delete_build_dir(plan, keep=False)


@needs_root
@pytest.mark.parametrize("hook", [False, True])
def test_build_user_sandbox_chroot_and_id_maps(env, tmp_path, hook):
    env.settings.set("sandbox", "true")
    env.settings.set("sandbox-paths", "/bin /usr")
    if hook:  # the chroot made in place, not from a skeleton
        script = tmp_path / "hook.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        env.settings.set("pre-build-hook", str(script))
    drv, drv_path = env.drv("boxed-user")
    plan = env.plan(drv, drv_path, build_user=USER)
    sandbox = plan.spec.sandbox
    assert (sandbox.uid_map.inside, sandbox.uid_map.outside) == (1000, USER.uid)
    assert (sandbox.gid_map.inside, sandbox.gid_map.outside) == (100, USER.gid)
    creds = plan.spec.credentials
    assert (creds.uid, creds.gid, creds.supplementary_gids) == (1000, 100, None)
    assert _owner(plan.chroot_root) == (0, USER.gid, 0o750)
    assert _owner(plan.chroot_root + env.store.store_dir.path) == (0, USER.gid, 0o1775)
    assert _owner(plan.build_dir)[:2] == (USER.uid, USER.gid)
    delete_build_dir(plan, keep=False)


def test_a_diverted_store_always_builds_in_a_chroot(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    e = Env(tmp_path, uri=str(tmp_path / "chroot"))
    try:
        drv, drv_path = e.drv("diverted")
        plan = e.plan(drv, drv_path)
        assert plan.use_chroot and plan.spec.sandbox is not None  # sandbox = false notwithstanding
        assert plan.chroot_root == f"{tmp_path}/chroot/nix/store/{drv_path.base}.chroot"
        delete_build_dir(plan, keep=False)
    finally:
        e.store.close()


# -- against real Nix --------------------------------------------------------------------------


def _between(lines: list[str], first: str, last: str) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i, line in enumerate(lines) if line.startswith(last))
    return lines[start:end + 1]


def _user_namespaces() -> bool:
    probe = ("from goalkeeper.sandbox import _linux; "
             "_linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS | _linux.CLONE_NEWPID)")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.nix
@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("nix-store") is None, reason="no nix-store")
@pytest.mark.parametrize("store_kind", ["local", "chroot"])
@pytest.mark.parametrize("attr, first", [("plain", "== argv0"), ("structured", "== env")])
def test_builder_sees_what_it_sees_under_nix(tmp_path, monkeypatch, attr, first, store_kind):
    """The same derivation built by goalkeeper and by real nix-store -r (sandbox = false, the
    same TMPDIR, one after the other): the builder's log must be identical, line for line.

    In a local store whose files are at their logical paths that build is unsandboxed; in a
    chroot store (files elsewhere) Nix sandboxes it all the same, and so do we.
    """
    if store_kind == "chroot":
        if not _user_namespaces():
            pytest.skip("no user namespaces here")
        e = Env(tmp_path, uri=str(tmp_path / "chroot"), **{"sandbox-paths": "/bin /lib /lib64 /usr"})
    else:
        e = Env(tmp_path)
    monkeypatch.setenv("TMPDIR", str(e.tmpdir))
    nix_env = {**os.environ, "TMPDIR": str(e.tmpdir), "TERM": "dumb-caller"}
    drv_text = subprocess.run(["nix-instantiate", "--store", e.uri, str(DATA / "dump.nix"), "-A", attr],
                              check=True, capture_output=True, text=True).stdout.strip()
    store = e.store
    drv_path = store.store_dir.parse(drv_text)
    drv = store.read_derivation(drv_path)
    initial = {o: KnownOutput(out.path, PathStatus.ABSENT) for o, out in drv.outputs.items()}
    plan = start_builder(store, e.settings, drv=drv, drv_path=drv_path, initial_outputs=initial,
                         build_mode=BuildMode.Normal, input_paths=frozenset(store.compute_fs_closure(drv.input_srcs)))
    assert plan.use_chroot == (store_kind == "chroot")
    lines: list[str] = []
    events: queue.Queue = queue.Queue()
    runner = BuildRunner(log_dir=store.config.log_dir, settings=e.settings,
                         on_log_line=lambda _, line: lines.append(line))
    runner.start()
    try:
        runner.run_build(drv_path=drv_path, printed_drv_path=drv_text, spec=plan.spec, reply=events.put)
        assert isinstance(events.get(timeout=20), BuildStarted)
        assert isinstance(events.get(timeout=20), BuildExited)
    finally:
        runner.stop()
    delete_build_dir(plan, keep=False)
    for out in drv.outputs.values():  # unregistered leftovers; Nix would delete them too
        if os.path.exists(store.real_path(out.path)):
            os.unlink(store.real_path(out.path))
    store.close()

    nix = subprocess.run(["nix-store", "--store", e.uri, *e.options, "-r", drv_text],
                         capture_output=True, text=True, env=nix_env)
    nix_lines = nix.stderr.split("\n")
    assert _between(lines, first, "== end") == _between(nix_lines, first, "== end")
    assert any(line.startswith("declare -A outputs=") for line in lines) or attr == "plain"
