#!/usr/bin/env bash
# Service round-trip benchmark: a ROS 2 service called from the cloud through the agent
# (MQTT 3.1.1 request -> mosquitto -> edge-agent -> DDS -> service -> reply back the same
# way) at 1, 10 and 100 calls/s, next to the same call made directly by a ROS node (a
# Cyclone DDS 0.10 client) in the same run, against a Cyclone DDS service that answers
# at once (its own handling time is printed too). The agent is the release build, DDS
# on loopback, its state folder (call log, outbox) on this machine's disk.
#
# usage: scripts/bench-services.sh [SECONDS]     (seconds per rate, default 10)
# KEEP=1 keeps the work folder (the agent's log, each side's figures).
# Prints p50 / p99 / max round trip per rate and path, and p50 / p99 added by the agent.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RATE=${1:-10}
scripts/setup-test-env.sh >/dev/null
# EDGE_AGENT_BIN: a build to measure instead of this tree's release build.
BIN=${EDGE_AGENT_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release --quiet
    BIN=$PWD/target/release/edge-agent
fi
PY=$PWD/.venv/bin/python
WORK=$(mktemp -d -p "$PWD/target")
AGENT= MOSQ= SERVER=
cleanup() {
    for p in $AGENT $MOSQ; do kill "$p" 2>/dev/null || true; done
    exec 3>&- 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
export CYCLONEDDS_URI='<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces><AllowMulticast>true</AllowMulticast></General></Domain></CycloneDDS>'
DOMAIN=$(( 150 + RANDOM % 50 ))
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# set_tcp_nodelay: mosquitto otherwise holds its second small write to a client (the
# reply after the request's PUBACK) until the client's delayed ACK, 40 ms on Linux,
# which would be measured as the agent's.
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$PORT" >"$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
MOSQ=$!

echo "service round-trip benchmark; $(uptime | sed 's/.*load/load/')"
# The service, fed by fd 3 (closing it ends the server, which then prints its times).
exec 3> >("$PY" benches/service_roundtrip.py serve --domain "$DOMAIN" >"$WORK/server.out")
until grep -q ready "$WORK/server.out" 2>/dev/null; do sleep 0.05; done

cat >"$WORK/rules.toml" <<RULES
[[mqtt_to_service]]
name = "goto_row"
mqtt_topic = "/\${productKey}/\${deviceName}/user/service/goto_row"
ros_service = "/arm/goto_row"
ros_type = "orchard_test_srvs/srv/GoToRow"
rmw = "cyclonedds"
RULES
cat >"$WORK/agent.toml" <<CFG
state_dir = "$WORK/state"
[device]
product_key = "pk1"
device_name = "robot-7"
[mqtt]
host = "127.0.0.1"
port = $PORT
[ros]
domain_id = $DOMAIN
only_networks = ["127.0.0.1"]
interfaces = ["$PWD/tests/fixtures/interfaces"]
[bridge]
mappings = ["rules.toml"]
CFG
# (3>&-: only this shell holds the server's stdin open.)
"$BIN" run --config "$WORK/agent.toml" 2>"$WORK/agent.log" 3>&- &
AGENT=$!

"$PY" benches/service_roundtrip.py call --domain "$DOMAIN" --seconds "$SECONDS_PER_RATE" >"$WORK/direct.out" 3>&-
"$PY" benches/service_roundtrip.py mqtt --port "$PORT" --seconds "$SECONDS_PER_RATE" >"$WORK/agent.out" 3>&-
exec 3>&-
until grep -q service_p50 "$WORK/server.out" 2>/dev/null; do sleep 0.05; done

"$PY" - "$WORK" <<'PYEOF'
import json, sys
w = sys.argv[1]
rows = lambda f: {r["rate"]: r for r in map(json.loads, open(f"{w}/{f}")) if "rate" in r}
direct, agent = rows("direct.out"), rows("agent.out")
server = [json.loads(l) for l in open(f"{w}/server.out") if "service_p50_ms" in l][0]
print(f"service's own handling: p50 {server['service_p50_ms']} ms, p99 {server['service_p99_ms']} ms over {server['calls']} calls")
print(f"{'calls/s':>8} {'path':<22} {'answered':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for rate in sorted(direct):
    for name, r in (("direct (Cyclone client)", direct[rate]), ("cloud via edge-agent", agent[rate])):
        print(f"{rate:>8g} {name:<22} {r['answered']:>4}/{r['sent']:<4} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}")
    print(f"{'':>8} {'added by the agent':<22} {'':>9} {agent[rate]['p50_ms'] - direct[rate]['p50_ms']:>8.2f} {agent[rate]['p99_ms'] - direct[rate]['p99_ms']:>8.2f}")
PYEOF
echo "end; $(uptime | sed 's/.*load/load/')"
