#!/usr/bin/env bash
# Footprint of the robot's build (`--profile robot --no-default-features`: stripped, no
# demo; what the .deb ships) and of the same build with the default features (the demo
# in it): the binary's size, and the idle memory of `edge-agent run` with the ROS node up
# (DDS on loopback), connected to a local mosquitto, one bridge rule, after 10 s:
# RSS, anonymous RSS, file-backed RSS and PSS (/proc/PID/status, smaps_rollup).
#
# usage: scripts/bench-footprint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh >/dev/null
WORK=$(mktemp -d)
MOSQ=
cleanup() {
    [ -n "$MOSQ" ] && kill "$MOSQ" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "footprint benchmark; $(uptime | sed 's/.*load/load/')"
cargo build --profile robot --no-default-features --quiet
cp target/robot/edge-agent "$WORK/edge-agent-robot"
cargo build --profile robot --quiet
cp target/robot/edge-agent "$WORK/edge-agent-demo"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto -p "$PORT" >/dev/null 2>&1 &
MOSQ=$!
printf '[[ros_to_mqtt]]\nname = "c"\nros_topic = "/chatter"\nros_type = "std_msgs/msg/String"\nmqtt_topic = "/bench/chatter"\n' >"$WORK/rules.toml"
cat >"$WORK/agent.toml" <<EOF
state_dir = "$WORK/state"
[device]
product_key = "pk"
device_name = "robot"
[mqtt]
host = "127.0.0.1"
port = $PORT
[ros]
domain_id = 187
only_networks = ["127.0.0.1"]
[bridge]
mappings = ["rules.toml"]
EOF

mb() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "$1"; }
for build in robot demo; do
    bin=$WORK/edge-agent-$build
    size=$(stat -c %s "$bin")
    "$bin" run --config "$WORK/agent.toml" >/dev/null 2>&1 &
    pid=$!
    sleep 10
    st=/proc/$pid/status
    printf '%-5s binary %s MB   idle RSS %s MB (anonymous %s MB, file %s MB), PSS %s MB\n' \
        "$build" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')" "$(mb "$st" VmRSS)" "$(mb "$st" RssAnon)" \
        "$(mb "$st" RssFile)" "$(mb /proc/$pid/smaps_rollup Pss)"
    kill -TERM "$pid"
    wait "$pid" || true
done
echo "load after: $(uptime | sed 's/.*load/load/')"
