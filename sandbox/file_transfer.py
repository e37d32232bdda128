"""Downloads for builtin:fetchurl, as Nix 2.8's curl-based FileTransfer makes them.

What the builtin needs of libstore/filetransfer.cc: `file://`, `http://` and
`https://` URLs, redirects followed (curl's FOLLOWLOCATION, at most 10), no TLS
verification (fetchurl checks the output's hash anyway), credentials from a netrc
file (CURL_NETRC_OPTIONAL), transient failures retried `tries` times with Nix's
back-off and warning, and Nix's messages: "unable to download 'URL': HTTP error
404 ('Not Found')" or "unable to download 'URL': <curl's reason> (<code>)".
"""

from __future__ import annotations

import base64
import http.client
import netrc
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator

from goalkeeper.store.binary_cache import curl_reason

CHUNK_SIZE = 1 << 16
MAX_REDIRECTS = 10
BASE_RETRY_TIME_MS = 250  # FileTransferRequest::baseRetryTimeMs
_REDIRECTS = (301, 302, 303, 307, 308)


class DownloadError(Exception):
    """A download failed for good; `message` is Nix's wording."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient


def download(url: str, write: Callable[[bytes], None], *, netrc_file: str | None = None, tries: int = 5,
             warn: Callable[[str], None] = lambda text: None) -> None:
    """Fetch `url` into `write`, retrying transient failures while nothing was written."""
    attempt = 1
    while True:
        written = [0]

        def counting(chunk: bytes) -> None:
            written[0] += len(chunk)
            write(chunk)

        try:
            for chunk in _chunks(url, netrc_file):
                counting(chunk)
            return
        except DownloadError as err:
            if not err.transient or attempt >= tries or written[0]:
                raise
            ms = int(BASE_RETRY_TIME_MS * 2 ** (attempt - 1 + random.uniform(0.0, 0.5)))
            warn(f"{err.message}; retrying in {ms} ms")
            time.sleep(ms / 1000)
            attempt += 1


def _chunks(url: str, netrc_file: str | None) -> Iterator[bytes]:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "file":
        yield from _file_chunks(url)
    elif scheme in ("http", "https"):
        yield from _http_chunks(url, netrc_file)
    else:
        raise DownloadError(f"unable to download '{url}': Unsupported protocol (1)")


def _file_chunks(url: str) -> Iterator[bytes]:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                yield chunk
    except OSError as err:  # curl: CURLE_FILE_COULDNT_READ_FILE, not worth retrying
        raise DownloadError(f"unable to download '{url}': Couldn't read a file:// file (37)") from err


def _http_chunks(url: str, netrc_file: str | None) -> Iterator[bytes]:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(current)
        try:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=300,
                                                   context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=300)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            conn.request("GET", target, headers=_auth_headers(parts.hostname or "", netrc_file))
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            # curl's resolve, connect and receive errors are all transient to Nix
            raise DownloadError(f"unable to download '{url}': {curl_reason(err)}", transient=True) from err
        try:
            if response.status in _REDIRECTS and response.getheader("Location"):
                current = urllib.parse.urljoin(current, response.getheader("Location"))
                continue
            if response.status not in (200, 201, 204, 206):
                response.read()
                raise DownloadError(f"unable to download '{url}': HTTP error {response.status} ('{response.reason}')",
                                    transient=_transient_status(response.status))
            try:
                while chunk := response.read(CHUNK_SIZE):
                    yield chunk
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(f"unable to download '{url}': {curl_reason(err)}", transient=True) from err
            return
        finally:
            conn.close()
    raise DownloadError(f"unable to download '{url}': Number of redirects hit maximum amount (47)")


def _transient_status(status: int) -> bool:
    """filetransfer.cc's classification: which HTTP errors are worth another try."""
    if status in (401, 403, 404, 407, 410, 501, 505, 511):
        return False
    return not (400 <= status < 500) or status in (408, 429)


def _auth_headers(host: str, netrc_file: str | None) -> dict[str, str]:
    headers = {"Accept-Encoding": "identity"}
    if netrc_file:
        try:
            found = netrc.netrc(netrc_file).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            found = None  # CURL_NETRC_OPTIONAL: no usable netrc, no credentials
        if found is not None:
            login, _, password = found
            token = base64.b64encode(f"{login}:{password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
    return headers
