"""Fetch: bring an asset's bytes into a content-addressed cache, verified, with bounded waits.

The cache is shared by every worker on a machine (or on shared storage). An object lives at
``root/ab/<sha256>.<ext>``; a .gltf that needs external buffers or images lives with them in
``root/ab/<sha256>/<sha256>.gltf`` (resources at their relative paths). Bytes are written to a temp
file in the same folder, hashed, and renamed into place, so a reader never sees a partial object; a
per-object lock file keeps concurrent fetchers of one object from downloading it twice. The path
returned is always inside the cache, never in a folder someone else may delete.

Where bytes come from, per source:

- github: ``git`` (shallow, blob-less fetch of the one commit, then the one path), with prompts,
  askpass and credential helpers off and a timeout on every call that kills the process group;
- sketchfab / smithsonian / thingiverse: HTTP(S) with connect and read timeouts, a cap on each
  attempt's total time, bounded retries with exponential back-off for transient failures;
- local / procedural: the file named by ``local_path``, hashed while it is copied in.

Failures raise :class:`FetchError` with a reason code. URLs in details and logs are redacted.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from functools import lru_cache
from pathlib import Path
from collections import deque
from typing import Callable, Iterator

import requests

from pipelines.build.content import file_sha256
from pipelines.build.gltf_uris import ResourceOutsideFolder, gltf_json, relative_resource, resource_uris
from pipelines.build.prefilter import COPIES_KEY
from schemas.assets import AssetRef, RejectReason
from schemas.errors import ReasonError
from schemas.fetch import FetchSettings

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_TYPE = re.compile(r"[a-z0-9]{1,10}")
_GIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CHUNK = 1 << 20


class FetchError(ReasonError):
    """Why an asset could not be brought into the cache; ``reason`` is its rejection code."""


FetchConfig = FetchSettings  # the settings now live in schemas/ (so BuildParams can carry them)


# ---------------------------------------------------------------- redaction

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:access_token|token|auth|key|api_key|apikey|sig|signature|password|secret|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)=)[^&#\s]*"
)


def redact(text: str) -> str:
    """Text with URL userinfo and token-like query values replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


# ---------------------------------------------------------------- the cache


def _check_key(sha256: str, file_type: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise FetchError(RejectReason.bad_annotation, f"sha256 {sha256[:80]!r} is not 64 lowercase hex digits")
    if not _FILE_TYPE.fullmatch(file_type):
        raise FetchError(RejectReason.bad_annotation, f"file type {file_type[:20]!r} is not a plain extension")


class FetchCache:
    """Content-addressed storage keyed by sha256, safe to share between processes."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha256: str, file_type: str) -> Path:
        _check_key(sha256, file_type)
        return self.root / sha256[:2] / f"{sha256}.{file_type}"

    def bundle_for(self, sha256: str) -> Path:
        """Folder of a .gltf stored with its external resources."""
        _check_key(sha256, "gltf")
        return self.root / sha256[:2] / sha256

    def lookup(self, sha256: str, file_type: str) -> Path | None:
        """The cached object if present and its bytes still hash to ``sha256``.

        A corrupt entry is left for the next fetch to replace under the object's lock.
        """
        candidates = [self.path_for(sha256, file_type)]
        if file_type == "gltf":
            candidates.append(self.bundle_for(sha256) / f"{sha256}.gltf")
        for path in candidates:
            if path.is_file():
                if file_sha256(path) == sha256:
                    return path
                logger.warning("cache entry %s is corrupt; fetching it again", path)
        return None

    @contextlib.contextmanager
    def lock(self, sha256: str) -> Iterator[None]:
        """An exclusive, cross-process lock on one object (advisory ``flock``).

        Locks are striped: the objects of one shard folder (the first two hex digits) share one lock
        file, ``<shard>/.lock``, so the cache holds at most 256 lock files however many objects it has
        seen (a lock file per object piled up, and deleting a lock file that another process may have
        opened is a race). Two objects of one shard wait for each other; downloads of different shards
        do not.
        """
        _check_key(sha256, "glb")
        shard = self.root / sha256[:2]
        shard.mkdir(parents=True, exist_ok=True)
        with open(shard / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def temp_file(self, sha256: str) -> Path:
        """A fresh temp path in the object's own folder, so the final rename is atomic."""
        shard = self.root / sha256[:2]
        shard.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".part", dir=shard)
        os.close(fd)
        return Path(name)

    def scratch(self) -> Path:
        """A fresh private folder for git's work, on the cache's file system."""
        base = self.root / ".scratch"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=base))


