"""The derivation goal's state machine, one test per transition of the seed, without threads."""

from dataclasses import dataclass, field

import pytest

from goalkeeper.actors.derivation_goal_state import (
    BuildUserKilled, KillBuildUser,
    BuildExited, BuildKilled, BuildMode, GiveBackBuildSlot, BuildSetupFailed, BuildStarted, DerivationGoalState, Finished,
    OutputsRegistered, PostBuildHookFinished, PrintError, ResolvedFinished, RunPostBuildHook, RegisterOutputs, ResolveAndBuild, StartBuild, Started, Wake,
    WaiteeDone, WaitForAWhile, WaitForBuildSlot, WakeUp, WantDerivation, WantDrvOutputSubstitution, WantSubstitution,
)
from goalkeeper.store.realisations import DrvOutput
from goalkeeper.actors.results import ExitCode, FailureKind, Status
from goalkeeper.actors.user_lock import BuildUser, UserLockError
from goalkeeper.store.derivation import CAFixed, CAFloating, Derivation, InputAddressed
from goalkeeper.store.hashes import hash_bytes
from goalkeeper.store.paths import StoreDir, StorePath

SD = StoreDir()
H = "0" * 31


def sp(c: str, name: str) -> StorePath:
    return StorePath(f"{H}{c}-{name}")


DRV = sp("1", "foo.drv")
OUT = sp("2", "foo")
DEV = sp("3", "foo-dev")
DEP_DRV = sp("4", "dep.drv")
SRC = sp("5", "src")


def make_drv(outputs=None, input_drvs=None, input_srcs=()):
    return Derivation(
        name="foo",
        outputs=outputs or {"out": InputAddressed(OUT), "dev": InputAddressed(DEV)},
        input_srcs=frozenset(input_srcs), platform="x86_64-linux", builder="/bin/sh",
        args=("-c", "true"), env={}, input_drvs=input_drvs or {},
    )


@dataclass
class FakeContext:
    drv: Derivation
    valid: set = field(default_factory=set)
    corrupt: set = field(default_factory=set)
    lock_free: bool = True
    keep_going: bool = False
    use_substitutes: bool = True
    try_fallback: bool = False
    ca_derivations: bool = False
    build_repeat: int = 0
    printed_drv_path: str = SD.print(DRV)
    realisations: dict = field(default_factory=dict)
    closure: dict = field(default_factory=dict)
    producers: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def is_valid_path(self, p):
        return p in self.valid

    def read_derivation(self, p):
        assert p == DRV
        return self.drv

    def static_output_hashes(self, drv):
        return {name: hash_bytes("sha256", name.encode()) for name in drv.outputs}

    def known_output_paths(self, drv):
        return {n: (o.path if isinstance(o, InputAddressed) else o.path(SD, drv.name, n)
                    if isinstance(o, CAFixed) else None) for n, o in drv.outputs.items()}

    def query_realisation(self, h, name):
        return self.realisations.get(name)

    def path_contents_good(self, p):
        return p not in self.corrupt

    def compute_fs_closure(self, paths):
        out = set()
        todo = list(paths)
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo.extend(self.closure.get(p, ()))
        return out

    def outputs_to_drv(self, drv_path):
        return self.producers

    def substitutes_allowed(self, drv):
        return True

    def input_closure(self, drv):
        return frozenset(drv.input_srcs)

    def try_lock_outputs(self, paths):
        self.log.append(("lock", tuple(paths)))
        return self.lock_free

    def unlock_outputs(self, delete):
        self.log.append(("unlock", delete))

    def delete_invalid_output(self, p):
        self.log.append(("delete", p))

    def add_temp_root(self, p):
        self.log.append(("temproot", p))


def goal(ctx, wanted=frozenset(), mode=BuildMode.Normal):
    return DerivationGoalState(DRV, frozenset(wanted), mode, ctx)


def kinds(effects):
    return [type(e) for e in effects]


def finished(effects) -> Finished:
    assert isinstance(effects[-1], Finished), effects
    return effects[-1]


