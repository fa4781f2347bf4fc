"""A ROS 2 peer on Eclipse Cyclone DDS 0.10 (the DDS inside ROS 2 Humble and Jazzy),
independent of edge-agent, that publishes and subscribes by ROS 2 conventions: topic
"rt/<name>", type "pkg::msg::dds_::Type_", CDR. Message types are built at start from
rosbags' standard definitions plus the .msg files of the given folders.

It is driven over stdin/stdout, one JSON object per line. Commands:
  {"op":"pub","id":ID,"topic":"/t","type":"pkg/msg/T","qos":{...}}     -> {"ok":ID}
  {"op":"wait_matched","id":ID,"count":N,"timeout_ms":T}             -> {"ok":ID} or {"error":...}
      (ID is a publisher or a subscription: waits until N endpoints of the other side match)
  {"op":"write","id":ID,"value":{...},"count":N,"interval_ms":M}      -> {"ok":ID,"written":N}
  {"op":"sub","id":ID,"topic":"/t","type":"pkg/msg/T","qos":{...}}     -> {"ok":ID}
  {"op":"nodes","id":ID}        -> {"ok":ID,"nodes":[...],"errors":[...]}
      the nodes other participants announce on ros_discovery_info, read in this peer's
      distribution's layout, and every announcement that could not be read or read as
      garbage (what breaks `ros2 node list` on a real robot)
  {"op":"param","id":ID,"node":"/n","service":"list"|"get"|"set","names":[...],
   "params":[{"name":N,"value":{...}}],"timeout_ms":T}                 -> {"ok":ID,"reply":{...}}
      calls the node's parameter service as rmw_cyclonedds does (16-byte request id first)
  {"op":"setbool_server","id":ID,"service":"/s","success":B,"message":M} -> {"ok":ID}
      serves std_srvs/srv/SetBool as rmw_cyclonedds does (topics rq/<s>Request and
      rr/<s>Reply; each sample starts with the client's 8-byte id and the sequence
      number, echoed in the reply); each request is an event {"event":"msg","id":ID,
      "value":{"data":B}}
  {"op":"service_server","id":ID,"service":"/s","type":"pkg/srv/T","response":{...},
   "delay_ms":D}                                                     -> {"ok":ID}
      serves any service type found in the folders as rmw_cyclonedds does (as above);
      each request is an event {"event":"msg","id":ID,"value":{request}}; the reply is
      "response" with "{field}" in its strings filled from the request, and a "calls"
      field (when the type has one) set to the number of requests so far; D ms pass
      before each reply
  {"op":"action_server","id":ID,"action":"/a","type":"pkg/action/T","steps":N,"step_ms":M,
   "result":{...},"reject":B}                                       -> {"ok":ID}
      serves an action as rmw_cyclonedds does: send_goal, get_result and cancel_goal
      services under /a/_action/, feedback on /a/_action/feedback. Each accepted goal
      (unless "reject") is an event {"event":"msg","id":ID,"value":{"goal":{...}}}; it
      sends N feedback messages ({"progress": k/N, "stage": "step k"}) M ms apart, then
      succeeds with "result"; a cancel ends it with status CANCELED. get_result is
      answered when the goal ends (status 0 for a goal it does not know).
  {"op":"call","id":ID,"service":"/s","type":"pkg/srv/T","request":{...},"timeout_ms":T} -> {"ok":ID}
      calls any service once as an rmw_cyclonedds client (once its server is matched);
      the reply comes as an event {"event":"reply","id":ID,"value":{response}} (or
      "error" instead of "value")
  {"op":"send_goal","id":ID,"action":"/a","type":"pkg/action/T","goal":{...},
   "cancel_on_stage":S,"timeout_ms":T}                               -> {"ok":ID}
      sends a goal as an action client does (send_goal, then get_result; feedback and
      the status topic read meanwhile; with S, cancel_goal once a feedback's "stage" is
      S; one goal at a time per action); the outcome comes as one event {"event":"action","id":ID,"accepted":B,
      "feedback":[...],"statuses":[codes seen for the goal],"status":N,"result":{...},
      "cancel":{"return_code":N,"canceling":K}} (or "error")
  {"op":"quit"}
Events: {"event":"msg","id":ID,"value":{...},"cdr":"<hex of Cyclone's serialization>"}
qos: {"reliability":"reliable"|"best-effort","durability":"volatile"|"transient-local","depth":N}
Values are in edge-agent's JSON form (byte arrays as base64, NaN as "NaN").

usage: ros_peer.py --domain N [--distro jazzy|humble] [--node NAME] DIR [DIR ...]
(--distro picks the standard definitions; ros_discovery_info's Gid differs between them.
The peer announces itself on ros_discovery_info in that layout, as node NAME, default
"ros_peer", as every ROS 2 process does.)
"""

import argparse
import base64
import json
import math
import os
import sys
import threading
import time

from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsSubscription
from cyclonedds.core import Listener, Policy, Qos
from cyclonedds.util import duration
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import make_idl_struct
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
import cyclonedds.idl.types as T
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

