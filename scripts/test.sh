#!/usr/bin/env bash
# The project's one test command: installs what the tests need, checks formatting and
# lints, and runs every test against the real peers (mosquitto, Cyclone DDS, rosbags,
# ONNX Runtime). See README.md, "Run the tests".
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-env.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features failpoints -- -D warnings
cargo clippy --all-targets --locked --no-default-features -- -D warnings

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "== installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
echo "== the Debian package (the quick deb-check profile; scripts/build-deb.sh builds the release one)"
scripts/build-deb.sh --profile deb-check
echo "== a second build of the agent (the self-update test installs it)"
scripts/second-build.sh
echo "== doc tests"
cargo test --locked --doc
echo "== tests"
# The power-cut test needs the crash points compiled in; they do nothing unless
# EDGE_AGENT_CRASH_AT is set.
cargo nextest run --locked --profile ci --features failpoints
