"""Prefilter: decide on annotations alone which candidates are worth fetching.

Rules run in a fixed order and the first that fails names the rejection: annotation sanity
(sha256 must be 64 hex digits: it becomes a cache path), source, a format Blender cannot read
(``.dae``: ``no_blender_importer``), file type, licence, then
de-duplication. De-duplication runs last, over the survivors, so the copy kept is one whose licence
allows it; among those, the first by (source, file identifier) wins, whatever the input order.
Accepted assets carry their licence as an SPDX id (the raw string moves to
``metadata["license_raw"]`` when it differs), and the other copies of their bytes in
``metadata["duplicate_copies"]``: fetch falls back to them when the kept copy is gone (a deleted
GitHub fork must not lose an asset that lives on elsewhere).
"""

from __future__ import annotations

import re

from pipelines.build.licences import LicencePolicy
from pipelines.version import code_version
from schemas.assets import AssetRef, Rejection, RejectReason
from schemas.prefilter import NO_BLENDER_IMPORTER, PrefilterRules

PROCEDURAL_LICENCE = "CC0-1.0"
COPIES_KEY = "duplicate_copies"  # other places the kept bytes can be fetched from, in preference order
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _licence(asset: AssetRef, rules: PrefilterRules, policy: LicencePolicy) -> tuple[str | None, RejectReason | None, str]:
    """(licence to record, reason or None, detail)."""
    raw = asset.license
    if asset.source == "procedural" and raw is None:
        raw = PROCEDURAL_LICENCE
    if asset.source == "local" and raw is None and rules.allow_unlicensed_local:
        return None, None, ""
    spdx, reason = policy.check(raw)
    if reason is RejectReason.unknown_licence:
        return None, reason, f"unreadable licence {raw!r}"[:300]
    if reason is RejectReason.licence_not_allowed:
        return spdx, reason, f"{spdx} is not in the allow-list"
    return spdx, None, ""


def _first_failure(asset: AssetRef, rules: PrefilterRules, policy: LicencePolicy) -> tuple[RejectReason | None, str, str | None]:
    """(reason or None, detail, SPDX licence)."""
    if not _SHA256.fullmatch(asset.sha256):
        return RejectReason.bad_annotation, f"sha256 {asset.sha256[:80]!r} is not 64 hex digits", None
    if not asset.file_identifier:
        return RejectReason.bad_annotation, "empty file identifier", None
    if rules.sources is not None and asset.source not in rules.sources:
        return RejectReason.source_not_requested, f"source {asset.source!r} not in {rules.sources}", None
    if asset.file_type in NO_BLENDER_IMPORTER:
        return RejectReason.no_blender_importer, f"{asset.file_type}: {NO_BLENDER_IMPORTER[asset.file_type]}", None
    if asset.file_type not in rules.file_types:
        return RejectReason.unsupported_file_type, f"file type {asset.file_type!r} cannot carry a rig here", None
    spdx, reason, detail = _licence(asset, rules, policy)
    return reason, detail, spdx


def prefilter(assets: list[AssetRef], rules: PrefilterRules | None = None) -> tuple[list[AssetRef], list[Rejection]]:
    """(accepted assets in input order, one rejection per refused asset)."""
    rules = rules or PrefilterRules()
    policy = LicencePolicy(allow=frozenset(rules.licences))
    stamp = {"stage": "prefilter", "config_hash": rules.config_hash(), "code_version": code_version()}

    def reject(asset: AssetRef, reason: RejectReason, detail: str) -> Rejection:
        return Rejection(
            sha256=asset.sha256, file_identifier=asset.file_identifier, source=asset.source,
            reason=reason, detail=detail, **stamp,
        )

    rejections: list[Rejection] = []
    survivors: list[tuple[int, AssetRef]] = []
    for index, asset in enumerate(assets):
        reason, detail, spdx = _first_failure(asset, rules, policy)
        if reason is not None:
            rejections.append(reject(asset, reason, detail))
            continue
        if spdx != asset.license:
            metadata = {**asset.metadata, "license_raw": asset.license} if asset.license is not None else asset.metadata
            asset = asset.model_copy(update={"license": spdx, "metadata": metadata})
        survivors.append((index, asset))

    if not rules.dedupe:
        return [a for _, a in survivors], rejections
    groups: dict[str, list[AssetRef]] = {}
    for _, asset in sorted(survivors, key=lambda pair: (pair[1].source, pair[1].file_identifier, pair[0])):
        groups.setdefault(asset.sha256, []).append(asset)
    accepted = []
    for _, asset in survivors:
        kept, *others = groups[asset.sha256]
        if asset is not kept:
            rejections.append(reject(asset, RejectReason.duplicate, f"same content as {kept.source}:{kept.file_identifier}"[:300]))
            continue
        metadata = {k: v for k, v in asset.metadata.items() if k != COPIES_KEY}
        places = {(o.file_identifier, o.source): None for o in others}
        places.pop((kept.file_identifier, kept.source), None)
        if places:
            metadata[COPIES_KEY] = [{"fileIdentifier": i, "source": s} for i, s in places]
        accepted.append(asset.model_copy(update={"metadata": metadata}))
    return accepted, rejections
