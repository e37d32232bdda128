"""The restricted store of a recursive build, in-process, through goalkeeper's own client:
what Nix's RestrictedStore shows, censors and refuses (texts from Nix 2.8's
local-derivation-goal.cc), and what becomes a dependency of the build."""

from __future__ import annotations

import os

import pytest

from goalkeeper.actors.build_runner import BuildRunner
from goalkeeper.actors.goal_context import StoreReader
from goalkeeper.actors.recursive_daemon import start_recursive_daemon
from goalkeeper.actors.start_builder import BuildPlan
from goalkeeper.actors.store_actor import start_store_actor
from goalkeeper.actors.worker import GoalServices
from goalkeeper.protocol.client import RemoteStore
from goalkeeper.protocol.errors import RemoteError
from goalkeeper.protocol.serializers import DerivedPath
from goalkeeper.sandbox.spec import BuildSpec
from goalkeeper.store.local import LocalStore
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import DaemonStoreConfig, parse_store_uri

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(tmp_path):
    """(store, daemon, client, input path, outside path): a restricted daemon whose build has
    one input; another valid path refers to the input but is outside the closure."""
    settings = Settings.load(conf_dir=str(tmp_path), environ={"NIX_USER_CONF_FILES": ""},
                             overrides=[("build-users-group", ""), ("substituters", "")])
    store = LocalStore.open(parse_store_uri(str(tmp_path / "st")), settings)
    store_ref = start_store_actor(store)
    runner = BuildRunner(log_dir=store.config.log_dir, settings=settings)
    runner.start()
    reader = StoreReader(store)
    services = GoalServices(store=store, reader=reader, settings=settings, store_ref=store_ref, runner=runner)
    inp = store.add_text_to_store("input", b"in")
    outside = store.add_text_to_store("outside", b"out " + store.print(inp).encode(), [inp])
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    plan = BuildPlan(drv_path=inp, build_dir=str(build_dir), chroot_root=None, use_chroot=False,
                     scratch_outputs={}, input_rewrites={}, redirected_outputs={},
                     spec=BuildSpec(builder=b"/bin/true", argv=(b"true",), env=(), build_dir=str(build_dir),
                                    build_dir_in_sandbox=str(build_dir), cwd=str(build_dir)),
                     recursive=True)
    daemon = start_recursive_daemon(services, plan, frozenset({inp}))
    client = RemoteStore(DaemonStoreConfig(daemon.socket_path), log=lambda text: None)
    try:
        yield store, daemon, client, inp, outside
    finally:
        client.close()
        daemon.stop()
        runner.stop()
        store_ref.stop()
        reader.close()
        store.close()


def test_only_the_closure_is_visible_and_censored(served):
    store, daemon, client, inp, outside = served
    assert oct(os.stat(daemon.socket_path).st_mode & 0o777) == "0o600"
    info = client.query_path_info(inp)
    assert store.query_path_info(inp).registration_time > 0
    assert (info.registration_time, info.ultimate, info.sigs, info.deriver) == (0, False, frozenset(), None)
    assert info.nar_hash == store.query_path_info(inp).nar_hash
    assert client.query_path_info(outside) is None and not client.is_valid_path(outside)
    assert client.query_all_valid_paths() == {inp}
    assert client.query_referrers(inp) == set()  # `outside` refers to it, but is not visible


@pytest.mark.parametrize("call, message", [
    (lambda c, p: c.query_partial_derivation_output_map(p),
     "cannot query output map for unknown path '{}' in recursive Nix"),
    (lambda c, p: c.build_paths([DerivedPath(p)]), "cannot build '{}' in recursive Nix because path is unknown"),
    (lambda c, p: c.query_path_from_hash_part(p.hash_part), "queryPathFromHashPart"),
    (lambda c, p: c.ensure_path(p), "cannot substitute unknown path '{}' in recursive Nix"),
])
def test_refusals_name_nix_reasons(served, call, message):
    store, _daemon, client, _inp, outside = served
    with pytest.raises(RemoteError) as e:
        call(client, outside)
    assert message.format(store.print(outside)) in str(e.value)


def test_added_paths_become_dependencies_and_the_socket_goes(served):
    store, daemon, client, inp, outside = served
    added = client.add_text_to_store("added", b"text", [inp])
    assert client.is_valid_path(added) and client.query_all_valid_paths() == {inp, added}
    client.close()
    assert daemon.stop() == frozenset({added})
    assert daemon.added_paths == frozenset({added})
    assert not os.path.exists(daemon.socket_path)


def test_build_derivation_is_refused_as_nix_refuses_it(served):
    from goalkeeper.store.derivation import BasicDerivation, InputAddressed

    store, _daemon, client, _inp, _outside = served
    drv_path = store.store_dir.parse("/nix/store/" + "1" * 32 + "-x.drv")
    out = store.store_dir.parse("/nix/store/" + "2" * 32 + "-x")
    drv = BasicDerivation(name="x", outputs={"out": InputAddressed(out)}, input_srcs=frozenset(),
                          platform="x86_64-linux", builder="/bin/sh", args=(), env={"out": store.print(out)})
    # an untrusted client may not have input-addressed derivations built from a description
    with pytest.raises(RemoteError, match="you are not privileged to build input-addressed derivations"):
        client.build_derivation(drv_path, drv)
