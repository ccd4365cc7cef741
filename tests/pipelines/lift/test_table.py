"""The rigs table: rows round-trip through Lance with the .glb as a blob and the metrics as columns."""

from __future__ import annotations

import lance
import pyarrow as pa

from pipelines.lift.table import read_rigs, rig_key, rigs_uri, write_rigs
from schemas.lift import RigMetrics, RigRow, RigSummary
from schemas.tables import BLOB_METADATA, RIGS_SCHEMA


def row(sample_id: str, glb: bytes) -> RigRow:
    summary = RigSummary(n_vertices=10, n_faces=16, n_parts=3, n_bones=2, n_frames=4, bone_names=["a", "b+c"],
                         bone_parents=[-1, 0], unseen_parts=[], merged_parts=[["b", "c"]], mean_confidence=0.9)
    metrics = RigMetrics(miou=0.8, ari=0.7, cd_j2j=0.1, cd_j2b=0.08, cd_b2b=0.06, skin_precision=0.7,
                         skin_recall=0.9, skin_l1=0.3, replay_error=0.01)
    return RigRow(rig_id=rig_key("src", sample_id, "v1"), sample_id=sample_id, source="src", clip="walk", glb=glb,
                  summary=summary, metrics=metrics, code_version="v1")


def test_rows_round_trip_and_are_written_once(tmp_path) -> None:
    root = str(tmp_path)
    first = row("s1", b"glTF\x02 one")
    assert write_rigs(root, [first]) == 1
    assert write_rigs(root, [first, row("s2", b"glTF\x02 two")]) == 1  # s1 is already there
    assert {r.sample_id: r for r in read_rigs(root)}["s1"] == first
    dataset = lance.dataset(rigs_uri(root))
    assert RIGS_SCHEMA.field("glb").metadata == BLOB_METADATA
    # stored out of line: a plain scan returns blob descriptors, the bytes come from read_blobs
    assert not pa.types.is_large_binary(dataset.to_table(columns=["glb"]).schema.field("glb").type)
    payloads = {payload for _, payload in dataset.read_blobs("glb", indices=[0, 1])}
    assert payloads == {b"glTF\x02 one", b"glTF\x02 two"}
    miou = dataset.to_table(columns=["metrics"]).column("metrics").combine_chunks().field("miou").to_pylist()
    assert sorted(miou) == [0.8, 0.8]