PRIM = {
    "bool": bool, "byte": T.uint8, "char": T.uint8, "int8": T.int8, "uint8": T.uint8,
    "int16": T.int16, "uint16": T.uint16, "int32": T.int32, "uint32": T.uint32,
    "int64": T.int64, "uint64": T.uint64, "float32": T.float32, "float64": T.float64,
}

out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Types:
    def __init__(self, dirs, distro):
        self.ts = get_typestore(Stores.ROS2_HUMBLE if distro == "humble" else Stores.ROS2_JAZZY)
        extra = {}
        for root in dirs:
            for pkg in sorted(os.listdir(root)):
                d = os.path.join(root, pkg, "msg")
                if pkg == "rmw_dds_common":
                    continue
                for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                    name = f"{pkg}/msg/{f[:-4]}"
                    if f.endswith(".msg") and name not in self.ts.fielddefs:
                        with open(os.path.join(d, f), encoding="utf-8") as fh:
                            extra.update(get_types_from_msg(fh.read(), name))
                d = os.path.join(root, pkg, "action")
                for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                    if not f.endswith(".action"):
                        continue
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        lines = fh.read().splitlines()
                    cuts = [i for i, l in enumerate(lines) if l.strip() == "---"]
                    parts = (lines[:cuts[0]], lines[cuts[0] + 1:cuts[1]], lines[cuts[1] + 1:])
                    for part, text in zip(("Goal", "Result", "Feedback"), parts):
                        name = f"{pkg}/action/{f[:-7]}_{part}"
                        defs = get_types_from_msg("\n".join(text) + "\n", name)
                        extra.update({name: d for d in defs.values()})
                d = os.path.join(root, pkg, "srv")
                if not os.path.isdir(d):
                    continue
                for f in sorted(os.listdir(d)):
                    if not f.endswith(".srv"):
                        continue
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        text = fh.read()
                    lines = text.splitlines()
                    cut = next(i for i, l in enumerate(lines) if l.strip() == "---")
                    for half, part in (("Request", lines[:cut]), ("Response", lines[cut + 1:])):
                        name = f"{pkg}/srv/{f[:-4]}_{half}"
                        if name not in self.ts.fielddefs:
                            # (rosbags names it pkg/srv/msg/T; the ROS name is kept)
                            defs = get_types_from_msg("\n".join(part) + "\n", name)
                            extra.update({name: d for d in defs.values()})
        self.ts.register(extra)
        self.classes = {}

    def idl(self, name, header=False):
        """The DDS type of `name`; with `header`, a service half as rmw_cyclonedds
        sends it (the client's id and a sequence number first)."""
        key = (name, header)
        if key in self.classes:
            return self.classes[key]
        pkg, kind, tname = name.split("/")
        fields = {"client": T.uint64, "seq": T.uint64} if header else {}
        for fname, desc in self.ts.fielddefs[name][1]:
            fields[fname] = self.annotation(desc)
        cls = make_idl_struct(f"{pkg}_{tname}{'_h' if header else ''}", f"{pkg}::{kind}::dds_::{tname}_", fields)
        self.classes[key] = cls
        return cls

    def annotation(self, desc):
        kind, rest = desc
        if kind == Nodetype.BASE:
            t, bound = rest
            if t == "string":
                return T.bounded_str[bound] if bound else str
            return PRIM[t]
        if kind == Nodetype.NAME:
            return self.idl(rest)
        elem, n = rest
        inner = self.annotation(elem)
        if kind == Nodetype.ARRAY:
            return T.array[inner, n]
        return T.sequence[inner, n] if n else T.sequence[inner]

    # JSON form <-> Python values

    def to_py(self, desc, v):
        kind, rest = desc
        if kind == Nodetype.BASE:
            t = rest[0]
            if t in ("float32", "float64"):
                if isinstance(v, str):
                    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[v]
                return float(v)
            return v
        if kind == Nodetype.NAME:
            return self.make(rest, v or {})
        elem = rest[0]
        if elem[0] == Nodetype.BASE and elem[1][0] in ("uint8", "byte") and isinstance(v, str):
            return list(base64.b64decode(v))
        return [self.to_py(elem, x) for x in v]

    def make(self, name, value, head=None):
        cls = self.idl(name, header=head is not None)
        kwargs = dict(head or {})
        for fname, desc in self.ts.fielddefs[name][1]:
            if fname == "structure_needs_at_least_one_member":
                kwargs[fname] = 0
            elif fname in value:
                kwargs[fname] = self.to_py(desc, value[fname])
            else:
                kwargs[fname] = self.zero(desc)
        return cls(**kwargs)

    def zero(self, desc):
        kind, rest = desc
        if kind == Nodetype.BASE:
            t = rest[0]
            return "" if t == "string" else (False if t == "bool" else (0.0 if t.startswith("float") else 0))
        if kind == Nodetype.NAME:
            return self.make(rest, {})
        elem, n = rest
        return [self.zero(elem) for _ in range(n)] if kind == Nodetype.ARRAY else []

    def to_json(self, desc, v):
        kind, rest = desc
        if kind == Nodetype.BASE:
            t = rest[0]
            if t in ("float32", "float64"):
                v = float(v)
                if math.isnan(v):
                    return "NaN"
                if math.isinf(v):
                    return "Infinity" if v > 0 else "-Infinity"
                return v
            return v
        if kind == Nodetype.NAME:
            return {f: self.to_json(d, getattr(v, f)) for f, d in self.ts.fielddefs[rest][1]
                    if f != "structure_needs_at_least_one_member"}
        elem = rest[0]
        if elem[0] == Nodetype.BASE and elem[1][0] in ("uint8", "byte"):
            return base64.b64encode(bytes(v)).decode()
        return [self.to_json(elem, x) for x in v]


