"""Small ONNX models for the tests, built with the onnx package.

usage: make_models.py KIND OUT
  conv   input "images" [1,3,H,W] float (H, W dynamic) -> Conv 3x3 + Relu -> "out"
  nan    input "x" [1,4] float -> x / x (NaN on zeros) -> "y"
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


def main():
    kind, out = sys.argv[1], sys.argv[2]
    graph = {"conv": conv, "nan": nan}[kind]()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    main()
