"""registerValidPaths and friends: Nix's column conventions, one transaction, and refusals that change nothing."""

from __future__ import annotations

import os

import pytest

from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.db import SQLiteError
from goalkeeper.store.errors import BadStorePath, InvalidPath, StoreError
from goalkeeper.store.hashes import sha256
from goalkeeper.store.local import LocalStore
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.schema import SchemaError
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri
from goalkeeper.store.valid_paths import ReferenceCycle, RegistrationError

NAR = sha256(b"some nar")


@pytest.fixture
def store(tmp_path):
    with LocalStore.open(parse_store_uri(str(tmp_path / "st")), Settings.load(overrides=[("build-users-group", "")])) as s:
        yield s


def sp(store, name: str, seed: str | None = None):
    return store.store_dir.make_store_path("output:out", sha256((seed or name).encode()), name)


def rows(store, sql: str) -> list[tuple]:
    return store.db().execute(sql).fetchall()


def test_columns_follow_nix_conventions(store):
    a, b = sp(store, "a"), sp(store, "b")
    store.register_valid_paths([
        ValidPathInfo(path=a, nar_hash=NAR, nar_size=0),
        ValidPathInfo(path=b, nar_hash=NAR, nar_size=12, references={a, b}, deriver=sp(store, "b.drv"),
                      ultimate=True, sigs={"k2:x", "k1:y"}, registration_time=42),
    ])
    (ra, rb) = rows(store, "select path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca "
                           "from ValidPaths order by id")
    assert ra[1] == "sha256:" + NAR.base16()
    assert ra[3:] == (None, None, None, None, None)  # deriver, narSize 0, ultimate false, sigs, ca: NULL
    assert ra[2] > 1_000_000_000  # registrationTime 0 means now
    assert rb[2:] == (42, store.print(sp(store, "b.drv")), 12, 1, "k1:y k2:x", None)
    ida, idb = rows(store, "select id from ValidPaths order by id")
    assert sorted(rows(store, "select referrer, reference from Refs")) == [(idb[0], ida[0]), (idb[0], idb[0])]
    info = store.query_path_info(b)
    assert info.references == {a, b} and info.ultimate and info.sigs == {"k1:y", "k2:x"}
    assert store.query_referrers(a) == {b} and store.query_referrers(b) == {b}
    assert store.compute_fs_closure(b) == {a, b}
    assert store.compute_fs_closure(a, flip_direction=True) == {a, b}


def test_reference_to_invalid_path_changes_nothing(store):
    a, missing = sp(store, "a"), sp(store, "missing")
    with pytest.raises(InvalidPath, match=f"path '{store.print(missing)}' is not valid"):
        store.register_valid_paths([ValidPathInfo(path=a, nar_hash=NAR, references={missing})])
    assert rows(store, "select count(*) from ValidPaths") == [(0,)]


def test_cycle_rolls_back_the_whole_batch(store):
    a, b, c = sp(store, "a"), sp(store, "b"), sp(store, "c")
    with pytest.raises(ReferenceCycle, match="cycle detected in the references of"):
        store.register_valid_paths([
            ValidPathInfo(path=c, nar_hash=NAR),
            ValidPathInfo(path=a, nar_hash=NAR, references={b}),
            ValidPathInfo(path=b, nar_hash=NAR, references={a}),
        ])
    assert rows(store, "select count(*) from ValidPaths") == [(0,)]
    assert rows(store, "select count(*) from Refs") == [(0,)]


def test_references_within_one_batch_in_any_order(store):
    paths = [sp(store, f"p{i}") for i in range(50)]
    infos = [ValidPathInfo(path=p, nar_hash=NAR, references=set(paths[:i])) for i, p in enumerate(paths)]
    store.register_valid_paths(reversed(infos))
    assert store.compute_fs_closure(paths[-1]) == set(paths)
    assert store.topo_sort_paths(paths) == list(reversed(paths))


def test_false_content_address_is_refused(store):
    path = sp(store, "liar")
    with pytest.raises(RegistrationError, match="claims to be content-addressed but isn't"):
        store.register_valid_paths([ValidPathInfo(path=path, nar_hash=NAR, ca=ContentAddress("recursive", NAR))])
    assert not store.is_valid_path(path)


def test_reregistering_updates_only_mutable_columns(store):
    a = sp(store, "a")
    store.register_valid_paths([ValidPathInfo(path=a, nar_hash=NAR, registration_time=5, deriver=sp(store, "x.drv"))])
    other = sha256(b"other")
    store.register_valid_paths([ValidPathInfo(path=a, nar_hash=other, nar_size=7, registration_time=9, ultimate=True)])
    info = store.query_path_info(a)
    assert (info.nar_hash, info.nar_size, info.ultimate, info.registration_time) == (other, 7, True, 5)
    assert info.deriver == sp(store, "x.drv")
    assert rows(store, "select count(*) from ValidPaths") == [(1,)]