def make_qos(q):
    q = q or {}
    rel = Policy.Reliability.BestEffort if q.get("reliability") == "best-effort" \
        else Policy.Reliability.Reliable(max_blocking_time=100_000_000)
    dur = Policy.Durability.TransientLocal if q.get("durability") == "transient-local" \
        else Policy.Durability.Volatile
    return Qos(rel, dur, Policy.History.KeepLast(int(q.get("depth", 10))))


def dds_topic(name):
    return "rt" + (name if name.startswith("/") else "/" + name)


def is_invalid(sample):
    """A sample without data: Cyclone's note that an instance has no writers left or
    was disposed (take() returns these among the samples)."""
    return type(sample).__name__ == "InvalidSample"


class Matched(Listener):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_publication_matched(self, writer, status):
        self.count = status.current_count

    def on_subscription_matched(self, reader, status):
        self.count = status.current_count


class ReplyReaders:
    """The reply readers of the clients this participant has discovered. A service of
    rmw_cyclonedds waits (up to 5 s) until the calling client's reply reader is matched
    before it answers, since a volatile reader loses what was written before; the
    servers here do the same."""

    _of = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, dp):
        with cls._lock:
            if id(dp) not in cls._of:
                cls._of[id(dp)] = cls(dp)
            return cls._of[id(dp)]

    def __init__(self, dp):
        self.reader = BuiltinDataReader(dp, BuiltinTopicDcpsSubscription)
        self.known = set()
        self.lock = threading.Lock()

    def wait(self, topic, client, timeout=5.0):
        """Waits for the reply reader on `topic` of the client whose id is `client` (a
        Cyclone-format id starts with 4 bytes of the client participant's GUID prefix)."""
        want = (topic, int(client).to_bytes(8, "little")[:4])
        until = time.monotonic() + timeout
        while True:
            with self.lock:
                for s in self.reader.take(64):
                    name, key = getattr(s, "topic_name", None), getattr(s, "key", None)
                    if name is not None and key is not None:
                        self.known.add((name, key.bytes[8:12]))
                if want in self.known:
                    return True
            if time.monotonic() > until:
                return False
            time.sleep(0.005)


def serve_set_bool(dp, cmd):
    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000), Policy.Durability.Volatile,
              Policy.History.KeepLast(10))
    req_t = make_idl_struct("SetBoolRq", "std_srvs::srv::dds_::SetBool_Request_",
                            {"client": T.uint64, "seq": T.uint64, "data": bool})
    rep_t = make_idl_struct("SetBoolRp", "std_srvs::srv::dds_::SetBool_Response_",
                            {"client": T.uint64, "seq": T.uint64, "success": bool, "message": str})
    name = cmd["service"].lstrip("/")
    reader = DataReader(dp, Topic(dp, f"rq/{name}Request", req_t, qos=qos), qos=qos)
    writer = DataWriter(dp, Topic(dp, f"rr/{name}Reply", rep_t, qos=qos), qos=qos)
    readers = ReplyReaders.of(dp)

    def serve():
        while True:
            for r in reader.take(16):
                if is_invalid(r):
                    continue
                emit({"event": "msg", "id": cmd["id"], "value": {"data": bool(r.data)}})
                readers.wait(f"rr/{name}Reply", r.client)
                writer.write(rep_t(client=r.client, seq=r.seq, success=bool(cmd.get("success", True)),
                                   message=cmd.get("message", "")))
            time.sleep(0.005)

    threading.Thread(target=serve, daemon=True).start()
    emit({"ok": cmd["id"]})


def serve_any(dp, types, cmd):
    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000), Policy.Durability.Volatile,
              Policy.History.KeepLast(100))
    tname = cmd["type"]
    rq, rp = tname + "_Request", tname + "_Response"
    rq_t, rp_t = types.idl(rq, header=True), types.idl(rp, header=True)
    name = cmd["service"].lstrip("/")
    reader = DataReader(dp, Topic(dp, f"rq/{name}Request", rq_t, qos=qos), qos=qos)
    writer = DataWriter(dp, Topic(dp, f"rr/{name}Reply", rp_t, qos=qos), qos=qos)
    readers = ReplyReaders.of(dp)
    fields = [f for f, _ in types.ts.fielddefs[rp][1]]
    calls = [0]

    def fill(v, request):
        if isinstance(v, str):
            return v.format(**{k: x for k, x in request.items() if not isinstance(x, (dict, list))})
        if isinstance(v, dict):
            return {k: fill(x, request) for k, x in v.items()}
        return v

    def serve():
        while True:
            for r in reader.take(16):
                if is_invalid(r):
                    continue
                calls[0] += 1
                request = {f: types.to_json(d, getattr(r, f)) for f, d in types.ts.fielddefs[rq][1]
                           if f != "structure_needs_at_least_one_member"}
                emit({"event": "msg", "id": cmd["id"], "value": request})
                response = fill(cmd.get("response", {}), request)
                if "calls" in fields:
                    response["calls"] = calls[0]
                if cmd.get("delay_ms"):
                    time.sleep(cmd["delay_ms"] / 1000)
                readers.wait(f"rr/{name}Reply", r.client)
                writer.write(types.make(rp, response, head={"client": r.client, "seq": r.seq}))
            time.sleep(0.002)

    threading.Thread(target=serve, daemon=True).start()
    emit({"ok": cmd["id"]})


