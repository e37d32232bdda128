"""The builtin builders on their own (no sandbox): fetchurl, buildenv, unpack-channel.

The same builders run inside real builds, against real Nix, in
tests/actors/test_builtins_vs_nix.py.
"""

from __future__ import annotations

import http.server
import io
import lzma
import os
import tarfile
import threading

import pytest

from goalkeeper.sandbox.builtins import BuiltinError, BuiltinSpec, run_builtin, run_in_child
from goalkeeper.store import nar
from goalkeeper.store.hashes import hash_bytes

pytestmark = pytest.mark.timeout(30)


def fetchurl(out: str, url: str, **env) -> BuiltinSpec:
    return BuiltinSpec(builder="builtin:fetchurl",
                       env={"out": out, "url": url, "outputHashMode": "flat", "outputHashAlgo": "sha256",
                            "outputHash": "", **env})


def run(spec: BuiltinSpec) -> list[str]:
    warnings: list[str] = []
    run_builtin(spec, warnings.append)
    return warnings


def test_fetchurl_file_url(tmp_path):
    (tmp_path / "src").write_bytes(b"hello\n")
    out = tmp_path / "out"
    run(fetchurl(str(out), f"file://{tmp_path}/src", executable="1"))
    assert out.read_bytes() == b"hello\n" and os.stat(out).st_mode & 0o777 == 0o755


def test_fetchurl_missing_file_is_nix_message(tmp_path):
    with pytest.raises(BuiltinError) as err:
        run(fetchurl(str(tmp_path / "out"), "file:///nonexistent/x"))
    assert err.value.message == "unable to download 'file:///nonexistent/x': Couldn't read a file:// file (37)"


