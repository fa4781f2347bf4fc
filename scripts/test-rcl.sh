#!/usr/bin/env bash
# The rcl transport's tests (cargo feature `rcl`, tests/rcl_transport.rs) against a real
# ROS 2. Run it in a shell where the ROS 2 installation is sourced, e.g.
#   source /opt/ros/humble/setup.bash && scripts/test-rcl.sh
# It builds the agent's own interface package (interfaces/edge_agent_msgs) into
# target/rcl-ws with colcon, builds the agent with `--features rcl` against that
# environment, and runs the tests: rclpy nodes, `ros2 node/param`, `ros2 launch`,
# mosquitto. Then it builds the rcl Debian package of the sourced distribution and checks
# it (lintian, and the packaged agent with its packaged configuration and messages). Not
# part of scripts/test.sh, which needs no ROS installation.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${ROS_DISTRO:-}" || -z "${AMENT_PREFIX_PATH:-}" ]]; then
    echo "No ROS 2 environment: source your ROS 2 setup first (source /opt/ros/<distro>/setup.bash)." >&2
    exit 2
fi
for tool in colcon ros2 mosquitto mosquitto_sub cargo-nextest lintian dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        case $tool in
            colcon) hint="pip install colcon-common-extensions (or apt-get install python3-colcon-common-extensions)" ;;
            ros2) hint="the ros2 command line (ros2cli) in the sourced ROS 2" ;;
            mosquitto*) hint="apt-get install mosquitto mosquitto-clients" ;;
            lintian) hint="apt-get install lintian" ;;
            dpkg-deb) hint="apt-get install dpkg" ;;
            *) hint="cargo install cargo-nextest" ;;
        esac
        echo "$tool is missing: $hint" >&2
        exit 2
    fi
done
if ! python3 -c 'import rclpy, rosidl_runtime_py' 2>/dev/null; then
    echo "python3 cannot import rclpy: use the Python the sourced ROS 2 was built for." >&2
    exit 2
fi
if ! ldconfig -p | grep -Eq 'libclang(-[0-9.]+)?\.so'; then  # not libclang-cpp
    echo "libclang is missing (rcl's bindings are generated with it): apt-get install libclang-dev" >&2
    exit 2
fi

# The environment without the agent's messages: the package check below runs in it.
ros_prefixes=$AMENT_PREFIX_PATH
ros_libs=${LD_LIBRARY_PATH:-}

ws=target/rcl-ws
colcon --log-base "$ws/log" build --base-paths interfaces/edge_agent_msgs \
    --build-base "$ws/build" --install-base "$ws/install" \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$(command -v python3)" \
    -DPYTHON_EXECUTABLE="$(command -v python3)" >/dev/null
set +u
# shellcheck disable=SC1091
source "$ws/install/setup.bash"
set -u

cargo clippy --locked --features rcl --all-targets -- -D warnings
cargo nextest run --locked --features rcl --test rcl_transport "$@"

# The rcl package of this distribution: lintian finds no error, and the agent it holds
# reads the configuration it ships with the edge_agent_msgs it ships (in a ROS 2
# environment without the workspace above).
echo "== the rcl package (edge-agent-rcl-$ROS_DISTRO)"
scripts/build-deb.sh --variant "rcl-$ROS_DISTRO" --profile deb-check >/dev/null
deb=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/edge-agent-rcl-"$ROS_DISTRO"_*.deb | head -1)
if lintian --allow-root "$deb" | grep '^E:'; then
    echo "FAIL lintian errors in $deb" >&2
    exit 1
fi
x=$(mktemp -d)
trap 'rm -rf "$x"' EXIT
dpkg-deb -x "$deb" "$x"
if ! AMENT_PREFIX_PATH="$x/usr/lib/edge-agent/ros:$ros_prefixes" \
    LD_LIBRARY_PATH="$x/usr/lib/edge-agent/ros/lib:$ros_libs" \
    "$x/usr/bin/edge-agent" check-config "$x/etc/edge-agent/agent.toml" >/dev/null; then
    echo "FAIL the packaged agent does not accept its packaged configuration" >&2
    exit 1
fi
echo "ok   $(basename "$deb"): no lintian error; its agent, configuration and edge_agent_msgs work together"