_action_types = {}


def action_types(types, action_type):
    """The ActionTypes of `action_type`, made once (a DDS type is defined once)."""
    if action_type not in _action_types:
        _action_types[action_type] = ActionTypes(types, action_type)
    return _action_types[action_type]


class ActionTypes:
    """The DDS types of an action's services and feedback, as rmw_cyclonedds sends them
    (service samples start with the client's id and a sequence number)."""

    def __init__(self, types, action_type):
        pkg, _, base = action_type.split("/")
        uuid_t = types.idl("unique_identifier_msgs/msg/UUID")
        time_t = types.idl("builtin_interfaces/msg/Time")
        self.goal_name, self.result_name, self.fb_name = (f"{pkg}/action/{base}_{p}" for p in ("Goal", "Result", "Feedback"))
        goal_t, result_t, fb_t = types.idl(self.goal_name), types.idl(self.result_name), types.idl(self.fb_name)
        self.info_t = info_t = types.idl("action_msgs/msg/GoalInfo")
        hdr = {"client": T.uint64, "seq": T.uint64}
        dds = lambda n: f"{pkg}::action::dds_::{base}_{n}_"
        self.uuid_t, self.time_t = uuid_t, time_t
        self.sg_rq = make_idl_struct("SGRq", dds("SendGoal_Request"), {**hdr, "goal_id": uuid_t, "goal": goal_t})
        self.sg_rp = make_idl_struct("SGRp", dds("SendGoal_Response"), {**hdr, "accepted": bool, "stamp": time_t})
        self.gr_rq = make_idl_struct("GRRq", dds("GetResult_Request"), {**hdr, "goal_id": uuid_t})
        self.gr_rp = make_idl_struct("GRRp", dds("GetResult_Response"), {**hdr, "status": T.int8, "result": result_t})
        self.cg_rq = make_idl_struct("CGRq", "action_msgs::srv::dds_::CancelGoal_Request_", {**hdr, "goal_info": info_t})
        self.cg_rp = make_idl_struct("CGRp", "action_msgs::srv::dds_::CancelGoal_Response_",
                                     {**hdr, "return_code": T.int8, "goals_canceling": T.sequence[info_t]})
        self.fb_msg = make_idl_struct("FBMsg", dds("FeedbackMessage"), {"goal_id": uuid_t, "feedback": fb_t})


def serve_action(dp, types, cmd):
    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000), Policy.Durability.Volatile,
              Policy.History.KeepLast(100))
    pkg, _, base = cmd["type"].split("/")
    name = cmd["action"].lstrip("/") + "/_action/"
    at = action_types(types, cmd["type"])
    uuid_t, time_t, info_t = at.uuid_t, at.time_t, at.info_t
    goal_name, result_name, fb_name = at.goal_name, at.result_name, at.fb_name
    sg_rq, sg_rp, gr_rq, gr_rp, cg_rq, cg_rp, fb_msg = at.sg_rq, at.sg_rp, at.gr_rq, at.gr_rp, at.cg_rq, at.cg_rp, at.fb_msg

    def endpoint(what, rq_t, rp_t):
        r = DataReader(dp, Topic(dp, f"rq/{name}{what}Request", rq_t, qos=qos), qos=qos)
        w = DataWriter(dp, Topic(dp, f"rr/{name}{what}Reply", rp_t, qos=qos), qos=qos)
        return r, w

    send_goal, get_result, cancel_goal = (endpoint("send_goal", sg_rq, sg_rp), endpoint("get_result", gr_rq, gr_rp),
                                          endpoint("cancel_goal", cg_rq, cg_rp))
    feedback = DataWriter(dp, Topic(dp, f"rt/{name}feedback", fb_msg, qos=qos), qos=qos)
    readers = ReplyReaders.of(dp)
    goals, waiting, lock = {}, [], threading.Lock()
    steps, step_ms = int(cmd.get("steps", 3)), cmd.get("step_ms", 100)

    def run(uid):
        for k in range(steps):
            with lock:
                if goals[uid]["canceled"]:
                    break
            feedback.write(fb_msg(goal_id=uuid_t(uuid=list(uid)),
                                  feedback=types.make(fb_name, {"progress": (k + 1) / steps, "stage": f"step {k + 1}"})))
            time.sleep(step_ms / 1000)
        with lock:
            g = goals[uid]
            g["status"] = 5 if g["canceled"] else 4
            g["result"] = types.make(result_name, {} if g["canceled"] else cmd.get("result", {}))

    def serve():
        while True:
            r, w = send_goal
            for q in r.take(16):
                if is_invalid(q):
                    continue
                uid = bytes(q.goal_id.uuid)
                accept = not cmd.get("reject") and uid not in goals
                if accept:
                    emit({"event": "msg", "id": cmd["id"], "value": {"goal": types.to_json((Nodetype.NAME, goal_name), q.goal)}})
                    with lock:
                        goals[uid] = {"status": 2, "result": None, "canceled": False}
                    threading.Thread(target=run, args=(uid,), daemon=True).start()
                readers.wait(f"rr/{name}send_goalReply", q.client)
                w.write(sg_rp(client=q.client, seq=q.seq, accepted=accept, stamp=time_t(sec=0, nanosec=0)))
            r, w = get_result
            for q in r.take(16):
                if not is_invalid(q):
                    waiting.append(q)
            for q in list(waiting):
                uid = bytes(q.goal_id.uuid)
                with lock:
                    g = goals.get(uid)
                    done = g is None or g["result"] is not None
                    if done:
                        status = 0 if g is None else g["status"]
                        result = types.make(result_name, {}) if g is None else g["result"]
                if done:
                    waiting.remove(q)
                    readers.wait(f"rr/{name}get_resultReply", q.client)
                    w.write(gr_rp(client=q.client, seq=q.seq, status=status, result=result))
            r, w = cancel_goal
            for q in r.take(16):
                if is_invalid(q):
                    continue
                uid = bytes(q.goal_info.goal_id.uuid)
                with lock:
                    g = goals.get(uid)
                    if g is None:
                        code, canceling = 2, []
                    elif g["result"] is not None:
                        code, canceling = 3, []
                    else:
                        g["canceled"] = True
                        code, canceling = 0, [q.goal_info]
                emit({"event": "msg", "id": cmd["id"] + "/cancel", "value": {"return_code": code}})
                readers.wait(f"rr/{name}cancel_goalReply", q.client)
                w.write(cg_rp(client=q.client, seq=q.seq, return_code=code, goals_canceling=canceling))
            time.sleep(0.002)

    threading.Thread(target=serve, daemon=True).start()
    emit({"ok": cmd["id"]})


