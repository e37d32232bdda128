"""`registerOutputs` (Nix 2.8 LocalDerivationGoal::registerOutputs): turn what a builder wrote into valid paths.

The builder wrote each output at its *scratch* path: the final path itself, a
fallback path when hash rewriting hides a valid output (no sandbox), or the
same path under the chroot. As in Nix 2.8, in this order:

1. refuse a missing or group/world-writable output, canonicalise its metadata
   and scan it for references to the inputs and to every output's scratch path;
2. sort the outputs so that referenced ones come first (a cycle is an error);
3. per output: rewrite scratch hash parts to final ones (`outputRewrites`),
   work out the final path (known in advance, or from the content hash),
   move the output there and describe it in a `ValidPathInfo`;
4. `checkOutputs`, register every info in one transaction, then report a
   fixed-output hash mismatch (the output is registered under the path of its
   actual hash first) and register the realisations.

With BuildMode.Check nothing new is registered: each fresh output's NAR hash is
compared with the valid path's. Refusals (Nix's `BuildError`) come back as an
`OutputsOutcome` with `failure` set; store and I/O errors propagate.
"""

from __future__ import annotations

import os
import random
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from goalkeeper.store.canonicalise import InvalidOwnership, canonicalise_path_metadata
from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.derivation import CAFixed, CAFloating, Derivation, Impure, InputAddressed, output_path
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Hash
from goalkeeper.store.locks import PathLocks
from goalkeeper.store.nar import CHUNK_SIZE, delete_path, dump_path_to, hash_path, restore_path
from goalkeeper.store.optimise import optimise_path
from goalkeeper.store.parsed_derivation import ParsedDerivation
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath, output_path_name
from goalkeeper.store.realisations import DrvOutput, Realisation
from goalkeeper.store.references import HashModuloSink, RefScanSink, RewritingSink
from goalkeeper.store.topo_sort import topo_sort

from .build_hooks import DiffHookRequest
from .derivation_goal_state import BuildMode, KnownOutput
from .output_checks import RejectedOutput, check_outputs
from .results import FailureKind

if TYPE_CHECKING:
    from goalkeeper.store.local import LocalStore
    from goalkeeper.store.settings import Settings

    from .start_builder import BuildPlan

CHECK_SUFFIX = ".check"  # where --check keeps a differing output (keep-failed)
_SPOOL_IN_MEMORY = 1 << 24  # rewritten NARs up to 16 MiB stay in memory


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputsOutcome:
    """What registerOutputs did.

    Attributes:
        failure: None on success, else why the outputs were refused.
        message: Nix's error text when `failure` is set.
        built_outputs: output name -> final path (every output, also those valid before).
        infos: the outputs built now as registered, in topological order (with a hash
            mismatch, the output under the path of its actual hash; none with --check).
        realisations: one per output built now (id from the static output hashes).
        is_non_deterministic: Nix's `isNonDeterministic` (only set by repeated rounds).
        more_rounds: build again (`curRound < nrRounds`); nothing input-addressed was registered.
        output_infos: output name -> info, built now (the next round's `prevInfos`).
        diff_hook: the diff hook to run before anything else is reported, or None.
        messages: printError'd after the diff hook ("… differs from previous round").
    """

    failure: FailureKind | None
    message: str
    built_outputs: dict[str, StorePath]
    infos: tuple[ValidPathInfo, ...]
    realisations: tuple[Realisation, ...]
    is_non_deterministic: bool = False
    more_rounds: bool = False
    output_infos: Mapping[str, ValidPathInfo] = field(default_factory=dict)
    diff_hook: DiffHookRequest | None = None
    messages: tuple[str, ...] = ()


