#!/usr/bin/env bash
# Builds the robot's Debian package: edge-agent_<version>-1_<arch>.deb in target/debian/.
#
#   scripts/build-deb.sh                                   # this machine's architecture
#   scripts/build-deb.sh --target aarch64-unknown-linux-gnu   # Jetson and ARM industrial PCs
#   scripts/build-deb.sh --profile deb-check               # quicker build (the tests' own)
#
# The package holds the stripped agent without the demo (the robot's build, profile
# `robot`), the systemd unit, /etc/edge-agent/ (agent.toml from config/robot.toml, the
# rule files, the service's environment file), the launch file and edge_agent_msgs
# sources under /usr/share/edge-agent/. Installs cargo-deb from crates.io when missing.
#
# Cross-building for arm64 needs the target's standard library (`rustup target add
# aarch64-unknown-linux-gnu`), a cross linker (`apt-get install gcc-aarch64-linux-gnu`
# and in .cargo/config.toml `[target.aarch64-unknown-linux-gnu] linker =
# "aarch64-linux-gnu-gcc"`), and binutils for stripping (`binutils-aarch64-linux-gnu`);
# or build natively on the robot. See README, "Install on a robot".
#
#   scripts/build-deb.sh --variant rcl-humble              # the rcl build, for ROS 2 Humble
#
# The rcl variant is built in a shell with that distribution sourced: edge-agent-rcl-humble
# holds the agent built with the rcl transport and edge_agent_msgs built for Humble (its
# type support libraries, which the agent loads, in /usr/lib/edge-agent/ros), and starts
# the service in Humble's environment. It depends on the distribution's Debian packages
# (ros-humble-rcl...).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb"
    cargo install --locked cargo-deb
fi
variant=
prev=
for a in "$@"; do
    case $a in --variant=*) variant=${a#--variant=} ;; esac
    [ "$prev" = --variant ] && variant=$a
    prev=$a
done
if [[ $variant == rcl-* ]]; then
    distro=${variant#rcl-}
    if [ "${ROS_DISTRO:-}" != "$distro" ]; then
        echo "the $variant package is built with ROS 2 $distro sourced (source /opt/ros/$distro/setup.bash); ROS_DISTRO is '${ROS_DISTRO:-}'" >&2
        exit 2
    fi
    command -v colcon >/dev/null || { echo "colcon is missing: apt-get install python3-colcon-common-extensions" >&2; exit 2; }
    # edge_agent_msgs for this distribution, into the staging prefix the package's assets
    # name (build/ is not under the cargo target folder, which cargo-deb rewrites).
    ws=build/rcl-msgs
    rm -rf "$ws/install"
    mkdir -p "$ws"
    colcon --log-base "$ws/log" build --merge-install --base-paths interfaces/edge_agent_msgs \
        --build-base "$ws/build" --install-base "$ws/install" \
        --cmake-args -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
        -DPython3_EXECUTABLE="$(command -v python3)" >"$ws.log" 2>&1 \
        || { echo "colcon build of edge_agent_msgs failed: $ws.log" >&2; tail -20 "$ws.log" >&2; exit 1; }
    strip --strip-unneeded "$ws"/install/lib/libedge_agent_msgs__*.so
fi
exec cargo deb --locked "$@"