# ---------------------------------------------------------------- glTF resources


def gltf_resources(gltf: bytes) -> list[str]:
    """Relative paths of the external buffers and images a .gltf needs (data URIs excluded).

    Anything that is not a plain relative path inside the model's own folder (a scheme, an
    absolute path, ``..`` out of the folder) raises ``resource_outside_folder``: it cannot be fetched
    safely. A file that is not glTF JSON has no resources here (the importer will judge it).
    """
    document = gltf_json(gltf)
    paths: list[str] = []
    for uri in resource_uris(document) if document else []:
        try:
            normal = relative_resource(uri)
        except ResourceOutsideFolder as exc:
            raise FetchError(exc.reason, exc.detail) from None
        if normal not in paths:
            paths.append(normal)
    return paths


# ---------------------------------------------------------------- local and procedural


def _copy_verified(source: Path, dest: Path, max_bytes: int) -> None:
    with open(source, "rb") as src, open(dest, "wb") as out:
        copied = 0
        while chunk := src.read(_CHUNK):
            copied += len(chunk)
            if copied > max_bytes:
                raise FetchError(RejectReason.download_failed, f"{source} is larger than {max_bytes} bytes")
            out.write(chunk)


def _local_source(asset: AssetRef) -> Path:
    if asset.local_path:
        return Path(asset.local_path)
    identifier = asset.file_identifier
    return Path(urllib.parse.urlsplit(identifier).path if identifier.startswith("file://") else identifier)


# ---------------------------------------------------------------- HTTP


class _Transient(Exception):
    """A failure worth another attempt."""


def _http_attempt(url: str, dest: Path, config: FetchConfig) -> None:
    deadline = time.monotonic() + config.attempt_seconds
    try:
        with requests.get(url, stream=True, timeout=(config.connect_timeout, config.read_timeout)) as response:
            if response.status_code in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise FetchError(RejectReason.download_failed, f"HTTP {response.status_code} for {redact(url)}")
            received = 0
            with open(dest, "wb") as out:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    received += len(chunk)
                    if received > config.max_bytes:
                        raise FetchError(RejectReason.download_failed, f"{redact(url)} is larger than {config.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _Transient(f"attempt took longer than {config.attempt_seconds}s")
                    out.write(chunk)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        # urllib3 raises on a body shorter than Content-Length, which lands here as well.
        raise _Transient(redact(f"{type(exc).__name__}: {exc}")[:300]) from None
    except requests.RequestException as exc:
        raise FetchError(RejectReason.download_failed, redact(f"{type(exc).__name__}: {exc}")[:300]) from None


def http_download(url: str, dest: Path, config: FetchConfig) -> None:
    """Download ``url`` into ``dest`` with bounded retries; permanent failures are not retried."""
    for attempt in range(config.retries + 1):
        try:
            _http_attempt(url, dest, config)
            return
        except _Transient as exc:
            if attempt == config.retries:
                raise FetchError(
                    RejectReason.download_failed, f"{redact(url)}: {exc} (after {attempt + 1} attempts)"
                ) from None
            delay = min(config.backoff_seconds * 2**attempt, config.backoff_max_seconds)
            logger.warning("fetch %s: %s; retry %d in %.2fs", redact(url), exc, attempt + 1, delay)
            time.sleep(delay)


@lru_cache(maxsize=2)
def _sketchfab_paths(index: str) -> dict[str, str]:
    with open(index, "rb") as f:
        data = f.read()
    return json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def resolve_url(asset: AssetRef, config: FetchConfig) -> str:
    """The download URL of an HTTP-served Objaverse-XL object."""
    identifier = asset.file_identifier
    if asset.source == "sketchfab":
        uid = identifier.rstrip("/").rsplit("/", 1)[-1]
        if not config.sketchfab_object_paths or not Path(config.sketchfab_object_paths).is_file():
            raise FetchError(RejectReason.download_failed, f"no Sketchfab object index at {config.sketchfab_object_paths}")
        path = _sketchfab_paths(config.sketchfab_object_paths).get(uid)
        if path is None:
            raise FetchError(RejectReason.download_failed, f"Sketchfab uid {uid[:40]!r} is not in the object index")
        return f"{config.sketchfab_base.rstrip('/')}/{path}"
    if asset.source == "thingiverse":
        file_id = urllib.parse.parse_qs(urllib.parse.urlsplit(identifier).query).get("fileId", [""])[0]
        if not file_id.isdigit():
            raise FetchError(RejectReason.bad_annotation, f"no numeric fileId in {identifier[:200]!r}")
        return f"{config.thingiverse_base.rstrip('/')}/download:{file_id}"
    if asset.source == "smithsonian":
        parts = urllib.parse.urlsplit(identifier)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise FetchError(RejectReason.bad_annotation, f"not an http(s) URL: {redact(identifier[:200])!r}")
        if config.smithsonian_base is None:
            return identifier
        base = urllib.parse.urlsplit(config.smithsonian_base)
        return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))
    raise FetchError(RejectReason.bad_annotation, f"no HTTP location for source {asset.source!r}")


