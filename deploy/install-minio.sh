#!/usr/bin/env bash
# Build the MinIO server from its Go module with the machine's Go toolchain.
# The binary is cached outside the checkout so a second run takes seconds.
set -euo pipefail
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
CACHE="${PACSBROKER_CACHE:-$HOME/.cache/pacsbroker}"
BIN_DIR="$CACHE/minio-$MINIO_VERSION"
if [ -x "$BIN_DIR/minio" ]; then
  echo "minio: cached at $BIN_DIR/minio"
  exit 0
fi
command -v go >/dev/null || { echo "minio: Go toolchain not found (needed to build MinIO)" >&2; exit 1; }
mkdir -p "$BIN_DIR.tmp"
echo "minio: building github.com/minio/minio@$MINIO_VERSION (about 10 minutes on 2 cores)"
GOBIN="$BIN_DIR.tmp" GOFLAGS="-trimpath" go install "github.com/minio/minio@$MINIO_VERSION"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
echo "minio: installed $BIN_DIR/minio"
