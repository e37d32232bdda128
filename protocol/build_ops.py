"""Handlers of the build ops (BuildPaths, BuildPathsWithResults, BuildDerivation, EnsurePath).

Builds go to the daemon's one long-lived engine. While a request runs, the
engine's events reach the client as nix-daemon's worker would send them: a
`building '…'` message starts a Build activity (type 105, fields drvPath,
machine, round, rounds), each builder line is a BuildLogLine result (101) on
it, other messages are log lines; the activities stop when the request ends.
"""

from __future__ import annotations

import re
import threading

from goalkeeper.protocol import stderr, version
from goalkeeper.protocol.ops import Op
from goalkeeper.protocol.serializers import (DerivedPath, WireBuildResult, read_basic_derivation,
                                             read_derived_paths, read_path, realisation_json,
                                             write_build_result_body)
from goalkeeper.protocol.wire import WireReader, WireWriter
from goalkeeper.store.derivation import Derivation, write_derivation
from goalkeeper.store.derivation_hash import static_output_hashes
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Base
from goalkeeper.store.paths import StorePath


BM_NORMAL, BM_REPAIR, BM_CHECK = 0, 1, 2
# the engine's text for a started build; Nix's logger appends "..." to an activity's text
_BUILDING = re.compile(r"(building '([^']+)'(?: \(round (\d+)/(\d+)\))?)\.\.\.")
ACT_COPY_PATH, ACT_FILE_TRANSFER, ACT_REALISE, ACT_COPY_PATHS, ACT_BUILDS = 100, 101, 102, 103, 104
RES_SET_EXPECTED = 106
ERROR_PREFIX = "\x1b[31;1merror:\x1b[0m "  # how Nix's logger renders "error:" sent as a log line
WARNING_PREFIX = "\x1b[35;1mwarning:\x1b[0m "


class BuildEvents:
    """The engine observer of one request: translates engine events into the client's stderr messages.

    Like Nix's Worker, a request has a Realise activity with Builds and CopyPaths under it;
    progress goes to Builds (done, expected, running, failed) and the expected sizes of
    downloads and copies to Realise, as `Worker::updateProgress` reports them.
    """

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()
        self._acts: dict[str, int] = {}  # printed drv path -> Build activity
        self._queried = False
        self._realise = conn.start_activity(ACT_REALISE, "", level=stderr.LVL_ERROR)
        self._builds = conn.start_activity(ACT_BUILDS, "", level=stderr.LVL_ERROR, parent=self._realise)
        self._copies = conn.start_activity(ACT_COPY_PATHS, "", level=stderr.LVL_ERROR, parent=self._realise)

    def __call__(self, event) -> None:
        kind = type(event).__name__
        if kind == "Message":
            self._message(event.text)
        elif kind == "LogLine":
            printed = self._conn.store_dir.print(event.drv_path)
            act = self._acts.get(printed)
            if act is None:
                self._conn.log(event.line)
            else:
                self._conn.result(act, stderr.RES_BUILD_LOG_LINE, (event.line,))
        elif kind == "Progress":
            conn = self._conn
            conn.result(self._builds, stderr.RES_PROGRESS, (event.done_builds, event.expected_builds,
                                                            event.running_builds, event.failed_builds))
            conn.result(self._copies, stderr.RES_PROGRESS, (0, 0, 0, 0))
            conn.result(self._realise, RES_SET_EXPECTED, (ACT_FILE_TRANSFER, 0))
            conn.result(self._realise, RES_SET_EXPECTED, (ACT_COPY_PATH, 0))
            if not self._queried:
                # Worker::run's queryMissing, after the first goals were made
                self._queried = True
                conn.stop_activity(conn.start_activity(stderr.ACT_UNKNOWN, "querying info about missing paths",
                                                       level=stderr.LVL_DEBUG))

    def _message(self, text: str) -> None:
        match = _BUILDING.fullmatch(text)
        if match:
            printed = match.group(2)
            cur, total = int(match.group(3) or 1), int(match.group(4) or 1)
            act = self._conn.start_activity(stderr.ACT_BUILD, match.group(1), (printed, "", cur, total),
                                            parent=self._builds)
            with self._lock:
                old = self._acts.pop(printed, None)
                self._acts[printed] = act
            if old is not None:
                self._conn.stop_activity(old)
            return
        if text.startswith("error: "):
            self._conn.log(ERROR_PREFIX + text[len("error: "):].replace("\n", "\n       "), stderr.LVL_ERROR)
        elif text.startswith("warning: "):
            self._conn.log(WARNING_PREFIX + text[len("warning: "):], stderr.LVL_WARN)
        else:
            self._conn.log(text, stderr.LVL_ERROR)  # printError: the builder's failure notes and the like

    def stop_all(self) -> None:
        with self._lock:
            acts, self._acts = list(self._acts.values()), {}
        for act in acts + [self._copies, self._builds, self._realise]:
            self._conn.stop_activity(act)


