"""Nix archives (libutil/archive.cc): dump a path, hash it, parse and restore a NAR stream.

A NAR is a sequence of length-prefixed, zero-padded strings (spec §3):

    nar  = "nix-archive-1" node
    node = "(" "type" ( "regular" ["executable" ""] "contents" <bytes>
                      | "symlink" "target" <target>
                      | "directory" { "entry" "(" "name" <name> "node" node ")" } ) ")"

Everything here streams: file contents move in chunks of about 1 MiB and no
file or NAR is ever held whole in memory. Walking and parsing are iterative, so
a deeply nested tree or a hostile NAR cannot exhaust Python's recursion limit.

The parser is strict where Nix 2.8's is lenient: Nix 2.8 accepts tokens of a
regular file in any order and (through a bug) unsorted directory entries. We
accept exactly what `dumpPath` writes, which is all a real Nix ever sends.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Callable, Iterator, Protocol

from .errors import BadArchive, StoreError
from .hashes import Hash, new_hasher

NAR_VERSION_MAGIC_1 = b"nix-archive-1"
CHUNK_SIZE = 1 << 20  # contents stream in 1 MiB pieces
_FLUSH_AT = 1 << 18  # batch small tokens and files before handing them to a sink
_SMALL_FILE = 1 << 16  # files up to this size are read whole and batched with the tokens
MAX_NAME_LEN = 4096  # PATH_MAX; Linux names are at most 255 bytes, so this only bounds hostile input
MAX_TARGET_LEN = 4096  # PATH_MAX bounds a symlink target
_MAX_KEYWORD_LEN = 16  # longer than every keyword ("nix-archive-1" is 13)

Write = Callable[[bytes], object]


class UnsupportedFileType(StoreError):
    """A path that is neither a regular file, a directory nor a symlink (Nix refuses these)."""


def _str(data: bytes) -> bytes:
    """The wire string of §3.1: u64 length, bytes, zero padding to a multiple of 8."""
    return len(data).to_bytes(8, "little") + data + bytes(-len(data) % 8)


def _pad(size: int) -> bytes:
    return bytes(-size % 8)


_MAGIC = _str(NAR_VERSION_MAGIC_1)
_OPEN, _CLOSE = _str(b"("), _str(b")")
_REGULAR = _OPEN + _str(b"type") + _str(b"regular")
_EXECUTABLE = _str(b"executable") + _str(b"")
_CONTENTS = _str(b"contents")
_SYMLINK = _OPEN + _str(b"type") + _str(b"symlink") + _str(b"target")
_DIRECTORY = _OPEN + _str(b"type") + _str(b"directory")
_ENTRY = _str(b"entry") + _OPEN + _str(b"name")
_NODE = _str(b"node")


# -- dumping --------------------------------------------------------------------------------


def _dump_pieces(path: str | bytes) -> Iterator[bytes | bytearray | memoryview]:
    """Yield the NAR of `path` as pieces that are valid only until the next one is requested.

    Small tokens and small files are batched in one bytearray; big files are read
    into one reused buffer. Callers that keep pieces must copy them (`dump_path` does).
    """
    root = os.fsencode(path)
    out = bytearray(_MAGIC)
    # The buffer for big files is made on the first one: zeroing 1 MiB costs more than
    # dumping a small output whole.
    view: memoryview | None = None
    # Each stack entry is the iterator over one open directory's sorted entries.
    stack: list[Iterator[os.DirEntry]] = []
    st = _lstat(root)
    node, kind = root, stat.S_IFMT(st.st_mode)
    while True:
        if kind == stat.S_IFREG:
            fd = _open(node)
            try:
                st = os.fstat(fd)
                size = st.st_size
                out += _REGULAR
                if st.st_mode & stat.S_IXUSR:
                    out += _EXECUTABLE
                out += _CONTENTS
                out += size.to_bytes(8, "little")
                if size <= _SMALL_FILE:
                    data = os.read(fd, size) if size else b""
                    if len(data) < size:
                        data += _read_rest(fd, node, size - len(data))
                    out += data
                else:
                    yield out
                    out.clear()
                    if view is None:
                        view = memoryview(bytearray(CHUNK_SIZE))
                    left = size
                    while left:
                        n = os.readv(fd, [view[: min(left, CHUNK_SIZE)]])
                        if n == 0:
                            raise StoreError(f"file '{os.fsdecode(node)}' shrank while it was being dumped")
                        left -= n
                        yield view[:n]
            finally:
                os.close(fd)
            out += _pad(size)
            out += _CLOSE
            done = True
        elif kind == stat.S_IFDIR:
            out += _DIRECTORY
            stack.append(iter(_sorted_entries(node)))
            done = False
        elif kind == stat.S_IFLNK:
            out += _SYMLINK
            out += _str(_readlink(node))
            out += _CLOSE
            done = True
        else:
            raise UnsupportedFileType(f"file '{os.fsdecode(node)}' has an unsupported type")
        if len(out) >= _FLUSH_AT:
            yield out
            out.clear()
        # Find the next node: the next entry of the innermost open directory,
        # closing directories (and the entries that hold them) as they run out.
        while True:
            if done:
                if not stack:
                    yield out
                    return
                out += _CLOSE  # ends the `entry (` that held the finished node
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                out += _CLOSE  # ends the directory node
                done = True
                if not stack:
                    yield out
                    return
                continue
            out += _ENTRY
            out += _str(entry.name)
            out += _NODE
            node = entry.path
            kind = _entry_kind(entry)
            break


def _sorted_entries(path: bytes) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError as err:
        raise StoreError(f"opening directory '{os.fsdecode(path)}': {err.strerror}") from err
    entries.sort(key=lambda e: e.name)  # bytes compare as Nix's std::string: raw byte order
    return entries


def _entry_kind(entry: os.DirEntry) -> int:
    # d_type answers these without a syscall on Linux; only odd types need lstat.
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_symlink():
        return stat.S_IFLNK
    return stat.S_IFMT(_lstat(entry.path).st_mode)


def _lstat(path: bytes) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as err:
        raise StoreError(f"getting status of '{os.fsdecode(path)}': {err.strerror}") from err


def _open(path: bytes) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as err:
        raise StoreError(f"opening file '{os.fsdecode(path)}': {err.strerror}") from err


def _readlink(path: bytes) -> bytes:
    try:
        return os.readlink(path)
    except OSError as err:
        raise StoreError(f"reading symbolic link '{os.fsdecode(path)}': {err.strerror}") from err


def _read_rest(fd: int, path: bytes, left: int) -> bytes:
    parts = []
    while left:
        data = os.read(fd, left)
        if not data:
            raise StoreError(f"file '{os.fsdecode(path)}' shrank while it was being dumped")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def dump_path(path: str | bytes) -> Iterator[bytes]:
    """`dumpPath`: yield the NAR serialisation of `path` in chunks of bounded size."""
    for piece in _dump_pieces(path):
        if piece:
            yield bytes(piece)


def dump_path_to(path: str | bytes, *sinks: Write) -> int:
    """Stream the NAR of `path` into each sink (one pass); return the NAR size.

    Sinks are callables taking a bytes-like piece that is valid only during the call,
    e.g. `hasher.update` or a `references.RefScanSink`.
    """
    size = 0
    for piece in _dump_pieces(path):
        size += len(piece)
        for sink in sinks:
            sink(piece)
    return size


def hash_path(path: str | bytes, algo: str = "sha256", *, sinks: tuple[Write, ...] = ()) -> tuple[Hash, int]:
    """`hashPath`: the hash of the NAR of `path` and the NAR's size (narHash, narSize).

    Extra `sinks` see the same stream, so one pass can also scan for references.
    """
    hasher = new_hasher(algo)
    size = dump_path_to(path, hasher.update, *sinks)
    return Hash(algo, hasher.digest()), size


def hash_flat(path: str | bytes, algo: str = "sha256") -> Hash:
    """`hashFile`: the hash of a regular file's contents (`nix-hash --flat`)."""
    hasher = new_hasher(algo)
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise StoreError(f"opening file '{os.fsdecode(path)}': {err.strerror}") from err
    try:
        while n := os.readv(fd, [view]):
            hasher.update(view[:n])
    except OSError as err:
        raise StoreError(f"reading from file: {err.strerror}") from err
    finally:
        os.close(fd)
    return Hash(algo, hasher.digest())


