"""registerOutputs on real outputs in a scratch store, compared with what real Nix 2.8 registers.

The derivations of tests/data/outputs/outputs.nix are built once per module by real Nix
in a chroot store. Each test lays the same output contents (as the builder would have
written them, under the scratch path) into a goalkeeper chroot store with the same
logical store dir, runs `register_outputs`, and compares the registered infos (path,
narHash, narSize, references, ca, deriver) or the error text with Nix's.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from goalkeeper.actors.derivation_goal_state import BuildMode, KnownOutput, PathStatus
from goalkeeper.actors.register_outputs import register_outputs
from goalkeeper.actors.results import FailureKind
from goalkeeper.store.canonicalise import canonicalise_path_metadata
from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.derivation import Derivation, output_path
from goalkeeper.store.derivation_hash import static_output_hashes
from goalkeeper.store.hashes import Hash
from goalkeeper.store.local import LocalStore
from goalkeeper.store import nar as nar_module
from goalkeeper.store.nar import delete_path, dump_path, restore_path
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.parsed_derivation import BadDerivationAttr
from goalkeeper.store.paths import StorePath, output_path_name
from goalkeeper.store.references import rewrite_strings
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

NIX_FILE = Path(__file__).parents[1] / "data" / "outputs" / "outputs.nix"
FEATURES = ["--option", "extra-experimental-features", "ca-derivations nix-command"]
BUILD_OPTS = ["--option", "sandbox", "false", "--option", "build-users-group", "", "--option", "substituters", "",
              "--option", "sandbox-paths", "/bin /lib /lib64 /usr", *FEATURES]
GOOD = ("self", "multi", "flat", "rec-sha256", "rec-sha1", "dep", "nondet", "ca")
BAD = ("cycle", "missing", "mismatch", "flat-exec", "fod-self", "allowed", "requisites", "maxsize", "closure",
       "illegal", "badattr", "badsize")
LEAKY = ("NIX_REMOTE", "NIX_CONFIG", "NIX_STORE_DIR", "NIX_STORE", "NIX_STATE_DIR", "NIX_LOG_DIR",
         "NIX_CONF_DIR", "NIX_DAEMON_SOCKET_PATH")

pytestmark = pytest.mark.skipif(shutil.which("nix-store") is None, reason="real Nix not installed")


# -- real Nix, once per module -----------------------------------------------------------------


@dataclass
class NixRun:
    root: Path  # chroot store: files under root/nix/store
    drvs: dict[str, str]  # attribute -> printed drv path
    infos: dict[str, dict]  # printed path -> `nix path-info --json` entry
    errors: dict[str, str]  # attribute (or check run) -> the message after "error: "
    realisations: dict[tuple[str, str], str] = field(default_factory=dict)  # (drv hash, output) -> path

    def real(self, printed: str) -> str:
        return f"{self.root}{printed}"


def _nix_error(stderr: str) -> str:
    """The first `error:` message, with the logger's continuation indent (len("error: ")) removed."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    message = [lines[start][len("error: "):]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 7):
            break
        message.append(line[7:])
    return "\n".join(message)


