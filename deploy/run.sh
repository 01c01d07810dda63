#!/usr/bin/env bash
# Run the product on embedded defaults (SQLite index, local archive under var/), with the PAS
# simulator (tools/pas_sim.py) as the demographics master, load the sample studies and print
# where it listens. Ctrl-C stops both. Set PACSBROKER_PAS_FHIR_URL to use a real PAS instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh --python
if [[ -z "${PACSBROKER_PAS_FHIR_URL:-}" ]]; then
  port="${PAS_SIM_PORT:-8090}"
  .venv/bin/python -m tools.pas_sim serve --port "$port" --seed-samples &
  sim=$!
  trap 'kill $sim 2>/dev/null || true' EXIT
  export PACSBROKER_PAS_FHIR_URL="http://127.0.0.1:$port/fhir"
  echo "PAS simulator (FHIR Patient): $PACSBROKER_PAS_FHIR_URL"
fi
.venv/bin/pacsbroker serve --load sample_dicom/set "$@"
