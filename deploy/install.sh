#!/usr/bin/env bash
# Install everything the product and its tests need; idempotent and quick when already done.
#   deploy/install.sh          Python venv + Debian packages + MinIO
#   deploy/install.sh --python only the Python venv (enough to run the product)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "python: .venv ready ($(.venv/bin/python --version))"
[ "${1:-}" = "--python" ] && exit 0
bash deploy/install-system.sh
bash deploy/install-minio.sh
