# Sourced by the device scripts (after `cd` to the repository root): G, the staged binaries
# (unpacked on first use, libcjson beside them), and OUT, where results go (created).
G=.devbuild/gpu
export LD_LIBRARY_PATH="$PWD/$G:${LD_LIBRARY_PATH:-}"
for z in "$G"/*.gz; do [ -f "$z" ] && gunzip -f "$z" && chmod +x "${z%.gz}"; done
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
