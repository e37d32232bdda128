"""A disk cache of narinfo lookups, with positive and negative TTLs (libstore/nar-info-disk-cache.cc).

Nix keeps `~/.cache/nix/binary-cache-v6.sqlite`; goalkeeper keeps the same
schema in its own file, `$XDG_CACHE_HOME/goalkeeper/binary-cache-v6.sqlite`
(or `~/.cache/goalkeeper/…`), so the two never share or corrupt each other's
state. As in Nix:
- a cache's `nix-cache-info` (store dir, WantMassQuery, Priority) is
  remembered for 7 days;
- a narinfo found is remembered for `narinfo-cache-positive-ttl` (30 days),
  one not found for `narinfo-cache-negative-ttl` (1 hour);
- entries older than the longer TTL are purged at most once a day.
Only HTTP caches use it (Nix's `file://` store does not: a local lookup is as
cheap as the cache's).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from .content_address import ContentAddress
from .hashes import Hash
from .narinfo import NarInfo
from .path_info import ValidPathInfo
from .paths import StorePath

CACHE_INFO_TTL = 7 * 24 * 3600
PURGE_INTERVAL = 24 * 3600

SCHEMA = """
create table if not exists BinaryCaches (
    id        integer primary key autoincrement not null,
    url       text unique not null,
    timestamp integer not null,
    storeDir  text not null,
    wantMassQuery integer not null,
    priority  integer not null
);
create table if not exists NARs (
    cache            integer not null,
    hashPart         text not null,
    namePart         text,
    url              text,
    compression      text,
    fileHash         text,
    fileSize         integer,
    narHash          text,
    narSize          integer,
    refs             text,
    deriver          text,
    sigs             text,
    ca               text,
    timestamp        integer not null,
    present          integer not null,
    primary key (cache, hashPart),
    foreign key (cache) references BinaryCaches(id) on delete cascade
);
create table if not exists LastPurge (
    dummy            text primary key,
    value            integer
);
"""


@dataclass(frozen=True, slots=True)
class CacheInfo:
    store_dir: str
    want_mass_query: bool
    priority: int


def default_path(env=os.environ) -> str:
    """`$XDG_CACHE_HOME/goalkeeper/binary-cache-v6.sqlite`, or under `~/.cache`."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "goalkeeper", "binary-cache-v6.sqlite")