def register_outputs(
    store: LocalStore,
    settings: Settings,
    *,
    drv: Derivation,
    drv_path: StorePath,
    plan: BuildPlan,
    initial_outputs: Mapping[str, KnownOutput | None],
    static_output_hashes: Mapping[str, Hash],
    input_paths: frozenset[StorePath],
    build_mode: BuildMode,
    register: Callable[[Sequence[ValidPathInfo]], None],
    register_realisation: Callable[[Realisation], None],
    cur_round: int = 1,
    nr_rounds: int = 1,
    prev_infos: Mapping[str, ValidPathInfo] | None = None,
) -> OutputsOutcome:
    """Check, move and register the outputs a successful builder wrote (see the module docstring).

    Args:
        initial_outputs: output name -> what was known before the build (None: CA floating).
        static_output_hashes: output name -> the drv's modulo hash (realisation ids).
        input_paths: the input closure (paths the outputs may refer to).
        register: registers infos in one transaction; raises StoreError on refusal.
        register_realisation: registers one realisation (only with ca-derivations).
        cur_round, nr_rounds: `build-repeat` rounds (1-based), as the goal counts them.
        prev_infos: the previous round's `output_infos`, compared with this round's.

    Raises:
        StoreError: an output could not be read, canonicalised or registered.
    """
    run = _Registration(store, settings, drv, drv_path, plan, build_mode, register)
    run.cur_round, run.nr_rounds, run.prev_infos = cur_round, nr_rounds, prev_infos or {}
    try:
        run.run(initial_outputs, input_paths)
    except RejectedOutput as e:
        return OutputsOutcome(failure=e.failure, message=e.message, built_outputs={},
                              infos=tuple(run.registered.values()), realisations=(),
                              is_non_deterministic=run.is_non_deterministic, diff_hook=run.diff_hook)
    if run.more_rounds:
        return OutputsOutcome(failure=None, message="", built_outputs=dict(run.final_outputs), infos=(),
                              realisations=(), more_rounds=True, output_infos=dict(run.infos))
    realisations = tuple(Realisation(DrvOutput(static_output_hashes[name], name), info.path)
                         for name, info in sorted(run.infos.items()))
    if settings.is_experimental_feature_enabled("ca-derivations") and drv.type().is_pure:
        for realisation in realisations:
            register_realisation(realisation)
    return OutputsOutcome(failure=None, message="", built_outputs=dict(run.final_outputs),
                          infos=tuple(run.infos.values()), realisations=realisations,
                          is_non_deterministic=run.is_non_deterministic, output_infos=dict(run.infos),
                          diff_hook=run.diff_hook, messages=tuple(run.messages))