# -- getDerivation / loadDerivation -----------------------------------------------------------

def test_missing_drv_is_substituted_first():
    ctx = FakeContext(make_drv())
    g = goal(ctx)
    assert g.handle(Wake()) == [WantSubstitution(path=DRV)]
    # the substitution failed: "cannot build missing derivation"
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)))
    assert done.result.status is Status.MiscFailure
    assert "cannot build missing derivation" in done.result.error_msg


def test_all_outputs_valid_is_already_valid():
    ctx = FakeContext(make_drv(), valid={DRV, OUT, DEV})
    done = finished(goal(ctx).handle(Wake()))
    assert done.result.status is Status.AlreadyValid and done.exit_code is ExitCode.SUCCESS
    assert done.result.built_outputs == {"out": SD.print(OUT), "dev": SD.print(DEV)}
    assert ("temproot", DRV) in ctx.log


def test_only_wanted_outputs_count():
    ctx = FakeContext(make_drv(), valid={DRV, OUT})
    assert finished(goal(ctx, {"out"}).handle(Wake())).result.status is Status.AlreadyValid


# -- haveDerivation / outputsSubstitutionTried ------------------------------------------------

def test_invalid_outputs_are_substituted_then_built():
    ctx = FakeContext(make_drv(), valid={DRV})
    g = goal(ctx)
    effects = g.handle(Wake())
    assert effects == [WantSubstitution(path=DEV), WantSubstitution(path=OUT)] or \
        sorted(e.path for e in effects) == [OUT, DEV]
    assert g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)) == []
    effects = g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS))
    # no inputs: straight to tryToBuild on the next turn
    assert effects == [WakeUp()]
    assert g.state == g.try_to_build


def test_substituted_outputs_finish_as_substituted():
    ctx = FakeContext(make_drv(), valid={DRV})
    g = goal(ctx)
    g.handle(Wake())
    ctx.valid |= {OUT, DEV}
    g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    assert finished(g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))).result.status is Status.Substituted


def test_failed_substitutes_without_fallback_are_transient():
    ctx = FakeContext(make_drv(), valid={DRV}, keep_going=True)
    g = goal(ctx)
    g.handle(Wake())
    g.handle(WaiteeDone(exit_code=ExitCode.FAILED))
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)))
    assert done.result.status is Status.TransientFailure
    assert "try '--fallback'" in done.result.error_msg


def test_no_substitutes_when_disabled():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    assert goal(ctx).handle(Wake()) == [WakeUp()]


def test_check_mode_needs_valid_outputs():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = goal(ctx, mode=BuildMode.Check)
    # outside normal mode the .drv itself goes through a substitution goal first
    assert g.handle(Wake()) == [WantSubstitution(path=DRV)]
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS)))
    assert done.result.status is Status.MiscFailure
    assert "so checking is not possible" in done.result.error_msg


# -- gaveUpOnSubstitution / inputsRealised ----------------------------------------------------

def test_inputs_are_wanted_and_dependency_failure_counts():
    drv = make_drv(input_drvs={DEP_DRV: frozenset({"out"})}, input_srcs={SRC})
    ctx = FakeContext(drv, valid={DRV, SRC}, use_substitutes=False)
    g = goal(ctx)
    assert g.handle(Wake()) == [WantDerivation(drv_path=DEP_DRV, wanted_outputs=frozenset({"out"}),
                                               build_mode=BuildMode.Normal)]
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.FAILED)))
    assert done.result.status is Status.DependencyFailed
    assert done.result.error_msg == f"1 dependencies of derivation '{SD.print(DRV)}' failed to build"


def test_invalid_source_without_substitution_is_misc_failure():
    ctx = FakeContext(make_drv(input_srcs={SRC}), valid={DRV}, use_substitutes=False)
    done = finished(goal(ctx).handle(Wake()))
    assert done.result.status is Status.MiscFailure
    assert "does not exist, and substitution is disabled" in done.result.error_msg


