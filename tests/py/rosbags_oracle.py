"""Random messages serialized by rosbags, the independent CDR implementation the codec
is checked against.

For every message type under the given interface folders that rosbags can hold (its own
standard definitions, plus the others registered from our .msg text), generate random
values, serialize them little- and big-endian with rosbags, and print one JSON line per
message: {"type", "value", "le", "be"} where value is in edge-agent's JSON form and le/be
are hex. rosbags has no wstring, so types using it are skipped (and listed on stderr).

usage: rosbags_oracle.py --seed N --count N DIR [DIR ...]
"""

import argparse
import base64
import json
import math
import os
import random
import sys

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

DTYPES = {
    "bool": np.bool_,
    "byte": np.int8,
    "char": np.uint8,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "float32": np.float32,
    "float64": np.float64,
}
INT_RANGES = {
    "byte": (-128, 127),  # rosbags holds byte as int8; ROS 2 means 0..255
    "char": (0, 255),
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
ALPHABET = (
    "abcXYZ019 _-/.:"
    "\"\\\t\n\r\x01\x1f"
    "äöüßéñ°µ"
    "日本語中文"
    "😀🍎🍏"
)


def collect_definitions(dirs):
    """{'pkg/msg/Name': text} for every .msg under the folders (package folders inside)."""
    found = {}
    for root in dirs:
        for pkg in sorted(os.listdir(root)):
            msg_dir = os.path.join(root, pkg, "msg")
            if not os.path.isdir(msg_dir):
                continue
            for f in sorted(os.listdir(msg_dir)):
                if f.endswith(".msg"):
                    with open(os.path.join(msg_dir, f), encoding="utf-8") as fh:
                        found.setdefault(f"{pkg}/msg/{f[:-4]}", fh.read())
    return found


def uses_wstring(ts, name, seen=None):
    seen = seen or set()
    if name in seen:
        return False
    seen.add(name)
    for _, desc in ts.fielddefs[name][1]:
        while desc[0] in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            desc = desc[1][0]
        if desc[0] == Nodetype.NAME and uses_wstring(ts, desc[1], seen):
            return True
        if desc[0] == Nodetype.BASE and desc[1][0] == "wstring":
            return True
    return False


class Generator:
    def __init__(self, ts, rng):
        self.ts = ts
        self.rng = rng

    def integer(self, t):
        lo, hi = INT_RANGES[t]
        r = self.rng.random()
        if r < 0.15:
            return lo
        if r < 0.3:
            return hi
        if r < 0.4:
            return 0
        return self.rng.randint(lo, hi)

    def floating(self, t):
        r = self.rng.random()
        if r < 0.05:
            v = math.nan
        elif r < 0.1:
            v = math.inf
        elif r < 0.15:
            v = -math.inf
        elif r < 0.2:
            v = -0.0
        elif r < 0.25:
            v = 5e-324 if t == "float64" else 1e-45
        elif r < 0.3:
            v = 1.7e308 if t == "float64" else 3.4e38
        else:
            v = self.rng.uniform(-1e6, 1e6) * 10 ** self.rng.randint(-10, 10)
            if t == "float32" and abs(v) > 3.4e38:
                v = 1.0
        return float(np.float32(v)) if t == "float32" else v

    def text(self, bound):
        n = self.rng.choice([0, 1, 2, 5, 12, 40])
        if bound:
            n = min(n, bound)
        return "".join(self.rng.choice(ALPHABET) for _ in range(n))

    def base(self, t, bound):
        if t == "string":
            return self.text(bound)
        if t == "bool":
            return self.rng.random() < 0.5
        if t in ("float32", "float64"):
            return self.floating(t)
        return self.integer(t)

    def length(self, bound, fixed=None):
        if fixed is not None:
            return fixed
        choices = [0, 1, 2, 3, 7]
        if bound:
            choices = [min(c, bound) for c in choices] + [bound]
        else:
            choices += [40]
        return self.rng.choice(choices)

    def value(self, desc, depth):
        kind, rest = desc
        if kind == Nodetype.BASE:
            return self.base(*rest)
        if kind == Nodetype.NAME:
            return self.message(rest, depth + 1)
        elem, n = rest
        count = self.length(n if kind == Nodetype.SEQUENCE else None, n if kind == Nodetype.ARRAY else None)
        if depth > 3 and kind == Nodetype.SEQUENCE and elem[0] == Nodetype.NAME:
            count = min(count, 1)
        if elem[0] == Nodetype.BASE and elem[1][0] != "string":
            t = elem[1][0]
            return np.array([self.base(t, 0) for _ in range(count)], dtype=DTYPES[t])
        return [self.value(elem, depth) for _ in range(count)]

    def message(self, name, depth=0):
        cls = self.ts.types[name]
        kwargs = {}
        for fname, desc in self.ts.fielddefs[name][1]:
            if fname == "structure_needs_at_least_one_member":
                kwargs[fname] = 0
            else:
                kwargs[fname] = self.value(desc, depth)
        return cls(**kwargs)


def float_json(v):
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def to_json(ts, desc, v):
    """A rosbags value in edge-agent's JSON form."""
    kind, rest = desc
    if kind == Nodetype.BASE:
        t = rest[0]
        if t in ("float32", "float64"):
            return float_json(v)
        if t == "byte":
            return int(v) & 0xFF
        if t == "bool":
            return bool(v)
        if t == "string":
            return v
        return int(v)
    if kind == Nodetype.NAME:
        out = {}
        for fname, fdesc in ts.fielddefs[rest][1]:
            if fname == "structure_needs_at_least_one_member":
                continue
            out[fname] = to_json(ts, fdesc, getattr(v, fname))
        return out
    elem = rest[0]
    if elem[0] == Nodetype.BASE and elem[1][0] in ("uint8", "byte"):
        return base64.b64encode(np.asarray(v).astype(np.uint8).tobytes()).decode()
    return [to_json(ts, elem, x) for x in v]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()

    ts = get_typestore(Stores.ROS2_JAZZY)
    defs = collect_definitions(args.dirs)
    extra = {}
    for name, text in defs.items():
        if name not in ts.fielddefs:
            extra.update(get_types_from_msg(text, name))
    ts.register(extra)

    rng = random.Random(args.seed)
    gen = Generator(ts, rng)
    skipped = []
    for name in sorted(defs):
        if uses_wstring(ts, name):
            skipped.append(name)
            continue
        for _ in range(args.count):
            msg = gen.message(name)
            le = bytes(ts.serialize_cdr(msg, name, little_endian=True))
            be = bytes(ts.serialize_cdr(msg, name, little_endian=False))
            value = to_json(ts, (Nodetype.NAME, name), msg)
            line = {"type": name, "value": value, "le": le.hex(), "be": be.hex()}
            sys.stdout.write(json.dumps(line, allow_nan=False, ensure_ascii=False) + "\n")
    if skipped:
        sys.stderr.write("skipped (rosbags has no wstring): " + ", ".join(skipped) + "\n")


if __name__ == "__main__":
    main()
