"""BinaryCache over file:// and loopback HTTP alike: nix-cache-info, narinfos, verified NAR streams,
realisations, writing; and the narinfo disk cache's TTLs."""

from __future__ import annotations

import json
import os

import pytest

from goalkeeper.store.binary_cache import BinaryCache, CorruptNar, NoSuchBinaryCacheFile, TransferError
from goalkeeper.store.errors import StoreError
from goalkeeper.store.nar import dump_path, hash_path, restore_path
from goalkeeper.store.nar_info_disk_cache import CacheInfo, NarInfoDiskCache, default_path
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.tools.bench.narinfo_queries import make_cache, serve_directory

SD = StoreDir("/nix/store")


def _tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"contents\n" * 1000)
    os.symlink("sub/f", src / "link")
    return src


@pytest.fixture(params=["file", "http"])
def cache_uri(request, tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    if request.param == "file":
        yield root, f"file://{root}"
    else:
        with serve_directory(str(root)) as url:
            yield root, url


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["xz", "zstd", "bzip2", "none"])
def test_written_nar_reads_back_verified(cache_uri, tmp_path, method) -> None:
    root, uri = cache_uri
    src = _tree(tmp_path)
    nar_hash, nar_size = hash_path(str(src))
    path = StorePath("1" * 32 + "-tree")
    info = ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size)
    writer = BinaryCache.open(f"file://{root}?compression={method}")
    writer.init(create=True)
    assert (root / "nix-cache-info").read_text() == "StoreDir: /nix/store\n"
    written = writer.add_to_store(info, dump_path(str(src)))
    if method == "none":  # spec §6: FileHash == NarHash then
        assert (written.file_hash, written.file_size) == (nar_hash, nar_size)
    reader = BinaryCache.open(uri)
    reader.init()
    narinfo = reader.query_nar_info(path)
    assert narinfo == written
    assert reader.query_nar_info(StorePath("1" * 32 + "-other")) is None  # same hash part, other name
    assert reader.query_nar_info(StorePath("2" * 32 + "-tree")) is None
    stream = reader.nar_reader(narinfo)
    restore_path(str(tmp_path / "out"), stream)
    stream.finish()
    assert hash_path(str(tmp_path / "out")) == (nar_hash, nar_size)


@pytest.mark.timeout(30)
def test_mismatches_are_caught_while_streaming(cache_uri, tmp_path) -> None:
    root, uri = cache_uri
    src = _tree(tmp_path)
    nar_hash, nar_size = hash_path(str(src))
    path = StorePath("1" * 32 + "-tree")
    writer = BinaryCache.open(f"file://{root}")
    written = writer.add_to_store(ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size), dump_path(str(src)))
    reader = BinaryCache.open(uri)
    cases = {
        "hash mismatch importing path": written.info.replace(nar_hash=written.file_hash),
        "size mismatch importing path": written.info.replace(nar_size=nar_size + 1),
    }
    for message, info in cases.items():
        stream = reader.nar_reader(type(written)(info=info, url=written.url, compression="xz",
                                                 file_hash=written.file_hash, file_size=written.file_size))
        restore_path(str(tmp_path / message[:4]), stream)
        with pytest.raises(CorruptNar, match=message):
            stream.finish()
    wrong_file = type(written)(info=written.info, url=written.url, compression="xz", file_hash=nar_hash,
                               file_size=written.file_size)
    stream = reader.nar_reader(wrong_file)
    restore_path(str(tmp_path / "fh"), stream)
    with pytest.raises(CorruptNar, match="file hash mismatch"):
        stream.finish()
    os.unlink(root / written.url)
    with pytest.raises(NoSuchBinaryCacheFile, match="does not exist in binary cache"):
        reader.nar_reader(written)
    # a corrupt source path never reaches the cache
    with pytest.raises(CorruptNar, match="refusing to copy corrupted path"):
        writer.add_to_store(ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size + 1), dump_path(str(src)))