def test_ca_resolution_requested():
    drv = make_drv(outputs={"out": CAFloating("recursive", "sha256")}, input_drvs={DEP_DRV: frozenset({"out"})})
    ctx = FakeContext(drv, valid={DRV}, ca_derivations=True, use_substitutes=False)
    g = goal(ctx)
    g.handle(Wake())
    assert g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS)) == [ResolveAndBuild(drv_path=DRV)]
    assert g.handle(Wake()) == [] and g.finished is None  # a stray wake-up while resolving
    done = finished(g.handle(ResolvedFinished(exit_code=ExitCode.SUCCESS)))
    assert done.result.status is Status.Built and kinds(g.handle(Wake())) == []


def test_floating_output_substitutes_its_realisation():
    """Nix 2.8's haveDerivation: an output with no known path asks for its realisation."""
    drv = make_drv(outputs={"out": CAFloating("recursive", "sha256")})
    ctx = FakeContext(drv, valid={DRV}, ca_derivations=True)
    g = goal(ctx)
    assert g.handle(Wake()) == [WantDrvOutputSubstitution(drv_output=DrvOutput(hash_bytes("sha256", b"out"), "out"))]
    ctx.realisations["out"] = OUT  # the substitution goal registered it
    ctx.valid.add(OUT)
    assert finished(g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))).result.status is Status.Substituted


def test_incomplete_closure_retries_substitution_once():
    """After the inputs, haveDerivation runs again once (retriedSubstitution); then it builds."""
    drv = make_drv(outputs={"out": CAFloating("recursive", "sha256")}, input_drvs={DEP_DRV: frozenset({"out"})})
    ctx = FakeContext(drv, valid={DRV}, ca_derivations=True)
    g = goal(ctx)
    g.handle(Wake())
    assert kinds(g.handle(WaiteeDone(exit_code=ExitCode.INCOMPLETE_CLOSURE))) == [WantDerivation]
    assert kinds(g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))) == [WantDrvOutputSubstitution]
    assert kinds(g.handle(WaiteeDone(exit_code=ExitCode.INCOMPLETE_CLOSURE))) == [WantDerivation]
    assert g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS)) == [ResolveAndBuild(drv_path=DRV)]


def test_ca_floating_needs_feature():
    ctx = FakeContext(make_drv(outputs={"out": CAFloating("recursive", "sha256")}), valid={DRV})
    done = finished(goal(ctx).handle(Wake()))
    assert "experimental Nix feature 'ca-derivations' is disabled" in done.result.error_msg


# -- tryToBuild / tryLocalBuild / buildDone ---------------------------------------------------

def build_ready(ctx, **kw):
    g = goal(ctx, **kw)
    g.handle(Wake())
    assert g.state == g.try_to_build
    return g


def test_no_output_locks_held_while_waiting_for_a_slot():
    """Nix 2.8's tryLocalBuild: unlock, wait for a slot, then tryToBuild again (relock)."""
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    assert kinds(g.handle(Wake())) == [WakeUp]  # tryToBuild locked the outputs
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]
    assert ctx.log[-1] == ("unlock", False) and g.state == g.try_to_build
    ctx.log.clear()
    assert kinds(g.handle(Wake())) == [StartBuild, Started]  # the slot granted: relock and build
    assert ctx.log[0][0] == "lock"


def test_someone_built_it_while_we_waited_for_a_slot():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    g.handle(Wake())
    g.handle(Wake())
    ctx.valid |= {OUT, DEV}
    assert finished(g.handle(Wake())).result.status is Status.AlreadyValid  # the worker frees its slot


def test_granted_slot_is_given_back_when_the_locks_are_taken():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    g.handle(Wake())
    g.handle(Wake())
    ctx.lock_free = False
    assert kinds(g.handle(Wake())) == [GiveBackBuildSlot, WaitForAWhile]
    ctx.lock_free = True
    assert kinds(g.handle(Wake())) == [WakeUp]  # no slot now: ask again
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]


def test_lent_slot_builds_without_asking():
    """A slot lent with an Alone activation: tryToBuild locks and builds at once."""
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    assert g.lend_build_slot()
    assert kinds(g.handle(Wake())) == [StartBuild, Started]
    assert not g.return_unused_slot()  # the build holds it


