"""The `goalkeeper` command line: the global frame, command discovery, and the one error boundary.

    goalkeeper [--store URI] [--option NAME VALUE]... COMMAND [ARGS]...

Like Nix, the global options are accepted after the command too, and settings
are applied in command-line order. Every module in `goalkeeper.tools.commands`
that defines NAME, HELP, add_arguments(parser) and run(args, ctx) is a command.

Errors: commands raise `StoreError`; `main` prints `error: <message>` on stderr
and returns the error's `exit_status`. Nothing a user types should produce a
traceback; an unexpected exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType
from typing import IO, Sequence

from goalkeeper.store.errors import StoreError
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

from .context import Context

PROG = "goalkeeper"
NIX_VERSION = "2.8.0"  # the Nix release whose behaviour we reproduce
SIGPIPE_STATUS = 128 + 13  # what a shell reports for a process killed by SIGPIPE
SIGINT_STATUS = 128 + 2


class UsageError(StoreError):
    """Bad command-line syntax (argparse's complaints)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors raise UsageError and output goes to our binary streams."""

    def __init__(self, *args, streams: tuple[IO[bytes], IO[bytes]], **kwargs):
        # Nix accepts no abbreviated options (`--sto`), and neither may we: an abbreviation's
        # value could be mistaken for the command word.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._streams = streams

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)

    def _print_message(self, message: str, file=None) -> None:
        if message:
            stream = self._streams[1] if file is sys.stderr else self._streams[0]
            stream.write(message.encode())


