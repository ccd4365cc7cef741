"""What the kp20k commands share: a config's flags plus ``--config`` JSON, and the end of a flow run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# field -> (flag, type, help)
Flags = dict[str, tuple[str, type, str]]


def add_config_flags(parser: argparse.ArgumentParser, flags: Flags, what: str) -> None:
    for field, (flag, kind, help_text) in flags.items():
        parser.add_argument(flag, dest=field, type=kind, help=help_text)
    parser.add_argument("--config", help=f"JSON object of {what} fields to start from (flags override it)")


def config_from_flags(args: argparse.Namespace, flags: Flags, what: str) -> dict[str, Any]:
    """``--config``'s object with the flags that were given on top. ValueError (JSON errors included)
    says what is wrong."""
    config = json.loads(args.config) if args.config else {}
    if not isinstance(config, dict):
        raise ValueError(f"--config must be a JSON object of {what} fields")
    return config | {field: getattr(args, field) for field in flags if getattr(args, field, None) is not None}


def completed_result(state: Any, command: str) -> Any | None:
    """The flow's return value when its run completed; else None, after saying how the run ended."""
    if state.is_completed():
        return state.result()
    print(f"{command}: the flow run ended {state.type.value}: {state.message}", file=sys.stderr)
    return None