def test_lent_slot_unused_goes_back():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = goal(ctx)
    assert g.lend_build_slot()
    g.handle(Wake())  # only as far as the inputs
    assert g.return_unused_slot() and not g.return_unused_slot()


def test_lent_slot_refused_while_waiting_for_one():
    """A goal waiting for a slot gets it in key() order from the worker, not lent."""
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    g.handle(Wake())
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]
    assert not g.lend_build_slot()


def test_lent_slot_given_back_when_the_locks_are_taken():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, lock_free=False)
    g = build_ready(ctx)
    assert g.lend_build_slot()
    assert kinds(g.handle(Wake())) == [GiveBackBuildSlot, WaitForAWhile]
    assert not g.return_unused_slot()


def test_lock_busy_waits():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, lock_free=False)
    g = build_ready(ctx)
    effects = g.handle(Wake())
    assert kinds(effects) == [WaitForAWhile] and "waiting for lock on" in effects[0].reason
    assert g.state == g.try_to_build


def test_someone_beat_us_to_it():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    ctx.valid |= {OUT, DEV}
    assert finished(g.handle(Wake())).result.status is Status.AlreadyValid
    assert ("unlock", True) in ctx.log


def test_full_build_cycle():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = build_ready(ctx)
    assert g.handle(Wake()) == [WakeUp()]  # locked, stale outputs deleted, on to tryLocalBuild
    assert ("delete", OUT) in ctx.log and ("delete", DEV) in ctx.log
    assert g.handle(Wake()) == [WaitForBuildSlot()]
    effects = g.handle(Wake())  # slot granted
    assert kinds(effects) == [StartBuild, Started]
    assert effects[1].message == f"building '{SD.print(DRV)}'"
    g.handle(BuildStarted(start_time=10))
    assert g.handle(Wake()) == []  # spurious wake-up while building
    effects = g.handle(BuildExited(ok=True, message="", stop_time=12))
    assert kinds(effects) == [RegisterOutputs]
    done = finished(g.handle(OutputsRegistered(built_outputs={"out": SD.print(OUT), "dev": SD.print(DEV)})))
    r = done.result
    assert (r.status, r.times_built, r.start_time, r.stop_time) == (Status.Built, 1, 10, 12)
    assert ("unlock", True) in ctx.log


# -- build users (tryLocalBuild's buildUser) ---------------------------------------------------

USER = BuildUser(user="bu1", uid=30001, gid=30000, supplementary_gids=(30001, 30000))


class FakeUserLock:
    """UserLock's interface; `free` says whether find_free_user finds one; `log` records."""

    def __init__(self, pool):
        self.pool = pool
        self.build_user = None

    def find_free_user(self):
        self.pool.log.append("find")
        if self.pool.error:
            raise UserLockError(self.pool.error)
        if self.build_user is None and self.pool.free:
            self.build_user = USER
        return self.build_user is not None

    def release(self):
        self.pool.log.append("release")
        self.build_user = None


@dataclass
class FakePool:
    free: bool = True
    error: str = ""
    log: list = field(default_factory=list)

    def new(self):
        self.log.append("new")
        return FakeUserLock(self)


def user_goal(pool, **kw):
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, **kw)
    g = DerivationGoalState(DRV, frozenset(), BuildMode.Normal, ctx, new_user_lock=pool.new)
    g.handle(Wake())
    g.handle(Wake())  # locked
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]
    return g, ctx


def test_build_user_taken_and_killed_before_the_build():
    pool = FakePool()
    g, _ = user_goal(pool)
    assert g.handle(Wake()) == [KillBuildUser(uid=USER.uid)]  # slot granted: uid locked, killUser
    assert pool.log == ["new", "find"] and not g.return_unused_slot()  # the coming build holds the slot
    assert g.handle(Wake()) == []  # spurious wake-up while killing
    effects = g.handle(BuildUserKilled())
    assert kinds(effects) == [StartBuild, Started] and effects[0].build_user == USER


