#!/usr/bin/env bash
# A second build of the agent, with another version string, for the self-update test
# (tests/ota_self_update.rs): target/second-build/edge-agent, the robot's build (no demo)
# with the quick deb-check profile, version $1 (default 0.1.1-next). scripts/test.sh
# makes it after the Debian package, whose build it shares; only the agent itself is
# compiled again.
#
# usage: scripts/second-build.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-0.1.1-next}
EDGE_AGENT_VERSION=$VERSION cargo build --locked --quiet --profile deb-check --no-default-features --bin edge-agent
mkdir -p target/second-build
cp target/deb-check/edge-agent target/second-build/edge-agent.tmp
mv target/second-build/edge-agent.tmp target/second-build/edge-agent
target/second-build/edge-agent --version
