"""The installed package is discovered by Airflow as a provider and exposes the `cryoem` script."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_provider_cryoem

BIN = Path(sys.executable).parent


def test_airflow_providers_list_shows_the_provider():
    out = subprocess.run([str(BIN / "airflow"), "providers", "list", "-o", "json"], capture_output=True,
                         text=True, check=True, env=os.environ.copy()).stdout
    providers = json.loads(out[out.index("["):])
    ours = [p for p in providers if p["package_name"] == "airflow-provider-cryoem"]
    assert ours and ours[0]["version"] == airflow_provider_cryoem.__version__


def _class_paths(info: object) -> list[str]:
    """Every dotted class path in the provider info: the values of its `...class-name(s)` keys, at any depth."""
    if isinstance(info, list):
        return [path for item in info for path in _class_paths(item)]
    if not isinstance(info, dict):
        return []
    paths = []
    for key, value in info.items():
        if key.endswith("class-name") and isinstance(value, str):
            paths.append(value)
        elif key.endswith("class-names") and isinstance(value, list):
            paths.extend(value)
        else:
            paths.extend(_class_paths(value))
    return paths


def _import_class(dotted: str) -> type:
    module_name, _, name = dotted.rpartition(".")
    target = getattr(importlib.import_module(module_name), name, None)
    assert isinstance(target, type), f"{dotted}: {target!r} is not a class"
    assert target.__name__ == name, f"{dotted} is bound to {target.__module__}.{target.__qualname__}"
    return target


def test_provider_info_lists_only_importable_classes():
    from airflow.sdk import BaseHook, BaseOperator, BaseSensorOperator
    from airflow.triggers.base import BaseTrigger

    info = airflow_provider_cryoem.get_provider_info()
    # Each listed module imports and defines (not just imports) at least one class of its section's kind.
    for section, base in (("operators", BaseOperator), ("sensors", BaseSensorOperator), ("hooks", BaseHook),
                          ("triggers", BaseTrigger)):
        modules = [module for entry in info[section] for module in entry["python-modules"]]
        assert modules, f"no {section} listed"
        for module_name in modules:
            module = importlib.import_module(module_name)
            defined = [obj for obj in vars(module).values()
                       if isinstance(obj, type) and obj.__module__ == module_name and issubclass(obj, base)]
            assert defined, f"{module_name} (listed under {section}) defines no {base.__name__}"
            for cls in defined:
                _import_class(f"{module_name}.{cls.__name__}")
    # Every class named anywhere (connection types' hooks, extra links, notifications...) exists as named.
    for dotted in _class_paths(info):
        _import_class(dotted)
    for connection in info["connection-types"]:
        assert issubclass(_import_class(connection["hook-class-name"]), BaseHook), connection


def test_class_paths_are_found_at_any_depth_and_checked_by_name():
    info = {"connection-types": [{"hook-class-name": "airflow_provider_cryoem.hooks.results.ResultsHook"}],
            "notifications": ["x"], "extra-links": {"a": [{"operator-class-names": ["json.JSONDecoder"]}]}}
    assert _class_paths(info) == ["airflow_provider_cryoem.hooks.results.ResultsHook", "json.JSONDecoder"]
    assert _import_class("json.JSONDecoder").__name__ == "JSONDecoder"
    with pytest.raises(AssertionError, match="is not a class"):
        _import_class("json.dumps")
    with pytest.raises(AssertionError, match="is not a class"):
        _import_class("json.NoSuchClass")


def test_console_script_reports_its_version():
    out = subprocess.run([str(BIN / "cryoem"), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"cryoem {airflow_provider_cryoem.__version__}"
