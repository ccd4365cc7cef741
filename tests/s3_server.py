"""A real S3 server for tests: moto's, in its own process on 127.0.0.1, one per session, started on
first use. Imported into tests/conftest.py, so any test can ask for:

- ``s3_server``: the :class:`S3Server` (endpoint, bucket, credentials, ``storage_options``);
- ``s3_store``: an :class:`S3Location` for one test: a fresh ``s3://bucket/prefix`` URI, with the
  server's variables set in ``os.environ`` for the test (and every AWS_* variable of the machine
  removed), so Lance in this process and in any child it starts (a ``kp20k build`` subprocess, a Ray
  worker started after them) reaches the server with no ``storage_options``.

A test that needs a server of its own (to SIGKILL it, or with moto's options) uses
``with own_s3_server(log) as (server, process): ...``.

Which variables Lance 14.0.2 reads was found by experiment: a child process given only the variables
created and read a table on this server. AWS_ENDPOINT_URL, AWS_ENDPOINT and AWS_ENDPOINT_URL_S3 each
point it at the server; without AWS_ALLOW_HTTP=true it refuses the http:// endpoint ("HTTP error:
builder error"); it needs no region (AWS_REGION or AWS_DEFAULT_REGION are read when set). boto3
reads AWS_ENDPOINT_URL and AWS_DEFAULT_REGION, so those are the ones set, with the credentials.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# The server runs apart from the tests' process (a thread of it would be copied into every fork Ray
# and Prefect make). It prints its port, then serves until its stdin closes: the session's teardown,
# or the session dying, stops it.
SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""
BUCKET = "kp20k-tests"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    @property
    def env(self) -> dict[str, str]:
        """The variables that point Lance and boto3 at this server (see the module's docstring)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    @property
    def storage_options(self) -> dict[str, str]:
        """The same as Lance ``storage_options``, the explicit alternative to the environment."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_region": REGION,
            "aws_endpoint": self.endpoint,
            "allow_http": "true",
        }

    def fresh_uri(self) -> str:
        return f"s3://{self.bucket}/{uuid.uuid4().hex}"

    def client(self):
        import boto3  # here, not at the top: every test session imports this module

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@dataclass(frozen=True)
class S3Location:
    uri: str
    endpoint: str
    env: dict[str, str]
    server: S3Server


@contextmanager
def own_s3_server(log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[S3Server, subprocess.Popen]]:
    """A server process of the caller's own, with fresh credentials and no bucket yet
    (``server.client().create_bucket(Bucket=server.bucket)``), stopped on exit: for a test that kills
    it (``process.kill()``) or sets moto's options (``env``, added to its environment). Its output
    goes to ``log``, quoted when it does not start."""
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, **(env or {})},
        )
    try:
        line = process.stdout.readline()  # "" when it exited
        if not line.strip().isdigit():
            raise RuntimeError(f"the moto S3 server did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        yield S3Server(
            endpoint=f"http://127.0.0.1:{int(line)}",
            bucket=BUCKET,
            access_key_id=f"KP20KTEST{secrets.token_hex(6).upper()}",
            secret_access_key=secrets.token_urlsafe(30),
        ), process
    finally:
        process.stdin.close()  # the server's signal to stop
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with own_s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as (server, _):
        server.client().create_bucket(Bucket=server.bucket)
        yield server


@pytest.fixture
def s3_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Location:
    """A fresh store URI on the test server, with its variables in ``os.environ`` for this test."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:  # a profile or token of the machine's
        monkeypatch.delenv(name)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return S3Location(uri=s3_server.fresh_uri(), endpoint=s3_server.endpoint, env=s3_server.env, server=s3_server)
