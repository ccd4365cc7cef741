"""DatasetStore on s3:// URIs: a real S3 server (moto, on 127.0.0.1: tests/s3_server.py), reached
through the environment the way a build, its subprocesses and its Ray workers reach a bucket."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from pipelines.build.framepack import unpack
from pipelines.build.store import TABLE_SCHEMAS, TABLES, DatasetStore, StoreError, _object_store_failure, table_uri
from schemas.assets import RejectReason, Rejection
from schemas.filters import FilterRules
from schemas.samples import Sample
from schemas.tables import REJECTIONS_SCHEMA, AssetRow, ProbeRow, from_table, to_row
from tests.pipelines.build.test_store import REPO_ROOT, asset_row, rejection, row_ids, samples, sha, two_writers_add_no_duplicate
from tests.s3_server import S3Location, S3Server, own_s3_server


def stored_keys(server: S3Server, uri: str) -> list[str]:
    """Every object under the store's prefix, as the server holds it."""
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [obj["Key"].removeprefix(prefix + "/") for page in pages for obj in page.get("Contents", [])]


def test_opening_creates_the_five_tables_in_the_bucket(s3_store: S3Location) -> None:
    store = DatasetStore(s3_store.uri)
    tables_on_server = {key.split("/")[0] for key in stored_keys(s3_store.server, s3_store.uri)}
    assert tables_on_server == {f"{table}.lance" for table in TABLES}
    assert all(store.version(table) == 1 for table in TABLES)
    assert DatasetStore(s3_store.uri).version("samples") == 1, "opened again: nothing created twice"


def test_samples_and_their_blobs_round_trip_on_s3(s3_store: S3Location) -> None:
    store = DatasetStore(s3_store.uri)
    written = samples(range(4))
    assert store.write_samples(written) == 4
    version = store.version()
    assert store.write_samples(written) == 0 and store.version() == version, "nothing new: no commit"
    assert {s.sample_id: s for s in from_table(Sample, store.read_samples())} == {s.sample_id: s for s in written}
    assert store.checkout(table="parts").count_rows() == 4
    blobs = store.take_blobs("rgb", [written[2].sample_id, written[0].sample_id])
    for blob, sample in zip(blobs, (written[2], written[0])):
        with blob:
            assert np.array_equal(unpack(blob, views=[1], frames=[3]), unpack(sample.rgb, views=[1], frames=[3]))


def test_assets_probes_and_rejections_round_trip_on_s3(s3_store: S3Location) -> None:
    store = DatasetStore(s3_store.uri)
    assets = [asset_row(1), asset_row(2)]
    assert store.write_assets(assets) == 2 and store.write_assets(assets) == 0
    assert from_table(AssetRow, store.read("assets").drop_columns(["row_key"])) == assets
    probe = ProbeRow(sha256=sha(1), probe_version="p1", probe=assets[0].probe)
    assert store.write_probes([probe]) == 1
    assert store.stored_probe(sha(1), "p1") == probe.probe and store.stored_probe(sha(1), "p2") is None

    one_by_one = [rejection(3, RejectReason.no_armature), rejection(4, RejectReason.timeout, stage="probe")]
    assert store.write_rejections(one_by_one) == 2 and store.write_rejections(one_by_one[:1]) == 0
    prefiltered = [rejection(i, RejectReason.licence_not_allowed, stage="prefilter") for i in range(10, 15)]
    batch = pa.RecordBatch.from_pylist([to_row(r) for r in prefiltered], schema=REJECTIONS_SCHEMA)
    assert store.write_rejection_batches(iter([batch, batch.slice(2)]), "prefilter", "") == 5
    assert store.write_rejection_batches(iter([batch]), "prefilter", "") == 0
    stored = from_table(Rejection, store.read("rejections").drop_columns(["row_key"]))
    assert sorted(stored, key=lambda r: r.sha256) == sorted(one_by_one + prefiltered, key=lambda r: r.sha256)


def test_compaction_and_cleanup_on_s3_delete_the_old_files(s3_store: S3Location) -> None:
    store = DatasetStore(s3_store.uri)
    for i in range(4):  # four commits: four fragments, five versions
        store.write_samples(samples(range(i, i + 1)))
    before = row_ids(store)
    counts = store.compact(max_fragments=2, keep_versions_for=timedelta(0))
    assert counts["samples"] == (1, 1)
    assert row_ids(store) == before and len(before) == 4
    manifests = [key for key in stored_keys(s3_store.server, s3_store.uri) if key.startswith("samples.lance/_versions/")]
    assert len(manifests) == 1, f"old versions are still on the server: {manifests}"
    (blob,) = store.take_blobs("alpha", [samples(range(3, 4))[0].sample_id])  # blobs survive the rewrite
    with blob:
        assert np.array_equal(unpack(blob), unpack(samples(range(3, 4))[0].alpha))


