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
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb"
    cargo install --locked cargo-deb
fi
exec cargo deb --locked "$@"
