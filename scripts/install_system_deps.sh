#!/usr/bin/env bash
# Debian packages the tests use for real: Relion 3.1 (CPU); Chromium and its WebDriver for the dashboard's
# browser tests (tests/test_dashboard_browser.py drives them headless through selenium). Slurm, munge and
# sshd come with scripts/local_slurm.sh. Installs only what is missing, so a second run costs nothing.
set -euo pipefail
missing=()
command -v relion_refine >/dev/null 2>&1 || missing+=(relion)
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
