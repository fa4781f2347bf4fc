#!/usr/bin/env bash
# The DetectObjects service and action against a real ROS 2 (rclpy, the ros2 CLI), on
# both RMWs: `ros2 service list`/`ros2 action list` name them with their types,
# `ros2 service call` gets the answer, an rclpy action client gets feedback per stage
# and the result, and a goal cancelled while the cloud is asked ends CANCELED. With
# rmw_fastrtps the calls are made once on the loopback interface (everything works at
# any size) and once on the network interfaces, where a large reply is fragmented and
# the agent must say (a WARN) that RustDDS 0.15 garbles such fragments for Fast DDS.
#
# With `--transport rcl` the agent is the rcl build (cargo feature `rcl`, built here in
# the sourced environment): the same checks, and on the network interfaces the Fast DDS
# caller must get the whole answer, as rcl fragments as the robot's own RMW does.
#
# Run by hand, in a shell with the robot's ROS 2 sourced (it needs colcon, to build
# interfaces/edge_agent_msgs into a temporary workspace, and the test virtualenv's ONNX
# Runtime, made by scripts/setup-test-env.sh):
#   source /opt/ros/humble/setup.bash && scripts/test-ros-detect.sh
# It uses ROS domains 160-163 and a mosquitto on a free port, prints one line per check
# and a summary; exit 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ROS_DISTRO:-}" ] || ! command -v ros2 >/dev/null || ! command -v colcon >/dev/null; then
    echo "test-ros-detect: source a ROS 2 installation with colcon first (source /opt/ros/<distro>/setup.bash)" >&2
    exit 2
fi
ORT=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)
if [ -z "$ORT" ] || ! command -v mosquitto >/dev/null; then
    echo "test-ros-detect: run scripts/setup-test-env.sh first (ONNX Runtime in .venv, mosquitto)" >&2
    exit 2
fi
TRANSPORT=dds
if [ "${1:-}" = "--transport" ]; then TRANSPORT=${2:-}; fi
case $TRANSPORT in
    dds) cargo build --quiet --no-default-features || exit 1 ;;
    rcl) cargo build --quiet --no-default-features --features rcl || exit 1 ;;
    *) echo "test-ros-detect: --transport dds or rcl" >&2; exit 2 ;;
esac
AGENT=${CARGO_TARGET_DIR:-$PWD/target}/debug/edge-agent
REPO=$PWD
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null; rm -rf "$WORK"' EXIT
pass=0; fail=0
check() {  # check NAME CONDITION-RESULT(0/1) DETAIL
    if [ "$2" = 0 ]; then echo "ok   $1"; pass=$((pass + 1)); else echo "FAIL $1: $3"; fail=$((fail + 1)); fi
}

# The agent's message package, built as a robot team builds it.
mkdir -p "$WORK/ws/src" && cp -r interfaces/edge_agent_msgs "$WORK/ws/src/"
(cd "$WORK/ws" && colcon build --merge-install --cmake-args -DBUILD_TESTING=OFF >"$WORK/colcon.log" 2>&1) \
    || { echo "colcon build of edge_agent_msgs failed: $WORK/colcon.log" >&2; tail -20 "$WORK/colcon.log"; exit 1; }
# (colcon's setup script reads unset variables)
set +u
# shellcheck disable=SC1091
source "$WORK/ws/install/setup.bash"
set -u

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto -p "$PORT" >/dev/null 2>&1 &

# A camera: four red disks on green, which the shipped demo detector finds.
cat > "$WORK/camera.py" <<'EOF'
import numpy as np, rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
a = np.zeros((512, 640, 3), np.uint8); a[:] = (40, 120, 40)
yy, xx = np.mgrid[0:512, 0:640]
for cx, cy in [(100, 100), (300, 250), (500, 400), (200, 420)]:
    a[(xx - cx) ** 2 + (yy - cy) ** 2 <= 14 ** 2] = (210, 30, 30)
