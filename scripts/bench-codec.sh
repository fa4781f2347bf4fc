#!/usr/bin/env bash
# Codec benchmark: edge-agent's CDR -> JSON decoder against rosbags' deserializer +
# json.dumps on the same four messages, measured in the same run.
# Prints messages/s and MB/s for both and the speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh >/dev/null

inputs=target/bench-codec
mkdir -p "$inputs"
echo "== rosbags baseline (deserialize_cdr + json.dumps)"
.venv/bin/python benches/rosbags_baseline.py "$inputs" > "$inputs/rosbags.jsonl"
echo "== edge-agent (criterion)"
EDGE_AGENT_BENCH_INPUTS="$PWD/$inputs" cargo bench --bench codec -- --noplot "$@"

.venv/bin/python - "$inputs/rosbags.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def mean_ns(group, case):
    with open(f"target/criterion/{group}/{case}/new/estimates.json") as f:
        return json.load(f)["mean"]["point_estimate"]
print()
print(f"{'message':<15}{'bytes':>9}{'ours msg/s':>14}{'ours MB/s':>11}{'rosbags msg/s':>15}{'rosbags MB/s':>14}{'speed-up':>10}{'encode msg/s':>14}")
for r in rows:
    ours = mean_ns("decode_to_json", r["case"]) * 1e-9
    enc = mean_ns("encode_from_json", r["case"]) * 1e-9
    base = r["seconds_per_msg"]
    mb = r["bytes"] / 1e6
    print(f"{r['case']:<15}{r['bytes']:>9}{1/ours:>14,.0f}{mb/ours:>11,.0f}{1/base:>15,.0f}{mb/base:>14,.1f}{base/ours:>9,.0f}x{1/enc:>14,.0f}")
    if r["payload"]:
        print(f"{'':<15}pixel payload decoded to JSON (base64): {r['payload']/ours/1e9:.2f} GB/s")
PY
