"""What crosses the spawner's channels: specs as nested primitive tuples, frames without dill."""

from __future__ import annotations

import dataclasses
import pickle
import pickletools
import subprocess
import sys

from goalkeeper.sandbox import spec as spec_module
from goalkeeper.sandbox.messages import FrameDecoder, SetupFailed, Spawn, SpawnRequest, encode
from goalkeeper.sandbox.spec import Credentials, RLimit

from .conftest import plain_spec, sandbox_spec


def _specs(tmp_path):
    yield plain_spec(tmp_path, "true")
    yield sandbox_spec(tmp_path, "true")
    yield sandbox_spec(tmp_path, "true", fixed_output=True)
    yield dataclasses.replace(sandbox_spec(tmp_path, "true"), personality_set=8, umask=0o077,
                              credentials=Credentials(uid=1, gid=2, supplementary_gids=(3, 4)),
                              rlimits=(RLimit(resource=4, soft=0, hard=1),), seccomp=None,
                              env=((b"A", b"\xff\x00"),), kill_with_parent=False)


def test_a_spec_survives_pickling_equal_field_by_field(tmp_path):
    for spec in _specs(tmp_path):
        back = pickle.loads(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
        assert back == spec
        assert type(back.sandbox) is type(spec.sandbox)
        if spec.sandbox is not None:
            assert [type(m) for m in back.sandbox.mounts] == [type(m) for m in spec.sandbox.mounts]


def test_a_spec_pickles_as_one_reconstructor_over_plain_tuples(tmp_path):
    # The speed comes from the C pickler seeing no dataclass but the top-level call.
    data = pickle.dumps(sandbox_spec(tmp_path, "true"), protocol=pickle.HIGHEST_PROTOCOL)
    globals_named = [arg for op, arg, _ in pickletools.genops(data)
                     if op.name in ("STACK_GLOBAL", "GLOBAL", "SHORT_BINUNICODE", "BINUNICODE")
                     and isinstance(arg, str) and arg in dir(spec_module)]
    assert globals_named == ["_from_wire"]


def test_a_spawn_request_reaches_the_spawner_with_its_spec_still_pickled(tmp_path):
    spec = sandbox_spec(tmp_path, "true")
    decoder = FrameDecoder()
    frame = encode(Spawn(build_id=7, spec=spec))
    decoder.feed(frame[:5])
    assert list(decoder.frames()) == []
    decoder.feed(frame[5:])
    (request,) = decoder.frames()
    assert isinstance(request, SpawnRequest) and request.build_id == 7
    assert request.spec() == spec
    assert pickle.loads(request.spec_pickle) == spec  # what a prepared child reads


def _pool_key(spec):
    (request,) = _decoded(encode(Spawn(build_id=1, spec=spec)))
    return request.pool_key


def _decoded(frame: bytes):
    decoder = FrameDecoder()
    decoder.feed(frame)
    return list(decoder.frames())


def test_equal_namespace_sets_give_equal_pool_keys_and_others_not(tmp_path):
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    a = sandbox_spec(one, "true")
    # Built apart, with a different build, chroot and environment: the same key.
    b = sandbox_spec(other, "false", env=((b"X", b"y"),))
    assert a.sandbox.uid_map is not b.sandbox.uid_map
    assert _pool_key(a) == _pool_key(b) is not None
    assert _pool_key(sandbox_spec(one, "true", fixed_output=True)) != _pool_key(a)
    assert _pool_key(dataclasses.replace(a, seccomp=None)) != _pool_key(a)
    assert _pool_key(plain_spec(tmp_path, "true")) is None  # unsandboxed: never pooled


def test_what_only_dill_can_pickle_still_decodes():
    decoder = FrameDecoder()
    decoder.feed(encode(SetupFailed(build_id=1, step="x", errno=0, message=lambda: "closure")))
    (event,) = decoder.frames()
    assert event.message() == "closure"


def test_the_spawner_does_not_import_dill():
    # Every forked child shares the spawner's heap; dill's 4 MB would be copied and unmapped.
    code = "import sys, goalkeeper.sandbox.spawner; print('dill' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout == "False\n"
