"""Session settings as command-line options (`--pixel-size-a 0.83`), validated through SessionConfig."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from ..config import ConfigError, SessionConfig, parse_session_config


def add_session_options(parser: argparse.ArgumentParser, fields: Iterable[str]) -> None:
    """Add one `--field-name` option per SessionConfig field in `fields` (defaults from the model)."""
    group = parser.add_argument_group("session settings")
    for name in fields:
        info = SessionConfig.model_fields[name]
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=info.description)
        else:
            group.add_argument(flag, dest=name, default=None, help=f"{info.description} (default {info.default})")


def session_from_args(args: argparse.Namespace, fields: Iterable[str]) -> SessionConfig:
    """Build a validated SessionConfig from the options given; exits with the field named if invalid."""
    given: dict[str, Any] = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    try:
        return parse_session_config(given)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def print_result(result: BaseModel, as_json: bool) -> None:
    """Print a result model as JSON (`--json`) or as `key: value` lines for people."""
    data = result.model_dump(mode="json")
    if as_json:
        print(json.dumps(data))
        return
    for key, value in data.items():
        if isinstance(value, list) and len(value) > 6:
            value = f"[{len(value)} items]"
        print(f"{key}: {value}")
