#!/usr/bin/env bash
# Local detection benchmark: `edge-agent detect --runs N` (JPEG decode, letterbox,
# inference, NMS) against the Python reference (cv2.imread + cv2 letterbox + numpy +
# onnxruntime: Ultralytics' own pre-processing and its post-processing) on the same
# model, images and thread count, in the same run. The model has about the compute of a YOLOv8n export at 640x640
# ([1,84,8400] output, 80 classes). Our side runs on ONNX Runtime (the wheel's library)
# and on the built-in tract engine. Prints the median ms per stage.
#
# usage: scripts/bench-detect.sh [RUNS] [THREADS]   (BENCH_TRACT=0 skips the tract runs)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
THREADS=${2:-2}
scripts/setup-test-env.sh >/dev/null
# EDGE_AGENT_BIN: an already built release binary (skips the build).
if [ -z "${EDGE_AGENT_BIN:-}" ]; then
    cargo build --release --locked --quiet --bin edge-agent
fi
BIN=${EDGE_AGENT_BIN:-$PWD/target/release/edge-agent}
PY=$PWD/.venv/bin/python
ORT_LIB=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)

WORK=$(mktemp -d /var/tmp/edge-agent-bench-detect.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" tests/py/make_models.py yolo-bench "$WORK/model.onnx"
# Camera-like pictures: smooth shading with a few round fruit-coloured blobs and noise,
# saved as JPEG quality 90 (as a camera driver would).
"$PY" - "$WORK" <<'PYEOF'
import sys
import numpy as np
from PIL import Image, ImageDraw
rng = np.random.default_rng(3)
for w, h in [(640, 640), (1280, 720), (1280, 960)]:
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([40 + 80 * x / w, 90 + 100 * y / h, 40 + 30 * (x + y) / (w + h)], -1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(25):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, w // 12)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    img.save(f"{sys.argv[1]}/scene_{w}x{h}.jpg", quality=90)
PYEOF

row() { # name json
    "$PY" -c 'import json,sys; d=json.loads(sys.argv[2]); print("  %-34s decode %7.2f  pre %7.2f  infer %8.2f  post %6.2f  total %8.2f  (pre+post %6.2f)" % (sys.argv[1], d["decode"], d["pre"], d["infer"], d["post"], d["total"], d["pre"]+d["post"]))' "$1" "$2"
}
ratio() { "$PY" -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print("%.2f" % (a["total"]/b["total"]))' "$1" "$2"; }

echo "model: ~YOLOv8n compute, input 640x640, output [1,84,8400]; $RUNS runs, $THREADS threads, median ms"
for img in "$WORK"/scene_640x640.jpg "$WORK"/scene_1280x720.jpg "$WORK"/scene_1280x960.jpg; do
    echo "image $(basename "$img") ($(stat -c %s "$img") bytes)"
    ref=$("$PY" tests/py/yolo_ref.py --bench "$WORK/model.onnx" "$img" "$RUNS" --threads "$THREADS")
    ours=$(env -u ORT_DYLIB_PATH "$BIN" detect --model "$WORK/model.onnx" --image "$img" \
        --runs "$RUNS" --threads "$THREADS" --onnxruntime "$ORT_LIB")
    row "reference (Python, onnxruntime)" "$ref"
    row "edge-agent (ONNX Runtime)" "$ours"
    echo "  edge-agent / reference, end to end: $(ratio "$ours" "$ref") (target <= 0.90)"
    if [ "${BENCH_TRACT:-1}" = 1 ]; then
        tract=$(env -u ORT_DYLIB_PATH "$BIN" detect --model "$WORK/model.onnx" --image "$img" \
            --runs "$(( RUNS / 5 + 1 ))" --threads "$THREADS" 2>/dev/null)
        row "edge-agent (tract, no ONNX Runtime)" "$tract"
        echo "  tract / reference, end to end: $(ratio "$tract" "$ref")"
    fi
done