class NarInfoDiskCache:
    """One SQLite file shared by the threads of a process (one connection under a lock).

    Args:
        path: the database file (created with its directory if missing).
        positive_ttl, negative_ttl: seconds a found / not-found answer stays good.
        clock: seconds since the epoch (tests move time).
    """

    def __init__(self, path: str | None = None, *, positive_ttl: int = 30 * 24 * 3600,
                 negative_ttl: int = 3600, clock=time.time):
        self.path = path or default_path()
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        # As Nix: losing the cache in a crash is harmless, waiting for fsync on every answer is not.
        self._db.execute("pragma synchronous = off")
        self._db.execute("pragma main.journal_mode = truncate")
        self._db.executescript(SCHEMA)
        self._purge()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _now(self) -> int:
        return int(self._clock())

    def _purge(self) -> None:
        """Delete entries no TTL can revive, at most once per PURGE_INTERVAL (across processes)."""
        now = self._now()
        with self._lock:
            row = self._db.execute("select value from LastPurge").fetchone()
            if row is not None and row[0] is not None and now - row[0] < PURGE_INTERVAL:
                return
            self._db.execute("delete from NARs where ((present = 0 and timestamp < ?) or "
                             "(present = 1 and timestamp < ?))",
                             (now - self.negative_ttl, now - self.positive_ttl))
            self._db.execute("insert or replace into LastPurge(dummy, value) values ('', ?)", (now,))

    # -- caches -------------------------------------------------------------------------------

    def create_cache(self, uri: str, info: CacheInfo) -> None:
        with self._lock:
            self._db.execute("insert or replace into BinaryCaches(url, timestamp, storeDir, wantMassQuery, priority) "
                             "values (?, ?, ?, ?, ?)",
                             (uri, self._now(), info.store_dir, int(info.want_mass_query), info.priority))
            self._ids.pop(uri, None)

    def cache_exists(self, uri: str) -> CacheInfo | None:
        """The remembered nix-cache-info of `uri`, if fresher than a week."""
        with self._lock:
            row = self._db.execute("select id, storeDir, wantMassQuery, priority from BinaryCaches "
                                   "where url = ? and timestamp > ?", (uri, self._now() - CACHE_INFO_TTL)).fetchone()
        if row is None:
            return None
        self._ids[uri] = row[0]
        return CacheInfo(row[1], bool(row[2]), row[3])

    def _cache_id(self, uri: str) -> int | None:
        cache_id = self._ids.get(uri)
        if cache_id is None:
            row = self._db.execute("select id from BinaryCaches where url = ?", (uri,)).fetchone()
            if row is None:
                return None
            cache_id = self._ids[uri] = row[0]
        return cache_id

    # -- narinfos -----------------------------------------------------------------------------

    def lookup_nar_info(self, uri: str, hash_part: str) -> tuple[str, NarInfo | None]:
        """("valid", narinfo), ("invalid", None) for a remembered absence, or ("unknown", None)."""
        now = self._now()
        with self._lock:
            cache_id = self._cache_id(uri)
            if cache_id is None:
                return "unknown", None
            row = self._db.execute(
                "select present, namePart, url, compression, fileHash, fileSize, narHash, narSize, refs, deriver, "
                "sigs, ca from NARs where cache = ? and hashPart = ? and "
                "((present = 0 and timestamp > ?) or (present = 1 and timestamp > ?))",
                (cache_id, hash_part, now - self.negative_ttl, now - self.positive_ttl)).fetchone()
        if row is None:
            return "unknown", None
        if not row[0]:
            return "invalid", None
        (_, name, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, sigs, ca) = row
        info = ValidPathInfo(
            path=StorePath.from_parts(hash_part, name), nar_hash=Hash.parse_any_prefixed(nar_hash),
            nar_size=nar_size or 0, references=[StorePath(r) for r in (refs or "").split(" ") if r],
            deriver=StorePath(deriver) if deriver else None, sigs=[s for s in (sigs or "").split(" ") if s],
            ca=ContentAddress.parse(ca) if ca else None)
        return "valid", NarInfo(info=info, url=url or "", compression=compression or "bzip2",
                                file_hash=Hash.parse_any_prefixed(file_hash) if file_hash else None,
                                file_size=file_size or 0)

    def upsert_nar_info(self, uri: str, hash_part: str, narinfo: NarInfo | None) -> None:
        """Remember what `uri` said about `hash_part` (None: it has no such path)."""
        now = self._now()
        with self._lock:
            cache_id = self._cache_id(uri)
            if cache_id is None:
                return  # Nix only caches narinfos of caches it registered with create_cache
            if narinfo is None:
                self._db.execute("insert or replace into NARs(cache, hashPart, timestamp, present) "
                                 "values (?, ?, ?, 0)", (cache_id, hash_part, now))
                return
            info = narinfo.info
            self._db.execute(
                "insert or replace into NARs(cache, hashPart, namePart, url, compression, fileHash, fileSize, "
                "narHash, narSize, refs, deriver, sigs, ca, timestamp, present) "
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (cache_id, hash_part, info.path.name, narinfo.url, narinfo.compression,
                 str(narinfo.file_hash) if narinfo.file_hash is not None else None, narinfo.file_size,
                 str(info.nar_hash), info.nar_size, " ".join(sorted(r.base for r in info.references)),
                 info.deriver.base if info.deriver else None, " ".join(sorted(info.sigs)),
                 info.ca.render() if info.ca is not None else None, now))
