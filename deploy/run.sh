#!/usr/bin/env bash
# Run the product on embedded defaults (SQLite index, local archive under var/), load the
# sample studies and print where it listens. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh --python
exec .venv/bin/pacsbroker serve --load sample_dicom/set "$@"
