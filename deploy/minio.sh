#!/usr/bin/env bash
# Start the cached MinIO build on loopback with generated credentials.
#   deploy/minio.sh DATA_DIR PORT   (prints the PACSBROKER_S3_* settings to use)
set -euo pipefail
DATA="${1:-var/minio}"; PORT="${2:-9000}"
BIN="${PACSBROKER_CACHE:-$HOME/.cache/pacsbroker}/minio-${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}/minio"
[ -x "$BIN" ] || { echo "MinIO not installed: run deploy/install-minio.sh" >&2; exit 1; }
mkdir -p "$DATA"
CRED="$DATA/.credentials"
if [ ! -f "$CRED" ]; then
  umask 077
  printf 'PACSBROKER_S3_ACCESS_KEY=%s\nPACSBROKER_S3_SECRET_KEY=%s\n' \
    "pb$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    "$(head -c24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$CRED"
fi
# shellcheck disable=SC1090
. "$CRED"
export MINIO_ROOT_USER="$PACSBROKER_S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$PACSBROKER_S3_SECRET_KEY"
export MINIO_CI_CD=1 MINIO_BROWSER=off
nohup "$BIN" server --quiet --address "127.0.0.1:$PORT" "$DATA/data" > "$DATA/minio.log" 2>&1 &
echo "PACSBROKER_S3_ENDPOINT=127.0.0.1:$PORT"
cat "$CRED"
