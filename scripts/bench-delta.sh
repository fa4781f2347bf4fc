#!/usr/bin/env bash
# Delta package benchmark. For three updates it packs the new version whole and as a
# delta against the old (`ota pack --delta-from`), prints the delta's size as a share of
# the full package, and installs each onto a state folder running the old version,
# printing the time and the installer's peak RSS of both in the same run:
#   config  a 40 MB model package whose configuration changed (goal: delta <= 5 %);
#   model   an ONNX model (~40 MB) whose weights changed in one layer only;
#   agent   two consecutive builds of edge-agent itself (the commit before HEAD and HEAD,
#           built with PROFILE, default release; OLD_BIN and NEW_BIN replace either).
# For the changed file of each case it also prints the size of `zstd --patch-from`'s patch
# and the peak RSS of `zstd -d --patch-from` next to bsdiff's, the other format that was
# considered (docs/ota.md, Delta packages).
#
# usage: scripts/bench-delta.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
PROFILE=${PROFILE:-release}
scripts/setup-test-env.sh >/dev/null
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed: apt-get install time" >&2; exit 1; }
command -v zstd >/dev/null || { echo "zstd is needed: apt-get install zstd" >&2; exit 1; }
command -v strip >/dev/null || { echo "strip is needed: apt-get install binutils" >&2; exit 1; }
cargo build --profile "$PROFILE" --quiet
OUT_DIR=target/$PROFILE
[ "$PROFILE" = dev ] && OUT_DIR=target/debug
WORK=$(mktemp -d /var/tmp/edge-agent-bench-delta.XXXXXX)
trap 'rm -rf "$WORK"; git worktree remove --force "$WORK.old" 2>/dev/null || true' EXIT
cp "$OUT_DIR/edge-agent" "$WORK/edge-agent"
BIN=$WORK/edge-agent
echo "load: $(uptime)"

# The agent's own builds: the commit before HEAD, built in a worktree sharing the target
# folder (only edge-agent itself is compiled again; the target folder then holds that
# build, HEAD's was copied first).
NEW_BIN=${NEW_BIN:-$WORK/edge-agent}
if [ -z "${OLD_BIN:-}" ]; then
    git worktree add --quiet --detach "$WORK.old" HEAD~1
    (cd "$WORK.old" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --profile "$PROFILE" --quiet)
    cp "$OUT_DIR/edge-agent" "$WORK/edge-agent-old"
    OLD_BIN=$WORK/edge-agent-old
fi

mk() { mkdir -p "$WORK/$1/$2"; }

# config: a 40 MB model and a 4 KB configuration, one value changed.
for v in 1 2; do
    mk config "v$v/models"
    mk config "v$v/config"
done
# Random bytes, not an ONNX file: named so that the install does not run it as a model.
head -c 40M /dev/urandom >"$WORK/config/v1/models/detector.weights"
cp "$WORK/config/v1/models/detector.weights" "$WORK/config/v2/models/detector.weights"
for v in 1 2; do
    {
        [ "$v" = 1 ] && echo "conf = 0.25" || echo "conf = 0.30"
        for i in $(seq 150); do echo "class_$i.min_score = 0.5"; done
    } >"$WORK/config/v$v/config/detect.toml"
done
CHANGED_config=config/detect.toml

# model: an ONNX model of eight layers; 2.0.0 retrains one of them.
mk model v1
mk model v2
.venv/bin/python - "$WORK/model" <<'EOF'
import sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
out = sys.argv[1]
rng = np.random.default_rng(1)
layers = [rng.standard_normal((1024, 1280), dtype=np.float32) for _ in range(8)]
def save(ws, path):
    nodes, inits, prev = [], [], "x"
    for i, w in enumerate(ws):
        inits.append(numpy_helper.from_array(w if i % 2 == 0 else w.T.copy(), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    g = helper.make_graph(nodes, "layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g), path)
save(layers, f"{out}/v1/model.onnx")
layers[5] = rng.standard_normal(layers[5].shape, dtype=np.float32)
save(layers, f"{out}/v2/model.onnx")
EOF
CHANGED_model=model.onnx

# agent: the binary in bin/.
mk agent v1/bin
mk agent v2/bin
# Stripped, as the robot's build is (profile robot, the Debian package).
strip -o "$WORK/agent/v1/bin/edge-agent" "$OLD_BIN"
strip -o "$WORK/agent/v2/bin/edge-agent" "$NEW_BIN"
CHANGED_agent=bin/edge-agent

now() { date +%s.%N; }
# install PKG STATE: time (s) and peak RSS (KB) of `ota install`.
install() {
    local t0 t1
    t0=$(now)
    /usr/bin/time -f "%M" -o "$WORK/rss.txt" "$BIN" ota install "$1" --yes --state-dir "$2" \
        >/dev/null 2>"$WORK/install.log" || { cat "$WORK/install.log" >&2; exit 1; }
    t1=$(now)
    echo "$(python3 -c "print(f'{$t1 - $t0:.3f}')") $(cat "$WORK/rss.txt")"
}

for case in config model agent; do
    d=$WORK/$case
    "$BIN" ota pack "$d/v1" --version 1.0.0 --out "$d/p1" >/dev/null
    "$BIN" ota pack "$d/v2" --version 2.0.0 --out "$d/full" >/dev/null
    "$BIN" ota pack "$d/v2" --version 2.0.0 --out "$d/delta" \
        --delta-from "$d/p1/detector-1.0.0.tar.gz" >"$d/delta.txt"
    full=$(stat -c %s "$d/full/detector-2.0.0.tar.gz")
    delta=$(stat -c %s "$d/delta/detector-2.0.0.tar.gz")
    changed_var=CHANGED_$case
    changed=${!changed_var}
    old=$d/v1/$changed
    new=$d/v2/$changed
    /usr/bin/time -f "%M" -o "$WORK/zrss.txt" \
        zstd -q -19 --long=31 --patch-from="$old" "$new" -o "$d/z.patch" -f
    /usr/bin/time -f "%M" -o "$WORK/zdrss.txt" \
        zstd -q -d --long=31 --patch-from="$old" "$d/z.patch" -o "$d/z.out" -f
    cmp -s "$d/z.out" "$new" || { echo "zstd did not rebuild $changed" >&2; exit 1; }
    bs=$(tar -tvzf "$d/delta/detector-2.0.0.tar.gz" ".delta/$changed.bsdiff" 2>/dev/null | awk '{print $3}')
    echo
    echo "== $case: $(tail -1 "$d/delta.txt")"
    python3 -c "print(f'full package {$full:,} B, delta {$delta:,} B: {100 * $delta / $full:.4f} % of the full package')"
    echo "changed file $changed ($(stat -c %s "$new") B): bsdiff patch ${bs:-none (whole)} B, zstd --patch-from $(stat -c %s "$d/z.patch") B (zstd -d peak RSS $(($(cat "$WORK/zdrss.txt") / 1024)) MB)"
    for r in $(seq "$RUNS"); do
        for kind in full delta; do
            rm -rf "$d/state"
            "$BIN" ota install "$d/p1/detector-1.0.0.tar.gz" --yes --state-dir "$d/state" >/dev/null 2>&1
            sync
            read -r secs kb < <(install "$d/$kind/detector-2.0.0.tar.gz" "$d/state")
            printf 'run %s: %-5s install %6.3f s, peak RSS %3d MB\n' "$r" "$kind" "$secs" $((kb / 1024))
            cmp -s "$d/state/current/$changed" "$new" || { echo "the $kind install did not make $changed" >&2; exit 1; }
        done
    done
done
echo
echo "load: $(uptime)"
