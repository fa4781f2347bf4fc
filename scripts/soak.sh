#!/usr/bin/env bash
# The soak run (about an hour; by hand, not in CI): the release build of the agent under
# 1,000 telemetry messages a second, a detection request a second and a 10 Hz camera,
# with the broker restarted every 10 minutes. Writes soak.csv, soak.png, summary.json
# and the agent's log to OUT (default target/soak). See scripts/soak.py for what is
# measured and README.md, "Soak", for the last figures.
#
# usage: scripts/soak.sh [--minutes 60] [--rate 1000] [--restart-every 10] [--outage 15]
#                        [--no-detect] [--out DIR] [--png FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh >/dev/null
# the plot; only this script needs it
.venv/bin/pip install --quiet --disable-pip-version-check matplotlib==3.10.7
cargo build --release --locked --bin edge-agent
OUT=target/soak
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
mkdir -p "$OUT"
cp target/release/edge-agent "$OUT/edge-agent"
echo "soak; $(uptime | sed 's/.*load/load/')"
exec .venv/bin/python scripts/soak.py --agent "$OUT/edge-agent" --out "$OUT" "${args[@]}"
