"""Round trips of ROS 2 service calls: from the cloud through edge-agent (MQTT request ->
agent -> service -> reply on MQTT) and, as the baseline, the same call made directly by
a ROS node (a Cyclone DDS client, rmw_cyclonedds' convention), at fixed rates.

  service_roundtrip.py serve --domain N
      serves orchard_test_srvs/srv/GoToRow on /arm/goto_row (rmw_cyclonedds convention)
      and answers at once; when stdin closes, prints the service's own handling times
      (from taking the request to writing the reply, ms) as one JSON line
  service_roundtrip.py call --domain N --rates 1,10,100 --seconds S
      the baseline: calls the service directly at each rate
  service_roundtrip.py mqtt --port P --rates 1,10,100 --seconds S
      the same calls as cloud requests on /pk1/robot-7/user/service/goto_row, replies
      awaited on .../goto_row_reply

`call` and `mqtt` print one JSON line per rate: {"rate", "sent", "answered", "p50_ms",
"p99_ms", "max_ms"}. Requests are sent on schedule, whether earlier ones were answered
or not (open loop), so queueing shows in the figures.
"""

import argparse
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "py"))

SRV = "orchard_test_srvs/srv/GoToRow"
DIRS = [os.path.join(REPO, "interfaces"), os.path.join(REPO, "tests", "fixtures", "interfaces")]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")


def summary(rate, sent, rtts):
    return {"rate": rate, "sent": sent, "answered": len(rtts),
            "p50_ms": round(pct(rtts, 0.5), 2), "p99_ms": round(pct(rtts, 0.99), 2),
            "max_ms": round(max(rtts), 2) if rtts else None}


def dds(domain):
    from cyclonedds.core import Policy, Qos
    from cyclonedds.domain import DomainParticipant
    from ros_peer import Types
    types = Types(DIRS, "jazzy")
    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000), Policy.Durability.Volatile,
              Policy.History.KeepLast(1000))
    return DomainParticipant(domain), types, qos


def serve(args):
    from cyclonedds.core import Listener
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    dp, types, qos = dds(args.domain)
    rq, rp = SRV + "_Request", SRV + "_Response"
    rq_t, rp_t = types.idl(rq, header=True), types.idl(rp, header=True)
    times = []
    lock = threading.Lock()
    writer = DataWriter(dp, Topic(dp, "rr/arm/goto_rowReply", rp_t, qos=qos), qos=qos)

    class OnRequest(Listener):
        def on_data_available(self, reader):
            for r in reader.take(64):
                if type(r).__name__ == "InvalidSample":
                    continue
                t0 = time.perf_counter()
                writer.write(types.make(rp, {"success": True, "message": "at " + r.row},
                                        head={"client": r.client, "seq": r.seq}))
                with lock:
                    times.append((time.perf_counter() - t0) * 1000)

    reader = DataReader(dp, Topic(dp, "rq/arm/goto_rowRequest", rq_t, qos=qos), qos=qos, listener=OnRequest())
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()
    del reader
    with lock:
        print(json.dumps({"service_p50_ms": round(pct(times, 0.5), 3),
                          "service_p99_ms": round(pct(times, 0.99), 3), "calls": len(times)}), flush=True)


def schedule(rates, seconds, send, done, wait_answers):
    for rate in rates:
        n = max(1, int(rate * seconds))
        start = time.perf_counter() + 0.2
        for i in range(n):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            send(rate, i)
        wait_answers(rate, n)
        print(json.dumps(summary(rate, n, done(rate))), flush=True)


def call(args):
    from cyclonedds.core import Listener
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    dp, types, qos = dds(args.domain)
    rq, rp = SRV + "_Request", SRV + "_Response"
    rq_t, rp_t = types.idl(rq, header=True), types.idl(rp, header=True)
    client = 0x1122334455667788
    sent, rtts = {}, {}
    lock = threading.Lock()

    matched = {"writer": 0, "reader": 0}

    class OnMatch(Listener):
        def on_publication_matched(self, _writer, status):
            matched["writer"] = status.current_count

    class OnReply(Listener):
        def on_subscription_matched(self, _reader, status):
            matched["reader"] = status.current_count

        def on_data_available(self, reader):
            now = time.perf_counter()
            for r in reader.take(64):
                if type(r).__name__ == "InvalidSample" or r.client != client:
                    continue
                with lock:
                    if r.seq in sent:
                        rate, t0 = sent.pop(r.seq)
                        rtts.setdefault(rate, []).append((now - t0) * 1000)

    reader = DataReader(dp, Topic(dp, "rr/arm/goto_rowReply", rp_t, qos=qos), qos=qos, listener=OnReply())
    writer = DataWriter(dp, Topic(dp, "rq/arm/goto_rowRequest", rq_t, qos=qos), qos=qos, listener=OnMatch())
    # Matched both ways before timing, as the agent's client is.
    end = time.time() + 30
    while time.time() < end and not (matched["writer"] and matched["reader"]):
        time.sleep(0.01)
    time.sleep(0.5)
    seq = [0]

    def send(rate, i):
        seq[0] += 1
        with lock:
            sent[seq[0]] = (rate, time.perf_counter())
        writer.write(types.make(rq, {"row": f"A{i}", "speed": 0.5}, head={"client": client, "seq": seq[0]}))

    def wait_answers(rate, n):
        end = time.time() + 15
        while time.time() < end:
            with lock:
                if len(rtts.get(rate, [])) >= n:
                    return
            time.sleep(0.01)

    schedule(args.rates, args.seconds, send, lambda r: rtts.get(r, []), wait_answers)
    del reader


def mqtt(args):
    import paho.mqtt.client as paho
    req = "/pk1/robot-7/user/service/goto_row"
    sent, rtts = {}, {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c, _u, msg):
        now = time.perf_counter()
        body = json.loads(msg.payload)
        with lock:
            key = body.get("id")
            if key in sent and body.get("code") == 200:
                rate, t0 = sent.pop(key)
                rtts.setdefault(rate, []).append((now - t0) * 1000)

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-cloud")
    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", args.port)
    c.subscribe(req + "_reply", qos=1)
    c.loop_start()
    subscribed.wait(10)
    # The agent's service client matched before timing: one warm-up call answered
    # (a new id each try: a repeated one is answered from the call log).
    end = time.time() + 30
    tries = 0
    while not rtts.get(0):
        if time.time() > end:
            sys.exit("no answer through the agent within 30 s")
        tries += 1
        with lock:
            sent[f"warm-{tries}"] = (0, time.perf_counter())
        c.publish(req, json.dumps({"id": f"warm-{tries}", "row": "W"}), qos=1)
        t = time.time() + 1
        while time.time() < t and not rtts.get(0):
            time.sleep(0.01)
    n_sent = [0]

    def send(rate, i):
        n_sent[0] += 1
        key = f"r{rate}-{i}-{os.getpid()}-{time.time_ns()}"
        with lock:
            sent[key] = (rate, time.perf_counter())
        c.publish(req, json.dumps({"id": key, "row": f"A{i}", "speed": 0.5}), qos=1)

    def wait_answers(rate, n):
        end = time.time() + 30
        while time.time() < end:
            with lock:
                if len(rtts.get(rate, [])) >= n:
                    return
            time.sleep(0.01)

    schedule(args.rates, args.seconds, send, lambda r: rtts.get(r, []), wait_answers)
    c.loop_stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["serve", "call", "mqtt"])
    ap.add_argument("--domain", type=int, default=0)
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--rates", default="1,10,100")
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    {"serve": serve, "call": call, "mqtt": mqtt}[args.what](args)


if __name__ == "__main__":
    main()