# -- parsing --------------------------------------------------------------------------------


class ParseSink(Protocol):
    """What the parser reports, in stream order (Nix's `ParseSink`); paths are relative bytes."""

    def create_directory(self, path: bytes) -> None: ...

    def create_regular_file(self, path: bytes, executable: bool, size: int) -> None: ...

    def receive_contents(self, data: bytes) -> None: ...

    def close_regular_file(self) -> None: ...

    def create_symlink(self, path: bytes, target: bytes) -> None: ...


class _Reader:
    """Bounded reads from a byte source, counting the offset and optionally teeing the bytes."""

    def __init__(self, source: BinaryIO, tee: Write | None = None):
        self.source = source
        self.tee = tee
        self.pos = 0

    def bad(self, reason: str, position: int | None = None) -> BadArchive:
        return BadArchive(reason, position=self.pos if position is None else position)

    def read(self, n: int) -> bytes:
        data = self.source.read(n)
        if len(data) < n:
            parts = [data]
            got = len(data)
            while got < n:
                more = self.source.read(n - got)
                if not more:
                    raise self.bad("unexpected end of file", self.pos + got)
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        if self.tee is not None:
            self.tee(data)
        self.pos += n
        return data

    def u64(self) -> int:
        return int.from_bytes(self.read(8), "little")

    def padding(self, size: int) -> None:
        start = self.pos
        pad = self.read(-size % 8)
        if pad.count(0) != len(pad):
            raise self.bad("non-zero padding", start + next(i for i, b in enumerate(pad) if b))

    def string(self, max_len: int, what: str) -> bytes:
        start = self.pos
        size = self.u64()
        if size > max_len:
            raise self.bad(f"{what} is too long ({size} bytes)", start)
        data = self.read(size)
        self.padding(size)
        return data

    def token(self) -> tuple[bytes, int]:
        start = self.pos
        return self.string(_MAX_KEYWORD_LEN, "field name"), start

    def expect(self, keyword: bytes, reason: str | None = None) -> None:
        tok, start = self.token()
        if tok != keyword:
            raise self.bad(reason or f"expected '{keyword.decode()}', got {_show(tok)}", start)


