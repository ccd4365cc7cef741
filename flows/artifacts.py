"""Prefect artifacts of a build: counts, rejection reasons, render progress, Lance versions, a contact sheet.

Images: a browser will not load a ``file://`` URL from the UI's ``http://`` page, so the contact sheet
goes in as a ``data:`` URI (a few tens of KiB) while the PNG itself is written next to the table. It is
a *markdown* artifact holding the image, not an image artifact: Prefect 3.8.8's UI (the default, v2)
prints an image artifact's URL as text under the picture, which for a data URI is 80 KB of base64
across the page, while its markdown renderer lets ``data:image/`` sources through for ``<img>`` and
shows nothing else (the absolute path of the PNG goes in the description). Both sit in a column about
700 px wide, so the sheet is laid out to fit it at its own pixel size: a row of the sample's views in
RGB above a row of its part maps, labelled.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.report import BuildReport
from pipelines.build.fetch import redact
from pipelines.build.framepack import unpack
from pipelines.contact_sheet import contact_sheet, png_bytes
from pipelines.files import write_atomic
from schemas.assets import Rejection

KEY_PREFIX = "kp20k"
CONTACT_SHEET_SAMPLES = 8
REJECTED_ASSET_ROWS = 200  # the artifact is for a glance; the rejections table holds every row
CONTACT_SHEET_VIEWS = 4
TILE = 128  # 4 views x 128 px plus the labels fit the UI's ~700 px column unscaled
SHEET_LABEL_CHARS = 20


@dataclass(frozen=True)
class SheetEntry:
    """One sample on the contact sheet: a label and its RGB and part frame packs."""

    label: str
    rgb: bytes | BinaryIO  # a frame pack, or a lazy file over one (``DatasetStore.take_blobs``)
    parts: bytes | BinaryIO


def contact_sheet_png(entries: list[SheetEntry], tile: int = TILE) -> bytes:
    """Two rows per sample, the first frame of each of its first views: RGB above the part maps,
    labelled with the sample (rows) and the view (columns)."""
    if not entries:
        raise ValueError("a contact sheet needs at least one sample")
    rows = []
    n_views = 0
    for entry in entries[:CONTACT_SHEET_SAMPLES]:
        rgb = unpack(entry.rgb, frames=[0], views=None)[:CONTACT_SHEET_VIEWS, 0]
        parts = unpack(entry.parts, frames=[0], views=None)[:CONTACT_SHEET_VIEWS, 0]
        rows += [(entry.label[:SHEET_LABEL_CHARS], list(rgb)), ("  parts", list(parts))]
        n_views = max(n_views, len(rgb))
    columns = [f"view {v}" for v in range(n_views)]
    return png_bytes(contact_sheet(rows, tile=tile, column_labels=columns))


def contact_sheet_path(lance_uri: str, cache_dir: str) -> Path:
    """``data/kp20k.lance`` -> ``data/kp20k.contact-sheet.png``; remote tables -> the cache folder."""
    if "://" in lance_uri:
        return Path(cache_dir) / "contact-sheet.png"
    table = Path(lance_uri)
    return table.with_name(f"{table.stem}.contact-sheet.png")


def publish_contact_sheet(png: bytes, path: Path) -> None:
    """Write the sheet to ``path`` and publish it as an artifact that shows the image alone."""
    write_atomic(path, png)
    create_markdown_artifact(
        markdown=image_markdown(png, "contact sheet: RGB above part maps, one column per view"),
        key=f"{KEY_PREFIX}-contact-sheet",
        description=f"First frame of each sample: RGB above part maps, one column per view. PNG: {Path(path).resolve()}",
    )


def image_markdown(png: bytes, alt: str) -> str:
    """Markdown whose only content is the PNG, embedded as a data URI: the UI shows the picture alone."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})\n"


def publish_report(report: BuildReport) -> None:
    """Counts per stage, rejection reasons, and the Lance versions with a snippet to read them."""
    create_table_artifact(
        table=report.stage_counts(), key=f"{KEY_PREFIX}-stage-counts",
        description=f"Assets in and out of each stage. {report.resume_line()[:1].upper()}{report.resume_line()[1:]}.",
    )
    reasons = [{"stage/reason": k, "count": v} for k, v in sorted(report.rejection_reasons.items())]
    create_table_artifact(
        table=reasons or [{"stage/reason": "(none)", "count": 0}],
        key=f"{KEY_PREFIX}-rejection-reasons",
        description="Rejections decided in this run",
    )
    create_markdown_artifact(markdown=versions_markdown(report), key=f"{KEY_PREFIX}-lance-versions")