def test_no_free_uid_waits_holding_the_slot():
    pool = FakePool(free=False)
    g, ctx = user_goal(pool)
    effects = g.handle(Wake())
    assert effects == [WaitForAWhile(reason=f"waiting for UID to build '{SD.print(DRV)}'", announce=True)]
    assert g.state == g.try_local_build and ("unlock", False) not in ctx.log[-1:]
    assert g.handle(Wake()) == [WaitForAWhile(reason=f"waiting for UID to build '{SD.print(DRV)}'",
                                              announce=False)]  # one activity while waiting
    pool.free = True
    assert g.handle(Wake()) == [KillBuildUser(uid=USER.uid)]
    assert pool.log == ["new", "find", "find", "find"]  # one UserLock, asked again


def test_lent_slot_goes_back_while_waiting_for_a_uid():
    pool = FakePool(free=False)
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g = DerivationGoalState(DRV, frozenset(), BuildMode.Normal, ctx, new_user_lock=pool.new)
    g.handle(Wake())
    assert g.lend_build_slot()
    assert kinds(g.handle(Wake())) == [WaitForAWhile]
    assert g.return_unused_slot()
    pool.free = True
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]  # no slot now: unlock and ask for one
    assert kinds(g.handle(Wake())) == [KillBuildUser]  # granted: relock, the uid, killUser


def test_build_user_killed_after_the_build_and_released_at_the_end():
    pool = FakePool()
    g, ctx = user_goal(pool)
    g.handle(Wake())
    g.handle(BuildUserKilled())
    assert g.handle(BuildExited(ok=True, message="", stop_time=3)) == [KillBuildUser(uid=USER.uid)]
    assert kinds(g.handle(BuildUserKilled())) == [RegisterOutputs]
    assert pool.log[-1] != "release"  # held while the outputs are registered
    done = finished(g.handle(OutputsRegistered(built_outputs={"out": SD.print(OUT)})))
    assert done.result.status is Status.Built and pool.log[-1] == "release" and g.build_user is None


@pytest.mark.parametrize("event, status", [
    (BuildExited(ok=False, message="failed", stop_time=3), Status.PermanentFailure),
    (BuildKilled(status=Status.TimedOut, message="timed out"), Status.TimedOut),
])
def test_failed_or_killed_build_kills_the_user_then_releases(event, status):
    pool = FakePool()
    g, _ = user_goal(pool)
    g.handle(Wake())
    g.handle(BuildUserKilled())
    assert g.handle(event) == [KillBuildUser(uid=USER.uid)]
    assert finished(g.handle(BuildUserKilled())).result.status is status
    assert pool.log[-1] == "release"


def test_setup_failure_releases_without_killing():
    pool = FakePool()
    g, _ = user_goal(pool)
    g.handle(Wake())
    g.handle(BuildUserKilled())
    assert finished(g.handle(BuildSetupFailed(message="nope"))).result.status is Status.InputRejected
    assert pool.log[-1] == "release"


def test_failing_kill_ends_the_run():
    pool = FakePool()
    g, _ = user_goal(pool)
    g.handle(Wake())
    done = finished(g.handle(BuildUserKilled(error="cannot kill processes for uid '30001': ...")))
    assert done.thrown and done.result.status is Status.MiscFailure
    assert done.result.error_msg.startswith("cannot kill processes") and pool.log[-1] == "release"


def test_user_lock_errors_end_the_run():
    pool = FakePool(error="the build users group 'x' has no members")
    g, _ = user_goal(pool)
    done = finished(g.handle(Wake()))
    assert done.thrown and done.result.error_msg == "the build users group 'x' has no members"


def test_each_round_takes_a_build_user_anew():
    pool = FakePool()
    g, _ = user_goal(pool, build_repeat=1)
    g.handle(Wake())
    g.handle(BuildUserKilled())
    g.handle(BuildExited(ok=True, message="", stop_time=3))
    g.handle(BuildUserKilled())
    assert g.handle(OutputsRegistered(more_rounds=True)) == [WakeUp()]
    assert pool.log[-1] == "release" and g.build_user is None
    g.handle(Wake())
    g.handle(Wake())
    assert g.handle(Wake()) == [KillBuildUser(uid=USER.uid)] and pool.log.count("new") == 2