def _show(data: bytes) -> str:
    return "'" + data.decode("utf-8", "backslashreplace") + "'"


def _check_name(reader: _Reader, name: bytes, prev: bytes | None, start: int) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise reader.bad(f"NAR contains invalid file name {_show(name)}", start)
    if prev is not None and name <= prev:
        raise reader.bad(f"NAR directory is not sorted ({_show(name)} after {_show(prev)})", start)


def _parse(reader: _Reader, sink: ParseSink | None) -> int:
    magic_start = reader.pos
    if reader.string(_MAX_KEYWORD_LEN, "magic") != NAR_VERSION_MAGIC_1:
        raise reader.bad("input doesn't look like a Nix archive", magic_start)
    # Directories still open, innermost last, with the last entry name seen in each.
    stack: list[list] = []
    path = b""
    while True:
        reader.expect(b"(", "expected open tag")
        reader.expect(b"type")
        kind, start = reader.token()
        if kind == b"regular":
            tok, start = reader.token()
            executable = tok == b"executable"
            if executable:
                marker_start = reader.pos
                if reader.string(_MAX_KEYWORD_LEN, "executable marker"):
                    raise reader.bad("executable marker has non-empty value", marker_start)
                tok, start = reader.token()
            if tok != b"contents":
                raise reader.bad(f"expected 'contents', got {_show(tok)}", start)
            size = reader.u64()
            if sink is not None:
                sink.create_regular_file(path, executable, size)
            left = size
            while left:
                data = reader.read(min(left, CHUNK_SIZE))
                left -= len(data)
                if sink is not None:
                    sink.receive_contents(data)
            reader.padding(size)
            if sink is not None:
                sink.close_regular_file()
            reader.expect(b")")
            done = True
        elif kind == b"symlink":
            reader.expect(b"target")
            target = reader.string(MAX_TARGET_LEN, "symlink target")
            if sink is not None:
                sink.create_symlink(path, target)
            reader.expect(b")")
            done = True
        elif kind == b"directory":
            if sink is not None:
                sink.create_directory(path)
            stack.append([path, None])
            done = False
        else:
            raise reader.bad(f"unknown file type {_show(kind)}", start)
        while True:
            if done:
                if not stack:
                    return reader.pos
                reader.expect(b")")  # ends the `entry (` that held the finished node
            tok, start = reader.token()
            if tok == b")":
                stack.pop()
                done = True
                continue
            if tok != b"entry":
                raise reader.bad(f"unknown field {_show(tok)}", start)
            reader.expect(b"(", "expected open tag")
            reader.expect(b"name", "entry name missing")
            name_start = reader.pos
            name = reader.string(MAX_NAME_LEN, "file name")
            _check_name(reader, name, stack[-1][1], name_start)
            stack[-1][1] = name
            reader.expect(b"node")
            path = stack[-1][0] + b"/" + name if stack[-1][0] else name
            break


