"""The one shape of an expected failure: a stable reason code and a human detail."""

from __future__ import annotations

from enum import Enum


class ReasonError(Exception):
    """A failure the caller records rather than crashes on.

    ``reason`` is a stable code (a :class:`schemas.assets.RejectReason` where an asset is left out, a
    short string elsewhere); ``detail`` says what happened and, where it can, what to do.
    """

    def __init__(self, reason: str | Enum, detail: str) -> None:
        code = reason.value if isinstance(reason, Enum) else reason
        super().__init__(f"{code}: {detail}")
        self.reason = reason
        self.detail = detail