# ---------------------------------------------------------------- git


def parse_github_identifier(identifier: str) -> tuple[str, str, str, str]:
    """``https://github.com/{org}/{repo}/blob/{commit}/{path}`` -> (org, repo, commit, path)."""
    parts = urllib.parse.urlsplit(identifier)
    pieces = parts.path.split("/")
    if parts.scheme != "https" or len(pieces) < 6 or pieces[0] or pieces[3] != "blob":
        raise FetchError(RejectReason.bad_annotation, f"not a GitHub blob URL: {redact(identifier[:200])!r}")
    org, repo, commit, path_parts = pieces[1], pieces[2], pieces[4], pieces[5:]
    names_ok = all(_GIT_NAME.fullmatch(n) and n not in (".", "..") for n in (org, repo))
    path_ok = all(p and p not in (".", "..") for p in path_parts)
    if not (names_ok and _COMMIT.fullmatch(commit) and path_ok):
        raise FetchError(RejectReason.bad_annotation, f"malformed GitHub identifier: {redact(identifier[:200])!r}")
    return org, repo, commit, "/".join(path_parts)


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    # A deleted or private repository answers 401; git must fail, not wait for a password.
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="", GCM_INTERACTIVE="never",
               GIT_SSH_COMMAND="ssh -oBatchMode=yes", GIT_LFS_SKIP_SMUDGE="1")
    return env