RELIABLE = Policy.Reliability.Reliable(max_blocking_time=100_000_000)


class Client:
    """A service client as rmw_cyclonedds makes one: each request starts with the
    client's 8-byte id and a sequence number, and its reply echoes them."""

    def __init__(self, dp, service, rq_t, rp_t):
        qos = Qos(RELIABLE, Policy.Durability.Volatile, Policy.History.KeepLast(100))
        name = service.lstrip("/")
        self.matched_w, self.matched_r = Matched(), Matched()
        self.w = DataWriter(dp, Topic(dp, f"rq/{name}Request", rq_t, qos=qos), qos=qos, listener=self.matched_w)
        self.r = DataReader(dp, Topic(dp, f"rr/{name}Reply", rp_t, qos=qos), qos=qos, listener=self.matched_r)
        self.client = int.from_bytes(os.urandom(8), "little") >> 1
        self.seq = 0
        self.service = service

    def wait_server(self, end):
        while time.time() < end:
            if self.matched_w.count > 0 and self.matched_r.count > 0:
                return
            time.sleep(0.01)
        raise TimeoutError(f"no server of {self.service}")

    def send(self, make):
        """Writes one request (`make(client, seq)` builds it); its sequence number."""
        self.seq += 1
        self.w.write(make(self.client, self.seq))
        return self.seq

    def poll(self, seq):
        for rep in self.r.take(16):
            if not is_invalid(rep) and rep.client == self.client and rep.seq == seq:
                return rep
        return None

    def call(self, make, end):
        """Sends one request once the server is matched and waits for its reply."""
        self.wait_server(end)
        seq = self.send(make)
        while time.time() < end:
            rep = self.poll(seq)
            if rep is not None:
                return rep
            time.sleep(0.005)
        raise TimeoutError(f"{self.service}: no reply")


def call_service(dp, types, cmd):
    """Calls any service once, in the background; the reply is an event."""
    rq, rp = cmd["type"] + "_Request", cmd["type"] + "_Response"
    c = Client(dp, cmd["service"], types.idl(rq, header=True), types.idl(rp, header=True))

    def run():
        end = time.time() + cmd.get("timeout_ms", 30000) / 1000
        try:
            rep = c.call(lambda client, seq: types.make(rq, cmd.get("request", {}),
                                                       head={"client": client, "seq": seq}), end)
            emit({"event": "reply", "id": cmd["id"], "value": types.to_json((Nodetype.NAME, rp), rep)})
        except Exception as e:
            emit({"event": "reply", "id": cmd["id"], "error": f"{type(e).__name__}: {e}"})

    threading.Thread(target=run, daemon=True).start()
    emit({"ok": cmd["id"]})


action_clients = {}


