"""Unix sockets at paths too long for sockaddr_un, bound and connected as Nix's helpers allow."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading

import pytest

from goalkeeper.store import unix_socket

pytestmark = pytest.mark.timeout(30)


def _long_dir(tmp_path) -> str:
    d = tmp_path / ("d" * 60) / ("e" * 60)
    d.mkdir(parents=True)
    return str(d)


def test_bind_and_connect_at_a_path_too_long_for_sun_path(tmp_path):
    path = os.path.join(_long_dir(tmp_path), "sock")
    assert len(path) > 108
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        server.bind(path)  # what the plain call does
    unix_socket.bind(server, path)
    server.listen(1)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # at the long path itself
    threading.Thread(target=lambda: server.accept()[0].sendall(b"hi"), daemon=True).start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_socket.connect(client, path)
    assert client.recv(2) == b"hi"
    client.close()
    server.close()


def test_short_paths_are_used_as_given(tmp_path):
    path = str(tmp_path / "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_socket.bind(server, path)
    assert server.getsockname() == path
    server.close()


def test_errors_name_the_path_given(tmp_path):
    path = os.path.join(_long_dir(tmp_path), "nobody-listens")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError) as e:
        unix_socket.connect(client, path)
    assert e.value.errno == errno.ENOENT and e.value.filename == path
    client.close()