def test_lock_wait_announced_again_after_the_lock_was_taken():
    """actLock ends when the output lock is taken: a later wait is a new activity."""
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, lock_free=False)
    g = build_ready(ctx)
    assert [e.announce for e in g.handle(Wake())] == [True]
    assert [e.announce for e in g.handle(Wake())] == [False]
    ctx.lock_free = True
    g.handle(Wake())
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]  # unlocked while waiting for a slot
    ctx.lock_free = False
    effects = g.handle(Wake())  # the slot granted, the lock busy again
    assert kinds(effects) == [GiveBackBuildSlot, WaitForAWhile] and effects[1].announce


def run_to_exit(ctx, event, **kw):
    g = build_ready(ctx, **kw)
    g.handle(Wake())
    g.handle(Wake())
    g.handle(Wake())
    return g, g.handle(event)


def test_builder_failure_is_permanent():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    _, effects = run_to_exit(ctx, BuildExited(ok=False, message="builder for 'x' failed with exit code 1",
                                              stop_time=3))
    done = finished(effects)
    assert done.result.status is Status.PermanentFailure and done.failure is FailureKind.BUILD_ERROR
    assert ("unlock", False) in ctx.log


def test_fixed_output_builder_failure_is_transient():
    fo = make_drv(outputs={"out": CAFixed("flat", hash_bytes("sha256", b"x"))})
    ctx = FakeContext(fo, valid={DRV}, use_substitutes=False)
    _, effects = run_to_exit(ctx, BuildExited(ok=False, message="failed", stop_time=3))
    assert finished(effects).result.status is Status.TransientFailure


def test_disk_full_is_transient():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    _, effects = run_to_exit(ctx, BuildExited(ok=False, message="failed", stop_time=3, disk_full=True))
    assert finished(effects).result.status is Status.TransientFailure


def test_setup_failure_is_input_rejected():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    _, effects = run_to_exit(ctx, BuildSetupFailed(message="while setting up the build environment"))
    assert finished(effects).result.status is Status.InputRejected


def test_timeout_kills():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    _, effects = run_to_exit(ctx, BuildKilled(status=Status.TimedOut, message="timed out after 2 seconds"))
    assert finished(effects).result.status is Status.TimedOut


@pytest.mark.parametrize("failure,status", [
    (FailureKind.BUILD_ERROR, Status.OutputRejected),
    (FailureKind.HASH_MISMATCH, Status.OutputRejected),
    (FailureKind.NOT_DETERMINISTIC, Status.NotDeterministic),
])
def test_output_rejections(failure, status):
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g, _ = run_to_exit(ctx, BuildExited(ok=True, message="", stop_time=3))
    done = finished(g.handle(OutputsRegistered(failure=failure, message="nope")))
    assert done.result.status is status and done.failure is failure


def test_repeated_rounds():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, build_repeat=1)
    g, _ = run_to_exit(ctx, BuildExited(ok=True, message="", stop_time=3))
    assert g.nr_rounds == 2
    assert g.handle(OutputsRegistered(more_rounds=True)) == [WakeUp()]
    assert g.state == g.try_to_build and g.cur_round == 2
    g.handle(Wake())
    g.handle(Wake())
    effects = g.handle(Wake())
    assert effects[1].message == f"building '{SD.print(DRV)}' (round 2/2)"


def test_repeat_nondeterminism_is_not_a_check_mismatch():
    """build-repeat's "differs from previous round": NotDeterministic, but no checkMismatch (exit 1)."""
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, build_repeat=1)
    g, _ = run_to_exit(ctx, BuildExited(ok=True, message="", stop_time=3))
    done = finished(g.handle(OutputsRegistered(failure=FailureKind.BUILD_ERROR, message="differs",
                                               is_non_deterministic=True)))
    assert done.result.status is Status.NotDeterministic and done.failure is FailureKind.BUILD_ERROR
    assert done.result.is_non_deterministic


