#!/usr/bin/env bash
# Debian packages the product and its test suite talk to: DICOM peers, validator, database, browser.
set -euo pipefail
PKGS=(dcmtk orthanc orthanc-dicomweb dicom3tools postgresql chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The packaged Orthanc service would hold port 4242/8042; tests start their own instances.
if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
  $SUDO systemctl stop orthanc || true
fi
if [ -x /etc/init.d/orthanc ]; then $SUDO /etc/init.d/orthanc stop >/dev/null 2>&1 || true; fi