rclpy.init(); n = Node('camera'); p = n.create_publisher(Image, '/camera/color/image_raw', 5)
def tick():
    m = Image(); m.header.stamp = n.get_clock().now().to_msg(); m.header.frame_id = 'camera'
    m.height, m.width, m.encoding, m.step = 512, 640, 'rgb8', 640 * 3
    m.data = a.tobytes(); p.publish(m)
n.create_timer(0.2, tick); rclpy.spin(n)
EOF
# An arm's action client: feedback, result, or a cancel once the cloud is asked.
cat > "$WORK/arm.py" <<'EOF'
import sys, rclpy
from rclpy.action import ActionClient
from rclpy.node import Node
from edge_agent_msgs.action import DetectObjects
cancel = sys.argv[1] == 'cancel'
rclpy.init(); n = Node('arm')
c = ActionClient(n, DetectObjects, '/edge_agent/detect_objects')
assert c.wait_for_server(timeout_sec=15), 'no action server'
stages = []
# A long deadline: best-effort frames of a megabyte are often lost on a loaded loopback
# (Fast DDS over UDP gave an rclpy subscriber 1.6 of 5 frames a second here).
f = c.send_goal_async(DetectObjects.Goal(request_id='arm-1', deadline_ms=30000 if cancel else 10000),
                      feedback_callback=lambda m: stages.append(m.feedback.stage))
rclpy.spin_until_future_complete(n, f, timeout_sec=15)
h = f.result(); assert h and h.accepted, 'goal not accepted'
if cancel:
    while 'cloud' not in stages: rclpy.spin_once(n, timeout_sec=1)
    cf = h.cancel_goal_async(); rclpy.spin_until_future_complete(n, cf, timeout_sec=15)
    print('cancel', cf.result().return_code, len(cf.result().goals_canceling))
rf = h.get_result_async(); rclpy.spin_until_future_complete(n, rf, timeout_sec=40)
r = rf.result()
print('status', r.status, 'success', r.result.success, 'message', repr(r.result.message),
      'detections', len(r.result.detections.detections), 'stages', ','.join(stages))
EOF

config() {  # config DOMAIN POLICY LOOPBACK(0/1)
    local nets=""
    [ "$3" = 1 ] && nets='only_networks = ["127.0.0.1"]'
    # rcl takes the interfaces from the RMW (ROS_LOCALHOST_ONLY, set by run_case).
    [ "$TRANSPORT" = rcl ] && nets='transport = "rcl"'
    cat > "$WORK/agent-$1.toml" <<EOF
state_dir = "$WORK/state-$1"
[device]
product_key = "pk"
device_name = "robot"
[mqtt]
host = "127.0.0.1"
port = $PORT
[ros]
domain_id = $1
$nets
[onnx]
library = "$REPO/$ORT"
[detect]
enabled = true
policy = "$2"
model = "$REPO/assets/demo/detector.onnx"
frame_max_age = "2s"
# The first frame comes after discovery, which takes Fast DDS a second or more.
frame_timeout = "10s"
EOF
    echo "$WORK/agent-$1.toml"
}

# listed KIND LINE: whether `ros2 KIND list -t` prints LINE (leaving its output in `out`).
# The ros2 daemon learns the graph as discovery goes: asked until it knows, 20 s at most.
listed() {
    for _ in $(seq 20); do
        out=$(timeout 30 ros2 "$1" list -t 2>&1)
        echo "$out" | grep -qF "$2" && return 0
        sleep 1
    done
    return 1
}

