#!/usr/bin/env bash
# Cloud link benchmark: edge-agent's link (QoS 0 direct, QoS 1 through the durable
# outbox) against a bare rumqttc client through the same local mosquitto, in one run.
# Prints msgs/s at the subscriber, p50/p99 publish-to-receive latency at 1,000 msgs/s,
# and the outbox's disk overhead per message.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh >/dev/null
cargo bench --bench mqtt_link "$@"
