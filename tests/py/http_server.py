"""An HTTP update server for the OTA tests: serves files with ETag, Last-Modified and
single byte ranges (Range, If-Range), answers /api/check_update from a JSON file, and can
be told to misbehave.

usage: http_server.py DIR
Prints "PORT <n>" once listening on 127.0.0.1 (a free port).

Control (GET):
  /_control/cut?after=N    cut the next file response after N bytes (close the socket)
  /_control/cut_every?bytes=N  cut every file response after N bytes (0: stop cutting)
  /_control/rate?bps=N     send files at most N bytes/s (0: no limit)
  /_control/stats          {"bytes_sent": n, "requests": [[path, range-or-null, status], ...]}
  /_control/reset          forget the stats
/api/check_update?version=V answers DIR/check_update.json (404 when absent).

With OSS_CHECK="BUCKET ACCESS_KEY_ID ACCESS_KEY_SECRET SECURITY_TOKEN" in the
environment, it also plays an OSS bucket: GET /BUCKET/KEY serves DIR/KEY only when the
request is signed as the oss2 SDK (Alibaba Cloud's own) signs it with StsAuth for the
same Date; otherwise 403 with what oss2 expected.
"""

import email.utils
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ROOT = sys.argv[1]
state = {"cut_after": None, "cut_every": 0, "bps": 0, "bytes_sent": 0, "requests": []}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        if u.path.startswith("/_control/"):
            what = u.path[len("/_control/"):]
            with lock:
                if what == "cut":
                    state["cut_after"] = int(q["after"][0])
                elif what == "cut_every":
                    state["cut_every"] = int(q["bytes"][0])
                elif what == "rate":
                    state["bps"] = int(q["bps"][0])
                elif what == "reset":
                    state["bytes_sent"] = 0
                    state["requests"] = []
                stats = {"bytes_sent": state["bytes_sent"], "requests": state["requests"]}
            return self.send_json(stats)
        if u.path == "/api/check_update":
            p = os.path.join(ROOT, "check_update.json")
            with lock:
                state["requests"].append([u.path + "?" + u.query, None, 200 if os.path.exists(p) else 404])
            if not os.path.exists(p):
                return self.send_json({"error": "no update information"}, 404)
            with open(p) as f:
                return self.send_json(json.load(f))
        shown = u.path
        oss = os.environ.get("OSS_CHECK")
        if oss:
            bucket, key_id, secret, token = oss.split(" ")
            prefix = "/" + bucket + "/"
            if u.path.startswith(prefix):
                from urllib.parse import unquote
                key = unquote(u.path[len(prefix):])
                expected = oss_signature(key_id, secret, token, bucket, key, self.headers.get("Date", ""))
                got = self.headers.get("Authorization")
                ok = got == expected and self.headers.get("x-oss-security-token") == token
                if not ok:
                    with lock:
                        state["requests"].append([u.path, self.headers.get("Range"), 403])
                    return self.send_json({"error": "SignatureDoesNotMatch", "expected": expected, "got": got}, 403)
                u = u._replace(path="/" + key)
        path = os.path.join(ROOT, u.path.lstrip("/"))
        if not os.path.isfile(path):
            with lock:
                state["requests"].append([shown, self.headers.get("Range"), 404])
            return self.send_json({"error": "not found"}, 404)
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        last_mod = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, status = 0, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and rng.startswith("bytes=") and (if_range is None or if_range in (etag, last_mod)):
            s = rng[len("bytes="):].split("-")[0]
            if s.isdigit() and int(s) < len(data):
                start, status = int(s), 206
        body = data[start:]
        with lock:
            state["requests"].append([shown, rng, status])
            cut = state["cut_after"]
            state["cut_after"] = None
            if cut is None and state["cut_every"]:
                cut = state["cut_every"]
            bps = state["bps"]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_mod)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        chunk = 16 * 1024
        sent = 0
        t0 = time.time()
        while sent < len(body):
            n = min(chunk, len(body) - sent)
            if cut is not None and sent + n > cut:
                n = max(0, cut - sent)
                self.wfile.write(body[sent:sent + n])
                with lock:
                    state["bytes_sent"] += n
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            try:
                self.wfile.write(body[sent:sent + n])
            except (BrokenPipeError, ConnectionResetError):
                return
            sent += n
            with lock:
                state["bytes_sent"] += n
            if bps:
                ahead = sent / bps - (time.time() - t0)
                if ahead > 0:
                    time.sleep(ahead)


def oss_signature(key_id, secret, token, bucket, key, date):
    """The Authorization header oss2.StsAuth gives a GET of bucket/key sent at date."""
    import oss2
    from oss2 import http as oss_http
    from oss2 import utils as oss_utils

    real = oss_utils.http_date
    oss_utils.http_date = lambda *a, **k: date
    try:
        req = oss_http.Request("GET", "http://unused/" + key)
        oss2.StsAuth(key_id, secret, token)._sign_request(req, bucket, key)
    finally:
        oss_utils.http_date = real
    return req.headers["authorization"]


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print(f"PORT {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