def _read_build_mode(conn, r: WireReader) -> int:
    mode = r.u64() if version.has_build_mode(conn.minor) else BM_NORMAL
    if mode not in (BM_NORMAL, BM_REPAIR, BM_CHECK):
        raise StoreError(f"invalid build mode {mode}")
    return mode


def _check_mode_allowed(conn, mode: int) -> None:
    # daemon.cc: "repairing or checking is not allowed because you are not in 'trusted-users'"
    if mode == BM_REPAIR and not conn.trusted:
        raise StoreError("repairing or checking is not allowed because you are not in 'trusted-users'")


def _realise(conn, targets: list[DerivedPath], mode: int):
    events = BuildEvents(conn)
    try:
        return conn.io.realise(targets, mode, keep_going=conn.options.keep_going, observer=events,
                               settings=conn.daemon.client_settings(conn.options))
    finally:
        events.stop_all()


def build_paths(conn, r: WireReader) -> None:
    targets = read_derived_paths(r, conn.store_dir, conn.minor)
    mode = _read_build_mode(conn, r)
    conn.start_work()
    _check_mode_allowed(conn, mode)
    realised = _realise(conn, targets, mode)
    if realised.error is not None:
        raise _BuildFailed(realised.error, realised.exit_status)
    conn.finish(WireWriter().u64(1))


