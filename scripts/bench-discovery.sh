#!/usr/bin/env bash
# Discovery benchmark: how long after the agent starts the first message of a topic
# whose publisher is already running reaches MQTT, over N starts, with DDS limited to the
# loopback interface (as the tests do, and as robots whose nodes all run on one computer
# often are). Against a Cyclone DDS 0.10 publisher (the test virtualenv's) and, when a
# ROS 2 is sourced, an rclpy publisher on rmw_fastrtps_cpp (ROS_LOCALHOST_ONLY=1); with
# the loopback interface's multicast off (Linux's default) and on. The baseline, in the
# same run: a subscriber of the same DDS started the same way, timed from the creation of
# its participant to its first message.
#
# usage: scripts/bench-discovery.sh [N]        (N starts per case, default 100)
# Root is needed to switch lo's multicast flag; without it only the current setting runs.
# Prints p50 / p90 / max seconds and how many of N matched within 30 s.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
scripts/setup-test-env.sh >/dev/null || exit 1
cargo build --release --quiet || exit 1
BIN=$PWD/target/release/edge-agent
WORK=$(mktemp -d)
ORIG_LO=$(cat /sys/class/net/lo/flags)
cleanup() {
    pkill -P $$ 2>/dev/null
    if [ "$(id -u)" = 0 ]; then
        if (( ORIG_LO & 0x1000 )); then ip link set lo multicast on; else ip link set lo multicast off; fi
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
export CYCLONEDDS_URI='<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces><AllowMulticast>true</AllowMulticast></General></Domain></CycloneDDS>'
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto -p "$PORT" >/dev/null 2>&1 &
sleep 0.3

stats() {  # stdin: one number or "none" per line
    python3 -c '
import sys
v = [l.strip() for l in sys.stdin if l.strip()]
ok = sorted(float(x) for x in v if x != "none")
q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")
mx = max(ok) if ok else float("nan")
print(f"p50 {q(0.5):.3f} s  p90 {q(0.9):.3f} s  max {mx:.3f} s  matched {len(ok)}/{len(v)}")'
}

run_case() {  # run_case KIND DOMAIN
    local kind=$1 domain=$2 py
    if [ "$kind" = cyclone ]; then py=.venv/bin/python; else py=python3; fi
    printf '[[ros_to_mqtt]]\nname = "c"\nros_topic = "/chatter"\nros_type = "std_msgs/msg/String"\nmqtt_topic = "/bench/discovery"\n' > "$WORK/rules.toml"
    cat > "$WORK/agent.toml" <<EOF
state_dir = "$WORK/state"
[device]
product_key = "pk"
device_name = "robot"
[mqtt]
host = "127.0.0.1"
port = $PORT
[ros]
domain_id = $domain
only_networks = ["127.0.0.1"]
[bridge]
mappings = ["rules.toml"]
EOF
    ROS_LOCALHOST_ONLY=1 ROS_DOMAIN_ID=$domain $py benches/discovery_peer.py "$kind" pub "$domain" > "$WORK/pub.out" 2>/dev/null &
    local pub=$!
    for _ in $(seq 100); do grep -q ready "$WORK/pub.out" 2>/dev/null && break; sleep 0.1; done
    : > "$WORK/agent.txt"
    for _ in $(seq "$N"); do
        rm -rf "$WORK/state"
        mosquitto_sub -p "$PORT" -t /bench/discovery -C 1 -W 30 > /dev/null 2>&1 &
        local sub=$!
        sleep 0.2
        local t0; t0=$(date +%s.%N)
        "$BIN" run -c "$WORK/agent.toml" >/dev/null 2>&1 &
        local agent=$!
        if wait $sub; then
            python3 -c "import time; print(f'{time.time() - $t0:.4f}')" >> "$WORK/agent.txt"
        else
            echo none >> "$WORK/agent.txt"
        fi
        kill -TERM $agent; wait $agent 2>/dev/null
    done
    : > "$WORK/base.txt"
    for _ in $(seq "$N"); do
        ROS_LOCALHOST_ONLY=1 ROS_DOMAIN_ID=$domain $py benches/discovery_peer.py "$kind" sub "$domain" 2>/dev/null >> "$WORK/base.txt"
    done
    kill $pub 2>/dev/null; wait $pub 2>/dev/null
    echo "  agent start -> first message on MQTT: $(stats < "$WORK/agent.txt")"
    echo "  baseline, a $kind subscriber:        $(stats < "$WORK/base.txt")"
}

echo "discovery benchmark: $N starts per case; $(uptime | sed 's/.*load/load/')"
modes=(current)
[ "$(id -u)" = 0 ] && modes=(off on)
domain=190
for mode in "${modes[@]}"; do
    [ "$mode" != current ] && ip link set lo multicast "$mode"
    echo "== loopback multicast $( (( $(cat /sys/class/net/lo/flags) & 0x1000 )) && echo on || echo off)"
    echo "-- Cyclone DDS 0.10 publisher"
    run_case cyclone $domain; domain=$((domain + 1))
    if command -v ros2 >/dev/null && [ -n "${ROS_DISTRO:-}" ]; then
        echo "-- rclpy publisher on rmw_fastrtps_cpp ($ROS_DISTRO, ROS_LOCALHOST_ONLY=1)"
        RMW_IMPLEMENTATION=rmw_fastrtps_cpp run_case rclpy $domain; domain=$((domain + 1))
    else
        echo "-- Fast DDS: skipped (source a ROS 2 installation to run it against rmw_fastrtps_cpp)"
    fi
done
echo "load after: $(uptime | sed 's/.*load/load/')"
