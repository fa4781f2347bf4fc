#!/usr/bin/env bash
# The rcl transport's tests (cargo feature `rcl`, tests/rcl_transport.rs) against a real
# ROS 2. Run it in a shell where the ROS 2 installation is sourced, e.g.
#   source /opt/ros/humble/setup.bash && scripts/test-rcl.sh
# It builds the agent's own interface package (interfaces/edge_agent_msgs) into
# target/rcl-ws with colcon, builds the agent with `--features rcl` against that
# environment, and runs the tests: rclpy nodes, `ros2 node/param`, `ros2 launch`,
# mosquitto. Not part of scripts/test.sh, which needs no ROS installation.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${ROS_DISTRO:-}" || -z "${AMENT_PREFIX_PATH:-}" ]]; then
    echo "No ROS 2 environment: source your ROS 2 setup first (source /opt/ros/<distro>/setup.bash)." >&2
    exit 2
fi
for tool in colcon ros2 mosquitto mosquitto_sub cargo-nextest; do
    if ! command -v "$tool" >/dev/null; then
        case $tool in
            colcon) hint="pip install colcon-common-extensions (or apt-get install python3-colcon-common-extensions)" ;;
            ros2) hint="the ros2 command line (ros2cli) in the sourced ROS 2" ;;
            mosquitto*) hint="apt-get install mosquitto mosquitto-clients" ;;
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
