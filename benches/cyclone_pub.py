"""Publishes std_msgs/String on a ROS 2 topic with Cyclone DDS at a given rate, each
message "<send time ns> <seq> xxx…" padded to a size. Used by benches/bridge.rs.

usage: cyclone_pub.py --domain D --topic /t --count N --rate R --size S
(rate 0 = as fast as possible). Waits until a reader matches, then publishes, then
prints the seconds it took and the CPU seconds it used meanwhile.
"""

import argparse
import struct
import time
from dataclasses import dataclass

from cyclonedds.core import Listener, Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic
from cyclonedds._clayer import ddspy_write


@dataclass
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


class Matched(Listener):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_publication_matched(self, writer, status):
        self.count = status.current_count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", type=int, required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--size", type=int, default=100)
    a = ap.parse_args()
    dp = DomainParticipant(a.domain)
    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=10_000_000_000), Policy.History.KeepLast(1000))
    m = Matched()
    w = DataWriter(dp, Topic(dp, "rt" + a.topic, String_, qos=qos), qos=qos, listener=m)
    end = time.time() + 20
    while m.count < 1 and time.time() < end:
        time.sleep(0.01)
    time.sleep(0.2)
    pad = "x" * max(0, a.size - 30)

    # The samples are serialized here rather than by the IdlStruct machinery, which costs
    # more CPU per message than the agent under test; checked against it once.
    def cdr(text):
        b = text.encode() + b"\0"
        raw = header + struct.pack("<I", len(b)) + b
        return raw + b"\0" * (-len(raw) % 4)

    probe = String_(data="probe " + pad)
    ser = probe.serialize()
    header = ser[:4]
    ser += b"\0" * (-len(ser) % 4)
    assert cdr(probe.data) == ser, (cdr(probe.data), ser)
    ref = w._ref
    start = time.perf_counter()
    cpu_start = time.process_time()
    # Paced runs sleep only once they are 0.5 ms ahead of the schedule: a sleep per
    # message would cost this publisher a wake-up per message, CPU taken from the agent
    # on a small machine. At 1,000 msgs/s every message still has its own slot.
    for i in range(a.count):
        if a.rate:
            target = start + i / a.rate
            d = target - time.perf_counter()
            if d > 0.0005:
                time.sleep(d)
        if ddspy_write(ref, cdr(f"{time.time_ns()} {i} {pad}")) < 0:
            raise SystemExit("write failed")
    # Seconds it took, and the CPU this process (Cyclone's threads included) used.
    print(time.perf_counter() - start, time.process_time() - cpu_start, flush=True)
    time.sleep(1)


if __name__ == "__main__":
    main()
