#!/bin/sh
# Installs the Debian 12 packages voxq needs to build, test and run.
# Idempotent; uses sudo when not run as root.
set -eu
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS="build-essential cmake ninja-build pkg-config git ca-certificates \
libhiredis-dev libcjson-dev libuv1-dev libsndfile1-dev libcurl4-openssl-dev redis-server \
python3 python3-yaml chromium"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "voxq: installing:$missing"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
else
    echo "voxq: all build packages present"
fi