class _BuildFailed(StoreError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.exit_status = status or 1


def build_paths_with_results(conn, r: WireReader) -> None:
    targets = read_derived_paths(r, conn.store_dir, conn.minor)
    mode = _read_build_mode(conn, r)
    conn.start_work()
    _check_mode_allowed(conn, mode)
    realised = _realise(conn, targets, mode)
    entries = goal_results(conn, targets, realised.results)
    w = WireWriter().u64(len(entries))
    for target, result in entries:
        w.string(target.render(conn.store_dir))
        write_build_result_body(w, result, conn.minor)
    conn.finish(w)


def goal_results(conn, targets: list[DerivedPath], results: dict) -> list[tuple[DerivedPath, WireBuildResult]]:
    """One entry per distinct goal (spec §7.6), in Nix's goal key order.

    A derivation goal is named by the first request for it and collects the outputs of all;
    keys are `b$<name>$<path>` for derivations and `a$<name>$<path>` for substitutions.
    """
    goals: dict[tuple[str, str], tuple[DerivedPath, dict, object]] = {}
    for target in targets:
        key = ("b" if target.outputs is not None else "a", target.path.base)
        result = results.get(conn.io.engine_path(target))
        if key not in goals:
            goals[key] = (target, {}, result)
        if result is not None:
            goals[key][1].update(result.built_outputs)
            if goals[key][2] is None:
                goals[key] = (goals[key][0], goals[key][1], result)
    printed = conn.store_dir.print
    entries = []
    for key in sorted(goals, key=lambda k: f"{k[0]}${StorePath(k[1]).name}${printed(StorePath(k[1]))}"):
        target, outputs, result = goals[key]
        entries.append((target, _wire_result(conn, target, outputs, result)))
    return entries


def _wire_result(conn, target: DerivedPath, outputs: dict, result) -> WireBuildResult:
    if result is None:  # cut short without keep-going
        return WireBuildResult(status=9)  # MiscFailure
    built = {}
    if outputs and target.outputs is not None:
        built = _realisations(conn, target, outputs)
    return WireBuildResult(status=int(result.status), error_msg=result.error_msg, times_built=result.times_built,
                           is_non_deterministic=result.is_non_deterministic, start_time=result.start_time,
                           stop_time=result.stop_time, built_outputs=built)


def _realisations(conn, target: DerivedPath | Derivation, outputs: dict) -> dict[str, str]:
    """builtOutputs: DrvOutput id (`sha256:<static hash>!<out>`) -> Realisation JSON; `target`:
    a derivation to read from the store, or one held in memory."""
    store = conn.store
    try:
        drv = target if isinstance(target, Derivation) else store.read_derivation(target.path)
        hashes = static_output_hashes(store.store_dir, drv, store.read_derivation)
    except StoreError:
        return {}
    built = {}
    for name, path in outputs.items():
        if name not in hashes:
            continue
        id_ = f"{hashes[name].to_string(Base.BASE16, True)}!{name}"
        out = store.store_dir.parse(path) if isinstance(path, str) else path
        built[id_] = realisation_json(id_, out)
    return built


def read_build_derivation(conn, r: WireReader):
    """BuildDerivation's request: (drv path, the BasicDerivation sent, build mode)."""
    drv_path = read_path(r, conn.store_dir)
    drv = read_basic_derivation(r, conn.store_dir, drv_path.derivation_name())
    return drv_path, drv, _read_build_mode(conn, r)


def check_build_derivation_trusted(conn, drv) -> None:
    """Only a trusted client may have input-addressed derivations built from a description:
    their output paths are not verifiable by their contents (daemon.cc, wopBuildDerivation)."""
    if not (conn.trusted or drv.type().is_ca):
        raise StoreError("you are not privileged to build input-addressed derivations")


def build_derivation(conn, r: WireReader) -> None:
    """Build the derivation the client describes (`Store::buildDerivation`, what ssh-ng remote
    builds use): its `.drv` need not exist here; its input sources must be valid."""
    drv_path, drv, mode = read_build_derivation(conn, r)
    conn.start_work()
    # daemon.cc 2.8 checks no build mode here (unlike BuildPaths): an untrusted client may
    # only send content-addressed derivations, whose outputs prove themselves
    check_build_derivation_trusted(conn, drv)
    if not conn.trusted:
        # the path of an untrusted client's derivation is not taken on its word: recomputed
        # by writing the derivation (daemon.cc)
        drv_path = write_derivation(conn.store, Derivation.from_basic(drv))
    events = BuildEvents(conn)
    try:
        result = conn.io.build_derivation(drv_path, drv, mode, observer=events,
                                          settings=conn.daemon.client_settings(conn.options))
    finally:
        events.stop_all()
    built = _realisations(conn, Derivation.from_basic(drv), result.built_outputs) if result.built_outputs else {}
    wire = WireBuildResult(status=int(result.status), error_msg=nix_error_msg(result.error_msg),
                           times_built=result.times_built, is_non_deterministic=result.is_non_deterministic,
                           start_time=result.start_time, stop_time=result.stop_time, built_outputs=built)
    w = WireWriter()
    write_build_result_body(w, wire, conn.minor)
    conn.finish(w)


def nix_error_msg(text: str) -> str:
    """A BuildResult's errorMsg as nix-daemon sends it: `done()` stores the message after
    `normaltxt` (ESC "[0m" first); an error thrown out of the worker is its whole text, with
    the coloured "error:" (`e.msg()`). (The colours Nix puts on the message's arguments
    are not reproduced.)"""
    if not text:
        return ""
    if text.startswith("error: "):
        return ERROR_PREFIX + text[len("error: "):].replace("\n", "\n       ")
    return "\x1b[0m" + text


def ensure_path(conn, r: WireReader) -> None:
    path = read_path(r, conn.store_dir)
    conn.start_work()
    if not conn.store.is_valid_path(path):
        realised = _realise(conn, [DerivedPath(path)], BM_NORMAL)
        if realised.error is not None:
            raise _BuildFailed(realised.error, realised.exit_status)
    conn.finish(WireWriter().u64(1))


HANDLERS = {
    Op.BuildPaths: build_paths,
    Op.BuildPathsWithResults: build_paths_with_results,
    Op.BuildDerivation: build_derivation,
    Op.EnsurePath: ensure_path,
}