@pytest.fixture(scope="module")
def nix(tmp_path_factory) -> NixRun:
    root = tmp_path_factory.mktemp("nix")
    (root / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.update(NIX_USER_CONF_FILES="", TMPDIR=str(root / "tmp"))

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail(f"{argv} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    store = ["--store", str(root)]
    drvs = json.loads(run("nix-instantiate", *store, *FEATURES, "--eval", "--read-write-mode", "--strict", "--json",
                          "-E", f"builtins.mapAttrs (n: v: v.drvPath) (import {NIX_FILE})").stdout)
    run("nix-store", *store, *BUILD_OPTS, "-r", *(drvs[a] for a in GOOD))
    errors = {a: _nix_error(run("nix-store", *store, *BUILD_OPTS, "-r", drvs[a], check=False).stderr) for a in BAD}
    errors["check"] = _nix_error(run("nix-store", *store, *BUILD_OPTS, "-r", "--check", drvs["nondet"],
                                     check=False).stderr)
    errors["check-keep"] = _nix_error(run("nix-store", *store, *BUILD_OPTS, "--option", "keep-failed", "true",
                                          "-r", "--check", drvs["nondet"], check=False).stderr)
    infos = {i["path"]: i for i in json.loads(run("nix", "path-info", *store, *FEATURES, "--json", "--all").stdout)}
    db = sqlite3.connect(f"file:{root}/nix/var/nix/db/db.sqlite?mode=ro", uri=True)
    rows = db.execute("select r.drvPath, r.outputName, v.path from Realisations r "
                      "join ValidPaths v on r.outputPath = v.id").fetchall()
    db.close()
    return NixRun(root, drvs, infos, errors, {(h, o): p for h, o, p in rows})


# -- goalkeeper side -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The fields of start_builder.BuildPlan that register_outputs reads."""

    drv_path: StorePath
    build_dir: str
    chroot_root: str | None
    use_chroot: bool
    scratch_outputs: dict[str, StorePath]
    input_rewrites: dict[str, str]
    redirected_outputs: dict[StorePath, StorePath]
    build_user: object = None  # user_lock.BuildUser


@dataclass
class Run:
    outcome: object
    plan: Plan
    registered_realisations: list


class Harness:
    def __init__(self, store: LocalStore, nix: NixRun, tmp_path: Path):
        self.store, self.nix, self.tmp_path = store, nix, tmp_path
        self.sd = store.store_dir

    def read_drv(self, path: StorePath) -> Derivation:
        text = Path(self.nix.real(self.sd.print(path))).read_text()
        return Derivation.parse(text, path.derivation_name(), self.sd)

    def drv(self, attr: str) -> tuple[StorePath, Derivation]:
        path = self.sd.parse(self.nix.drvs[attr])
        return path, self.read_drv(path)

    def outputs(self, attr: str) -> dict[str, StorePath | None]:
        _, drv = self.drv(attr)
        return {n: output_path(o, self.sd, drv.name, n) for n, o in drv.outputs.items()}

    def fallback(self, drv_path: StorePath, drv: Derivation, name: str, final: StorePath | None) -> StorePath:
        """Nix's makeFallbackPath (the scratch path of a hidden or not yet known output)."""
        what = f"{drv_path.base}:{final.base}" if final else f"{drv_path.base}:name:{name}"
        return self.sd.make_store_path(f"rewrite:{what}", Hash("sha256", bytes(32)),
                                       final.name if final else output_path_name(drv.name, name))

    def import_closure(self, printed: list[str], *, ultimate: bool | None = None) -> set[StorePath]:
        """Copy paths (with their closure) from Nix's store into ours and register them as Nix has them."""
        todo, seen = list(printed), []
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.append(p)
                todo.extend(r for r in self.nix.infos[p]["references"] if r != p)
        infos = []
        for p in seen:
            if self.store.is_valid_path(self.sd.parse(p)):
                continue
            copy_tree(self.nix.real(p), self.store.to_real_path(p))
            canonicalise_path_metadata(self.store.to_real_path(p))
            j = self.nix.infos[p]
            infos.append(ValidPathInfo(
                self.sd.parse(p), Hash.parse_any(j["narHash"]), j["narSize"],
                frozenset(self.sd.parse(r) for r in j["references"]),
                ultimate=j.get("ultimate", False) if ultimate is None else ultimate,
                ca=ContentAddress.parse(j["ca"]) if "ca" in j else None))
        self.store.register_valid_paths(infos)
        return {self.sd.parse(p) for p in seen}

    def inputs(self, drv: Derivation) -> frozenset[StorePath]:
        wanted = [self.sd.print(p) for p in drv.input_srcs]
        for drv_path, names in drv.input_drvs.items():
            input_drv = self.read_drv(drv_path)
            wanted += [self.sd.print(output_path(input_drv.outputs[n], self.sd, input_drv.name, n)) for n in names]
        return frozenset(self.import_closure(wanted))

    def run(self, attr: str, *, contents: dict[str, object] | None = None, valid: tuple[str, ...] = (),
            corrupt: tuple[str, ...] = (), mode: BuildMode = BuildMode.Normal, chroot: bool = False,
            settings: Settings | None = None, build_user=None) -> Run:
        """Lay out the builder's outputs (Nix's, renamed to their scratch paths, unless `contents`
        says otherwise) and run register_outputs as the goal would."""
        drv_path, drv = self.drv(attr)
        inputs = self.inputs(drv)
        known: dict[str, KnownOutput | None] = {}
        scratch: dict[str, StorePath] = {}
        for name, final in self.outputs(attr).items():
            status = (PathStatus.VALID if name in valid else PathStatus.CORRUPT if name in corrupt
                      else PathStatus.ABSENT)
            known[name] = KnownOutput(final, status) if final else None
            hidden = final is None or (not chroot and status is not PathStatus.ABSENT)
            scratch[name] = self.fallback(drv_path, drv, name, final if final else None) if hidden else final
        chroot_root = f"{self.store.real_path(drv_path)}.chroot" if chroot else None
        plan = Plan(drv_path=drv_path, build_dir=str(self.tmp_path / "build"), chroot_root=chroot_root,
                    use_chroot=chroot, scratch_outputs=scratch, input_rewrites={},
                    redirected_outputs={known[n].path: s for n, s in scratch.items()
                                        if known[n] and known[n].path != s},
                    build_user=build_user)
        # What the builder wrote: every final hash part appears as the scratch one.
        rewrites = {self.sd.parse(self.nix_final(attr, n)).hash_part: s.hash_part for n, s in scratch.items()
                    if contents is None or n not in contents}
        for name, path in scratch.items():
            actual = (chroot_root + self.sd.print(path)) if chroot else self.store.real_path(path)
            os.makedirs(os.path.dirname(actual), exist_ok=True)
            content = contents.get(name, "nix") if contents is not None else "nix"
            if content == "nix":
                copy_tree(self.nix.real(self.nix_final(attr, name)), actual, rewrites)
            elif content is not None:
                write_tree(actual, content)
        registered: list = []
        outcome = register_outputs(
            self.store, settings or Settings(environ={}), drv=drv, drv_path=drv_path, plan=plan,
            initial_outputs=known, static_output_hashes=static_output_hashes(self.sd, drv, self.read_drv),
            input_paths=inputs, build_mode=mode, register=self.store.register_valid_paths,
            register_realisation=registered.append)
        return Run(outcome, plan, registered)

    def nix_final(self, attr: str, name: str) -> str:
        """The path Nix registered for an output (from its deriver and name)."""
        drv_printed = self.nix.drvs[attr]
        suffix = "" if name == "out" else f"-{name}"
        return next(p for p, i in self.nix.infos.items()
                    if i.get("deriver") == drv_printed and p.endswith(f"-{self.drv(attr)[1].name}{suffix}"))

    def assert_like_nix(self, info: ValidPathInfo, drv_attr: str) -> None:
        theirs = self.nix.infos[self.sd.print(info.path)]
        assert info.nar_hash.sri() == theirs["narHash"]
        assert info.nar_size == theirs["narSize"]
        assert sorted(self.sd.print_set(info.references)) == theirs["references"]
        assert (info.ca.render() if info.ca else None) == theirs.get("ca")
        assert self.sd.print(info.deriver) == theirs["deriver"] == self.nix.drvs[drv_attr]
        assert info.ultimate and theirs["ultimate"]
        assert info.registration_time > 0
        # ...and that is what the store now holds, with the files in place
        assert self.store.query_path_info(info.path).nar_hash == info.nar_hash
        assert os.path.exists(self.store.real_path(info.path))

    def normalise(self, message: str) -> str:
        """Our host paths written as Nix's (both stores have the logical dir /nix/store)."""
        return message.replace(self.store.config.real_store_dir, f"{self.nix.root}/nix/store")


def copy_tree(src: str, dst: str, rewrites: dict[str, str] | None = None) -> None:
    nar = b"".join(dump_path(src))
    restore_path(dst, io.BytesIO(rewrite_strings(nar, rewrites or {})))


def write_tree(path: str, content) -> None:
    """str/bytes: a file; dict: a directory; ("exec", text): an executable file."""
    if isinstance(content, dict):
        os.mkdir(path)
        for name, sub in content.items():
            write_tree(os.path.join(path, name), sub)
    elif isinstance(content, tuple):
        write_tree(path, content[1])
        os.chmod(path, 0o755)
    else:
        Path(path).write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.fixture
def h(chroot_store, nix, tmp_path):
    store = LocalStore.open(parse_store_uri(chroot_store.uri))
    yield Harness(store, nix, tmp_path)
    store.close()


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_input_addressed_output_referring_to_itself(h):
    run = h.run("self")
    out = run.outcome
    assert out.failure is None and out.message == ""
    (info,) = out.infos
    assert info.has_self_reference
    h.assert_like_nix(info, "self")
    assert out.built_outputs == {"out": info.path}
    assert run.registered_realisations == []  # ca-derivations is off


def assert_canonical(path: str) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.lstat(entry)
            assert st.st_mtime == 1, entry
            if not stat.S_ISLNK(st.st_mode):
                assert stat.S_IMODE(st.st_mode) in (0o444, 0o555), entry


@pytest.mark.timeout(60)
def test_an_output_written_at_its_final_path_is_read_once(h, monkeypatch):
    """The reference scan hashes the NAR too when nothing will rewrite it (as hashPath would)."""
    reads = []  # NARs of paths in our store (the harness reads Nix's store to lay out outputs)
    real_dump_pieces = nar_module._dump_pieces
    ours = h.store.config.real_store_dir

    def dump_pieces(path):
        if os.fsdecode(path).startswith(ours):
            reads.append(os.fsdecode(path))
        return real_dump_pieces(path)

    monkeypatch.setattr(nar_module, "_dump_pieces", dump_pieces)
    out = h.run("multi").outcome
    assert out.failure is None
    assert sorted(reads) == sorted(h.store.real_path(p) for p in out.built_outputs.values())
    for info in out.infos:
        h.assert_like_nix(info, "multi")
        assert_canonical(h.store.real_path(info.path))


@pytest.mark.timeout(30)
def test_outputs_are_registered_referenced_first(h):
    out = h.run("multi").outcome
    assert out.failure is None
    assert [i.path.name for i in out.infos] == ["multi-lib", "multi-dev", "multi"]
    for info in out.infos:
        h.assert_like_nix(info, "multi")


@pytest.mark.timeout(30)
def test_outputs_in_the_chroot_are_moved_over_a_stale_path(h):
    final = h.sd.parse(h.nix_final("multi", "lib"))
    write_tree(h.store.real_path(final), "stale\n")
    run = h.run("multi", chroot=True)
    assert len(run.outcome.infos) == 3
    for info in run.outcome.infos:
        h.assert_like_nix(info, "multi")
        assert not os.path.lexists(run.plan.chroot_root + h.sd.print(info.path))
    assert Path(h.store.real_path(final), "self").read_text() == h.sd.print(final) + "\n"


@pytest.mark.timeout(30)
def test_auto_optimise_store_links_the_new_outputs(h):
    settings = Settings(environ={})
    settings.set("auto-optimise-store", "true")
    (info,) = h.run("self", settings=settings).outcome.infos
    h.assert_like_nix(info, "self")
    assert os.stat(h.store.real_path(info.path)).st_nlink == 2  # the store path and .links/<hash>


@pytest.mark.timeout(30)
def test_repair_rewrites_the_fallback_path_and_replaces_the_corrupt_output(h):
    final = h.sd.parse(h.nix_final("self", "out"))
    write_tree(h.store.real_path(final), "corrupt\n")
    run = h.run("self", corrupt=("out",), mode=BuildMode.Repair)
    scratch = run.plan.scratch_outputs["out"]
    assert scratch != final
    (info,) = run.outcome.infos
    h.assert_like_nix(info, "self")
    assert_canonical(h.store.real_path(info.path))  # restored from the rewritten NAR, canonical again
    assert not os.path.lexists(h.store.real_path(scratch))
    assert not [n for n in os.listdir(h.store.config.real_store_dir) if ".old-" in n]


@pytest.mark.timeout(30)
def test_valid_outputs_are_left_alone_and_rewritten_into_the_others(h):
    h.import_closure([h.nix_final("multi", "dev")])
    run = h.run("multi", valid=("dev", "lib"))
    out = run.outcome
    assert out.failure is None
    (info,) = out.infos
    h.assert_like_nix(info, "multi")  # its refs file names dev's final path, not the fallback
    assert_canonical(h.store.real_path(info.path))
    assert {n: h.sd.print(p) for n, p in out.built_outputs.items()} == {
        n: h.nix_final("multi", n) for n in ("out", "dev", "lib")}
    for name in ("dev", "lib"):  # the unused redirected outputs are gone
        assert not os.path.lexists(h.store.real_path(run.plan.scratch_outputs[name]))


@pytest.mark.timeout(30)
def test_reference_cycle_between_outputs(h, nix):
    outputs = h.outputs("cycle")
    run = h.run("cycle", contents={"out": h.sd.print(outputs["dev"]), "dev": h.sd.print(outputs["out"])})
    assert run.outcome.failure is FailureKind.BUILD_ERROR
    assert run.outcome.message == nix.errors["cycle"]
    assert run.outcome.infos == () and not h.store.is_valid_path(outputs["out"])


@pytest.mark.timeout(30)
def test_missing_output(h, nix):
    out_path = h.sd.print(h.outputs("missing")["out"])
    run = h.run("missing", contents={"out": out_path + "\n", "dev": None}, chroot=True)
    assert run.outcome.failure is FailureKind.BUILD_ERROR
    assert h.normalise(run.outcome.message) == nix.errors["missing"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("attr", ["flat", "rec-sha256", "rec-sha1"])
def test_fixed_output(h, attr):
    out = h.run(attr).outcome
    assert out.failure is None
    (info,) = out.infos
    assert h.sd.print(info.path) == h.nix_final(attr, "out")
    h.assert_like_nix(info, attr)


@pytest.mark.timeout(30)
def test_hash_mismatch_registers_the_output_under_its_actual_hash(h, nix):
    specified = h.outputs("mismatch")["out"]
    run = h.run("mismatch", contents={"out": "got\n"})
    out = run.outcome
    assert out.failure is FailureKind.HASH_MISMATCH
    assert out.message == nix.errors["mismatch"]
    (info,) = out.infos
    assert info.path != specified and h.sd.print(info.path) == h.nix_final("mismatch", "out")
    h.assert_like_nix(info, "mismatch")
    assert not h.store.is_valid_path(specified)


@pytest.mark.timeout(30)
def test_flat_fixed_output_naming_itself(h, nix):
    specified = h.sd.print(h.outputs("fod-self")["out"])
    out = h.run("fod-self", contents={"out": specified + "\n"}).outcome
    assert out.failure is FailureKind.HASH_MISMATCH and out.message == nix.errors["fod-self"]
    h.assert_like_nix(out.infos[0], "fod-self")


@pytest.mark.timeout(30)
def test_flat_fixed_output_must_not_be_executable(h, nix):
    run = h.run("flat-exec", contents={"out": ("exec", "x\n")}, chroot=True)
    assert run.outcome.failure is FailureKind.BUILD_ERROR
    assert h.normalise(run.outcome.message) == nix.errors["flat-exec"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("attr", ["allowed", "requisites", "maxsize", "closure", "illegal"])
def test_output_checks(h, nix, attr):
    final = h.outputs(attr)["out"]
    content = {
        "allowed": lambda: f"{h.sd.print(final)} {h.sd.print(next(iter(h.drv(attr)[1].input_srcs)))}\n",
        "requisites": lambda: h.nix_final("dep", "out") + "\n",
        "maxsize": lambda: "more than sixteen bytes\n",
        "closure": lambda: h.nix_final("dep", "out") + "\n",
        "illegal": lambda: "\n",
    }[attr]()
    out = h.run(attr, contents={"out": content}).outcome
    assert out.failure is FailureKind.BUILD_ERROR
    assert out.message == nix.errors[attr]
    assert out.infos == () and not h.store.is_valid_path(final)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("attr", ["badattr", "badsize"])
def test_output_checks_of_the_wrong_type_are_an_error(h, nix, attr):
    # Nix throws a plain Error here, not a BuildError: it is not an output refusal
    with pytest.raises(BadDerivationAttr) as e:
        h.run(attr, contents={"out": "\n"})
    assert str(e.value) == nix.errors[attr]


def _check_setup(h, *, ultimate: bool = True) -> StorePath:
    """nondet's output (Nix's) valid in our store, for --check runs."""
    final = h.nix_final("nondet", "out")
    h.import_closure([final], ultimate=ultimate)
    return h.sd.parse(final)


@pytest.mark.timeout(30)
def test_check_mode_accepts_the_same_output_and_trusts_it(h):
    final = _check_setup(h, ultimate=False)
    run = h.run("nondet", valid=("out",), mode=BuildMode.Check)
    assert run.outcome.failure is None and run.outcome.built_outputs == {"out": final}
    assert run.outcome.infos == ()
    assert h.store.query_path_info(final).ultimate
    assert not os.path.lexists(h.store.real_path(run.plan.scratch_outputs["out"]))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("keep", [False, True])
def test_check_mode_reports_a_differing_output(h, nix, keep):
    final = _check_setup(h)
    before = h.store.query_path_info(final)
    settings = Settings(environ={})
    settings.set("keep-failed", "true" if keep else "false")
    run = h.run("nondet", valid=("out",), mode=BuildMode.Check, settings=settings, contents={"out": "other\n"})
    out = run.outcome
    assert out.failure is FailureKind.NOT_DETERMINISTIC
    assert h.normalise(out.message) == nix.errors["check-keep" if keep else "check"]
    assert h.store.query_path_info(final) == before
    kept = h.store.real_path(final) + ".check"
    assert os.path.exists(kept) == keep
    assert not os.path.lexists(h.store.real_path(run.plan.scratch_outputs["out"]))


@pytest.mark.timeout(30)
def test_floating_ca_output_and_its_realisation(h, nix):
    settings = Settings(environ={})
    settings.set("experimental-features", "ca-derivations")
    run = h.run("ca", settings=settings)
    out = run.outcome
    assert out.failure is None
    (info,) = out.infos
    assert h.sd.print(info.path) == h.nix_final("ca", "out")
    assert info.has_self_reference
    h.assert_like_nix(info, "ca")
    (realisation,) = out.realisations
    assert run.registered_realisations == [realisation]
    assert nix.realisations[(realisation.id.str_hash(), "out")] == h.sd.print(realisation.out_path)


@pytest.mark.timeout(30)
def test_realisations_are_only_registered_with_ca_derivations(h):
    run = h.run("ca")
    assert run.outcome.failure is None and len(run.outcome.realisations) == 1
    assert run.registered_realisations == []


@pytest.mark.timeout(30)
def test_group_writable_output_is_suspicious(h):
    final = h.outputs("self")["out"]
    real = h.store.real_path(final)
    write_tree(real, "x\n")
    os.chmod(real, 0o664)
    run = h.run("self", contents={"out": None})
    assert run.outcome.failure is FailureKind.BUILD_ERROR
    assert run.outcome.message == (f"suspicious ownership or permission on '{real}' for output 'out'; "
                                   "rejecting this build output")
    delete_path(real)


@pytest.mark.timeout(30)
@pytest.mark.skipif(os.getuid() != 0, reason="outputs of a build user need root to make")
def test_output_not_owned_by_the_build_user_is_suspicious(h):
    """registerOutputs' `buildUser && st.st_uid != buildUser->getUID()` (mode alone is fine);
    canonicalise with the build uid then refuses a foreign file inside."""
    from goalkeeper.actors.user_lock import BuildUser

    user = BuildUser(user="bu1", uid=64123, gid=64100, supplementary_gids=())
    final = h.outputs("self")["out"]
    real = h.store.real_path(final)
    write_tree(real, {"mine": "x\n", "theirs": "y\n"})
    run = h.run("self", contents={"out": None}, build_user=user)
    assert run.outcome.failure is FailureKind.BUILD_ERROR
    assert run.outcome.message == (f"suspicious ownership or permission on '{real}' for output 'out'; "
                                   "rejecting this build output")
    os.chown(real, user.uid, user.gid)
    os.chown(f"{real}/mine", user.uid, user.gid)
    run = h.run("self", contents={"out": None}, build_user=user)
    assert run.outcome.failure is FailureKind.BUILD_ERROR
    assert run.outcome.message == f"invalid ownership on file '{real}/theirs'"
    delete_path(real)
