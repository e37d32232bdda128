"""The store database's schema, exactly as Nix 2.8 creates it (libstore/schema.sql, ca-specific-schema.sql).

Nix keeps the schema version in files beside the database, not in SQLite:
`db/schema` holds `10` (no newline) and, only once ca-derivations has been
enabled, `db/ca-schema` holds `3`. Nix runs the main DDL only when `schema` is
missing or 0, and runs the ca-schema migrations in order up to 3. SQLite keeps
the DDL text in `sqlite_master` (normalising the leading `create table if not
exists` to `CREATE TABLE`), so the text below reproduces a Nix-made database
row for row — `tests/store/test_local_schema.py` checks that against real Nix.

The ca-schema steps are registered functions (`@ca_migration(n)`) run through
sqlite-utils, in the style of sqlite-utils' own migration helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import sqlite3

if TYPE_CHECKING:  # only the migrations use it, and they get a Database handed in
    import sqlite_utils

from .errors import StoreError

SCHEMA_VERSION = 10  # nixSchemaVersion in Nix 2.8
CA_SCHEMA_VERSION = 3  # nixCASchemaVersion in Nix 2.8 (local-store.cc migrateCASchema)


class SchemaError(StoreError):
    """The database's schema is one goalkeeper cannot use (too new, too old, or unreadable)."""


SCHEMA_SQL = """\
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"""

# ca-specific-schema.sql of 2.8: the whole current ca-schema (version 3) for a fresh store.
CA_SCHEMA_SQL = """\
create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null, -- symbolic output id, usually "out"
    outputPath integer not null,
    signatures text, -- space-separated list
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);

create index if not exists IndexRealisations on Realisations(drvPath, outputName);

create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);

-- used by QueryRealisationReferences
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
-- used by cascade deletion when ValidPaths is deleted
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
"""

def run_script(db: sqlite_utils.Database, script: str) -> None:
    """Run `script` statement by statement.

    Unlike `sqlite3.executescript` this never commits behind our back, so a
    migration stays inside the caller's transaction.
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""
    if pending.strip() and not all(l.strip().startswith("--") or not l.strip() for l in pending.splitlines()):
        raise SchemaError(f"incomplete SQL statement in schema script: {pending!r}")


Migration = Callable[["sqlite_utils.Database"], None]

#: ca-schema version -> the step that brings a database from version-1 to version.
CA_MIGRATIONS: dict[int, Migration] = {}


def ca_migration(version: int) -> Callable[[Migration], Migration]:
    """Register the step that upgrades the ca-schema to `version`."""

    def register(fn: Migration) -> Migration:
        if version in CA_MIGRATIONS:
            raise ValueError(f"ca-schema migration {version} registered twice")
        CA_MIGRATIONS[version] = fn
        return fn

    return register


@ca_migration(1)
def _ca_create(db: sqlite_utils.Database) -> None:
    # Nix 2.8 runs the whole current ca-specific-schema.sql for a fresh store
    # and jumps straight to the current version.
    run_script(db, CA_SCHEMA_SQL)


@ca_migration(2)
def _ca_add_realisation_id(db: sqlite_utils.Database) -> None:
    # Schema 1 of Nix 2.4 had Realisations keyed by (drvPath, outputName)
    # without `id`; Nix's "ugly little sql dance" copies it into the new shape.
    if "id" in db["Realisations"].columns_dict:
        return
    run_script(
        db,
        """
        create table Realisations2 (
            id integer primary key autoincrement not null,
            drvPath text not null,
            outputName text not null, -- symbolic output id, usually "out"
            outputPath integer not null,
            signatures text, -- space-separated list
            foreign key (outputPath) references ValidPaths(id) on delete cascade
        );
        insert into Realisations2 (drvPath, outputName, outputPath, signatures)
            select drvPath, outputName, outputPath, signatures from Realisations;
        drop table Realisations;
        alter table Realisations2 rename to Realisations;
        create index if not exists IndexRealisations on Realisations(drvPath, outputName);
        """
    )


@ca_migration(3)
def _ca_add_indices(db: sqlite_utils.Database) -> None:
    run_script(
        db,
        """
        -- used by QueryRealisationReferences
        create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
        -- used by cascade deletion when ValidPaths is deleted
        create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
        """
    )


def read_schema_file(path: str, what: str = "schema") -> int:
    """`getSchema`: the version in `path`, 0 if it does not exist."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("ascii", errors="replace")
    except FileNotFoundError:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        raise SchemaError(f"'{path}' is corrupt") from None


def check_main_schema(current: int) -> None:
    """Refuse schemas goalkeeper cannot use; Nix's wording for a newer one."""
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"current Nix store schema is version {current}, but I only support {SCHEMA_VERSION}"
        )
    if 0 < current < SCHEMA_VERSION:
        # Nix 2.8 upgrades 7..9 in place; stores that old predate 2014 and we refuse them.
        raise SchemaError(
            f"current Nix store schema is version {current}; upgrade it with Nix first "
            f"(goalkeeper supports only {SCHEMA_VERSION})"
        )


def create_main_schema(db: sqlite_utils.Database) -> None:
    run_script(db, SCHEMA_SQL)


def migrate_ca_schema(db: sqlite_utils.Database, current: int) -> int:
    """Run the registered ca-schema steps after `current`; return the new version."""
    if current > CA_SCHEMA_VERSION:
        raise SchemaError(
            f"current Nix store ca-schema is version {current}, but I only support {CA_SCHEMA_VERSION}"
        )
    if current == 0:
        # A fresh store gets the current DDL in one go, as Nix does.
        CA_MIGRATIONS[1](db)
        return CA_SCHEMA_VERSION
    for version in range(current + 1, CA_SCHEMA_VERSION + 1):
        CA_MIGRATIONS[version](db)
    return CA_SCHEMA_VERSION