@pytest.mark.timeout(30)
def test_cache_info_and_realisations(cache_uri) -> None:
    root, uri = cache_uri
    (root / "nix-cache-info").write_text("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
    cache = BinaryCache.open(uri)
    cache.init()
    assert (cache.priority, cache.want_mass_query) == (40, True)
    overridden = BinaryCache.open(uri + "?priority=10&want-mass-query=false&trusted=1")
    overridden.init()
    assert (overridden.priority, overridden.want_mass_query, overridden.is_trusted) == (10, False, True)
    other = BinaryCache.open(uri + "?store=/gnu/store")
    with pytest.raises(StoreError, match="is for Nix stores with prefix '/nix/store', not '/gnu/store'"):
        other.init()
    # spec §6: a realisation as real Nix writes it
    doc = {"dependentRealisations": {}, "id": "sha256:0551fe92!out",
           "outPath": "4lpn6n89gb8h315mxm7pw99m1l1srpqj-ca", "signatures": []}
    (root / "realisations").mkdir()
    (root / "realisations" / "sha256:0551fe92!out.doi").write_text(json.dumps(doc, separators=(",", ":")))
    assert cache.query_realisation("sha256:0551fe92!out") == doc
    assert cache.query_realisation("sha256:0551fe92!dev") is None


@pytest.mark.timeout(30)
def test_unreachable_http_cache_is_a_transfer_error() -> None:
    cache = BinaryCache.open("http://127.0.0.1:1")
    with pytest.raises(TransferError, match=r"^unable to download 'http://127.0.0.1:1/nix-cache-info': "
                                            r"Couldn't connect to server \(7\)$"):
        cache.init()
    with pytest.raises(StoreError, match="don't know how to open Nix store 'ssh://x'"):
        BinaryCache.open("ssh://x")


@pytest.mark.timeout(30)
def test_http_status_other_than_not_found_is_an_error(tmp_path) -> None:
    root = tmp_path / "cache"
    paths = make_cache(str(root), 3)
    with serve_directory(str(root)) as url:
        cache = BinaryCache.open(url)
        cache.init()
        assert cache.query_nar_info(paths[0]).info.references == frozenset()
        assert cache.query_nar_info(paths[2]).info.references == {paths[0], paths[1]}
        os.unlink(root / f"{paths[1].hash_part}.narinfo")
        assert cache.query_nar_info(paths[1]) is None  # 404: absent
        (root / f"{paths[1].hash_part}.narinfo").mkdir()  # the server redirects a directory: 301
        with pytest.raises(TransferError, match=f"unable to download '{url}/{paths[1].hash_part}.narinfo': "
                                                "HTTP error 301"):
            cache.query_nar_info(paths[1])


@pytest.mark.timeout(30)
def test_disk_cache_ttls(tmp_path) -> None:
    now = [1_000_000.0]
    db = str(tmp_path / "c" / "binary-cache-v6.sqlite")
    cache = NarInfoDiskCache(db, positive_ttl=100, negative_ttl=10, clock=lambda: now[0])
    uri = "http://example"
    path = StorePath("1" * 32 + "-x")
    assert cache.lookup_nar_info(uri, path.hash_part) == ("unknown", None)
    cache.upsert_nar_info(uri, path.hash_part, None)
    assert cache.lookup_nar_info(uri, path.hash_part) == ("unknown", None)  # no BinaryCaches row yet: not kept
    cache.create_cache(uri, CacheInfo("/nix/store", True, 40))
    assert cache.cache_exists(uri) == CacheInfo("/nix/store", True, 40)
    cache.upsert_nar_info(uri, path.hash_part, None)
    assert cache.lookup_nar_info(uri, path.hash_part) == ("invalid", None)
    now[0] += 11
    assert cache.lookup_nar_info(uri, path.hash_part) == ("unknown", None)  # negative TTL passed
    root = tmp_path / "cache"
    paths = make_cache(str(root), 2)
    from goalkeeper.store.narinfo import parse

    narinfo = parse((root / f"{paths[1].hash_part}.narinfo").read_text(), SD, "n")
    cache.upsert_nar_info(uri, paths[1].hash_part, narinfo)
    now[0] += 99
    assert cache.lookup_nar_info(uri, paths[1].hash_part) == ("valid", narinfo)
    cache.close()
    again = NarInfoDiskCache(db, positive_ttl=100, negative_ttl=10, clock=lambda: now[0])  # persists
    assert again.lookup_nar_info(uri, paths[1].hash_part) == ("valid", narinfo)
    now[0] += 2
    assert again.lookup_nar_info(uri, paths[1].hash_part) == ("unknown", None)  # positive TTL passed
    now[0] += 8 * 24 * 3600
    assert again.cache_exists(uri) is None  # nix-cache-info is remembered for a week
    again.close()
    assert default_path({"XDG_CACHE_HOME": "/x"}) == "/x/goalkeeper/binary-cache-v6.sqlite"