class ActionClient:
    """An action client, made once per action and kept, as a robot node keeps its own."""

    def __init__(self, dp, types, action, action_type):
        self.at = at = action_types(types, action_type)
        name = action.lstrip("/") + "/_action/"
        self.send_goal = Client(dp, name + "send_goal", at.sg_rq, at.sg_rp)
        self.get_result = Client(dp, name + "get_result", at.gr_rq, at.gr_rp)
        self.cancel_goal = Client(dp, name + "cancel_goal", at.cg_rq, at.cg_rp)
        qos = Qos(RELIABLE, Policy.Durability.Volatile, Policy.History.KeepLast(100))
        self.fb_reader = DataReader(dp, Topic(dp, f"rt/{name}feedback", at.fb_msg, qos=qos), qos=qos)
        st_t = types.idl("action_msgs/msg/GoalStatusArray")
        st_qos = Qos(RELIABLE, Policy.Durability.TransientLocal, Policy.History.KeepLast(100))
        self.st_reader = DataReader(dp, Topic(dp, f"rt/{name}status", st_t, qos=st_qos), qos=st_qos)
        self.status_seen = False
        self.lock = threading.Lock()

    def wait_server(self, end):
        """Waits for the server's services and its status (transient local): once the
        status has come, its writers have matched this client's readers."""
        for c in (self.send_goal, self.get_result, self.cancel_goal):
            c.wait_server(end)
        while not self.status_seen and time.time() < end:
            if any(not is_invalid(a) for a in self.st_reader.read(16)):
                self.status_seen = True
            time.sleep(0.01)
        if not self.status_seen:
            raise TimeoutError("no status from the action server")


def call_action(dp, types, cmd):
    """Sends a goal as an rclpy/rclcpp action client does, in the background: send_goal,
    then get_result, reading feedback and the status topic meanwhile; with
    "cancel_on_stage", cancels the goal once a feedback message names that stage. The
    outcome is one event: accepted, feedback, the goal's statuses seen, the result's
    status and result, the cancel's return code."""
    key = (cmd["action"], cmd["type"])
    if key not in action_clients:
        action_clients[key] = ActionClient(dp, types, cmd["action"], cmd["type"])
    ac = action_clients[key]
    at, send_goal, get_result, cancel_goal = ac.at, ac.send_goal, ac.get_result, ac.cancel_goal
    fb_reader, st_reader = ac.fb_reader, ac.st_reader
    uid = list(os.urandom(16))

    def run():
        out = {"event": "action", "id": cmd["id"], "feedback": [], "statuses": []}
        end = time.time() + cmd.get("timeout_ms", 30000) / 1000
        try:
            with ac.lock:
                ac.wait_server(end)
            goal = types.make(at.goal_name, cmd.get("goal", {}))
            rep = send_goal.call(lambda c, s: at.sg_rq(client=c, seq=s, goal_id=at.uuid_t(uuid=uid), goal=goal), end)
            out["accepted"] = bool(rep.accepted)
            if not rep.accepted:
                return emit(out)
            get_result.wait_server(end)
            rseq = get_result.send(lambda c, s: at.gr_rq(client=c, seq=s, goal_id=at.uuid_t(uuid=uid)))
            cseq = None
            while time.time() < end:
                for f in fb_reader.take(16):
                    if not is_invalid(f) and list(f.goal_id.uuid) == uid:
                        out["feedback"].append(types.to_json((Nodetype.NAME, at.fb_name), f.feedback))
                for a in st_reader.take(16):
                    if is_invalid(a):
                        continue
                    for st in a.status_list:
                        if list(st.goal_info.goal_id.uuid) == uid and \
                                (not out["statuses"] or out["statuses"][-1] != st.status):
                            out["statuses"].append(st.status)
                stage = cmd.get("cancel_on_stage")
                if stage and cseq is None and any(f.get("stage") == stage for f in out["feedback"]):
                    cancel_goal.wait_server(end)
                    cseq = cancel_goal.send(lambda c, s: at.cg_rq(client=c, seq=s, goal_info=at.info_t(
                        goal_id=at.uuid_t(uuid=uid), stamp=at.time_t(sec=0, nanosec=0))))
                if cseq is not None and "cancel" not in out:
                    crep = cancel_goal.poll(cseq)
                    if crep is not None:
                        out["cancel"] = {"return_code": crep.return_code, "canceling": len(crep.goals_canceling)}
                rrep = get_result.poll(rseq)
                if rrep is not None:
                    out["status"] = rrep.status
                    out["result"] = types.to_json((Nodetype.NAME, at.result_name), rrep.result)
                    # The status topic's last word on the goal comes with or just after it.
                    settle = time.time() + 1.0
                    while time.time() < settle and (not out["statuses"] or out["statuses"][-1] != rrep.status):
                        for a in st_reader.take(16):
                            for st in [] if is_invalid(a) else a.status_list:
                                if list(st.goal_info.goal_id.uuid) == uid and out["statuses"][-1:] != [st.status]:
                                    out["statuses"].append(st.status)
                        time.sleep(0.01)
                    for f in fb_reader.take(16):
                        if not is_invalid(f) and list(f.goal_id.uuid) == uid:
                            out["feedback"].append(types.to_json((Nodetype.NAME, at.fb_name), f.feedback))
                    return emit(out)
                time.sleep(0.005)
            raise TimeoutError("no result")
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
            emit(out)

    threading.Thread(target=run, daemon=True).start()
    emit({"ok": cmd["id"]})