def test_post_build_hook_runs_before_the_goal_is_done():
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False)
    g, _ = run_to_exit(ctx, BuildExited(ok=True, message="", stop_time=3))
    built = {"out": SD.print(OUT), "dev": SD.print(DEV)}
    effects = g.handle(OutputsRegistered(built_outputs=built, post_build_hook="/hook"))
    assert effects == [RunPostBuildHook(hook="/hook", drv_path=SD.print(DRV),
                                        out_paths=(SD.print(OUT), SD.print(DEV)))]
    assert g.handle(Wake()) == []  # waiting for the hook
    done = finished(g.handle(PostBuildHookFinished()))
    assert done.result.status is Status.Built and done.result.built_outputs == built


def test_post_build_hook_failure_ends_the_run():
    """An ExecError escapes buildDone: thrown, so Nix's Worker::run ends with it (exit 1)."""
    ctx = FakeContext(make_drv(), valid={DRV}, use_substitutes=False, build_repeat=1)
    g, _ = run_to_exit(ctx, BuildExited(ok=True, message="", stop_time=3))
    g.handle(OutputsRegistered(more_rounds=True, post_build_hook="/hook"))
    done = finished(g.handle(PostBuildHookFinished(error="program '/hook' failed with exit code 3")))
    assert done.thrown and done.result.status is Status.MiscFailure
    assert done.result.error_msg == "program '/hook' failed with exit code 3"


# -- repair -----------------------------------------------------------------------------------

def test_repair_closure_wants_producers_of_corrupt_paths():
    dep_out = sp("6", "dep")
    other = sp("7", "other")
    ctx = FakeContext(make_drv(), valid={DRV, OUT, DEV, dep_out, other}, use_substitutes=False,
                      corrupt={dep_out, other}, closure={OUT: {dep_out, other}},
                      producers={dep_out: DEP_DRV})
    g = goal(ctx, mode=BuildMode.Repair)
    assert g.handle(Wake()) == [WantSubstitution(path=DRV)]
    effects = g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    assert kinds(effects) == [PrintError, WantDerivation, PrintError, WantSubstitution]
    assert effects[1] == WantDerivation(drv_path=DEP_DRV, wanted_outputs=frozenset(), build_mode=BuildMode.Repair)
    assert effects[3] == WantSubstitution(path=other, repair=True)
    g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    assert finished(g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))).result.status is Status.AlreadyValid


# -- waitees and wanted outputs -----------------------------------------------------------------

def test_failure_without_keep_going_stops_waiting():
    drv = make_drv(input_drvs={DEP_DRV: frozenset({"out"}), sp("8", "dep2.drv"): frozenset({"out"})})
    ctx = FakeContext(drv, valid={DRV}, use_substitutes=False)
    g = goal(ctx)
    assert len(g.handle(Wake())) == 2
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.FAILED)))
    assert done.result.status is Status.DependencyFailed


def test_keep_going_waits_for_all():
    drv = make_drv(input_drvs={DEP_DRV: frozenset({"out"}), sp("8", "dep2.drv"): frozenset({"out"})})
    ctx = FakeContext(drv, valid={DRV}, use_substitutes=False, keep_going=True)
    g = goal(ctx)
    g.handle(Wake())
    assert g.handle(WaiteeDone(exit_code=ExitCode.FAILED)) == []
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.FAILED)))
    assert "2 dependencies of derivation" in done.result.error_msg


def test_add_wanted_outputs_restarts():
    ctx = FakeContext(make_drv(), valid={DRV})
    g = goal(ctx, {"out"})
    g.handle(Wake())
    g.add_wanted_outputs(frozenset({"dev"}))
    assert g.need_restart
    ctx.valid |= {OUT}
    effects = g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    # restarted haveDerivation: now wants dev too, which is still invalid
    assert WantSubstitution(path=DEV) in effects


def test_key_orders_by_name():
    ctx = FakeContext(make_drv())
    assert goal(ctx).key() == f"b$foo.drv${SD.print(DRV)}"


