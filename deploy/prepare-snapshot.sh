#!/bin/sh
# prepare-snapshot.sh - turns a fresh Debian 12 VM into a voxq worker image: installs voxq and
# its systemd unit, pulls the model and its codec into the store, quantizes int8 (and int4 when
# asked), verifies every byte, warms the page cache and prints what to snapshot.
#
# Idempotent: every step first checks whether its result is already there, so a rerun on a
# prepared machine downloads, quantizes, hashes and installs nothing and says "nothing to do".
#
# Assumes: Debian 12 (apt), run as root (or with sudo for the install step), network access to
# the hub (or HF_ENDPOINT pointing at a mirror; HF_TOKEN for gated repositories), a checkout of
# voxq as the working copy this script lives in (for the install step), and the store on the
# disk you will snapshot (default /models).
#
# usage: deploy/prepare-snapshot.sh [options]
#   --store DIR        artifact store (env VOXQ_STORE, default /models)
#   --model NAME       model name in the store (env VOXQ_MODEL, default dia-1.6b)
#   --repo REPO        repository to pull it from (env VOXQ_PULL_REPO; default: the one voxq
#                      knows for the model, nari-labs/Dia-1.6B-0626 for dia-1.6b)
#   --revision R       branch, tag or commit (env VOXQ_PULL_REVISION, default main)
#   --codec NAME       codec model (env VOXQ_CODEC, default dac-44khz)
#   --codec-repo REPO  (env VOXQ_PULL_CODEC_REPO; default descript/dac_44khz for dac-44khz)
#   --int4             also make the int4 variant (int8 is always made)
#   --voxq PATH        the voxq binary to use (default: voxq on PATH, installed when missing)
#   --no-install       never install packages, build or copy unit files
#   --prefix DIR       install prefix for the binary (default /usr/local)
set -eu

STORE=${VOXQ_STORE:-/models}
MODEL=${VOXQ_MODEL:-dia-1.6b}
REPO=${VOXQ_PULL_REPO:-}
REVISION=${VOXQ_PULL_REVISION:-}
CODEC=${VOXQ_CODEC:-dac-44khz}
CODEC_REPO=${VOXQ_PULL_CODEC_REPO:-}
INT4=0
VOXQ=""
INSTALL=1
PREFIX=/usr/local
SERVICE_USER=voxq
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)

usage() { sed -n '/^# usage:/,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
    --store) STORE=$2; shift ;;
    --model) MODEL=$2; shift ;;
    --repo) REPO=$2; shift ;;
    --revision) REVISION=$2; shift ;;
    --codec) CODEC=$2; shift ;;
    --codec-repo) CODEC_REPO=$2; shift ;;
    --int4) INT4=1 ;;
    --voxq) VOXQ=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --prefix) PREFIX=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "prepare-snapshot: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

WORK=0 # steps that did something; 0 at the end means the machine was ready already
step() { printf '== %s\n' "$*"; }
did() { WORK=$((WORK + 1)); }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# ---- 1. install: packages, binary, unit, environment file, service user ----
install_file() { # SRC DST MODE: copies only when the content differs
    if [ -f "$2" ] && cmp -s "$1" "$2"; then return 1; fi
    $SUDO install -D -m "$3" "$1" "$2"
    echo "   installed $2"
}

step "install"
if [ -z "$VOXQ" ]; then VOXQ=$(command -v voxq || true); fi
if [ -n "$VOXQ" ] && "$VOXQ" --version >/dev/null 2>&1; then
    echo "   $("$VOXQ" --version) at $VOXQ"
elif [ "$INSTALL" -eq 1 ]; then
    "$SRC/deploy/install-deps.sh"
    CUDA=OFF
    command -v nvcc >/dev/null 2>&1 && CUDA=ON
    cmake -S "$SRC" -B "$SRC/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVOXQ_CUDA=$CUDA
    cmake --build "$SRC/build-release" --target voxq
    $SUDO install -D -m 0755 "$SRC/build-release/voxq" "$PREFIX/bin/voxq"
    VOXQ=$PREFIX/bin/voxq
    echo "   built and installed $VOXQ (CUDA $CUDA)"
    did
else
    echo "prepare-snapshot: no voxq binary (give --voxq PATH, or drop --no-install)" >&2
    exit 1