def run_git(args: list[str], cwd: Path, timeout: float, stdout_path: Path | None = None, read_timeout: float = 60.0) -> None:
    """Run one git command with prompts and credential helpers off; on timeout kill its whole group."""
    command = [
        "git", "-c", "credential.helper=", "-c", "core.askPass=", "-c", "protocol.version=2",
        "-c", "http.lowSpeedLimit=1", "-c", f"http.lowSpeedTime={max(1, int(read_timeout))}", *args,
    ]
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stdout_path, "wb")) if stdout_path else subprocess.DEVNULL
        proc = subprocess.Popen(command, cwd=cwd, env=_git_env(), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise FetchError(RejectReason.download_failed, f"git {args[0]} timed out after {timeout}s") from None
    if proc.returncode != 0:
        message = " ".join(stderr.decode(errors="replace").split())[-300:]
        raise FetchError(RejectReason.download_failed, redact(f"git {args[0]} failed ({proc.returncode}): {message}"))


class _GitCommit:
    """One commit of one repository, fetched without blobs; blobs come one by one on demand."""

    def __init__(self, url: str, commit: str, work: Path, config: FetchConfig):
        self.commit, self.work, self.config = commit, work, config
        self._git(["init", "--quiet", "--bare", str(work)], cwd=work.parent)
        self._git(["remote", "add", "origin", url])
        self._git(["fetch", "--quiet", "--depth=1", "--filter=blob:none", "--no-tags", "origin", commit])

    def _git(self, args: list[str], cwd: Path | None = None, stdout_path: Path | None = None) -> None:
        run_git(args, cwd or self.work, self.config.git_timeout, stdout_path, self.config.read_timeout)

    def write_blob(self, path: str, dest: Path) -> None:
        self._git(["cat-file", "blob", f"{self.commit}:{path}"], stdout_path=dest)
        with open(dest, "rb") as f:
            if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
                raise FetchError(RejectReason.download_failed, f"{path} is a git-lfs pointer; its content is in LFS storage, which is not fetched")


# ---------------------------------------------------------------- fetch

Getter = Callable[[str, Path], None]  # (path relative to the model's folder, destination file)


def _publish(cache: FetchCache, asset: AssetRef, temp: Path, get_resource: Getter) -> Path:
    """Verify the fetched main file and move it (and a glTF's resources) into place."""
    size = temp.stat().st_size
    if size == 0:
        raise FetchError(RejectReason.empty_file, f"{redact(asset.file_identifier)} has no bytes")
    actual = file_sha256(temp)
    if actual != asset.sha256:
        raise FetchError(RejectReason.hash_mismatch, f"expected {asset.sha256}, got {actual} ({size} bytes)")
    resources = gltf_resources(temp.read_bytes()) if asset.file_type == "gltf" else []
    if not resources:
        final = cache.path_for(asset.sha256, asset.file_type)
        os.replace(temp, final)
        return final
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.sha256}.", suffix=".part", dir=temp.parent))
    try:
        for relative in resources:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            get_resource(relative, target)
        os.replace(temp, staging / f"{asset.sha256}.gltf")
        bundle = cache.bundle_for(asset.sha256)
        shutil.rmtree(bundle, ignore_errors=True)  # a corrupt earlier copy; we hold the object's lock
        os.rename(staging, bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle / f"{asset.sha256}.gltf"


def _fetch_into(cache: FetchCache, asset: AssetRef, temp: Path, config: FetchConfig) -> Path:
    if asset.source in ("local", "procedural"):
        source = _local_source(asset)
        if not source.is_file():
            raise FetchError(RejectReason.file_missing, f"no file at {source}")
        _copy_verified(source, temp, config.max_bytes)

        def get_local(relative: str, dest: Path) -> None:
            resource = source.parent / relative
            if not resource.is_file():
                raise FetchError(RejectReason.file_missing, f"glTF resource {relative!r} not found beside {source.name}")
            _copy_verified(resource, dest, config.max_bytes)

        return _publish(cache, asset, temp, get_local)

    if asset.source == "github":
        org, repo, commit, path = parse_github_identifier(asset.file_identifier)
        work = cache.scratch()
        try:
            repository = _GitCommit(f"{config.github_base.rstrip('/')}/{org}/{repo}.git", commit, work, config)
            repository.write_blob(path, temp)
            folder = posixpath.dirname(path)
            return _publish(cache, asset, temp, lambda rel, dest: repository.write_blob(posixpath.join(folder, rel), dest))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    url = resolve_url(asset, config)
    http_download(url, temp, config)
    return _publish(cache, asset, temp, lambda rel, dest: http_download(urllib.parse.urljoin(url, rel), dest, config))


def _copies(asset: AssetRef) -> list[AssetRef]:
    """The asset as found at each of its other places (see :data:`pipelines.build.prefilter.COPIES_KEY`)."""
    copies = []
    for place in asset.metadata.get(COPIES_KEY) or []:
        if isinstance(place, dict) and isinstance(place.get("fileIdentifier"), str) and isinstance(place.get("source"), str):
            copies.append(asset.model_copy(update={"file_identifier": place["fileIdentifier"], "source": place["source"]}))
    return copies


def _fetch_one(asset: AssetRef, cache: FetchCache, config: FetchConfig) -> Path:
    cached = cache.lookup(asset.sha256, asset.file_type)
    if cached is not None:
        return cached
    with cache.lock(asset.sha256):
        cached = cache.lookup(asset.sha256, asset.file_type)  # another process may have finished it
        if cached is not None:
            return cached
        temp = cache.temp_file(asset.sha256)
        try:
            return _fetch_into(cache, asset, temp, config)
        except OSError as exc:
            raise FetchError(RejectReason.download_failed, redact(f"{type(exc).__name__}: {exc}")[:300]) from None
        finally:
            temp.unlink(missing_ok=True)


def fetch(asset: AssetRef, cache: FetchCache, config: FetchConfig | None = None) -> AssetRef:
    """The asset with ``local_path`` set to its verified copy in the cache; raises :class:`FetchError`.

    An object already cached (and still hashing right) is returned without any transfer. When the
    asset's own place fails, its other copies are tried in order; ``metadata["fetched_from"]`` then
    names the one that served it. The error raised is the first place's.
    """
    config = config or FetchConfig()
    errors: list[FetchError] = []
    for place in [asset, *_copies(asset)]:
        try:
            path = _fetch_one(place, cache, config)
        except FetchError as error:
            errors.append(error)
            continue
        update: dict = {"local_path": str(path)}
        if place is not asset:
            update["metadata"] = {**asset.metadata, "fetched_from": place.file_identifier}
        return asset.model_copy(update=update)
    first = errors[0]
    if len(errors) == 1:
        raise first
    raise FetchError(first.reason, f"{first.detail} (and {len(errors) - 1} other copies failed)")


RECOUNT_EVERY = 64  # releases between two walks of a node's cache (NodeFetcher.release)


class NodeFetcher:
    """A render worker's fetching: into its node's cache at ``cache_dir``, and out again once decided.

    Picklable (a Ray actor gets it). :meth:`release` is called when an asset is decided: the copies of
    decided assets are then evicted, oldest first, while the cache holds more than
    ``settings.cache_max_gb`` (never with ``settings.keep_downloads``), so a node's disk stays bounded
    whatever the build's size. A worker evicts only what it decided itself: an asset another worker
    is about to render is never taken from under it.
    """

    def __init__(self, cache_dir: str, settings: FetchSettings | None = None):
        self.cache_dir, self.settings = cache_dir, settings or FetchSettings()
        self._decided: deque[tuple[str, Path]] = deque()
        self._size: int | None = None  # the cache's size at the last count, plus what this worker added since
        self._releases = 0

    def __getstate__(self) -> dict:
        return {"cache_dir": self.cache_dir, "settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cache_dir"], state["settings"])

    @property
    def cache(self) -> FetchCache:
        return FetchCache(Path(self.cache_dir))

    def fetch(self, asset: AssetRef) -> AssetRef:
        return fetch(asset, self.cache, self.settings)

    def release(self, asset: AssetRef) -> int:
        """``asset`` is decided; returns the bytes evicted.

        The cache is counted (a walk of its files) only every ``RECOUNT_EVERY`` releases or when this
        worker's running estimate passes the cap: a walk per asset would cost in proportion to the
        cache, and other workers' downloads are what the periodic count catches.
        """
        if self.settings.keep_downloads or asset.local_path is None:
            return 0
        root = Path(self.cache_dir).resolve()
        path = Path(asset.local_path).resolve()
        if root not in path.parents:  # not a copy in the cache: never delete a user's file
            return 0
        # a .gltf with resources lives in its own folder under the shard
        entry = path.parent if path.parent.name == asset.sha256 else path
        self._decided.append((asset.sha256, entry))
        cap, evicted = self.settings.cache_max_gb * 2**30, 0
        self._releases += 1
        if self._size is None or self._releases % RECOUNT_EVERY == 0:
            self._size = cache_bytes(root)
        else:
            self._size += _entry_bytes(entry)
        if self._size > cap:
            self._size = cache_bytes(root)
        while self._decided and self._size > cap:
            sha256, entry = self._decided.popleft()
            with self.cache.lock(sha256):
                freed = _entry_bytes(entry)
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            self._size, evicted = self._size - freed, evicted + freed
        return evicted


def _entry_bytes(entry: Path) -> int:
    if entry.is_dir():
        return cache_bytes(entry)
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def cache_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (lock files and temp files included: they take disk too)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # removed by another worker meanwhile
                pass
    return total
