#!/usr/bin/env bash
# Install everything, then run the whole test suite (unit + integration, SQLite and PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
export TCP_NODELAY=1
.venv/bin/ruff check broker storage viewer tests sample_dicom tools bench
.venv/bin/ruff format --check broker storage viewer tests sample_dicom tools bench
.venv/bin/mypy
exec .venv/bin/pytest -q -p no:cacheprovider --durations=15 "$@"