def test_a_build_on_s3_leaves_one_version_and_keeps_a_pinned_one(s3_store: S3Location) -> None:
    """The end-of-build rule on object storage (the flow only logs an upkeep failure, so it is
    checked here): the versions made on the way go, the start, a tagged one and the latest stay."""
    from pipelines.build.store import open_table, tag_pinned

    store = DatasetStore(s3_store.uri)
    started_from = {table: store.version(table) for table in TABLES}
    for i in range(4):
        store.write_samples(samples(range(i, i + 1)))
        if i == 1:
            pinned = store.version("samples")
            tag_pinned(open_table(s3_store.uri, "samples", storage_options=store.storage_options))
    store.compact(since=started_from)
    kept = [v["version"] for v in store.checkout(table="samples").versions()]
    assert kept == [started_from["samples"], pinned, store.version("samples")]
    assert store.checkout(pinned).count_rows() == 2 and len(row_ids(store)) == 4


def test_an_old_table_on_s3_gains_the_new_column_when_opened(s3_store: S3Location) -> None:
    new_schema = TABLE_SCHEMAS["rejections"]
    old_schema = new_schema.remove(new_schema.get_field_index("rules_hash"))
    old = rejection(1, RejectReason.no_armature)
    row = {**to_row(old), "row_key": "k1"}
    del row["rules_hash"]
    lance.write_dataset(pa.Table.from_pylist([row], schema=old_schema), table_uri(s3_store.uri, "rejections"))
    store = DatasetStore(s3_store.uri)
    assert store.checkout(table="rejections").schema.names == new_schema.names
    assert from_table(Rejection, store.read("rejections").drop_columns(["row_key"])) == [old]  # rules_hash None
    new = rejection(2, RejectReason.too_many_bones).model_copy(update={"rules_hash": FilterRules().rules_hash()})
    assert store.write_rejections([new]) == 1


def test_storage_options_reach_the_server_without_the_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    uri = s3_server.fresh_uri()
    store = DatasetStore(uri, storage_options=s3_server.storage_options)
    written = samples(range(2))
    assert store.write_samples(written) == 2
    assert row_ids(DatasetStore(uri, storage_options=s3_server.storage_options)) == Counter(s.sample_id for s in written)
    assert any(key.startswith("samples.lance/data/") for key in stored_keys(s3_server, uri)), "the rows are on the server"


def test_openers_racing_to_create_a_new_store_all_succeed(s3_store: S3Location) -> None:
    """Six openers race to create the same five tables: the losers find them created (Lance says
    "Retryable commit conflict" to some of them on S3, which the store took for a failure)."""
    for attempt in range(3):
        uri = f"{s3_store.uri}/race{attempt}"
        start, failures = threading.Barrier(6), []

        def open_store() -> None:
            start.wait()
            try:
                DatasetStore(uri)
            except Exception as exc:  # collected: the assertion below names them
                failures.append(exc)

        openers = [threading.Thread(target=open_store) for _ in range(6)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        assert failures == []
        store = DatasetStore(uri)
        assert all(store.checkout(table=t).schema.names == TABLE_SCHEMAS[t].names for t in TABLES)


def test_two_processes_writing_the_same_new_ids_on_s3_add_no_duplicate(s3_store: S3Location, tmp_path: Path) -> None:
    """Lance commits on S3 with conditional writes (If-None-Match): the second commit of a version
    fails, is retried against the new one, and the primary key drops what the first inserted."""
    two_writers_add_no_duplicate(DatasetStore(s3_store.uri), tmp_path)


FRAGMENT_WRITER = """
import pickle, sys
import lance, pyarrow as pa
from pipelines.build.store import TABLE_SCHEMAS, DatasetStore, table_uri
from schemas.tables import to_row
from tests.pipelines.build.test_store import samples

uri, out = sys.argv[1], sys.argv[2]
dataset = DatasetStore(uri).checkout()
rows = pa.Table.from_pylist([to_row(s) for s in samples(range(100, 103))], schema=TABLE_SCHEMAS["samples"])
fragments = lance.fragment.write_fragments(
    rows, table_uri(uri, "samples"), schema=TABLE_SCHEMAS["samples"], data_storage_version=dataset.data_storage_version
)
with open(out, "wb") as f:
    pickle.dump(fragments, f)
"""


def test_fragments_written_by_another_process_commit_on_s3(s3_store: S3Location, tmp_path: Path) -> None:
    """The worker-writes, driver-commits path: a process (with only the environment) writes data files
    and hands back their FragmentMetadata; the driver commits them after a commit of its own."""
    store = DatasetStore(s3_store.uri)
    version = store.version()
    command = [sys.executable, "-c", textwrap.dedent(FRAGMENT_WRITER), store.uri, str(tmp_path / "fragments.pkl")]
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=300)
    fragments = pickle.loads((tmp_path / "fragments.pkl").read_bytes())
    assert [type(f).__name__ for f in fragments] == ["FragmentMetadata"]
    assert store.version() == version, "written, not committed: invisible"

    store.write_samples(samples(range(2)))  # a commit in between: the append is rebased onto it
    path = table_uri(store.uri, "samples")
    lance.LanceDataset.commit(path, lance.LanceOperation.Append(fragments), read_version=version)
    expected = samples(range(2)) + samples(range(100, 103))
    # every field but created_at, which the writer process set to its own clock
    fields = lambda rows: {s.sample_id: s.model_dump(exclude={"created_at"}) for s in rows}  # noqa: E731
    assert fields(from_table(Sample, store.read_samples())) == fields(expected)
    (blob,) = store.take_blobs("parts", [expected[3].sample_id])
    with blob:
        assert np.array_equal(unpack(blob, views=[0], frames=[2]), unpack(expected[3].parts, views=[0], frames=[2]))


