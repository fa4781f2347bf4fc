#!/usr/bin/env bash
# OTA benchmark: installs a package (200 MB by default) from a local HTTP server with
# `edge-agent ota install` (download + hash + signature-free verify + extract + per-file
# hashes + fsync + switch) and, in the same run, the baseline `curl | sha256sum | tar -xz`
# into a directory. Prints MB/s for both, the ratio, and the installer's peak RSS.
#
# usage: scripts/bench-ota.sh [SIZE_MB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-200}
RUNS=${2:-3}
scripts/setup-test-env.sh >/dev/null
command -v curl >/dev/null || { echo "curl is needed: apt-get install curl" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed: apt-get install time" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/edge-agent

WORK=$(mktemp -d /var/tmp/edge-agent-bench-ota.XXXXXX)
SRV_PID=
cleanup() {
    [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A model-like package: 20 files of incompressible data (weights), plus a config.
mkdir -p "$WORK/src/models" "$WORK/www"
per=$((SIZE_MB / 20))
for i in $(seq -w 1 20); do
    head -c "${per}M" /dev/urandom >"$WORK/src/models/part$i.bin"
done
echo 'variant = "bench"' >"$WORK/src/detector.toml"
"$BIN" ota pack "$WORK/src" --version 2.0.0 --out "$WORK/www" >"$WORK/pack.txt"
PKG=$(head -1 "$WORK/pack.txt")
SHA=$(awk '/^sha256/ {print $2}' "$WORK/pack.txt")
BYTES=$(stat -c %s "$PKG")
echo "package: $(basename "$PKG"), $((BYTES / 1000000)) MB"

.venv/bin/python tests/py/http_server.py "$WORK/www" >"$WORK/port.txt" &
SRV_PID=$!
for _ in $(seq 50); do [ -s "$WORK/port.txt" ] && break; sleep 0.1; done
PORT=$(awk '{print $2}' "$WORK/port.txt")
URL="http://127.0.0.1:$PORT/$(basename "$PKG")"

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$BYTES / ($2 - $1) / 1e6:.1f}')"; }

base=()
ours=()
rss=()
for r in $(seq "$RUNS"); do
    rm -rf "$WORK/out" && mkdir "$WORK/out"
    sync
    t0=$(now)
    curl -sf "$URL" | tee >(sha256sum >"$WORK/base.sha") | tar -xz -C "$WORK/out"
    sync -f "$WORK/out"
    t1=$(now)
    base+=("$(mbps "$t0" "$t1")")
    rm -rf "$WORK/out"

    rm -rf "$WORK/state"
    sync
    t0=$(now)
    /usr/bin/time -f "%M" -o "$WORK/rss.txt" \
        "$BIN" ota install "$URL" --sha256 "$SHA" --version 2.0.0 --yes \
        --state-dir "$WORK/state" >/dev/null 2>"$WORK/install.log" \
        || { cat "$WORK/install.log" >&2; exit 1; }
    t1=$(now)
    ours+=("$(mbps "$t0" "$t1")")
    rss+=("$(cat "$WORK/rss.txt")")
    echo "run $r: baseline ${base[-1]} MB/s, edge-agent ${ours[-1]} MB/s, peak RSS $((${rss[-1]} / 1024)) MB"
done

python3 - "${base[*]}" "${ours[*]}" "${rss[*]}" <<'EOF'
import statistics, sys
base = [float(x) for x in sys.argv[1].split()]
ours = [float(x) for x in sys.argv[2].split()]
rss = [int(x) for x in sys.argv[3].split()]
b, o = statistics.median(base), statistics.median(ours)
print(f"median: baseline (curl | sha256sum | tar -xz) {b:.1f} MB/s, "
      f"edge-agent ota install {o:.1f} MB/s, ratio {o / b:.2f} (target >= 0.90)")
print(f"edge-agent peak RSS: {max(rss) / 1024:.1f} MB (target <= 40 MB)")
EOF
