#!/usr/bin/env bash
# Bridge benchmark: Cyclone DDS -> edge-agent (release build, as a process) -> mosquitto
# -> subscriber, next to a bare MQTT publisher through the same broker in the same run.
# See benches/bridge.rs for what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh >/dev/null
cargo build --release --locked --bin edge-agent
EDGE_AGENT_BIN="$PWD/target/release/edge-agent" cargo bench --bench bridge "$@"