PV = make_idl_struct("PV", "rcl_interfaces::msg::dds_::ParameterValue_", {
    "type": T.uint8, "bool_value": bool, "integer_value": T.int64, "double_value": T.float64,
    "string_value": str, "byte_array_value": T.sequence[T.uint8], "bool_array_value": T.sequence[bool],
    "integer_array_value": T.sequence[T.int64], "double_array_value": T.sequence[T.float64],
    "string_array_value": T.sequence[str]})
PARAM = make_idl_struct("P", "rcl_interfaces::msg::dds_::Parameter_", {"name": str, "value": PV})
SPR = make_idl_struct("SPR", "rcl_interfaces::msg::dds_::SetParametersResult_", {"successful": bool, "reason": str})
LPR = make_idl_struct("LPR", "rcl_interfaces::msg::dds_::ListParametersResult_",
                      {"names": T.sequence[str], "prefixes": T.sequence[str]})
HEAD = {"client": T.uint64, "seq": T.uint64}
PARAM_SERVICES = {
    "list": ("list_parameters", "ListParameters",
             make_idl_struct("LRq", "rcl_interfaces::srv::dds_::ListParameters_Request_",
                             {**HEAD, "prefixes": T.sequence[str], "depth": T.uint64}),
             make_idl_struct("LRp", "rcl_interfaces::srv::dds_::ListParameters_Response_", {**HEAD, "result": LPR})),
    "get": ("get_parameters", "GetParameters",
            make_idl_struct("GRq", "rcl_interfaces::srv::dds_::GetParameters_Request_", {**HEAD, "names": T.sequence[str]}),
            make_idl_struct("GRp", "rcl_interfaces::srv::dds_::GetParameters_Response_", {**HEAD, "values": T.sequence[PV]})),
    "set": ("set_parameters", "SetParameters",
            make_idl_struct("SRq", "rcl_interfaces::srv::dds_::SetParameters_Request_", {**HEAD, "parameters": T.sequence[PARAM]}),
            make_idl_struct("SRp", "rcl_interfaces::srv::dds_::SetParameters_Response_", {**HEAD, "results": T.sequence[SPR]})),
}
param_clients = {}
param_seq = [0]


def pv_json(v):
    return {"type": v.type, "bool_value": v.bool_value, "integer_value": v.integer_value,
            "string_value": v.string_value}


