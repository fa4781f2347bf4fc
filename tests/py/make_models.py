"""Small ONNX models for the tests, built with the onnx package.

usage: make_models.py KIND OUT
  conv        input "images" [1,3,H,W] float (H, W dynamic) -> Conv 3x3 + Relu -> "out"
  nan         input "x" [1,4] float -> x / x (NaN on zeros) -> "y"
  yolo-fixed  a YOLO detection export ([1,3,640,640] -> [1,4+3,8]) whose output is a
              known constant (FIXED below), names {0:'apple',1:'pear',2:'leaf'}
  yolo-e2e    an end-to-end export ([1,3,320,320] -> [1,5,6], x1 y1 x2 y2 score class),
              constant, names {0:'apple',1:'pear'}
  yolo-conv   a YOLO-shaped export whose boxes and scores depend on the image: 32x32
              average pooling, a 1x1 convolution, sigmoid, scaled -> [1,4+3,400]
  yolo-bench  about the compute of a YOLOv8n at 640x640 (strided 3x3 convolutions with
              SiLU, three heads) -> [1,84,8400], names for 80 classes
  demo        the detector `edge-agent demo` ships (assets/demo/detector.onnx): finds red
              discs ("apple") in 32x32 cells of the 640x640 input — 32x32 average pooling,
              redness R - (G+B)/2, score sigmoid(30 * (redness - 0.05)), a 28x28 box at
              the cell's centre -> [1,5,400]
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv():
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.full((4,), 0.5, np.float32), "b")
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "h", "w"])
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["out"]),
    ]
    return helper.make_graph(nodes, "conv", [x], [y], [w, b])


def nan():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return helper.make_graph([helper.make_node("Div", ["x", "x"], ["y"])], "nan", [x], [y])


FIXED = [
    # cx, cy, w, h, apple, pear, leaf (in the 640x640 letterboxed image)
    [100, 200, 40, 60, 0.90, 0.05, 0.01],
    [104, 203, 40, 60, 0.80, 0.10, 0.01],  # overlaps the first (IoU > 0.45): suppressed
    [104, 203, 40, 60, 0.10, 0.70, 0.01],  # same place, other class: kept
    [400, 300, 100, 50, 0.30, 0.20, 0.02],
    [600, 600, 20, 20, 0.20, 0.24, 0.10],  # under the 0.25 threshold
    [320, 100, 10, 10, 0.01, 0.01, 0.26],
    [5, 5, 30, 30, 0.50, 0.00, 0.00],  # reaches past the corner: clipped
    [630, 330, 40, 40, 0.60, 0.00, 0.00],
]


def int_input():
    """A model whose input is uint8 (not a float image tensor)."""
    x = helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 64, 64])
    return helper.make_graph([helper.make_node("Cast", ["images"], ["output0"], to=TensorProto.FLOAT)],
                             "int_input", [x], [y])


def names_meta(model, names, imgsz):
    for k, v in {"names": str(names), "imgsz": str(list(imgsz)), "stride": "32",
                 "task": "detect"}.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v


def const_from_input(inp, value, shape_out):
    """value + 0 * mean(input): a constant that still reads the input."""
    c = numpy_helper.from_array(np.array(value, np.float32), "c")
    nodes = [
        helper.make_node("ReduceMean", [inp], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["c", "z"], ["output0"]),
    ]
    zero = numpy_helper.from_array(np.array(0, np.float32), "zero")
    return nodes, [c, zero]


def yolo_fixed():
    out = np.array(FIXED, np.float32).T[None]  # 1, 7, 8
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))
    nodes, inits = const_from_input("images", out, out.shape)
    return helper.make_graph(nodes, "yolo_fixed", [x], [y], inits), \
        {0: "apple", 1: "pear", 2: "leaf"}, (640, 640)


def yolo_slow():
    """yolo-fixed's output, read from a heavy branch: eight 3x3 convolutions of 32
    channels at 640x640 (about 12 GFLOP), all computed, whose mean is multiplied by
    zero. A detector as slow as a large model, with known outputs."""
    out = np.array(FIXED, np.float32).T[None]  # 1, 7, 8
    rng = np.random.default_rng(5)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))
    nodes, inits, t, cin = [], [], "images", 3
    for i in range(8):
        w = (rng.standard_normal((32, cin, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [t, f"w{i}"], [f"h{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        t, cin = f"h{i}", 32
    tail, tail_inits = const_from_input(t, out, out.shape)
    return helper.make_graph(nodes + tail, "yolo_slow", [x], [y], inits + tail_inits), \
        {0: "apple", 1: "pear", 2: "leaf"}, (640, 640)


def yolo_e2e():
    out = np.array([[[10, 20, 50, 80, 0.9, 1], [100, 100, 300, 200, 0.5, 0],
                     [0, 0, 5, 5, 0.1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]], np.float32)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 320, 320])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))
    nodes, inits = const_from_input("images", out, out.shape)
    return helper.make_graph(nodes, "yolo_e2e", [x], [y], inits), \
        {0: "apple", 1: "pear"}, (320, 320)


def yolo_conv():
    rng = np.random.default_rng(11)
    w = rng.standard_normal((7, 3, 1, 1)).astype(np.float32) * 6
    b = np.array([0, 0, -1, -1, -0.5, -0.7, -0.9], np.float32)
    scale = np.array([640, 640, 160, 160, 1, 1, 1], np.float32).reshape(1, 7, 1, 1)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 400])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(scale, "scale"),
             numpy_helper.from_array(np.array([1, 7, 400], np.int64), "shape"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [
        helper.make_node("AveragePool", ["images"], ["p"], kernel_shape=[32, 32], strides=[32, 32]),
        # Centre the pixel means so the scores spread.
        helper.make_node("Sub", ["p", "half"], ["pc"]),
        helper.make_node("Conv", ["pc", "w", "b"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["o"]),
        helper.make_node("Reshape", ["o", "shape"], ["output0"]),
    ]
    return helper.make_graph(nodes, "yolo_conv", [x], [y], inits), \
        {0: "apple", 1: "pear", 2: "leaf"}, (640, 640)


def yolo_bench():
    rng = np.random.default_rng(3)
    inits, nodes = [], []
    n = [0]

    def conv(inp, cin, cout, k, s, act=True):
        n[0] += 1
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{n[0]}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{n[0]}"))
        out = f"c{n[0]}"
        nodes.append(helper.make_node("Conv", [inp, f"w{n[0]}", f"b{n[0]}"], [out],
                                      kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))
        if not act:
            return out
        nodes.append(helper.make_node("Sigmoid", [out], [out + "s"]))
        nodes.append(helper.make_node("Mul", [out, out + "s"], [out + "a"]))
        return out + "a"

    t = conv("images", 3, 16, 3, 2)      # 320
    t = conv(t, 16, 32, 3, 2)            # 160
    t = conv(t, 32, 32, 3, 1)
    t = conv(t, 32, 64, 3, 2)            # 80
    t = conv(t, 64, 64, 3, 1)
    p3 = conv(t, 64, 64, 3, 1)
    t = conv(p3, 64, 128, 3, 2)          # 40
    p4 = conv(t, 128, 128, 3, 1)
    t = conv(p4, 128, 256, 3, 2)         # 20
    p5 = conv(t, 256, 256, 3, 1)
    heads = []
    for p, c, hw in [(p3, 64, 6400), (p4, 128, 1600), (p5, 256, 400)]:
        h = conv(p, c, 64, 3, 1)
        h = conv(h, 64, 84, 1, 1, act=False)
        shape = f"shape{hw}"
        inits.append(numpy_helper.from_array(np.array([1, 84, hw], np.int64), shape))
        nodes.append(helper.make_node("Reshape", [h, shape], [h + "r"]))
        heads.append(h + "r")
    nodes.append(helper.make_node("Concat", heads, ["cat"], axis=2))
    # Box channels to pixels, class channels to mostly-low scores (few candidates).
    # About 1% of the anchors end up over a 0.25 score.
    gain = np.concatenate([np.ones(4), np.full(80, 10.0)]).astype(np.float32).reshape(1, 84, 1)
    bias = np.concatenate([np.zeros(4), np.full(80, -7.0)]).astype(np.float32).reshape(1, 84, 1)
    scale = np.concatenate([[640, 640, 120, 120], np.ones(80)]).astype(np.float32).reshape(1, 84, 1)
    inits += [numpy_helper.from_array(gain, "gain"), numpy_helper.from_array(bias, "bias"),
              numpy_helper.from_array(scale, "scale")]
    nodes.append(helper.make_node("Mul", ["cat", "gain"], ["cg"]))
    nodes.append(helper.make_node("Add", ["cg", "bias"], ["cb"]))
    nodes.append(helper.make_node("Sigmoid", ["cb"], ["cs"]))
    nodes.append(helper.make_node("Mul", ["cs", "scale"], ["output0"]))
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, 8400])
    names = {i: f"class{i}" for i in range(80)}
    names.update({0: "apple", 1: "pear", 2: "peach"})
    return helper.make_graph(nodes, "yolo_bench", [x], [y], inits), names, (640, 640)


def demo():
    cells = 20
    xs = (np.arange(cells, dtype=np.float32) + 0.5) * 32
    cx = np.tile(xs, cells).reshape(1, 1, cells * cells)
    cy = np.repeat(xs, cells).reshape(1, 1, cells * cells)
    wh = np.full((1, 2, cells * cells), 28, np.float32)
    w = np.array([1.0, -0.5, -0.5], np.float32).reshape(1, 3, 1, 1) * 30
    b = np.array([-0.05 * 30], np.float32)
    inits = [numpy_helper.from_array(cx, "cx"), numpy_helper.from_array(cy, "cy"),
             numpy_helper.from_array(wh, "wh"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([1, 1, cells * cells], np.int64), "shape")]
    nodes = [
        helper.make_node("AveragePool", ["images"], ["p"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Conv", ["p", "w", "b"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["score"]),
        helper.make_node("Concat", ["cx", "cy", "wh", "score"], ["output0"], axis=1),
    ]
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, cells * cells])
    return helper.make_graph(nodes, "demo_apples", [x], [y], inits), {0: "apple"}, (640, 640)


def main():
    kind, out = sys.argv[1], sys.argv[2]
    yolo = {"yolo-fixed": yolo_fixed, "yolo-e2e": yolo_e2e, "yolo-conv": yolo_conv,
            "yolo-slow": yolo_slow,
            "yolo-bench": yolo_bench, "demo": demo}
    # "-fp16": the model converted to half precision, inputs and outputs too, by ONNX's
    # float16 converter (as an Ultralytics `half=True` export for a Jetson has them).
    fp16 = kind.endswith("-fp16")
    kind = kind.removesuffix("-fp16")
    if kind in yolo:
        graph, names, imgsz = yolo[kind]()
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        names_meta(model, names, imgsz)
    else:
        graph = {"conv": conv, "nan": nan, "int-input": int_input}[kind]()
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if fp16:
        from onnxconverter_common import float16
        model = float16.convert_float_to_float16(model, keep_io_types=False)
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    main()
