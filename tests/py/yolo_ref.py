"""Reference for the local detector: the Ultralytics YOLO pre- and post-processing as
Ultralytics runs it (OpenCV reads and letterboxes the image), the post-processing written
out with numpy, run with onnxruntime. The tests compare edge-agent's boxes to these.

usage: yolo_ref.py MODEL IMAGE [--conf C] [--iou I] [--max-det N] [--threads T]
       yolo_ref.py --bench MODEL IMAGE RUNS [--threads T]

Prints JSON: {"detections": [{"class_id","class_name","score","box":[x1,y1,x2,y2]}...]},
or with --bench the median time of each stage in ms.

Pre-processing (Ultralytics LetterBox, auto=False, center=True): cv2.imread (BGR);
r = min(H/h, W/w); new size (round(w*r), round(h*r)); cv2.resize INTER_LINEAR;
cv2.copyMakeBorder left/top round(d/2 - 0.1), right/bottom round(d/2 + 0.1) with 114;
BGR -> RGB; /255; NCHW float32.
Post-processing (non_max_suppression): [1,4+nc,N] -> candidates with best class score
> conf, xywh -> xyxy, class-wise NMS (boxes offset by class * 7680, IoU > iou
suppressed), at most max_det; [1,N,6] end-to-end outputs are only filtered. Boxes are
mapped back (scale_boxes) and clipped to the image.
"""

import argparse
import ast
import json
import statistics
import time

import cv2
import numpy as np
import onnxruntime as ort


def load_image(path):
    """HWC uint8 BGR, as cv2.imread gives it."""
    if path.endswith(".rgb"):
        # Raw: first line "W H", then W*H*3 bytes of RGB.
        with open(path, "rb") as f:
            w, h = map(int, f.readline().split())
            rgb = np.frombuffer(f.read(), np.uint8).reshape(h, w, 3)
            return np.ascontiguousarray(rgb[..., ::-1])
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cv2 cannot read {path}")
    return img


def letterbox(img, size):
    """Ultralytics' LetterBox (auto=False, scaleup=True, center=True)."""
    H, W = size
    h, w = img.shape[:2]
    r = min(H / h, W / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = (W - new_w) / 2, (H - new_h) / 2
    if (w, h) != (new_w, new_h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(114, 114, 114))


def preprocess(img, size):
    x = letterbox(img, size)[..., ::-1]  # BGR -> RGB
    x = x.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(x)


def nms(boxes, scores, iou):
    order = np.argsort(-scores, kind="stable")
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(boxes), bool)
    for a in range(len(order)):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[a + 1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        ious = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[ious > iou]] = True
    return np.array(keep, np.int64)


def postprocess(out, nc, conf, iou, max_det, end2end):
    if end2end:
        d = out[0]
        d = d[d[:, 4] > conf][:max_det]
        return d[:, :4], d[:, 4], d[:, 5].astype(np.int64)
    p = out[0].T  # N, 4+nc
    cls = p[:, 4:4 + nc]
    j = cls.argmax(1)
    s = cls[np.arange(len(p)), j]
    m = s > conf
    p, s, j = p[m], s[m], j[m]
    xy, wh = p[:, :2], p[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    if len(s) > 30000:
        o = np.argsort(-s, kind="stable")[:30000]
        boxes, s, j = boxes[o], s[o], j[o]
    keep = nms(boxes + (j * 7680.0)[:, None].astype(np.float32), s, iou)[:max_det]
    return boxes[keep], s[keep], j[keep]


def scale_boxes(boxes, size, shape):
    H, W = size
    h, w = shape
    gain = min(H / h, W / w)
    pad_x = round((W - w * gain) / 2 - 0.1)
    pad_y = round((H - h * gain) / 2 - 0.1)
    b = boxes.astype(np.float64).copy()
    b[:, [0, 2]] -= pad_x
    b[:, [1, 3]] -= pad_y
    b /= gain
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b


class Model:
    def __init__(self, path, threads):
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        meta = self.sess.get_modelmeta().custom_metadata_map
        self.names = ast.literal_eval(meta["names"]) if "names" in meta else {}
        inp = self.sess.get_inputs()[0]
        if "imgsz" in meta:
            self.size = tuple(ast.literal_eval(meta["imgsz"]))
        elif all(isinstance(d, int) for d in inp.shape[2:]):
            self.size = tuple(inp.shape[2:])
        else:
            self.size = (640, 640)
        self.input = inp.name
        # Half-precision exports take and give float16.
        self.half = inp.type == "tensor(float16)"
        shape = self.sess.get_outputs()[0].shape
        self.end2end = meta.get("end2end") == "True" or (
            shape[-1] == 6 and shape[1] != 4 + len(self.names))

    def detect(self, img, conf, iou, max_det, times=None):
        t0 = time.perf_counter()
        x = preprocess(img, self.size)
        if self.half:
            x = x.astype(np.float16)
        t1 = time.perf_counter()
        out = self.sess.run(None, {self.input: x})[0].astype(np.float32)
        t2 = time.perf_counter()
        boxes, scores, cls = postprocess(out, len(self.names), conf, iou, max_det, self.end2end)
        boxes = scale_boxes(boxes, self.size, img.shape[:2])
        t3 = time.perf_counter()
        if times is not None:
            times["pre"].append((t1 - t0) * 1e3)
            times["infer"].append((t2 - t1) * 1e3)
            times["post"].append((t3 - t2) * 1e3)
        return [{"class_id": int(c), "class_name": self.names.get(int(c), str(int(c))),
                 "score": float(s), "box": [float(v) for v in b]}
                for b, s, c in zip(boxes, scores, cls)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("runs", nargs="?", type=int, default=1)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--max-det", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    m = Model(a.model, a.threads)
    if not a.bench:
        dets = m.detect(load_image(a.image), a.conf, a.iou, a.max_det)
        print(json.dumps({"detections": dets}))
        return
    times = {"decode": [], "pre": [], "infer": [], "post": [], "total": []}
    for _ in range(a.runs):
        t0 = time.perf_counter()
        img = load_image(a.image)
        t1 = time.perf_counter()
        m.detect(img, a.conf, a.iou, a.max_det, times)
        times["decode"].append((t1 - t0) * 1e3)
        times["total"].append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


if __name__ == "__main__":
    main()