def param_call(dp, cmd):
    """Calls a parameter service of another node as an rmw_cyclonedds client."""
    short, _, rq_t, rp_t = PARAM_SERVICES[cmd["service"]]
    fq = cmd["node"].rstrip("/") + "/" + short
    key = (fq, cmd["service"])
    if key not in param_clients:
        qos = Qos(RELIABLE, Policy.Durability.Volatile, Policy.History.KeepLast(10))
        w = DataWriter(dp, Topic(dp, "rq" + fq + "Request", rq_t, qos=qos), qos=qos)
        r = DataReader(dp, Topic(dp, "rr" + fq + "Reply", rp_t, qos=qos), qos=qos)
        param_clients[key] = (w, r)
    w, r = param_clients[key]
    client = 0x0102030405060708
    end = time.time() + cmd.get("timeout_ms", 30000) / 1000
    while time.time() < end:
        param_seq[0] += 1
        seq = param_seq[0]
        if cmd["service"] == "list":
            w.write(rq_t(client=client, seq=seq, prefixes=[], depth=0))
        elif cmd["service"] == "get":
            w.write(rq_t(client=client, seq=seq, names=cmd.get("names", [])))
        else:
            params = [PARAM(name=p["name"], value=PV(
                type=p["value"].get("type", 0), bool_value=p["value"].get("bool_value", False),
                integer_value=0, double_value=0.0, string_value=p["value"].get("string_value", ""),
                byte_array_value=[], bool_array_value=[], integer_array_value=[], double_array_value=[],
                string_array_value=[])) for p in cmd.get("params", [])]
            w.write(rq_t(client=client, seq=seq, parameters=params))
        wait_until = min(end, time.time() + 0.5)
        while time.time() < wait_until:
            for rep in r.take(16):
                if is_invalid(rep) or rep.client != client or rep.seq != seq:
                    continue
                if cmd["service"] == "list":
                    reply = {"names": list(rep.result.names)}
                elif cmd["service"] == "get":
                    reply = {"values": [pv_json(v) for v in rep.values]}
                else:
                    reply = {"results": [{"successful": x.successful, "reason": x.reason} for x in rep.results]}
                return emit({"ok": cmd["id"], "reply": reply})
            time.sleep(0.01)
    emit({"error": f"{fq}: no reply within {cmd.get('timeout_ms', 30000)} ms"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", type=int, required=True)
    ap.add_argument("--distro", default="jazzy")
    ap.add_argument("--node", default="ros_peer")
    ap.add_argument("dirs", nargs="*")
    args = ap.parse_args()
    types = Types(args.dirs, args.distro)
    dp = DomainParticipant(args.domain)
    writers, readers, topics, reader_matches = {}, {}, {}, {}
    lock = threading.Lock()

    def topic(name, tname, qos):
        key = (name, tname)
        if key not in topics:
            topics[key] = Topic(dp, dds_topic(name), types.idl(tname), qos=qos)
        return topics[key]

    disc_type = types.idl("rmw_dds_common/msg/ParticipantEntitiesInfo")
    disc_qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000), Policy.Durability.TransientLocal,
                   Policy.History.KeepLast(1))
    disc_topic = Topic(dp, "ros_discovery_info", disc_type, qos=disc_qos)
    disc_reader = DataReader(dp, disc_topic, qos=Qos(RELIABLE, Policy.Durability.TransientLocal,
                                                      Policy.History.KeepLast(64)))
    nodes = {}
    graph_errors = []
    # This participant's own announcement, in its distribution's layout.
    gid_len = 24 if args.distro == "humble" else 16
    own_gid = list(dp.guid.bytes) + [0] * (gid_len - 16)
    disc_writer = DataWriter(dp, disc_topic, qos=disc_qos)
    disc_writer.write(types.make("rmw_dds_common/msg/ParticipantEntitiesInfo", {
        "gid": {"data": own_gid},
        "node_entities_info_seq": [{"node_namespace": "/", "node_name": args.node,
                                    "reader_gid_seq": [], "writer_gid_seq": []}]}))

    stopping = threading.Event()

    def poll():
        try:
            poll_loop()
        except Exception as e:  # the peer is going away, or a real fault the test will see
            if not stopping.is_set():
                emit({"event": "peer-error", "id": "", "error": f"{type(e).__name__}: {e}"})

    def poll_loop():
        while not stopping.is_set():
            with lock:
                items = list(readers.items())
            for rid, (reader, tname) in items:
                for s in reader.take(64):
                    if is_invalid(s):  # a writer went away: an instance state change
                        continue
                    desc = (Nodetype.NAME, tname)
                    emit({"event": "msg", "id": rid, "value": types.to_json(desc, s),
                          "cdr": s.serialize().hex()})
            try:
                samples = disc_reader.take(64)
            except Exception as e:  # what an rmw does with an announcement it cannot read
                graph_errors.append(f"cannot read: {type(e).__name__}: {e}")
                samples = []
            for s in samples:
                if is_invalid(s):
                    continue
                gid = bytes(s.gid.data).hex()
                if gid == bytes(own_gid).hex():
                    continue
                entries = []
                for n in s.node_entities_info_seq:
                    ok = n.node_name and all(c.isprintable() for c in n.node_name + n.node_namespace)
                    if not ok:
                        graph_errors.append(f"garbage node name {n.node_name!r} in {n.node_namespace!r}")
                    else:
                        entries.append({"name": n.node_name, "namespace": n.node_namespace})
                nodes[gid] = entries
            time.sleep(0.005)

    threading.Thread(target=poll, daemon=True).start()
    emit({"ready": True})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        try:
            if op == "pub":
                qos = make_qos(cmd.get("qos"))
                listener = Matched()
                w = DataWriter(dp, topic(cmd["topic"], cmd["type"], qos), qos=qos, listener=listener)
                writers[cmd["id"]] = (w, cmd["type"], listener)
                emit({"ok": cmd["id"]})
            elif op == "wait_matched":
                listener = writers[cmd["id"]][2] if cmd["id"] in writers else reader_matches[cmd["id"]]
                end = time.time() + cmd.get("timeout_ms", 10000) / 1000
                while listener.count < cmd.get("count", 1) and time.time() < end:
                    time.sleep(0.01)
                if listener.count >= cmd.get("count", 1):
                    emit({"ok": cmd["id"], "matched": listener.count})
                else:
                    emit({"error": f"{cmd['id']}: {listener.count} subscriptions matched"})
            elif op == "write":
                w, tname, _ = writers[cmd["id"]]
                value = types.make(tname, cmd.get("value", {}))
                n = int(cmd.get("count", 1))
                for i in range(n):
                    w.write(value)
                    if cmd.get("interval_ms"):
                        time.sleep(cmd["interval_ms"] / 1000)
                # "acked": until every matched reader has acknowledged it (reliable
                # writers), so what is written next on another topic comes after it
                if cmd.get("acked") and not w.wait_for_acks(duration(seconds=10)):
                    emit({"error": f"{cmd['id']}: not acknowledged within 10 s"})
                    continue
                emit({"ok": cmd["id"], "written": n})
            elif op == "sub":
                qos = make_qos(cmd.get("qos"))
                matched = Matched()
                r = DataReader(dp, topic(cmd["topic"], cmd["type"], qos), qos=qos, listener=matched)
                reader_matches[cmd["id"]] = matched
                with lock:
                    readers[cmd["id"]] = (r, cmd["type"])
                emit({"ok": cmd["id"]})
            elif op == "setbool_server":
                serve_set_bool(dp, cmd)
            elif op == "service_server":
                serve_any(dp, types, cmd)
            elif op == "action_server":
                serve_action(dp, types, cmd)
            elif op == "call":
                call_service(dp, types, cmd)
            elif op == "send_goal":
                call_action(dp, types, cmd)
            elif op == "nodes":
                emit({"ok": cmd["id"], "nodes": [n for v in nodes.values() for n in v],
                      "errors": list(graph_errors)})
            elif op == "param":
                param_call(dp, cmd)
            elif op == "quit":
                stopping.set()
                break
            else:
                emit({"error": f"unknown op {op}"})
        except Exception as e:  # reported to the test, which fails with it
            emit({"error": f"{op}: {type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
