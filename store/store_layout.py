"""The local store's directories, schema files and big-lock, set up as Nix 2.8's `LocalStore` constructor does.

Layout (spec §5.1), with S the state dir and L the log dir:
`<real store>/.links`, `S/db/{db.sqlite,schema,big-lock,reserved}`,
`S/{gcroots,profiles,temproots,userpool}`, `S/gcroots/profiles -> S/profiles`,
`S/{profiles,gcroots}/per-user` (0755), and `L/drvs`.
"""

from __future__ import annotations

import grp
import os
import sys

from . import schema
from .db import StoreDB, retry_busy
from .settings import MissingExperimentalFeature
from .locks import BigLock
from .settings import Settings
from .store_config import LocalStoreConfig

CA_DERIVATIONS = "ca-derivations"


def _setting(settings, name: str, default):
    try:
        return settings.get(name)
    except (AttributeError, KeyError):
        return default


class StoreLayout:
    """Paths, settings that shape the store, and the schema/big-lock life cycle."""

    def __init__(self, config: LocalStoreConfig, settings=None):
        self.config = config
        self.settings = settings if settings is not None else Settings()
        self.db_dir = os.path.join(config.state_dir, "db")
        self.db_path = os.path.join(self.db_dir, "db.sqlite")
        self.schema_path = os.path.join(self.db_dir, "schema")
        self.ca_schema_path = os.path.join(self.db_dir, "ca-schema")
        self.links_dir = os.path.join(config.real_store_dir, ".links")
        self.big_lock: BigLock | None = None
        features = _setting(self.settings, "experimental-features", frozenset())
        self.experimental_features = frozenset(features)
        self.ca_derivations = CA_DERIVATIONS in self.experimental_features
        self.use_wal = bool(_setting(self.settings, "use-sqlite-wal", True))
        self.fsync_metadata = bool(_setting(self.settings, "fsync-metadata", True))
        self.sync_before_registering = bool(_setting(self.settings, "sync-before-registering", False))
        self.auto_optimise_store = bool(_setting(self.settings, "auto-optimise-store", False))
        self.reserved_size = int(_setting(self.settings, "gc-reserved-space", 8 * 1024 * 1024))
        self.build_users_group = str(_setting(self.settings, "build-users-group", "") or "")

    def require_ca_derivations(self) -> None:
        if not self.ca_derivations:
            raise MissingExperimentalFeature("ca-derivations")

    # -- directories ------------------------------------------------------------------------

    def create(self) -> None:
        """Create whatever of Nix's layout is missing (never changes what exists)."""
        state = self.config.state_dir
        os.makedirs(self.config.real_store_dir, exist_ok=True)
        os.makedirs(self.links_dir, exist_ok=True)
        profiles = os.path.join(state, "profiles")
        for d in (profiles, os.path.join(state, "temproots"), self.db_dir, os.path.join(state, "userpool"),
                  os.path.join(self.config.log_dir, "drvs")):
            os.makedirs(d, exist_ok=True)
        gcroots = os.path.join(state, "gcroots")
        if not os.path.exists(gcroots):
            os.makedirs(gcroots)
            os.symlink(profiles, os.path.join(gcroots, "profiles"))
        for per_user in (os.path.join(profiles, "per-user"), os.path.join(gcroots, "per-user")):
            os.makedirs(per_user, exist_ok=True)
            os.chmod(per_user, 0o755)
        if os.getuid() == 0 and self.build_users_group:
            self._make_multi_user_store()
        self._reserve_space()

    def _make_multi_user_store(self) -> None:
        try:
            gid = grp.getgrnam(self.build_users_group).gr_gid
        except KeyError:
            # Only a warning when opening the store; building with build users fails later.
            print(f"warning: the group '{self.build_users_group}' specified in 'build-users-group' does not exist",
                  file=sys.stderr)
            return
        st = os.stat(self.config.real_store_dir)
        if st.st_uid != 0 or st.st_gid != gid or st.st_mode & 0o7777 != 0o1775:
            os.chown(self.config.real_store_dir, 0, gid)
            os.chmod(self.config.real_store_dir, 0o1775)

    def _reserve_space(self) -> None:
        # Room that the garbage collector can free when the disk is full (gc-reserved-space).
        path = os.path.join(self.db_dir, "reserved")
        try:
            if os.path.exists(path) and os.stat(path).st_size == self.reserved_size:
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserved_size)
            except OSError:
                os.ftruncate(fd, self.reserved_size)
            finally:
                os.close(fd)
        except OSError:
            pass  # Nix ignores errors here too

    # -- database ---------------------------------------------------------------------------

    def connect(self, create: bool = False) -> StoreDB:
        """A new connection with Nix's settings (the caller's thread owns it)."""
        return StoreDB(self.db_path, create=create, use_wal=self.use_wal, fsync_metadata=self.fsync_metadata)

    def open_database(self) -> None:
        """Take the big-lock shared, then create or check the schema (and ca-schema) as Nix does."""
        self.big_lock = BigLock(os.path.join(self.db_dir, "big-lock"))
        current = schema.read_schema_file(self.schema_path)
        schema.check_main_schema(current)
        with self.connect(create=current == 0) as db:
            if current == 0:
                with db.errors("creating the schema"):
                    schema.create_main_schema(_sqlite_utils(db))
                _write_schema_file(self.schema_path, schema.SCHEMA_VERSION)
            else:
                self._check_tables(db)
            if self.ca_derivations:
                self._migrate_ca_schema(db)

    def _check_tables(self, db: StoreDB) -> None:
        with db.errors("reading the schema"):
            # plain SQL: importing sqlite_utils costs ~120 ms of every command's start-up
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
        missing = {"ValidPaths", "Refs", "DerivationOutputs"} - tables
        if missing:
            raise schema.SchemaError(
                f"database '{self.db_path}' lacks table(s) {', '.join(sorted(missing))}; "
                "it is truncated or not a Nix store database"
            )

    def _migrate_ca_schema(self, db: StoreDB) -> None:
        current = schema.read_schema_file(self.ca_schema_path)
        if current == schema.CA_SCHEMA_VERSION:
            return
        assert self.big_lock is not None
        self.big_lock.upgrade("waiting for exclusive access to the Nix store for ca drvs...")
        try:
            def attempt() -> None:
                with db.transaction("migrating the ca-schema"):
                    schema.migrate_ca_schema(_sqlite_utils(db), current)

            retry_busy(attempt)
            _write_schema_file(self.ca_schema_path, schema.CA_SCHEMA_VERSION)
        finally:
            self.big_lock.downgrade()

    def close(self) -> None:
        if self.big_lock is not None:
            self.big_lock.close()
            self.big_lock = None


def _sqlite_utils(db: StoreDB):
    import sqlite_utils

    return sqlite_utils.Database(db.conn)


def _write_schema_file(path: str, version: int) -> None:
    # Nix writes the bare number, no newline (db/schema is exactly "10").
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(version))
    os.rename(tmp, path)
