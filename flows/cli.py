"""The ``kp20k`` command: the pipeline subcommands plus the flows (build, train, evaluate)."""

from __future__ import annotations

from pipelines.cli import main

__all__ = ["main"]