def parse(source: BinaryIO, sink: ParseSink | None = None) -> int:
    """`parseDump`: read exactly one NAR from `source`, reporting it to `sink`; return its size.

    Raises:
        BadArchive: with `position` the byte offset of the problem in the stream.
    """
    return _parse(_Reader(source), sink)


def copy(source: BinaryIO, write: Write) -> int:
    """Validate exactly one NAR from `source` while passing its bytes to `write`; return its size.

    Reads nothing past the NAR's last byte, so it finds the end of a NAR embedded in
    another stream (the worker protocol's `AddToStoreNar`, `nix-store --import`).
    """
    return _parse(_Reader(source, write), None)


# -- restoring ------------------------------------------------------------------------------


class RestoreSink:
    """Create the tree a NAR describes under `root` (Nix's `RestoreSink`).

    Like Nix: directories are made 0777 and files 0666 (both less the umask), and an
    executable file gets +x for everyone who may read it; nothing is overwritten.
    """

    def __init__(self, root: str | bytes):
        self.root = os.fsencode(root)
        self.fd = -1
        self.created = False  # whether `root` itself now exists because of us

    def _full(self, path: bytes) -> bytes:
        return self.root + b"/" + path if path else self.root

    def create_directory(self, path: bytes) -> None:
        full = self._full(path)
        try:
            os.mkdir(full, 0o777)
        except OSError as err:
            raise StoreError(f"creating directory '{os.fsdecode(full)}': {err.strerror}") from err
        self.created = True

    def create_regular_file(self, path: bytes, executable: bool, size: int) -> None:
        full = self._full(path)
        try:
            self.fd = os.open(full, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666)
            self.created = True
            if executable:
                mode = os.fstat(self.fd).st_mode
                os.fchmod(self.fd, mode | 0o111)
        except OSError as err:
            raise StoreError(f"creating file '{os.fsdecode(full)}': {err.strerror}") from err

    def receive_contents(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as err:
            raise StoreError(f"writing file: {err.strerror}") from err

    def close_regular_file(self) -> None:
        fd, self.fd = self.fd, -1
        os.close(fd)

    def create_symlink(self, path: bytes, target: bytes) -> None:
        full = self._full(path)
        try:
            os.symlink(target, full)
        except OSError as err:
            raise StoreError(f"creating symlink '{os.fsdecode(full)}': {err.strerror}") from err
        self.created = True

    def abort(self) -> None:
        """Close any open file and remove everything this sink created."""
        if self.fd != -1:
            self.close_regular_file()
        if self.created:
            delete_path(self.root)
            self.created = False


def restore_path(path: str | bytes, source: BinaryIO) -> int:
    """`restorePath`: create `path` from one NAR read from `source`; return the NAR size.

    `path` must not exist. On any error, whatever was created is removed again,
    so a failed restore never leaves a half-built tree behind.

    Raises:
        BadArchive: malformed input (`position` is the byte offset in the stream).
        StoreError: the tree could not be created.
    """
    sink = RestoreSink(path)
    try:
        return parse(source, sink)
    except BaseException:
        sink.abort()
        raise


def delete_path(path: str | bytes) -> None:
    """Remove a file, symlink or whole tree, making read-only directories writable as needed.

    Iterative, like the parser: a NAR may nest deeper than Python's recursion limit,
    and a failed restore of such a NAR must still clean up after itself.
    """
    path = os.fsencode(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    stack: list[tuple[bytes, bool]] = [(path, False)]  # (directory, children already removed)
    while stack:
        directory, emptied = stack.pop()
        if emptied:
            os.rmdir(directory)
            continue
        mode = os.lstat(directory).st_mode
        if mode & 0o700 != 0o700:
            os.chmod(directory, mode | 0o700)  # canonicalised store paths are 0555
        stack.append((directory, True))
        with os.scandir(directory) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