# -- makeBasicDerivationGoal (Store::buildDerivation) ---------------------------------------

def _basic_drv(**kwargs):
    from goalkeeper.store.derivation import BasicDerivation

    drv = make_drv(**kwargs)
    return BasicDerivation(name=drv.name, outputs=drv.outputs, input_srcs=drv.input_srcs, platform=drv.platform,
                           builder=drv.builder, args=drv.args, env=drv.env)


class _NoDrvFile(FakeContext):
    def read_derivation(self, p):
        raise AssertionError("a basic derivation goal must not read its .drv")

    def outputs_to_drv(self, drv_path):
        raise AssertionError("a basic derivation goal has no derivation closure to consult")


def test_basic_derivation_goal_starts_at_have_derivation_and_builds():
    ctx = _NoDrvFile(make_drv(), valid={SRC})  # the .drv itself is not valid
    g = DerivationGoalState.for_basic_derivation(DRV, _basic_drv(input_srcs=[SRC]), BuildMode.Normal, ctx)
    assert ctx.log == [("temproot", DRV)]
    # haveDerivation at once: the outputs are substituted first, never the .drv
    effects = g.handle(Wake())
    assert effects == [WantSubstitution(path=DEV), WantSubstitution(path=OUT)] or \
        effects == [WantSubstitution(path=OUT), WantSubstitution(path=DEV)]
    g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS))
    assert kinds(g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS))) == [WakeUp]
    assert g.input_paths == frozenset({SRC}) and not g.drv.input_drvs
    assert kinds(g.handle(Wake())) == [WakeUp]
    assert kinds(g.handle(Wake())) == [WaitForBuildSlot]
    effects = g.handle(Wake())
    assert kinds(effects) == [StartBuild, Started]
    assert effects[1].message == f"building '{SD.print(DRV)}'"


def test_basic_derivation_goal_with_valid_outputs_is_already_valid():
    ctx = _NoDrvFile(make_drv(), valid={OUT, DEV})
    g = DerivationGoalState.for_basic_derivation(DRV, _basic_drv(), BuildMode.Normal, ctx)
    done = finished(g.handle(Wake()))
    assert done.result.status is Status.AlreadyValid
    assert done.result.built_outputs == {"out": SD.print(OUT), "dev": SD.print(DEV)}


def test_basic_derivation_goal_with_a_missing_source_throws():
    # inputsRealised without useDerivation: an Error thrown, not DependencyFailed
    ctx = _NoDrvFile(make_drv(), use_substitutes=True)
    g = DerivationGoalState.for_basic_derivation(DRV, _basic_drv(input_srcs=[SRC]), BuildMode.Normal, ctx)
    g.handle(Wake())
    g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS))
    assert g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)) == [WantSubstitution(path=SRC)]
    done = finished(g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)))
    assert done.thrown and done.result.status is Status.MiscFailure
    assert done.result.error_msg == f"some dependencies of '{SD.print(DRV)}' are missing"


def test_basic_derivation_goal_repairs_without_a_derivation_closure():
    ctx = _NoDrvFile(make_drv(), valid={OUT, DEV, SRC}, closure={OUT: [SRC]}, corrupt={SRC})
    g = DerivationGoalState.for_basic_derivation(DRV, _basic_drv(), BuildMode.Repair, ctx)
    g.handle(Wake())  # substitution of the outputs (repair)
    g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    effects = g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    # no producer is known: the corrupt path is substituted with repair
    assert effects[-1] == WantSubstitution(path=SRC, repair=True)


def test_basic_deferred_derivation_is_not_resolved():
    from goalkeeper.store.derivation import Deferred

    outputs = {"out": Deferred()}
    ctx = _NoDrvFile(make_drv(outputs=outputs), ca_derivations=True, use_substitutes=False)
    g = DerivationGoalState.for_basic_derivation(DRV, _basic_drv(outputs=outputs), BuildMode.Normal, ctx)
    assert kinds(g.handle(Wake())) == [WakeUp]  # straight to tryToBuild, no ResolveAndBuild