class _Registration:
    """One registerOutputs call; the attributes are Nix's locals of the same names."""

    def __init__(self, store: LocalStore, settings: Settings, drv: Derivation, drv_path: StorePath,
                 plan: BuildPlan, build_mode: BuildMode, register: Callable[[Sequence[ValidPathInfo]], None]):
        self.store, self.settings, self.drv, self.plan = store, settings, drv, plan
        self.build_mode, self._register_fn = build_mode, register
        self.printed_drv = store.print(drv_path)
        self.drv_path = drv_path
        # Shared between outputs so that hard links between outputs are allowed.
        self.inodes_seen: set[tuple[int, int]] = set()
        self.output_rewrites: dict[str, str] = {}  # scratch hash part -> final hash part
        self.final_outputs: dict[str, StorePath] = {}
        self.infos: dict[str, ValidPathInfo] = {}  # outputs built now, in topological order
        self.registered: dict[StorePath, ValidPathInfo] = {}
        self.cur_round = self.nr_rounds = 1
        self.prev_infos: Mapping[str, ValidPathInfo] = {}
        self.more_rounds = False
        self.is_non_deterministic = False
        self.diff_hook: DiffHookRequest | None = None
        self.messages: list[str] = []
        # Nix's keepPreviousRound: a differing output is kept as `<path>.check` to compare
        self.keep_previous_round = bool(settings.keep_failed or settings.run_diff_hook)
        # Outputs whose NAR the reference scan hashed too (nothing rewrites them later).
        self.scanned_nar: dict[str, tuple[Hash, int]] = {}
        self.restored: set[str] = set()  # actual paths rewritten, i.e. restored from a NAR

    def _never_rewritten(self) -> bool:
        """Every output is input-addressed and written at its final path: no rewrite will touch
        any of them, so the NAR the reference scan reads is the one registered."""
        scratch_outputs = self.plan.scratch_outputs
        return all(isinstance(output, InputAddressed) and scratch_outputs[name] == output.path
                   for name, output in self.drv.outputs.items())

    def actual_path(self, scratch: StorePath) -> str:
        printed = self.store.print(scratch)
        # On Linux Nix's needsHashRewrite() is !useChroot: a chroot build wrote inside the chroot.
        if self.plan.use_chroot and self.plan.chroot_root:
            return self.plan.chroot_root + printed
        return self.store.to_real_path(printed)

    def run(self, initial_outputs: Mapping[str, KnownOutput | None], input_paths: frozenset[StorePath]) -> None:
        scratch_outputs = self.plan.scratch_outputs
        referenceable = set(input_paths) | set(scratch_outputs.values())
        scanned: dict[str, set[StorePath]] = {}  # Nix's PerhapsNeedToRegister
        stats: dict[str, os.stat_result] = {}
        by_hash_part = {p.hash_part: p for p in referenceable}
        hash_while_scanning = self._never_rewritten()
        for name in self.drv.output_names():
            known = initial_outputs.get(name)
            if self.build_mode is not BuildMode.Check and known is not None and known.is_valid():
                continue  # AlreadyRegistered: its valid path stays as it is
            actual = self.actual_path(scratch_outputs[name])
            stats[name] = self._lstat_output(name, actual)
            # Canonicalise first, so that nothing below is a hard link to a foreign file
            # (with a build user: to a file that user does not own, "invalid ownership").
            try:
                canonicalise_path_metadata(actual, self._build_uid(), self.inodes_seen,
                                           ignored_acls=self.settings.ignored_acls)
            except InvalidOwnership as e:
                if not str(e).startswith("invalid ownership"):
                    raise  # "wrong ownership of top-level store path" is a plain Error
                raise RejectedOutput(str(e)) from e  # a BuildError
            # `scanForReferences`; where the NAR is final already, one pass also hashes it.
            found = RefScanSink(by_hash_part)
            if hash_while_scanning:
                self.scanned_nar[name] = hash_path(actual, sinks=(found,))
            else:
                dump_path_to(actual, found)
            scanned[name] = {by_hash_part[h] for h in found.found}

        delayed: RejectedOutput | None = None
        for name in self._sorted_outputs(scanned):
            if name not in scanned:
                self._finish(name, initial_outputs[name].path)
                continue
            mismatch = self._register_one(name, scanned[name], stats[name])
            delayed = delayed or mismatch

        if self.build_mode is BuildMode.Check:
            if delayed is not None:  # a fixed output that differs is non-determinism too
                raise delayed
            return
        check_outputs(self.store.store_dir, ParsedDerivation(self.drv_path, self.drv), self.infos,
                      self.store.query_path_info)
        if self.cur_round > 1:
            self._compare_with_previous_round()
        if self.nr_rounds > 1 and self.cur_round == 1 and self.keep_previous_round:
            for final in self.final_outputs.values():  # first of several rounds: keep it aside
                path = self._real(final)
                delete_path(path + CHECK_SUFFIX)
                move_path(path, path + CHECK_SUFFIX)
        if self.cur_round < self.nr_rounds:
            self.more_rounds = True  # prevInfos = infos: registered after the last round
            return
        for final in self.final_outputs.values():
            # Nix deletes the logical path here; we must never touch the host's /nix.
            delete_path(self._real(final) + CHECK_SUFFIX)
        self._register(list(self.infos.values()))
        if delayed is not None:
            raise delayed
        # Unused redirected outputs (valid outputs the builder wrote at fallback paths).
        for scratch in self.plan.redirected_outputs.values():
            delete_path(self.store.real_path(scratch))

    def _real(self, path: StorePath) -> str:
        return self.store.to_real_path(self.store.print(path))

    def _compare_with_previous_round(self) -> None:
        """`prevInfos != infos`: ValidPathInfo's == compares path, narHash and references."""
        for name, info in sorted(self.infos.items()):
            prev_info = self.prev_infos.get(name)
            if prev_info is not None and (prev_info.path, prev_info.nar_hash, prev_info.references) == (
                    info.path, info.nar_hash, info.references):
                continue
            self.is_non_deterministic = True
            path = self.store.print(info.path)
            prev = path + CHECK_SUFFIX
            if self.keep_previous_round and os.path.lexists(self._real(info.path) + CHECK_SUFFIX):
                hint = f"output '{path}' of '{self.printed_drv}' differs from '{prev}' from previous round"
            else:
                hint = f"output '{path}' of '{self.printed_drv}' differs from previous round"
            self._want_diff_hook(prev, path)
            if self.settings.enforce_determinism:
                # a BuildError kind: unlike --check, Nix sets no checkMismatch here (exit 1)
                raise RejectedOutput(hint, FailureKind.BUILD_ERROR)
            self.messages.append(hint)  # printError
            self.cur_round = self.nr_rounds  # we know enough, bail out early
            return

    def _want_diff_hook(self, try_a: str, try_b: str) -> None:
        if not (self.settings.diff_hook and self.settings.run_diff_hook):
            return
        build_user = self.plan.build_user
        self.diff_hook = DiffHookRequest(
            try_a=try_a, try_b=try_b, drv_path=self.printed_drv, tmp_dir=self.plan.build_dir,
            uid=build_user.uid if build_user else os.getuid(),
            gid=build_user.gid if build_user else os.getgid())

    def _build_uid(self) -> int | None:
        """The build user's uid (`buildUser ? buildUser->getUID() : -1`)."""
        return self.plan.build_user.uid if self.plan.build_user is not None else None

    def _lstat_output(self, name: str, actual: str) -> os.stat_result:
        try:
            st = os.lstat(actual)
        except FileNotFoundError:
            raise RejectedOutput(f"builder for '{self.printed_drv}' failed to produce output path for "
                                 f"output '{name}' at '{actual}'") from None
        except OSError as e:
            raise StoreError(f"getting attributes of path '{actual}': {e.strerror}") from e
        # Group- or world-writable, or not the build user's: someone else may have
        # interfered with the build.
        build_uid = self._build_uid()
        if ((not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
                or (build_uid is not None and st.st_uid != build_uid)):
            raise RejectedOutput(f"suspicious ownership or permission on '{actual}' for output '{name}'; "
                                 "rejecting this build output")
        return st

    def _sorted_outputs(self, scanned: Mapping[str, set[StorePath]]) -> list[str]:
        """Referenced outputs first; outputs valid before the build are leaves."""
        by_scratch = {p: n for n, p in self.plan.scratch_outputs.items()}
        order = topo_sort(
            self.drv.output_names(),
            lambda name: {by_scratch[r] for r in scanned.get(name, ()) if r in by_scratch},
            lambda path, parent: RejectedOutput(
                f"cycle detected in build of '{self.printed_drv}' in the references of output "
                f"'{path}' from output '{parent}'"),
        )
        order.reverse()
        return order

    def _finish(self, name: str, final: StorePath) -> None:
        self.final_outputs[name] = final
        scratch = self.plan.scratch_outputs[name]
        if scratch != final:  # later outputs referring to this one get the final hash
            self.output_rewrites[scratch.hash_part] = final.hash_part

    def _register(self, infos: list[ValidPathInfo]) -> None:
        self._register_fn(infos)
        self.registered.update((info.path, info) for info in infos)

    def _register_one(self, name: str, references: set[StorePath], st: os.stat_result) -> RejectedOutput | None:
        """Rewrite, move and describe one output; returns a hash mismatch to raise after registering."""
        output = self.drv.outputs[name]
        scratch = self.plan.scratch_outputs[name]
        actual = self.actual_path(scratch)
        mismatch = None
        match output:
            case InputAddressed(path=final):
                if scratch != final:  # the NAR hash is of the contents under the final name
                    self.output_rewrites[scratch.hash_part] = final.hash_part
                self._rewrite_output(actual)
                nar = self.scanned_nar.get(name)
                nar_hash, nar_size = nar if nar is not None else hash_path(actual)
                has_self, refs = self._rewrite_refs(references, scratch)
                info = ValidPathInfo(final, nar_hash, nar_size, refs | {final} if has_self else refs)
            case CAFixed(method=method, hash=wanted):
                info = self._info_from_ca(name, method, wanted.algo, references, st, actual)
                got = info.ca.hash
                if got != wanted:
                    mismatch = RejectedOutput(
                        f"hash mismatch in fixed-output derivation '{self.printed_drv}':\n"
                        f"  specified: {wanted.sri()}\n     got:    {got.sri()}",
                        FailureKind.HASH_MISMATCH)
            case CAFloating(method=method, algo=algo) | Impure(method=method, algo=algo):
                info = self._info_from_ca(name, method, algo, references, st, actual)
            case _:
                raise StoreError(f"output '{name}' of '{self.printed_drv}' is deferred; "
                                 "the derivation must be resolved before it is built")
        if actual in self.restored:
            # Nix canonicalises again unconditionally ("FIXME: set proper permissions in
            # restorePath()"); a tree that was not restored is canonical since the scan.
            canonicalise_path_metadata(actual, None, self.inodes_seen, ignored_acls=self.settings.ignored_acls)

        final_real = self.store.real_path(info.path)
        # A path not known before the build (floating CA, mismatching fixed output) is locked
        # here, until it is registered.
        lock = PathLocks()
        try:
            if output_path(output, self.store.store_dir, self.drv.name, name) != info.path:
                lock.set_deletion(True)
                lock.lock_paths([final_real])
            actual = self._move_into_place(info, actual, final_real)
            if self.build_mode is BuildMode.Check:
                self._check_one(name, info, actual, final_real)
                return mismatch
            if self.settings.auto_optimise_store and self.cur_round == self.nr_rounds:
                optimise_path(self.store, actual)
            info = info.replace(deriver=self.drv_path, ultimate=True, registration_time=int(time.time()))
            self._finish(name, info.path)
            if info.ca is not None:
                self._register([info])  # before its lock is released
            self.infos[name] = info
        finally:
            lock.unlock()
        return mismatch

    def _info_from_ca(self, name: str, method: str, algo: str, references: set[StorePath],
                      st: os.stat_result, actual: str) -> ValidPathInfo:
        if method == "flat" and (not stat.S_ISREG(st.st_mode) or st.st_mode & stat.S_IXUSR):
            raise RejectedOutput(f"output path '{actual}' should be a non-executable regular file since "
                                 "recursive hashing is not enabled (outputHashMode=flat)")
        self._rewrite_output(actual)
        scratch = self.plan.scratch_outputs[name]
        # The content hash is taken "modulo" the scratch hash part, so it is the same
        # whatever name the builder wrote the output under.
        sink = HashModuloSink(algo, scratch.hash_part)
        if method == "recursive":
            dump_path_to(actual, sink)
        else:
            _read_file_to(actual, sink)
        got, _ = sink.finish()
        has_self, refs = self._rewrite_refs(references, scratch)
        final = self._fixed_output_path(method, got, name, refs, has_self, actual)
        if scratch != final:
            self._rewrite_tree(actual, {scratch.hash_part: final.hash_part})
        nar_hash, nar_size = hash_path(actual)
        return ValidPathInfo(final, nar_hash, nar_size, refs | {final} if has_self else refs,
                             ca=ContentAddress(method, got))

    def _fixed_output_path(self, method: str, got: Hash, name: str, refs: set[StorePath], has_self: bool,
                           actual: str) -> StorePath:
        recursive = method == "recursive"
        if not (recursive and got.algo == "sha256"):
            if refs:
                # Nix 2.8 aborts here (an assertion in makeFixedOutputPath); we refuse the build.
                raise RejectedOutput(f"output path '{actual}' refers to other store paths, which only "
                                     "recursive sha256 content-addressed outputs may")
            has_self = False  # makeFixedOutputPath ignores a self reference in this case
        return self.store.store_dir.make_fixed_output_path(
            recursive, got, output_path_name(self.drv.name, name), refs, has_self)

    def _rewrite_refs(self, references: set[StorePath], scratch: StorePath) -> tuple[bool, set[StorePath]]:
        """(refers to itself, the other references under their final names)."""
        has_self = False
        refs: set[StorePath] = set()
        for ref in references:
            if ref == scratch:
                has_self = True
            elif ref.hash_part in self.output_rewrites:
                refs.add(StorePath.from_parts(self.output_rewrites[ref.hash_part], ref.name))
            else:
                refs.add(ref)
        return has_self, refs

    def _rewrite_output(self, actual: str) -> None:
        if self.output_rewrites:
            # Nix's StringMap applies the rewrites in key order.
            self._rewrite_tree(actual, dict(sorted(self.output_rewrites.items())))

    def _rewrite_tree(self, actual: str, rewrites: dict[str, str]) -> None:
        _rewrite_tree(actual, rewrites)
        self.restored.add(actual)

    def _move_into_place(self, info: ValidPathInfo, actual: str, final_real: str) -> str:
        if final_real == actual or self.build_mode is BuildMode.Check:
            return actual  # --check compares the new output where it is
        if self.build_mode is BuildMode.Repair:
            replace_valid_path(final_real, actual)
        elif self.store.is_valid_path(info.path):
            # A CA path something else produced already: keep it (Nix leaves ours behind).
            delete_path(actual)
        else:
            delete_path(final_real)  # a stale invalid path
            move_path(actual, final_real)
        return final_real

    def _check_one(self, name: str, info: ValidPathInfo, actual: str, final_real: str) -> None:
        old = self.store.query_path_info(info.path)
        if old is None:
            self._discard(actual, final_real)
            return
        self.final_outputs[name] = info.path
        if info.nar_hash != old.nar_hash:
            text = f"derivation '{self.printed_drv}' may not be deterministic: output '{final_real}' differs"
            if self.settings.keep_failed or self.settings.run_diff_hook:
                kept = self.store.to_real_path(self.store.print(info.path) + CHECK_SUFFIX)
                delete_path(kept)
                move_path(actual, kept)
                self._want_diff_hook(self.store.print(info.path), kept)
                raise RejectedOutput(f"{text} from '{kept}'", FailureKind.NOT_DETERMINISTIC)
            self._discard(actual, final_real)
            raise RejectedOutput(text, FailureKind.NOT_DETERMINISTIC)
        self._discard(actual, final_real)
        if not old.ultimate:  # a verified rebuild makes the path ultimately trusted
            self._register([old.replace(ultimate=True)])

    @staticmethod
    def _discard(actual: str, final_real: str) -> None:
        if actual != final_real:
            delete_path(actual)


def _read_file_to(path: str, sink: Callable[[bytes], object]) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            sink(chunk)


def _rewrite_tree(path: str, rewrites: dict[str, str]) -> None:
    """Replace `path` by the tree its NAR gives with `rewrites` applied (equal-length hash parts)."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=os.path.dirname(path)) as nar:
        sink = RewritingSink(rewrites, nar.write)
        dump_path_to(path, sink)
        sink.flush()
        nar.seek(0)
        delete_path(path)
        restore_path(path, nar)


def move_path(src: str, dst: str) -> None:
    """Nix's `movePath`: rename, making a read-only directory writable meanwhile (its `..` changes)."""
    st = os.lstat(src)
    change_perm = os.geteuid() != 0 and stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IWUSR
    if change_perm:
        os.chmod(src, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    try:
        os.rename(src, dst)
    except OSError as e:
        raise StoreError(f"renaming '{src}' to '{dst}': {e.strerror}") from e
    if change_perm:
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def replace_valid_path(store_path: str, tmp_path: str) -> None:
    """Nix's `replaceValidPath`: put `tmp_path` at `store_path`, moving the old one aside first."""
    old_path = f"{store_path}.old-{os.getpid()}-{random.randrange(1 << 31)}"
    if os.path.lexists(store_path):
        move_path(store_path, old_path)
    try:
        move_path(tmp_path, store_path)
    except BaseException:
        if os.path.lexists(old_path):
            try:
                move_path(old_path, store_path)  # attempt to recover
            except StoreError:
                pass
        raise
    delete_path(old_path)
