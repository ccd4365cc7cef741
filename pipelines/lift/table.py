"""The ``rigs`` Lance table: one row per lifted sample, the .glb as a blob, the metrics as columns."""

from __future__ import annotations

import hashlib
from typing import Iterable

import lance
import pyarrow as pa

from schemas.lift import RigRow
from schemas.tables import RIGS_SCHEMA, from_row, to_row


def rig_key(source: str, sample_id: str, code_version: str) -> str:
    return hashlib.sha256(f"{source}\0{sample_id}\0{code_version}".encode()).hexdigest()[:32]


def rigs_uri(root: str) -> str:
    return f"{root.rstrip('/')}/rigs.lance"


def existing_rig_ids(root: str) -> set[str]:
    try:
        dataset = lance.dataset(rigs_uri(root))
    except ValueError:
        return set()
    return set(dataset.to_table(columns=["rig_id"]).column("rig_id").to_pylist())


def write_rigs(root: str, rows: Iterable[RigRow]) -> int:
    """Append the rows whose ``rig_id`` is not in the table yet, in one commit; the rows added."""
    seen = existing_rig_ids(root)
    new = [to_row(r) for r in rows if r.rig_id not in seen]
    if not new:
        return 0
    table = pa.Table.from_pylist(new, schema=RIGS_SCHEMA)
    try:
        dataset = lance.dataset(rigs_uri(root))
    except ValueError:
        lance.write_dataset(table, rigs_uri(root), mode="create")
        return len(new)
    dataset.merge_insert("rig_id").when_not_matched_insert_all().execute(table)
    return len(new)


def read_rigs(root: str, version: int | None = None) -> list[RigRow]:
    dataset = lance.dataset(rigs_uri(root), version=version)
    return [from_row(RigRow, r) for r in dataset.to_table(blob_handling="all_binary").to_pylist()]