class _AppendSetting(argparse.Action):
    """Collect `--option NAME VALUE` (and setting flags) in command-line order."""

    def __init__(self, *args, setting: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.setting = setting

    def __call__(self, parser, namespace, values, option_string=None):
        pairs = list(getattr(namespace, self.dest, None) or [])
        pairs.append((self.setting, values) if self.setting else tuple(values))
        setattr(namespace, self.dest, pairs)


def _add_global_options(parser: argparse.ArgumentParser, where: str) -> None:
    # Separate dests before and after the command: argparse copies the
    # subcommand's namespace over the main one, which would drop earlier values.
    group = parser.add_argument_group("global options")
    group.add_argument("--store", dest=f"store_{where}", metavar="URI", default=argparse.SUPPRESS,
                       help="the store to use (default: the 'store' setting, i.e. $NIX_REMOTE or 'auto')")
    group.add_argument("--option", dest=f"settings_{where}", nargs=2, metavar=("NAME", "VALUE"),
                       action=_AppendSetting, default=argparse.SUPPRESS,
                       help="set the Nix setting NAME to VALUE (overriding nix.conf)")
    group.add_argument("--extra-experimental-features", dest=f"settings_{where}", metavar="FEATURES",
                       action=_AppendSetting, setting="extra-experimental-features", default=argparse.SUPPRESS,
                       help="enable additional experimental features")


def discover_commands(argv: Sequence[str] | None = None) -> list[ModuleType]:
    """The command modules in goalkeeper.tools.commands, sorted by NAME.

    With `argv`, only the module of the command it names is imported when there is
    one (module `show_derivation` for `show-derivation`): importing every command
    would load SQLite and the derivation code just to hash a path, and start-up
    time is most of a short command's cost.
    """
    from . import commands

    names = [info.name for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    wanted = _command_word(argv, names) if argv is not None else None
    found = []
    for name in [wanted] if wanted else names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        # Helper modules shared by commands have no NAME; they are not commands.
        if all(hasattr(module, attr) for attr in ("NAME", "HELP", "add_arguments", "run")):
            found.append(module)
    return sorted(found, key=lambda m: m.NAME)


# global options and how many values follow them (for finding the command word)
_OPTIONS_WITH_VALUES = {"--store": 1, "--option": 2, "--extra-experimental-features": 1}


def _command_word(argv: Sequence[str], module_names: list[str]) -> str | None:
    """The module name of the first non-option word of `argv`, if it names a command module."""
    skip = 0
    for token in argv:
        if skip:
            skip -= 1
        elif token in _OPTIONS_WITH_VALUES:
            skip = _OPTIONS_WITH_VALUES[token]
        elif token in ("-h", "--help"):
            return None  # the global help lists every command
        elif not token.startswith("-"):
            name = token.replace("-", "_")
            return name if name in module_names else None
    return None


def version_string() -> str:
    try:
        from importlib.metadata import version

        ours = version("goalkeeper")
    except Exception:  # not installed as a distribution (e.g. run from a bare checkout)
        ours = "unknown"
    return f"{PROG} (Nix-compatible {NIX_VERSION}) {ours}"


def build_parser(stdout: IO[bytes], stderr: IO[bytes],
                 argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The global frame plus a subparser per command (only `argv`'s command, if it names one)."""
    streams = (stdout, stderr)
    parser = _Parser(prog=PROG, description="A Nix-compatible build engine.", streams=streams)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    _add_global_options(parser, "pre")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in discover_commands(argv):
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, streams=streams)
        module.add_arguments(cmd)
        _add_global_options(cmd, "post")
        cmd.set_defaults(_command=module)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: IO[bytes] | None = None,
         stderr: IO[bytes] | None = None, stdin: IO[bytes] | None = None) -> int:
    """Run goalkeeper with `argv` (default: sys.argv[1:]); returns the exit status."""
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr.buffer
    ctx: Context | None = None
    try:
        try:
            argv = list(sys.argv[1:] if argv is None else argv)
            parser = build_parser(stdout, stderr, argv)
            args = parser.parse_args(argv)
            if args.version:
                stdout.write(f"{version_string()}\n".encode())
                return 0
            if args.command is None:
                raise UsageError("no command given")
            ctx = _make_context(args, stdout, stderr, stdin)
            return int(args._command.run(args, ctx) or 0)
        finally:
            if ctx is not None:
                ctx.close()
            _flush(stdout)
    except SystemExit as e:  # argparse's --help
        return e.code if isinstance(e.code, int) else 0
    except UsageError as e:
        _report(stderr, f"error: {e}\nTry '{PROG} --help' for more information.\n")
        return e.exit_status
    except StoreError as e:
        _report(stderr, f"error: {e}\n")
        return e.exit_status
    except KeyboardInterrupt:
        _report(stderr, "error: interrupted by the user\n")
        return SIGINT_STATUS
    except BrokenPipeError:
        _silence_stdout(stdout)
        return SIGPIPE_STATUS
    except OSError as e:
        # A file the user named that cannot be read (or written).
        _report(stderr, f"error: {_describe_os_error(e)}\n")
        return 1


def _make_context(args: argparse.Namespace, stdout: IO[bytes], stderr: IO[bytes],
                  stdin: IO[bytes] | None = None) -> Context:
    overrides = list(getattr(args, "settings_pre", [])) + list(getattr(args, "settings_post", []))

    def warn(message: str) -> None:
        _report(stderr, f"warning: {message}\n")

    settings = Settings.load(overrides=overrides, warn=warn)
    uri = getattr(args, "store_post", None) or getattr(args, "store_pre", None) or settings.get("store")
    return Context(settings, parse_store_uri(uri, warn=warn), stdout, stderr, stdin)


def _describe_os_error(e: OSError) -> str:
    reason = e.strerror or str(e)
    if e.filename is not None:
        return f"'{os.fsdecode(e.filename)}': {reason}"
    return reason


def _report(stderr: IO[bytes], text: str) -> None:
    try:
        _flush_quietly(sys.stdout)
        stderr.write(text.encode(errors="surrogateescape"))
        stderr.flush()
    except (BrokenPipeError, ValueError):
        pass


def _flush(stream: IO[bytes]) -> None:
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


def _flush_quietly(stream) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):
        pass


def _silence_stdout(stdout: IO[bytes]) -> None:
    # Python flushes stdout again at exit; point fd 1 at /dev/null so that
    # flush cannot raise a second BrokenPipeError ("Exception ignored ...").
    if stdout is sys.stdout.buffer:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