def publish_rejected_assets(rejections: list[Rejection]) -> None:
    """Which assets this run left out and why (the first rows), identifiers and details redacted:
    an annotation's URL may carry a token, and artifacts are shown to anyone with UI access."""
    if not rejections:
        return
    rows = [
        {
            "stage": r.stage, "reason": r.reason.value, "source": r.source, "file_identifier": redact(r.file_identifier),
            "clip": r.clip, "detail": redact(r.detail),
        }
        for r in rejections[:REJECTED_ASSET_ROWS]
    ]
    shown = f"the first {len(rows)} of {len(rejections)}" if len(rejections) > len(rows) else f"all {len(rows)}"
    create_table_artifact(
        table=rows, key=f"{KEY_PREFIX}-rejected-assets",
        description=f"Assets left out in this run and why ({shown}; the rejections table holds every one)",
    )


def versions_markdown(report: BuildReport) -> str:
    rows = "\n".join(
        f"| `{table}` | {report.versions_before.get(table, '-')} | {version} |"
        for table, version in sorted(report.versions.items())
    )
    return (
        f"## Lance tables at `{absolute_uri(report.lance_uri)}`\n\n"
        f"render config `{report.config_hash}`, code `{report.code_version}`\n\n"
        "| table | version before | version after |\n|---|---|---|\n"
        f"{rows}\n\n"
        "Read this exact version:\n\n"
        "```python\n"
        f"{read_snippet(report.lance_uri, report.versions.get('samples'))}\n"
        "```\n"
    )


def absolute_uri(uri: str) -> str:
    """A local path made absolute (what a user copies must work from any folder); URLs as they are."""
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def read_snippet(lance_uri: str, version: int | None) -> str:
    """Three lines of Python that read the samples table (at ``version``) without the blobs, from anywhere."""
    pinned = "" if version is None else f", version={version}"
    return (
        "import lance\n"
        f"ds = lance.dataset({(absolute_uri(lance_uri).rstrip('/') + '/samples.lance')!r}{pinned})\n"
        "print(ds.to_table(columns=['sample_id', 'file_identifier', 'clip', 'n_views', 'n_frames']).to_pandas())"
    )


@dataclass
class RenderProgress:
    """What a person steering a long build looks at: a progress bar updated as assets finish (at most
    once per ``every_s``), and at each shard commit (at most once per ``table_every_s``, and at the
    end) a table of counts, throughput, ETA and failures by reason, under one key, so the UI shows
    the latest and keeps the history."""

    total: int
    every_s: float = 1.0
    table_every_s: float = 10.0
    done: int = 0
    accepted: int = 0
    samples_written: int = 0
    shards: int = 0
    failures: Counter = field(default_factory=Counter)
    _id: UUID | None = None
    _last: float = 0.0
    _last_table: float = 0.0
    _started: float = 0.0

    def start(self) -> None:
        self._id = create_progress_artifact(
            progress=0.0, key=f"{KEY_PREFIX}-render-progress", description=f"0 of {self.total} assets rendered"
        )
        self._started = self._last = time.monotonic()

    def advance(self, accepted: bool, reasons: Iterable[str]) -> None:
        """One asset decided: ``accepted`` when it gave a sample, with its rejections' 'stage/reason's."""
        self.done += 1
        self.accepted += accepted
        self.failures.update(reasons)
        now = time.monotonic()
        if self._id is not None and (self.done == self.total or now - self._last >= self.every_s):
            update_progress_artifact(
                artifact_id=self._id,
                progress=100.0 * self.done / max(self.total, 1),
                description=f"{self.done} of {self.total} assets rendered",
            )
            self._last = now

    def committed(self, samples_written: int, final: bool = False) -> None:
        """A shard is in the table."""
        self.shards += 1
        self.samples_written += samples_written
        now = time.monotonic()
        if final or now - self._last_table >= self.table_every_s:
            create_markdown_artifact(markdown=self.markdown(now), key=f"{KEY_PREFIX}-build-live",
                                     description="Live counts of this build, updated at shard commits")
            self._last_table = now

    def markdown(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = "-" if not self.done else "done" if not left else f"{left / rate / 60:.1f} min"
        rows = "\n".join(f"| {reason} | {n} |" for reason, n in self.failures.most_common())
        return (
            "| assets decided | of | gave samples | samples committed | shards | assets/s | ETA |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {self.done} | {self.total} | {self.accepted} | {self.samples_written} | {self.shards} | {rate:.2f} | {eta} |\n\n"
            "| rejections by stage/reason | count |\n|---|---|\n" + (rows or "| (none) | 0 |") + "\n"
        )
