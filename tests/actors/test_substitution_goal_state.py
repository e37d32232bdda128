"""Nix 2.8's PathSubstitutionGoal states, driven without threads against fake substituters."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from goalkeeper.actors.derivation_goal_state import (Finished, PrintError, Wake, WaiteeDone, WaitForBuildSlot,
                                                     WakeUp, WantSubstitution)
from goalkeeper.actors.results import ExitCode, Status
from goalkeeper.actors.substitution_goal_state import (RunSubstitution, SubstituteGone, SubstitutionFinished,
                                                       SubstitutionGoalState, Warn)
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Hash
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath

pytestmark = pytest.mark.timeout(10)

SD = StoreDir("/nix/store")
P = StorePath("1" * 32 + "-p")
DEP = StorePath("2" * 32 + "-dep")


def info(path=P, refs=(), sigs=frozenset()):
    return ValidPathInfo(path=path, nar_hash=Hash("sha256", bytes(32)), nar_size=8, references=frozenset(refs),
                         sigs=sigs)


@dataclass
class FakeSub:
    infos: dict
    uri: str = "file:///cache"
    store_dir: StoreDir = SD
    is_trusted: bool = True
    error: Exception | None = None

    def query_path_info(self, path):
        if self.error:
            raise self.error
        return self.infos.get(path)

    def copy_path(self, path, info, repair, check_sigs):
        raise AssertionError("the actor copies, not the state machine")


@dataclass
class Ctx:
    substituters: tuple = ()
    valid: set = field(default_factory=set)
    keep_going: bool = False
    use_substitutes: bool = True
    try_fallback: bool = False
    read_only: bool = False
    store_dir: StoreDir = SD
    untrusted: bool = False
    good: set = field(default_factory=set)

    def is_valid_path(self, path):
        return path in self.valid

    def add_temp_root(self, path):
        pass

    def path_info_is_untrusted(self, info):
        return self.untrusted

    def mark_contents_good(self, path):
        self.good.add(path)


def finished(effects) -> Finished:
    [f] = [e for e in effects if isinstance(e, Finished)]
    return f


def test_already_valid():
    g = SubstitutionGoalState(P, False, None, Ctx(valid={P}))
    f = finished(g.handle(Wake()))
    assert (f.exit_code, f.result.status) == (ExitCode.SUCCESS, Status.AlreadyValid)


def test_repair_ignores_validity_and_no_substituters_means_no_substituters():
    g = SubstitutionGoalState(P, True, None, Ctx(valid={P}))
    f = finished(g.handle(Wake()))
    assert (f.exit_code, f.result.status) == (ExitCode.NO_SUBSTITUTERS, Status.NoSubstituters)
    assert f.result.error_msg == f"path '{SD.print(P)}' is required, but there is no substituter that can build it"


def test_substitution_disabled_tries_nothing():
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(FakeSub({P: info()}),), use_substitutes=False))
    assert finished(g.handle(Wake())).result.status is Status.NoSubstituters


def test_references_first_then_slot_then_copy_then_done():
    ctx = Ctx(substituters=(FakeSub({}), FakeSub({P: info(refs=[P, DEP])})))
    g = SubstitutionGoalState(P, False, None, ctx)
    assert g.handle(Wake()) == [WantSubstitution(path=DEP)]  # self reference ignored; first sub lacks it
    assert g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS)) == [WakeUp()]
    assert g.handle(Wake()) == [WaitForBuildSlot()]
    [run] = g.handle(Wake())
    assert isinstance(run, RunSubstitution) and run.sub_path == P and not run.check_sigs
    f = finished(g.handle(SubstitutionFinished()))
    assert f.result.status is Status.Substituted and ctx.good == {P}


def test_reference_without_substituter_is_an_incomplete_closure():
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(FakeSub({P: info(refs=[DEP])}),)))
    g.handle(Wake())
    f = finished(g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)))
    assert (f.exit_code, f.result.status) == (ExitCode.INCOMPLETE_CLOSURE, Status.DependencyFailed)
    assert f.result.error_msg == f"some references of path '{SD.print(P)}' could not be realised"


def test_failed_copy_tries_the_next_and_then_fails():
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(FakeSub({P: info()}),)))
    g.handle(Wake())
    g.handle(Wake())
    g.handle(Wake())
    effects = g.handle(SubstitutionFinished(error=StoreError("NAR hash mismatch")))
    assert effects == [PrintError(message="error: NAR hash mismatch"), WakeUp()]
    f = finished(g.handle(Wake()))
    # a substituter failed: ecFailed, so the derivation goal will not simply build
    assert (f.exit_code, f.result.status) == (ExitCode.FAILED, Status.NoSubstituters)


def test_gone_substitute_is_as_if_it_never_existed():
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(FakeSub({P: info()}),)))
    for _ in range(3):
        g.handle(Wake())
    g.handle(SubstitutionFinished(error=SubstituteGone("gone")))
    assert finished(g.handle(Wake())).exit_code is ExitCode.NO_SUBSTITUTERS


def test_untrusted_info_is_skipped_with_nix_warning():
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(FakeSub({P: info()}, is_trusted=False),),
                                                  untrusted=True))
    effects = g.handle(Wake())
    assert Warn(message=f"the substitute for '{SD.print(P)}' from 'file:///cache' is not signed by any of the keys "
                        "in 'trusted-public-keys'") in effects
    assert finished(effects).result.status is Status.NoSubstituters


def test_query_error_with_fallback_moves_on_and_without_it_fails():
    sub = FakeSub({}, error=StoreError("unable to download 'x': Couldn't resolve host"))
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(sub,), try_fallback=True))
    effects = g.handle(Wake())
    assert PrintError(message="error: unable to download 'x': Couldn't resolve host") in effects
    assert finished(effects).exit_code is ExitCode.NO_SUBSTITUTERS
    g = SubstitutionGoalState(P, False, None, Ctx(substituters=(sub,)))
    f = finished(g.handle(Wake()))
    assert (f.exit_code, f.result.status) == (ExitCode.FAILED, Status.MiscFailure)


def test_key_sorts_before_derivation_goals():
    g = SubstitutionGoalState(P, False, None, Ctx())
    assert g.key() == f"a$p${SD.print(P)}" and g.key() < "b$"
