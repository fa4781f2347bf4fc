#!/usr/bin/env bash
# Bridge benchmark: Cyclone DDS -> edge-agent (release build, as a process) -> mosquitto
# -> subscriber, next to a bare MQTT publisher through the same broker in the same run.
# See benches/bridge.rs for what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh >/dev/null
cargo build --release --locked --bin edge-agent
# `cargo bench` builds the binary again with the bench profile (no LTO) into the same
# target/release folder; the agent under test is the release build, kept aside.
mkdir -p target/bench-bridge
cp target/release/edge-agent target/bench-bridge/edge-agent
EDGE_AGENT_BIN="$PWD/target/bench-bridge/edge-agent" cargo bench --bench bridge "$@"
