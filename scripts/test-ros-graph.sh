#!/usr/bin/env bash
# The DDS transport against a real ROS 2 (rcl, rclpy, the ros2 CLI, ros2 launch), on
# both RMWs: `ros2 node list`, `ros2 node info` and `ros2 param` with the agent on the
# domain, the distribution told by ROS_DISTRO, learnt from the robot's nodes, and told
# wrong (the robot's graph must stay whole); `ros2 launch edge_agent ...` by package
# name, a clean Ctrl-C with no ERROR, a configuration error not restarted, a crash
# restarted.
#
# Run by hand, in a shell with the robot's ROS 2 sourced (it is not part of
# scripts/test.sh, which needs no ROS installation):
#   source /opt/ros/humble/setup.bash && scripts/test-ros-graph.sh
# It builds the agent (cargo build), uses ROS domains 150-159, and prints one line per
# check and a summary; exit 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ROS_DISTRO:-}" ] || ! command -v ros2 >/dev/null; then
    echo "test-ros-graph: source a ROS 2 installation first (source /opt/ros/<distro>/setup.bash)" >&2
    exit 2
fi
DISTRO=$ROS_DISTRO
cargo build --quiet --no-default-features || exit 1
AGENT=$PWD/target/debug/edge-agent
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null; ros2 daemon stop >/dev/null 2>&1; rm -rf "$WORK"' EXIT
pass=0; fail=0
check() {  # check NAME CONDITION-RESULT(0/1) DETAIL
    if [ "$2" = 0 ]; then echo "ok   $1"; pass=$((pass + 1)); else echo "FAIL $1: $3"; fail=$((fail + 1)); fi
}

config() {  # config DOMAIN -> a configuration with one rule each way
    cat > "$WORK/rules.toml" <<EOF
[[ros_to_mqtt]]
name = "chatter"
ros_topic = "/chatter"
ros_type = "std_msgs/msg/String"
mqtt_topic = "/t"
[[mqtt_to_ros]]
name = "mode"
mqtt_topic = "/cmd"
ros_topic = "/mode"
ros_type = "std_msgs/msg/String"
EOF
    cat > "$WORK/agent-$1.toml" <<EOF
state_dir = "$WORK/state-$1"
[device]
product_key = "pk"
device_name = "robot"
[mqtt]
host = "127.0.0.1"
port = 1
[ros]
domain_id = $1
[bridge]
mappings = ["rules.toml"]
EOF
    echo "$WORK/agent-$1.toml"
}

robot_node() {  # an rclpy node standing for the robot's nodes, for N seconds
    python3 -c "
import rclpy, time
rclpy.init()
n = rclpy.create_node('arm_controller')
end = time.time() + $1
while time.time() < end: rclpy.spin_once(n, timeout_sec=0.1)
" >/dev/null 2>&1 &
}