def test_add_to_store_bad_input(store, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "ok").write_text("x")
    with pytest.raises(StoreError, match="No such file or directory"):
        store.add_to_store("nope", str(tmp_path / "nope"))
    with pytest.raises(BadStorePath, match="contains illegal character ' '"):
        store.add_to_store("bad name", str(tmp_path / "ok"))
    with pytest.raises(StoreError, match="not a regular file"):
        store.add_to_store("d", str(tmp_path / "d"), method="flat")
    with pytest.raises(InvalidPath):
        store.add_text_to_store("t", b"x", [sp(store, "missing")])
    assert rows(store, "select count(*) from ValidPaths") == [(0,)]
    assert sorted(os.listdir(store.config.real_store_dir)) == [".links"]


def test_invalid_leftover_is_replaced(store, tmp_path):
    (tmp_path / "f").write_text("hello\n")
    expected = store.store_dir.parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
    real = store.real_path(expected)
    os.makedirs(os.path.join(real, "junk"))  # what a crash between rename and register could leave
    assert store.add_to_store("hello.txt", str(tmp_path / "f")) == expected
    with open(real) as f:
        assert f.read() == "hello\n"
    assert not os.path.exists(real + ".lock")


def test_delete_invalid_path(store, tmp_path):
    (tmp_path / "f").write_text("x")
    valid = store.add_to_store("f", str(tmp_path / "f"))
    with pytest.raises(StoreError, match="still valid"):
        store.delete_invalid_path(valid)
    stray = sp(store, "stray")
    os.makedirs(os.path.join(store.real_path(stray), "sub"))
    os.chmod(os.path.join(store.real_path(stray), "sub"), 0o555)
    assert store.delete_invalid_path(stray)
    assert not os.path.lexists(store.real_path(stray))


def test_derivation_outputs_rows_and_bad_drv(store):
    a_out = store.store_dir.parse("/nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a")
    text = ('Derive([("out","/nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a","","")],[],[],"x86_64-linux",'
            '"/bin/sh",["-c","echo hello > $out"],[("builder","/bin/sh"),("name","a"),'
            '("out","/nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a"),("system","x86_64-linux")])')
    drv = store.add_text_to_store("a.drv", text)
    assert store.print(drv) == "/nix/store/9kgc4kbilwricwa5g0y66zbnxkz66hkr-a.drv"  # as real nix-instantiate
    assert store.query_partial_derivation_output_map(drv) == {"out": a_out}
    liar = text.replace("dcgxgfrhy8mb76rg8f1djpw23cl3fzmx", "0" * 32)
    with pytest.raises(RegistrationError, match="has incorrect output"):
        store.add_text_to_store("a.drv", liar)
    assert rows(store, "select count(*) from ValidPaths") == [(1,)]


def test_truncated_database_is_a_clear_error(tmp_path):
    uri = str(tmp_path / "st")
    settings = Settings.load(overrides=[("build-users-group", "")])
    with LocalStore.open(parse_store_uri(uri), settings) as store:
        for i in range(200):
            store.add_text_to_store(f"t{i}", f"text {i}".encode())
    db = tmp_path / "st/nix/var/nix/db/db.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    with pytest.raises((SQLiteError, SchemaError)) as err:
        with LocalStore.open(parse_store_uri(uri), settings) as store:
            store.query_all_valid_paths()
    assert "db.sqlite" in str(err.value)
    db.write_bytes(b"")
    with pytest.raises(SchemaError, match="truncated or not a Nix store database"):
        LocalStore.open(parse_store_uri(uri), settings)


def test_newer_schema_is_refused(tmp_path):
    uri = str(tmp_path / "st")
    settings = Settings.load(overrides=[("build-users-group", "")])
    LocalStore.open(parse_store_uri(uri), settings).close()
    (tmp_path / "st/nix/var/nix/db/schema").write_text("11")
    with pytest.raises(SchemaError, match="current Nix store schema is version 11, but I only support 10"):
        LocalStore.open(parse_store_uri(uri), settings)