run_case() {  # run_case RMW DOMAIN LOOPBACK(0/1)
    local rmw=$1 domain=$2 lo=$3 tag="$1 $([ "$3" = 1 ] && echo loopback || echo network)"
    export RMW_IMPLEMENTATION=$rmw ROS_DOMAIN_ID=$domain
    if [ "$lo" = 1 ]; then export ROS_LOCALHOST_ONLY=1; else unset ROS_LOCALHOST_ONLY; fi
    local log="$WORK/agent-$domain.log"
    : >"$log"
    "$AGENT" run -c "$(config "$domain" local-only "$lo")" >"$log" 2>&1 &
    local agent=$!
    python3 "$WORK/camera.py" >/dev/null 2>&1 &
    local cam=$!
    for _ in $(seq 100); do grep -q "Detection service ready" "$log" && break; sleep 0.1; done
    local out
    listed service "/edge_agent/detect_objects [edge_agent_msgs/srv/DetectObjects]"
    check "$tag: ros2 service list names the service and its type" $? "$out"
    listed action "/edge_agent/detect_objects [edge_agent_msgs/action/DetectObjects]"
    check "$tag: ros2 action list names the action and its type" $? "$out"
    if [ "$TRANSPORT" = dds ] && [ "$rmw" = rmw_fastrtps_cpp ] && [ "$lo" = 0 ]; then
        # The large reply is fragmented: the agent says what will go wrong.
        timeout 15 ros2 service call /edge_agent/detect_objects edge_agent_msgs/srv/DetectObjects \
            "{request_id: 'cli-1'}" >/dev/null 2>&1
        grep -q "WARN.*rmw_fastrtps client on a network interface" "$log"
        check "$tag: a fragmented reply to Fast DDS is announced by a WARN" $? "$(grep -c WARN "$log") WARN lines"
    else
        out=$(timeout 30 ros2 service call /edge_agent/detect_objects edge_agent_msgs/srv/DetectObjects \
            "{request_id: 'cli-1'}" 2>&1)
        echo "$out" | grep -q "success=True, message='', request_id='cli-1', source=2"
        check "$tag: ros2 service call gets the answer" $? "$(echo "$out" | cut -c1-300 | tail -3)"
        [ "$(echo "$out" | grep -o "class_id='apple'" | wc -l)" = 4 ]
        check "$tag: the answer holds the four apples" $? "$(echo "$out" | grep -o "class_id='[a-z]*'" | sort | uniq -c)"
        out=$(timeout 60 python3 "$WORK/arm.py" result 2>&1)
        echo "$out" | grep -q "status 4 success True message '' detections 4 stages camera,local"
        check "$tag: an action client gets the stages and the result" $? "$out"
    fi
    kill "$cam" 2>/dev/null; kill -INT "$agent" 2>/dev/null; wait "$agent" 2>/dev/null

    # A goal cancelled while the cloud (which never answers here) is asked.
    : >"$log"
    "$AGENT" run -c "$(config "$domain" cloud-only "$lo")" >"$log" 2>&1 &
    agent=$!
    python3 "$WORK/camera.py" >/dev/null 2>&1 &
    cam=$!
    for _ in $(seq 100); do grep -q "Detection service ready" "$log" && break; sleep 0.1; done
    out=$(timeout 60 python3 "$WORK/arm.py" cancel 2>&1)
    echo "$out" | grep -q "cancel 0 1" && echo "$out" | grep -q "status 5 success False message 'cancelled'"
    check "$tag: a cancelled goal ends CANCELED" $? "$out"
    ! grep -q "WARN.*arm-1\|ERROR" "$log"
    check "$tag: a cancel logs no WARN or ERROR" $? "$(grep -E 'WARN|ERROR' "$log" | head -3)"
    kill "$cam" 2>/dev/null; kill -INT "$agent" 2>/dev/null; wait "$agent" 2>/dev/null
    ros2 daemon stop >/dev/null 2>&1
}

run_case rmw_cyclonedds_cpp 160 0
run_case rmw_fastrtps_cpp 161 1
run_case rmw_fastrtps_cpp 162 0
echo "test-ros-detect ($ROS_DISTRO, $TRANSPORT transport): $pass passed, $fail failed"
[ "$fail" = 0 ]