domain=150
for rmw in rmw_fastrtps_cpp rmw_cyclonedds_cpp; do
    if ! ros2 pkg prefix "$rmw" >/dev/null 2>&1; then
        echo "skip $rmw: not installed"
        continue
    fi
    for told in "$DISTRO" unset wrong; do
        export ROS_DOMAIN_ID=$domain RMW_IMPLEMENTATION=$rmw
        cfg=$(config $domain)
        ros2 daemon stop >/dev/null 2>&1
        robot_node 40
        sleep 2
        case $told in
            unset) env -u ROS_DISTRO RUST_LOG=info,rustdds=error "$AGENT" run -c "$cfg" > "$WORK/log" 2>&1 & ;;
            wrong) wrong=$([ "$DISTRO" = humble ] && echo jazzy || echo humble)
                   ROS_DISTRO=$wrong RUST_LOG=info,rustdds=error "$AGENT" run -c "$cfg" > "$WORK/log" 2>&1 & ;;
            *) ROS_DISTRO=$told RUST_LOG=info,rustdds=error "$AGENT" run -c "$cfg" > "$WORK/log" 2>&1 & ;;
        esac
        agent=$!
        ros2 daemon start >/dev/null 2>&1
        sleep 8
        what="$rmw, agent's ROS_DISTRO=$told"
        nodes=$(timeout 20 ros2 node list 2>&1)
        echo "$nodes" | grep -qx /arm_controller; check "$what: ros2 node list works and lists the robot's node" $? "$nodes"
        if [ "$told" = wrong ]; then
            ! echo "$nodes" | grep -qx /edge_agent; check "$what: the agent stays out of the graph" $? "$nodes"
            grep -q "ERROR The agent leaves the ROS 2 graph alone" "$WORK/log"; check "$what: one ERROR says what to change" $? "$(tail -3 "$WORK/log")"
        else
            echo "$nodes" | grep -qx /edge_agent; check "$what: ros2 node list shows the agent" $? "$nodes"
            info=$(timeout 20 ros2 node info /edge_agent 2>&1)
            echo "$info" | grep -q "/chatter: std_msgs/msg/String" && echo "$info" | grep -q "/edge_agent/list_parameters"
            check "$what: ros2 node info lists its topics and parameter services" $? "$info"
            plist=$(timeout 20 ros2 param list /edge_agent --no-daemon 2>&1)
            echo "$plist" | grep -q config_file && echo "$plist" | grep -q use_sim_time
            check "$what: ros2 param list" $? "$plist"
            pget=$(timeout 20 ros2 param get /edge_agent config_file --no-daemon 2>&1)
            echo "$pget" | grep -q "String value is: $cfg"; check "$what: ros2 param get config_file" $? "$pget"
            pset=$(timeout 20 ros2 param set /edge_agent use_sim_time true --no-daemon 2>&1)
            echo "$pset" | grep -q "Setting parameter failed: edge-agent runs on the system clock"
            check "$what: ros2 param set is refused with the reason" $? "$pset"
        fi
        kill -TERM $agent; wait $agent
        check "$what: the agent stops cleanly" $? "exit code $?"
        pkill -P $$ python3 2>/dev/null
        domain=$((domain + 1))
    done
done

# ros2 launch by package name, with the package's ament prefix (as the .deb installs it).
export ROS_DOMAIN_ID=$domain RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
prefix=$WORK/prefix
mkdir -p "$prefix/share/ament_index/resource_index/packages" "$prefix/share/edge_agent/launch" "$WORK/bin"
: > "$prefix/share/ament_index/resource_index/packages/edge_agent"
cp launch/edge_agent.launch.py "$prefix/share/edge_agent/launch/"
cp ros/edge_agent/package.xml "$prefix/share/edge_agent/"
ln -s "$AGENT" "$WORK/bin/edge-agent"
export AMENT_PREFIX_PATH=$prefix:$AMENT_PREFIX_PATH PATH=$WORK/bin:$PATH
cfg=$(config $domain)
setsid ros2 launch edge_agent edge_agent.launch.py config_file:="$cfg" > "$WORK/launch.log" 2>&1 &
launch=$!
sleep 6
pkill -KILL -f "edge-agent run --ros-args"
sleep 8
grep -q "edge_agent-2\]: process started" "$WORK/launch.log"; check "ros2 launch: a crashed agent is started again" $? "$(cat "$WORK/launch.log")"
kill -INT -$launch; wait $launch
check "ros2 launch: Ctrl-C ends it with exit 0" $? "exit $?"
! grep -q "ERROR" <(grep -v "process has died" "$WORK/launch.log"); check "ros2 launch: a clean stop logs no ERROR" $? "$(grep ERROR "$WORK/launch.log")"
echo 'nonsense_key = 1' > "$WORK/bad.toml"
timeout 30 ros2 launch edge_agent edge_agent.launch.py config_file:="$WORK/bad.toml" > "$WORK/launch-bad.log" 2>&1
check "ros2 launch: a configuration error ends the launch" $? "$(tail -3 "$WORK/launch-bad.log")"
[ "$(grep -c 'process started' "$WORK/launch-bad.log")" = 1 ]; check "ros2 launch: a configuration error is not restarted" $? "$(cat "$WORK/launch-bad.log")"

echo "test-ros-graph ($DISTRO): $pass passed, $fail failed"
[ "$fail" = 0 ]
