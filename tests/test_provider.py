"""The installed package is discovered by Airflow as a provider and exposes the `cryoem` script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import airflow_provider_cryoem

BIN = Path(sys.executable).parent


def test_airflow_providers_list_shows_the_provider():
    out = subprocess.run([str(BIN / "airflow"), "providers", "list", "-o", "json"], capture_output=True,
                         text=True, check=True, env=os.environ.copy()).stdout
    providers = json.loads(out[out.index("["):])
    ours = [p for p in providers if p["package_name"] == "airflow-provider-cryoem"]
    assert ours and ours[0]["version"] == airflow_provider_cryoem.__version__


def test_provider_info_lists_only_importable_classes():
    import importlib

    info = airflow_provider_cryoem.get_provider_info()
    paths = [cls for section in ("operators", "sensors", "hooks", "triggers")
             for entry in info[section] for cls in entry.get("python-modules", [])]
    paths += [entry["hook-class-name"] for entry in info["connection-types"]]
    for dotted in paths:
        module, _, attr = dotted.rpartition(".")
        target = importlib.import_module(dotted) if not attr[0].isupper() else importlib.import_module(module)
        assert target is not None, dotted


def test_console_script_reports_its_version():
    out = subprocess.run([str(BIN / "cryoem"), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"cryoem {airflow_provider_cryoem.__version__}"