fi
if [ "$INSTALL" -eq 1 ]; then
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        $SUDO useradd --system --home-dir /var/lib/voxq --create-home --shell /usr/sbin/nologin \
            "$SERVICE_USER"
        echo "   created system user $SERVICE_USER"
        did
    fi
    # The unit names /usr/local/bin/voxq and /models: point it at the prefix and store used here.
    UNIT_TMP=$(mktemp)
    sed -e "s#/usr/local/bin/voxq#$PREFIX/bin/voxq#" -e "s#/models#$STORE#g" \
        "$HERE/voxq-worker.service" >"$UNIT_TMP"
    if install_file "$UNIT_TMP" /etc/systemd/system/voxq-worker.service 0644; then
        $SUDO systemctl daemon-reload 2>/dev/null || true
        did
    fi
    rm -f "$UNIT_TMP"
    if [ ! -f /etc/voxq/voxq.env ]; then # never overwrite the operator's settings
        sed "s#^VOXQ_STORE=.*#VOXQ_STORE=$STORE#" "$HERE/voxq.env.example" >/tmp/voxq.env.$$
        install_file /tmp/voxq.env.$$ /etc/voxq/voxq.env 0640 || true
        rm -f /tmp/voxq.env.$$
        did
    fi
fi

# ---- 2. pull the model and its codec (no request at all when they are present) ----
present() { "$VOXQ" store verify "$1" --no-hash --store "$STORE" >/dev/null 2>&1; }

pull() { # NAME REPO REVISION
    if present "$1/original"; then
        echo "   $1/original is in the store"
        return
    fi
    if [ -n "$2" ]; then
        "$VOXQ" store pull "$2" --model "$1" ${3:+--revision "$3"} --store "$STORE"
    else
        "$VOXQ" store pull --model "$1" ${3:+--revision "$3"} --store "$STORE"
    fi
    did
}

step "pull into $STORE"
$SUDO mkdir -p "$STORE"
pull "$MODEL" "$REPO" "$REVISION"
pull "$CODEC" "$CODEC_REPO" ""

# ---- 3. quantize ----
step "quantize"
METHODS=int8
[ "$INT4" -eq 1 ] && METHODS="int8 int4"
for m in $METHODS; do
    if present "$MODEL/$m"; then
        echo "   $MODEL/$m is in the store"
    else
        "$VOXQ" quantize "$MODEL" --method "$m" --store "$STORE"
        did
    fi
done

# ---- 4. verify every byte, once per set of artifacts ----
# The stamp records the manifests verified last time: a manifest lists every file's sha256, so
# the same manifests on disk mean the same artifacts; a rerun skips the hashing.
STAMP="$STORE/.voxq-snapshot-verified"
manifests() {
    for v in $1; do
        sha256sum "$STORE/models/$v/MANIFEST.json"
    done
}
VARIANTS="$MODEL/original $CODEC/original"
for m in $METHODS; do VARIANTS="$VARIANTS $MODEL/$m"; done
step "verify"
CURRENT=$(manifests "$VARIANTS")
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$CURRENT" ]; then
    echo "   verified before, artifacts unchanged"
else
    for v in $VARIANTS; do
        "$VOXQ" store verify "$v" --store "$STORE"
    done
    printf '%s\n' "$CURRENT" | $SUDO tee "$STAMP" >/dev/null
    did
fi

# ---- 5. ownership for the service user ----
NOT_OWNED=""
if id "$SERVICE_USER" >/dev/null 2>&1; then
    NOT_OWNED=$(find "$STORE" ! -user "$SERVICE_USER" -print -quit)
fi
if [ -n "$NOT_OWNED" ]; then
    step "ownership"
    $SUDO chown -R "$SERVICE_USER:$SERVICE_USER" "$STORE"
    echo "   $STORE now belongs to $SERVICE_USER"
    did
fi

# ---- 6. warm the page cache (only when this run changed something: a rerun reads nothing) ----
if [ "$WORK" -gt 0 ]; then
    step "warm the page cache"
    for v in $VARIANTS; do
        if command -v vmtouch >/dev/null 2>&1; then
            vmtouch -tq "$STORE/models/$v"
        else
            cat "$STORE/models/$v"/* >/dev/null
        fi
    done
    echo "   read $(du -sh "$STORE/models" | cut -f1) of artifacts"
fi

# ---- 7. what to snapshot ----
step "snapshot"
DISK=$(df --output=source "$STORE" | tail -1)
MOUNT=$(df --output=target "$STORE" | tail -1)
UNIT_STATE="(enable it: systemctl enable voxq-worker)"
[ -f /etc/systemd/system/voxq-worker.service ] ||
    UNIT_STATE="(not installed: run without --no-install)"
cat <<EOF
   store:   $STORE on $DISK (mounted at $MOUNT): snapshot this disk;
            a VM or node that mounts a copy serves at once: no download, no quantization
   binary:  $VOXQ
   unit:    /etc/systemd/system/voxq-worker.service $UNIT_STATE
   config:  /etc/voxq/voxq.env (VOXQ_REDIS_URL must point at your Redis before the first boot)
   e.g. GCE: gcloud compute images create voxq-worker-\$(date +%Y%m%d) --source-disk=DISK --force
EOF
if [ "$WORK" -eq 0 ]; then
    echo "nothing to do: the machine was ready"
else
    echo "ready: $WORK step(s) done"
fi
