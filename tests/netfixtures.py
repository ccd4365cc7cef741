"""Real protocols on loopback for tests: an HTTP server with scripted misbehaviour, local git
repositories reached through ``file://``, and Objaverse-XL annotation files in the released layout.

Use the fixtures (``http_server``, ``git_root``) by importing them into a test module::

    from tests.netfixtures import http_server, git_root, make_git_repo  # noqa: F401
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest


@dataclass
class Reply:
    """One scripted answer. ``stall`` sends the headers and half the body, then waits that long
    (the server's shutdown cuts it short); ``truncate`` announces the full length, sends half and
    closes; ``delay`` waits before sending anything at all."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stall: float = 0.0
    truncate: bool = False


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out on purpose break the pipe; that is the point, not an error


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS).

    ``add(path, *replies)`` scripts a path: the n-th request gets the n-th reply, the last repeats.
    Unknown paths answer 404. ``hits`` counts requests per path (query string excluded).
    """

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def add(self, path: str, *replies: Reply) -> str:
        with self._lock:
            self.routes[path] = list(replies) or [Reply()]
        return self.url(path)

    def _next(self, path: str) -> Reply:
        with self._lock:
            count = self.hits[path]
            self.hits[path] += 1
            replies = self.routes.get(path)
        if replies is None:
            return Reply(b"not found", status=404)
        return replies[min(count, len(replies) - 1)]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                reply = server._next(self.path.split("?", 1)[0])
                if reply.delay and server.stopping.wait(reply.delay):
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                half = len(reply.body) // 2
                if reply.stall or reply.truncate:
                    self.wfile.write(reply.body[:half])
                    self.wfile.flush()
                    if reply.truncate or server.stopping.wait(reply.stall):
                        self.close_connection = True
                        return
                    self.wfile.write(reply.body[half:])
                else:
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    # A proxy configured on the machine must not swallow loopback traffic (requests and git obey these).
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with LoopbackServer() as server:
        yield server


_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for the outside network: resolving or connecting to anything but loopback fails
    the test (in this process; subprocesses such as git are not covered)."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOOPBACK_HOSTS:
            raise AssertionError(f"outside network reached: resolving {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK_HOSTS:
            raise AssertionError(f"outside network reached: connecting to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


# ---------------------------------------------------------------- git

GIT_TEST_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_TEST_ENV}, check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def make_git_repo(root: Path, org: str, repo: str, commits: list[dict[str, bytes]]) -> list[str]:
    """A repository at ``root/org/repo.git`` (as ``github_base=file://root`` expects) with one
    commit per dict of files (paths -> bytes, added on top of the previous commit). Returns the
    commit hashes, oldest first. The repository serves filtered and by-hash fetches, as GitHub does."""
    path = root / org / f"{repo}.git"
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "config", "uploadpack.allowFilter", "true")
    git(path, "config", "uploadpack.allowAnySHA1InWant", "true")
    hashes = []
    for number, files in enumerate(commits):
        for name, content in files.items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        git(path, "add", "--all")
        git(path, "commit", "--quiet", "--no-gpg-sign", "-m", f"commit {number}")
        hashes.append(git(path, "rev-parse", "HEAD"))
    return hashes


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    """Folder to create repositories in; pass ``f"file://{git_root}"`` as the GitHub base."""
    root = tmp_path / "git-remote"
    root.mkdir()
    return root


def lfs_pointer(content: bytes) -> bytes:
    """The text git-lfs commits in place of a file's content."""
    oid = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n".encode()


def github_identifier(org: str, repo: str, commit: str, path: str) -> str:
    return f"https://github.com/{org}/{repo}/blob/{commit}/{path}"


# ---------------------------------------------------------------- Objaverse-XL annotations


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def annotation_row(identifier: str, source: str, licence: str | None, file_type: str, content: bytes | str,
                   metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row in the released column layout; ``content`` is the bytes (hashed) or a sha256 string."""
    sha = content if isinstance(content, str) else sha256_of(content)
    return {"fileIdentifier": identifier, "source": source, "license": licence, "fileType": file_type,
            "sha256": sha, "metadata": json.dumps(metadata or {})}


def write_objaverse_annotations(download_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Write rows to ``{download_dir}/{source}/{source}.parquet``, one file per source."""
    frame = pd.DataFrame(rows, columns=["fileIdentifier", "source", "license", "fileType", "sha256", "metadata"])
    written = {}
    for source, part in frame.groupby("source", sort=True):
        path = Path(download_dir) / str(source) / f"{source}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        part.reset_index(drop=True).to_parquet(path, index=False)
        written[str(source)] = path
    return written
