"""What every command gets: settings, the store configuration, the opened store, and binary streams."""

from __future__ import annotations

import sys

from typing import IO, TYPE_CHECKING

from goalkeeper.store.errors import StoreError
from goalkeeper.store.paths import StoreDir
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import DaemonStoreConfig, LocalStoreConfig, StoreConfig

if TYPE_CHECKING:
    from goalkeeper.store.local import LocalStore


class DaemonStoreUnavailable(StoreError):
    """The command was pointed at a daemon store, and goalkeeper has no daemon client yet."""


class Context:
    """The environment a command runs in.

    Attributes:
        settings: Nix settings after nix.conf and `--option`.
        store_config: the parsed `--store` URI (or `store` setting).
        store_dir: the logical store dir (what store paths start with).
        stdout, stderr: binary streams; commands write bytes.
        stdin: binary stream commands read input from (default: the process's stdin).
    """

    def __init__(self, settings: Settings, store_config: StoreConfig, stdout: IO[bytes], stderr: IO[bytes],
                 stdin: IO[bytes] | None = None):
        self.settings = settings
        self.store_config = store_config
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin if stdin is not None else sys.stdin.buffer
        self._store: "LocalStore | None" = None

    @property
    def store_dir(self) -> StoreDir:
        return self.store_config.store_dir

    def open_store(self) -> "LocalStore":
        """Open the configured store once (creating a local store's layout if missing) and cache it.

        A daemon store (`daemon`, `unix://PATH`) is a `goalkeeper.protocol.client.RemoteStore`,
        which answers LocalStore's query and add methods over the worker protocol.
        """
        if self._store is None:
            config = self.store_config
            if isinstance(config, DaemonStoreConfig):
                # Queries go over the worker protocol; the daemon's log lines to our stderr.
                from goalkeeper.protocol.client import RemoteStore

                def log(text: str) -> None:
                    self.stderr.write(text.encode(errors="surrogateescape") + b"\n")
                    self.stderr.flush()

                self._store = RemoteStore(config, self.settings, log)
                return self._store  # type: ignore[return-value]  # the query subset of LocalStore
            assert isinstance(config, LocalStoreConfig)
            # Imported here so commands that never touch a store don't load SQLite.
            from goalkeeper.store.local import LocalStore

            self._store = LocalStore.open(config, self.settings)
        return self._store

    def close(self) -> None:
        """Close the store if it was opened (and if it has anything to close)."""
        store, self._store = self._store, None
        close = getattr(store, "close", None)
        if close is not None:
            close()