@pytest.mark.parametrize(
    "case, reason, advice",
    [
        ("missing-bucket", "bucket_not_found", "the bucket does not exist"),
        ("closed-port", "storage_unreachable", "check the endpoint"),
        ("http-not-allowed", "storage_unreachable", "AWS_ALLOW_HTTP=true"),
    ],
)
def test_a_store_that_cannot_be_reached_says_what_to_check_and_no_credential(
    s3_store: S3Location, monkeypatch: pytest.MonkeyPatch, case: str, reason: str, advice: str
) -> None:
    uri = s3_store.uri
    if case == "missing-bucket":
        uri = "s3://kp20k-no-such-bucket/store"
    elif case == "closed-port":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    else:
        monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(StoreError) as err:
        DatasetStore(uri)
    assert_says(err.value, reason, uri, advice, s3_store.server)


def test_refused_credentials_say_to_check_them_and_show_none(
    s3_store: S3Location, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A second server that checks every request's key (moto's IAM), which knows none
    with own_s3_server(tmp_path / "moto-auth.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as (checking, _):
        monkeypatch.setenv("AWS_ENDPOINT_URL", checking.endpoint)
        with pytest.raises(StoreError) as err:
            DatasetStore(s3_store.uri)
    assert_says(err.value, "storage_error", s3_store.uri, "check the credentials", s3_store.server)


def test_a_server_killed_under_a_store_is_reported_unreachable(
    s3_store: S3Location, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An own server (the helper a kill test uses): written to, SIGKILLed, then the store cannot be
    opened and says so. One try, not Lance's three, keeps the test short."""
    monkeypatch.setenv("OBJECT_STORE_CLIENT_MAX_RETRIES", "0")
    with own_s3_server(tmp_path / "moto.log") as (own, process):
        own.client().create_bucket(Bucket=own.bucket)
        monkeypatch.setenv("AWS_ENDPOINT_URL", own.endpoint)
        uri = own.fresh_uri()
        assert DatasetStore(uri).write_samples(samples(range(2))) == 2
        process.kill()
        assert process.wait() == -signal.SIGKILL
        with pytest.raises(StoreError) as err:
            DatasetStore(uri)
    assert_says(err.value, "storage_unreachable", uri, "check the endpoint", s3_store.server)


def test_a_key_the_server_echoes_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS answers an unknown key with XML that names it (``<AWSAccessKeyId>``, unlike moto), and
    Lance puts the reply in its error: the store's error text masks it, and any option's secret."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAKP20KEXAMPLE0001")
    reply = (
        "LanceError(IO): Generic S3 error: Error performing list request: Error performing GET "
        "https://b.s3.amazonaws.com/?list-type=2 - Server returned non-2xx status code: 403 Forbidden: "
        "<Error><Code>InvalidAccessKeyId</Code><AWSAccessKeyId>AKIAKP20KEXAMPLE0001</AWSAccessKeyId>"
        "<StringToSign>kp20k-secret-option</StringToSign></Error>"
    )
    options = {"aws_secret_access_key": "kp20k-secret-option"}
    error = _object_store_failure("s3://b/store/samples.lance", ValueError(reply), options)
    assert error is not None and error.reason == "storage_error"
    assert "InvalidAccessKeyId" in str(error) and "AKIAKP20KEXAMPLE0001" not in str(error)
    assert "kp20k-secret-option" not in str(error)


def assert_says(error: StoreError, reason: str, uri: str, advice: str, server: S3Server) -> None:
    """The error's code, the store it names and what to check, and none of the credentials."""
    text = str(error)
    assert error.reason == reason and uri in text and advice in text, text
    assert server.secret_access_key not in text and server.access_key_id not in text


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