def test_fetchurl_unpacks_an_xz_nar(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    os.symlink("sub/f", tree / "link")
    (tmp_path / "t.nar.xz").write_bytes(lzma.compress(b"".join(nar.dump_path(str(tree)))))
    out = tmp_path / "out"
    run(fetchurl(str(out), f"file://{tmp_path}/t.nar.xz", unpack="1", outputHashMode="recursive"))
    assert (out / "sub" / "f").read_text() == "x" and os.readlink(out / "link") == "sub/f"


def test_fetchurl_tries_hashed_mirrors_first(tmp_path):
    digest = hash_bytes("sha256", b"mirrored\n")
    (tmp_path / "mirror" / "sha256").mkdir(parents=True)
    (tmp_path / "mirror" / "sha256" / digest.base16()).write_bytes(b"mirrored\n")
    out = tmp_path / "out"
    spec = fetchurl(str(out), "file:///nonexistent/x", outputHash=digest.base32())
    spec = BuiltinSpec(builder=spec.builder, env=spec.env, hashed_mirrors=(f"file://{tmp_path}/mirror",))
    run(spec)
    assert out.read_bytes() == b"mirrored\n"


@pytest.fixture
def http_server(tmp_path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/data")
                self.end_headers()
                return
            if self.path == "/secret" and self.headers.get("Authorization") != "Basic dTpw":
                self.send_error(401)
                return
            if self.path == "/secret":
                self.path = "/data"
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "data").write_bytes(b"over http\n")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetchurl_over_http_follows_redirects(tmp_path, http_server):
    out = tmp_path / "out"
    run(fetchurl(str(out), f"{http_server}/moved"))
    assert out.read_bytes() == b"over http\n"


def test_fetchurl_http_error_is_nix_message(tmp_path, http_server):
    with pytest.raises(BuiltinError) as err:
        run(fetchurl(str(tmp_path / "out"), f"{http_server}/absent"))
    # the reason is the server's status line's (Python's server says "File not found")
    assert err.value.message == f"unable to download '{http_server}/absent': HTTP error 404 ('File not found')"


def test_fetchurl_uses_netrc_credentials(tmp_path, http_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    spec = fetchurl(str(out), f"{http_server}/secret")
    run(BuiltinSpec(builder=spec.builder, env=spec.env, netrc_data="machine 127.0.0.1 login u password p\n"))
    assert out.read_bytes() == b"over http\n"
    assert os.stat(tmp_path / "netrc").st_mode & 0o777 == 0o600


def test_unsupported_builtin(tmp_path, capfd):
    spec = BuiltinSpec(builder="builtin:frob", env={})
    assert run_in_child(spec) == 1
    assert capfd.readouterr().err == "error: unsupported builtin builder 'frob'\n"


def test_missing_attribute(tmp_path):
    with pytest.raises(BuiltinError, match="attribute 'url' missing"):
        run(BuiltinSpec(builder="builtin:fetchurl", env={"out": str(tmp_path / "o")}))


# -- unpack-channel -----------------------------------------------------------------------------

def _tarball(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_unpack_channel_renames_its_one_directory(tmp_path):
    _tarball(tmp_path / "c.tar.xz", {"nixpkgs-abc/default.nix": b"{}", "nixpkgs-abc/lib/x": b"y"})
    out = tmp_path / "out"
    run(BuiltinSpec(builder="builtin:unpack-channel",
                    env={"out": str(out), "channelName": "nixpkgs", "src": str(tmp_path / "c.tar.xz")}))
    assert os.listdir(out) == ["nixpkgs"] and (out / "nixpkgs" / "default.nix").read_bytes() == b"{}"


def test_unpack_channel_with_two_entries_fails(tmp_path):
    _tarball(tmp_path / "c.tar.xz", {"a/x": b"", "b/y": b""})
    with pytest.raises(BuiltinError, match=r"channel tarball '.*c.tar.xz' contains more than one file"):
        run(BuiltinSpec(builder="builtin:unpack-channel",
                        env={"out": str(tmp_path / "out"), "channelName": "n", "src": str(tmp_path / "c.tar.xz")}))


# -- buildenv -----------------------------------------------------------------------------------

def package(root, name: str, files: dict[str, str], propagated: list[str] = ()) -> str:
    pkg = root / name
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    if propagated:
        (pkg / "nix-support").mkdir(parents=True, exist_ok=True)
        (pkg / "nix-support" / "propagated-user-env-packages").write_text(" ".join(propagated) + "\n")
    return str(pkg)


def buildenv(out, *packages: tuple[str, int, bool]) -> list[str]:
    words = " ".join(f"{'true' if active else 'false'} {prio} 1 {path}" for path, prio, active in packages)
    return run(BuiltinSpec(builder="builtin:buildenv",
                           env={"out": str(out), "derivations": words, "manifest": "/nix/store/m-manifest.nix"}))


def test_buildenv_links_and_merges_directories(tmp_path):
    a = package(tmp_path, "a", {"bin/a": "a", "share/doc/a": "a", "nix-support/setup-hook": ""})
    b = package(tmp_path, "b", {"bin/b": "b"})
    out = tmp_path / "out"
    buildenv(out, (a, 5, True), (b, 5, True))
    # bin was a's whole directory first, then a real one holding both
    assert not os.path.islink(out / "bin")
    assert os.readlink(out / "bin" / "a") == f"{a}/bin/a" and os.readlink(out / "bin" / "b") == f"{b}/bin/b"
    assert os.readlink(out / "share") == f"{a}/share"
    assert not os.path.lexists(out / "nix-support")
    assert os.readlink(out / "manifest.nix") == "/nix/store/m-manifest.nix"


def test_buildenv_lower_priority_number_wins(tmp_path):
    a = package(tmp_path, "a", {"bin/x": "a"})
    b = package(tmp_path, "b", {"bin/x": "b"})
    out = tmp_path / "out"
    buildenv(out, (a, 6, True), (b, 4, True))
    assert os.readlink(out / "bin" / "x") == f"{b}/bin/x"  # b (4) went first; a's x loses
    out2 = tmp_path / "out2"
    c = package(tmp_path, "c", {"bin/y": "c"})
    buildenv(out2, (a, 4, True), (b, 6, True), (c, 5, True))
    assert os.readlink(out2 / "bin" / "x") == f"{a}/bin/x"


def test_buildenv_equal_priorities_collide(tmp_path):
    a = package(tmp_path, "a", {"bin/x": "a"})
    b = package(tmp_path, "b", {"bin/x": "b"})
    with pytest.raises(BuiltinError) as err:
        buildenv(tmp_path / "out", (a, 5, True), (b, 5, True), (package(tmp_path, "c", {"bin/y": ""}), 5, True))
    assert err.value.message == (
        f"packages '{b}/bin/x' and '{a}/bin/x' have the same priority 5; use 'nix-env --set-flag priority "
        "NUMBER INSTALLED_PKGNAME' to change the priority of one of the conflicting packages (0 being the "
        "highest priority)")


def test_buildenv_inactive_skipped_propagated_added(tmp_path):
    dep = package(tmp_path, "dep", {"bin/dep": ""})
    a = package(tmp_path, "a", {"bin/a": ""}, propagated=[dep])
    off = package(tmp_path, "off", {"bin/off": ""})
    out = tmp_path / "out"
    buildenv(out, (a, 5, True), (off, 5, False))
    assert sorted(os.listdir(out / "bin")) == ["a", "dep"]


def test_buildenv_warns_about_dangling_links_and_files(tmp_path):
    a = package(tmp_path, "a", {"bin/a": ""})
    os.symlink("/nonexistent", f"{a}/bin/dangling")
    f = tmp_path / "plain-file"
    f.write_text("")
    out = tmp_path / "out"
    out.mkdir()
    (out / "bin").mkdir()
    warnings = buildenv(out, (a, 5, True), (str(f), 6, True))
    assert warnings == [f"skipping dangling symlink '{out}/bin/dangling'",
                        f"not including '{f}' in the user environment because it's not a directory"]
