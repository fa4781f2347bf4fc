"""Writes hostile update packages for the OTA tests into OUT_DIR, each a .tar.gz that an
installer must refuse, with a manifest that would otherwise be valid.

usage: hostile_packages.py OUT_DIR
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
GOOD = b"model weights\n"


def manifest(extra_components=()):
    comps = [{"name": "model", "path": "model.bin", "sha256": hashlib.sha256(GOOD).hexdigest()}]
    comps += list(extra_components)
    return json.dumps({"name": "detector", "version": "9.0.0", "components": comps}).encode()


def add_bytes(tar, name, data, **kw):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    for k, v in kw.items():
        setattr(ti, k, v)
    tar.addfile(ti, io.BytesIO(data))


def write(name, build):
    path = os.path.join(OUT, name + ".tar.gz")
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, "manifest.json", manifest())
        add_bytes(tar, "model.bin", GOOD)
        build(tar)
    return path


def link(tar, name, target, kind):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    tar.addfile(ti)


write("traversal", lambda t: add_bytes(t, "../../escaped.txt", b"x"))
write("absolute", lambda t: add_bytes(t, "/tmp/edge-agent-absolute.txt", b"x"))
write("symlink_escape", lambda t: link(t, "evil", "../../../etc/passwd", tarfile.SYMTYPE))
write("hardlink_escape", lambda t: link(t, "evil", "../outside.txt", tarfile.LNKTYPE))


def link_chain(t):
    # Each link looks harmless as text; followed through the tree, "leak" reads
    # ../../../secret.txt from the slot (the test puts a file there).
    ti = tarfile.TarInfo("x")
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    t.addfile(ti)
    link(t, "x/up", "..", tarfile.SYMTYPE)
    link(t, "l1", "x/up/..", tarfile.SYMTYPE)
    link(t, "l2", "l1/..", tarfile.SYMTYPE)
    link(t, "l3", "l2/..", tarfile.SYMTYPE)
    link(t, "leak", "l3/secret.txt", tarfile.SYMTYPE)


write("symlink_chain", link_chain)


def late_link(t):
    # "early" is inside the slot when written; the link written after it makes it
    # lead out.
    link(t, "early", "d/x/../../secret.txt", tarfile.SYMTYPE)
    ti = tarfile.TarInfo("d")
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    t.addfile(ti)
    link(t, "d/x", "..", tarfile.SYMTYPE)


write("symlink_late", late_link)


def hardlink_via_link(t):
    # A link to the slot itself (allowed), then a hard link through it: hard links may
    # only name files the package wrote, by their own path.
    link(t, "here", ".", tarfile.SYMTYPE)
    link(t, "evil", "here/here/model.bin", tarfile.LNKTYPE)


write("hardlink_via_link", hardlink_via_link)
write("hardlink_outside", lambda t: link(t, "evil", "secret.txt", tarfile.LNKTYPE))
write("setuid", lambda t: add_bytes(t, "bin/tool", b"#!/bin/sh\n", mode=0o4755))
write("duplicate_manifest", lambda t: add_bytes(t, "manifest.json", manifest()))


def device(t):
    ti = tarfile.TarInfo("dev/null2")
    ti.type = tarfile.CHRTYPE
    ti.devmajor, ti.devminor = 1, 3
    t.addfile(ti)


write("device_node", device)


def bomb(t):
    # 64 MiB of zeros compresses to ~64 KiB; the test limit is 8 MiB.
    ti = tarfile.TarInfo("padding.bin")
    ti.size = 64 * 1024 * 1024
    ti.mode = 0o644

    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.n = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.n)
            b[:k] = bytes(k)
            self.n -= k
            return k

    t.addfile(ti, io.BufferedReader(Zeros(ti.size)))


write("gzip_bomb", bomb)

# The manifest lists a file that is not in the package.
path = os.path.join(OUT, "missing_file.tar.gz")
with tarfile.open(path, "w:gz") as tar:
    add_bytes(tar, "manifest.json", manifest([{"name": "cfg", "path": "config/detect.toml", "sha256": "00" * 32}]))
    add_bytes(tar, "model.bin", GOOD)

# A good package, cut in the middle.
good = io.BytesIO()
with tarfile.open(fileobj=good, mode="w:gz") as tar:
    add_bytes(tar, "manifest.json", manifest())
    add_bytes(tar, "model.bin", GOOD * 5000)
data = good.getvalue()
with open(os.path.join(OUT, "truncated.tar.gz"), "wb") as f:
    f.write(data[: len(data) // 2])

for f in sorted(os.listdir(OUT)):
    print(f)
