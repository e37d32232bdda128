"""Nix 2.8's DrvOutputSubstitutionGoal as a state machine, one test per transition, without threads."""

from dataclasses import dataclass, field

from goalkeeper.actors.derivation_goal_state import (Finished, PrintError, Wake, WaiteeDone, WantDrvOutputSubstitution,
                                                     WantSubstitution)
from goalkeeper.actors.drv_output_substitution_goal_state import DrvOutputSubstitutionGoalState, RegisterRealisation
from goalkeeper.actors.results import ExitCode, Status
from goalkeeper.actors.substitution_goal_state import Warn
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import hash_bytes
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation

SD = StoreDir()
ID = DrvOutput(hash_bytes("sha256", b"b"), "out")
DEP = DrvOutput(hash_bytes("sha256", b"a"), "out")
OUT = StorePath("0" * 32 + "-b")
DEP_OUT = StorePath("1" * 32 + "-a")


@dataclass
class FakeCache:
    uri: str
    realisations: dict = field(default_factory=dict)
    fails: bool = False

    def query_realisation(self, id):
        if self.fails:
            raise StoreError(f"unable to download '{self.uri}/realisations/{id}.doi'")
        return self.realisations.get(id)


@dataclass
class FakeContext:
    substituters: tuple = ()
    local: dict = field(default_factory=dict)
    store_dir: StoreDir = SD
    keep_going: bool = False
    use_substitutes: bool = True
    try_fallback: bool = False

    def query_realisation(self, id):
        return self.local.get(id)


def run(ctx, *events):
    g = DrvOutputSubstitutionGoalState(ID, False, ctx)
    effects = []
    for event in (Wake(),) + events:
        effects = g.handle(event)
    return g, effects


def test_already_realised_locally_is_success():
    _, effects = run(FakeContext(local={ID: Realisation(ID, OUT)}))
    assert effects == [Finished(exit_code=ExitCode.SUCCESS, result=effects[0].result)]
    assert effects[0].result.status is Status.AlreadyValid


def test_no_substituters_lets_the_derivation_build():
    _, [done] = run(FakeContext())
    assert done.exit_code is ExitCode.NO_SUBSTITUTERS and done.result.status is Status.NoSubstituters


def test_found_realisation_substitutes_dependencies_then_the_path():
    real = Realisation(ID, OUT, dependent_realisations={DEP: DEP_OUT, ID: OUT})
    g, effects = run(FakeContext(substituters=(FakeCache("file:///c", {ID: real}),)))
    assert effects == [WantDrvOutputSubstitution(drv_output=DEP), WantSubstitution(path=OUT)]
    assert g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS)) == []
    effects = g.handle(WaiteeDone(exit_code=ExitCode.SUCCESS))
    assert effects[0] == RegisterRealisation(realisation=real)
    assert effects[1].exit_code is ExitCode.SUCCESS and effects[1].result.status is Status.Substituted


def test_output_path_without_substitute_is_an_incomplete_closure():
    real = Realisation(ID, OUT)
    g, _ = run(FakeContext(substituters=(FakeCache("file:///c", {ID: real}),)))
    [done] = g.handle(WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS))
    assert done.exit_code is ExitCode.INCOMPLETE_CLOSURE  # nothing registered


def test_failed_dependency_fails():
    real = Realisation(ID, OUT)
    g, _ = run(FakeContext(substituters=(FakeCache("file:///c", {ID: real}),)))
    [done] = g.handle(WaiteeDone(exit_code=ExitCode.FAILED))
    assert done.exit_code is ExitCode.FAILED


def test_missing_realisation_tries_the_next_substituter():
    real = Realisation(ID, OUT)
    ctx = FakeContext(substituters=(FakeCache("file:///empty"), FakeCache("file:///c", {ID: real})))
    _, effects = run(ctx)
    assert effects == [WantSubstitution(path=OUT)]


def test_failing_substituter_is_reported_and_counts_as_failure():
    _, effects = run(FakeContext(substituters=(FakeCache("http://x", fails=True),)))
    assert isinstance(effects[0], PrintError) and effects[0].message.startswith("error: unable to download")
    assert effects[1].exit_code is ExitCode.FAILED  # substituterFailed: not "no substituters"


def test_incompatible_dependent_realisation_is_ignored():
    local_other = StorePath("2" * 32 + "-a")
    real = Realisation(ID, OUT, dependent_realisations={DEP: DEP_OUT})
    ctx = FakeContext(substituters=(FakeCache("file:///c", {ID: real}),), local={DEP: Realisation(DEP, local_other)})
    _, effects = run(ctx)
    assert isinstance(effects[0], Warn)
    assert effects[0].message == (f"substituter 'file:///c' has an incompatible realisation for '{DEP}', ignoring.\n"
                                  f"Local:  {SD.print(local_other)}\nRemote: {SD.print(DEP_OUT)}")
    assert effects[1].exit_code is ExitCode.NO_SUBSTITUTERS


def test_key_sorts_before_derivations():
    g = DrvOutputSubstitutionGoalState(ID, False, FakeContext())
    assert g.key() == f"a${ID}"