def test_threads_each_get_a_connection(store):
    import threading

    paths = [sp(store, f"t{i}") for i in range(40)]
    errors = []

    def work(chunk):
        try:
            for p in chunk:
                store.register_valid_path(ValidPathInfo(path=p, nar_hash=NAR))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(paths[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert store.query_all_valid_paths() == set(paths)


def test_realisations_need_ca_derivations_and_follow_nix_rows(tmp_path):
    from goalkeeper.store.realisations import DrvOutput, Realisation, RealisationError

    uri = str(tmp_path / "ca")
    plain = LocalStore.open(parse_store_uri(uri), Settings.load(overrides=[("build-users-group", "")]))
    with pytest.raises(StoreError, match="experimental Nix feature 'ca-derivations' is disabled"):
        plain.query_realisation(DrvOutput(sha256(b"d"), "out"))
    plain.close()
    settings = Settings.load(overrides=[("build-users-group", ""), ("extra-experimental-features", "ca-derivations")])
    with LocalStore.open(parse_store_uri(uri), settings) as store:
        a, b = sp(store, "a"), sp(store, "b")
        store.register_valid_paths([ValidPathInfo(path=a, nar_hash=NAR), ValidPathInfo(path=b, nar_hash=NAR)])
        ida, idb = DrvOutput(sha256(b"drv a"), "out"), DrvOutput(sha256(b"drv b"), "out")
        store.register_drv_output(Realisation(ida, a))
        store.register_drv_output(Realisation(idb, b, frozenset({"k:s"}), {ida: a}))
        got = store.query_realisation(idb)
        assert got.out_path == b and got.signatures == {"k:s"} and got.dependent_realisations == {ida: a}
        assert rows(store, "select drvPath, outputName, signatures from Realisations order by id") == [
            ("sha256:" + ida.drv_hash.base16(), "out", ""), ("sha256:" + idb.drv_hash.base16(), "out", "k:s")]
        with pytest.raises(RealisationError, match="already have another one locally"):
            store.register_drv_output(Realisation(ida, b))
        with pytest.raises(RealisationError, match="non existent"):
            store.register_drv_output(Realisation(DrvOutput(sha256(b"c"), "out"), a,
                                                  dependent_realisations={DrvOutput(sha256(b"zz"), "out"): a}))
        assert store.query_realisation(DrvOutput(sha256(b"c"), "out")) is None
        assert str(ida) == f"sha256:{ida.drv_hash.base16()}!out" and DrvOutput.parse(str(ida)) == ida


def test_closure_query_equals_the_path_by_path_walk(store):
    import random

    from goalkeeper.store.closure import compute_fs_closure as walk

    rng = random.Random(4)
    paths = [sp(store, f"q{i}") for i in range(60)]
    infos = []
    for i, p in enumerate(paths):
        refs = set(rng.sample(paths[:i], min(i, rng.randrange(4))))
        if rng.random() < 0.2:
            refs.add(p)  # a self reference
        infos.append(ValidPathInfo(path=p, nar_hash=NAR, references=refs))
    store.register_valid_paths(infos)
    for _ in range(30):
        roots = rng.sample(paths, rng.randrange(1, 5))
        assert store.compute_fs_closure(roots) == walk(store, roots)
    assert store.compute_fs_closure([]) == set()
    missing = sp(store, "missing")
    with pytest.raises(InvalidPath, match=f"path '{store.print(missing)}' is not valid"):
        store.compute_fs_closure([paths[0], missing])
    with pytest.raises(InvalidPath, match=f"path '{store.print(missing)}' is not valid"):
        store.compute_fs_closure(missing)


def test_nar_hashes_read_back_in_any_spelling_nix_accepts(store):
    a = sp(store, "a")
    store.register_valid_paths([ValidPathInfo(path=a, nar_hash=NAR)])
    for spelling in ("sha256:" + NAR.base16().upper(), "sha256:" + NAR.base32(), "sha256:" + NAR.base16()):
        store.db().execute("update ValidPaths set hash = ?", (spelling,))
        assert store.query_path_info(a).nar_hash == NAR


def test_a_parsed_derivation_is_kept_while_its_file_is_unchanged(store):
    from goalkeeper.store.derivation import Derivation, InputAddressed

    def drv(text: str) -> Derivation:
        return Derivation(name="d", outputs={"out": InputAddressed(sp(store, "d"))}, platform="x86_64-linux",
                          builder="/bin/sh", args=("-c", text), env={"out": store.print(sp(store, "d"))})

    first = drv("true")
    path = sp(store, "d.drv")  # readInvalidDerivation: it need not be valid
    real = store.real_path(path)
    with open(real, "wb") as f:
        f.write(first.unparse(store.store_dir))
    assert store.read_derivation(path) == first
    assert store.read_derivation(path) is store.read_derivation(path)  # parsed once
    with open(real, "wb") as f:  # the same path with other contents: read again
        f.write(drv("false").unparse(store.store_dir))
    assert store.read_derivation(path) == drv("false")
    os.unlink(real)
    with pytest.raises(StoreError, match="cannot read derivation"):
        store.read_derivation(path)
