"""The integer-only MA program (`mabert.integer_reference`) as an ONNX graph.

int8 tensors from the embedding lookup to the logits: MatMulInteger (int8 × int8 → int32) for every product,
and each requantization as int64 Mul/Add, a Div by the constant 2^s, then int32 ReLU clamps and a Cast to int8.
ONNX's integer Div truncates toward zero, so a constant 2^61 is added first (every total stays below 2^60 in
magnitude) and its quotient subtracted after: the division then floors, as the reference's shift does. The
outputs are `logits_int` (int32) and `logits` = DequantizeLinear(logits_int, per-class scale), the graph's only
float tensor, which nothing inside the graph reads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


OFFSET_BITS = 61
OPSET = 17


class _Graph:
    def __init__(self, params: dict):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.types, self.numpy_helper = helper, TensorProto, numpy_helper
        self.params, self.nodes, self.initializers, self.constants = params, [], [], set()
        self.count = 0

    def const(self, name: str, value) -> str:
        """An initializer, added once however many nodes read it."""
        if name not in self.constants:
            self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
            self.constants.add(name)
        return name

    def param(self, name: str) -> str:
        return self.const(name, self.params[name])

    def op(self, op_type: str, inputs: list[str], **attributes) -> str:
        self.count += 1
        output = f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def cast(self, x: str, to) -> str:
        return self.op("Cast", [x], to=to)

    def requantize(self, name: str, accumulators: list[str]) -> str:
        """int8 result of the requantization `name` (see mabert.integer_reference.requantize)."""
        shift = int(self.params[f"{name}.shift"])
        total = None
        for index, acc in enumerate(accumulators):
            term = self.op("Mul", [self.cast(acc, self.types.INT64), self.param(f"{name}.m{index}")])
            total = term if total is None else self.op("Add", [total, term])
        offset = self.params[f"{name}.bias"] + (1 << (shift - 1)) + (1 << OFFSET_BITS)
        total = self.op("Add", [total, self.const(f"{name}.onnx_offset_bias", offset.astype(np.int64))])
        total = self.op("Div", [total, self.const(f"{name}.onnx_divisor", np.array(1 << shift, np.int64))])
        total = self.op("Sub", [total, self.const(f"{name}.onnx_offset_quotient",
                                                  np.array(1 << (OFFSET_BITS - shift), np.int64))])
        return self.cast(self.clamp(name, self.cast(total, self.types.INT32)), self.types.INT8)

    def clamp(self, name: str, x: str) -> str:
        """clamp(x, lo, hi) = hi − ReLU((hi − lo) − ReLU(x − lo)) in int32, as the float graphs write it."""
        low, high = self.params[f"{name}.low"], self.params[f"{name}.high"]
        above = self.op("Relu", [self.op("Sub", [x, self.param(f"{name}.low")])])
        room = self.const(f"{name}.onnx_range", (high.astype(np.int64) - low).astype(np.int32))
        return self.op("Sub", [self.param(f"{name}.high"), self.op("Relu", [self.op("Sub", [room, above])])])

    def matmul(self, a: str, b: str) -> str:
        return self.op("MatMulInteger", [a, b])


def _layer(graph: _Graph, meta: dict, name: str, r: str, keymask: str, length: str) -> str:
    heads = meta["heads"]
    split = graph.const("onnx_split_heads", np.array([0, 0, heads, -1], np.int64))
    merge = graph.const("onnx_merge_heads", np.array([0, 0, -1], np.int64))
    int32, int8 = graph.types.INT32, graph.types.INT8

    def project(part):
        return graph.requantize(f"{name}.{part}", [graph.matmul(r, graph.param(f"{name}.{part}.weight"))])

    def masked(x):  # zero the padded keys (int32: ORT has no int8 Mul)
        return graph.cast(graph.op("Mul", [graph.cast(x, int32), keymask]), int8)

    def to_heads(x):
        return graph.op("Transpose", [graph.op("Reshape", [x, split])], perm=[0, 2, 1, 3])

    q, k, v = project("query"), masked(project("key")), project("value")
    if meta["masked_outputs"]:
        v = masked(v)
    q, k, v = to_heads(q), to_heads(k), to_heads(v)
    if meta["attention"] == "relu":
        scores = graph.requantize(f"{name}.scores", [graph.matmul(q, graph.op("Transpose", [k], perm=[0, 1, 3, 2]))])
        context = graph.requantize(f"{name}.context", [graph.matmul(scores, v)])
    else:
        def first_keys(weight):  # the columns of the first T keys
            return graph.op("Slice", [graph.param(weight), graph.const("onnx_zero", np.array([0], np.int64)), length,
                                      graph.const("onnx_axis1", np.array([1], np.int64))])

        w1k = graph.requantize(f"{name}.w1k", [graph.matmul(first_keys(f"{name}.w1"), k)])
        hidden = graph.requantize(f"{name}.hidden",
                                  [graph.matmul(q, graph.op("Transpose", [w1k], perm=[0, 1, 3, 2]))])
        w2v = graph.requantize(f"{name}.w2v", [graph.matmul(first_keys(f"{name}.w2t"), v)])
        b2 = graph.op("Unsqueeze", [graph.param(f"{name}.b2"), graph.const("onnx_axis0", np.array([0], np.int64))])
        b2 = graph.op("Slice", [b2, graph.const("onnx_zero", np.array([0], np.int64)), length,
                                graph.const("onnx_axis1", np.array([1], np.int64))])
        context = graph.requantize(f"{name}.context", [graph.matmul(hidden, w2v), graph.matmul(b2, v)])
    context = graph.op("Reshape", [graph.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
    attention_out = graph.matmul(context, graph.param(f"{name}.attention_out.weight"))
    r = graph.requantize(f"{name}.attention_residual", [r, attention_out])
    hidden = graph.requantize(f"{name}.ffn_hidden", [graph.matmul(r, graph.param(f"{name}.ffn_in.weight"))])
    ffn_out = graph.matmul(hidden, graph.param(f"{name}.ffn_out.weight"))
    return graph.requantize(f"{name}.ffn_residual", [r, ffn_out])


def integer_graph(params: dict, meta: dict):
    """The onnx.ModelProto of the integer program; its initializers carry `params` under their own names."""
    from onnx import TensorProto, helper

    graph = _Graph(params)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if "embeddings.token_type" in params else [])
    batch_sequence = ["batch", "sequence"]
    length = graph.op("Slice", [graph.op("Shape", ["input_ids"]), graph.const("onnx_one", np.array([1], np.int64)),
                                graph.const("onnx_two", np.array([2], np.int64))])
    terms = [graph.op("Gather", [graph.param("embeddings.word"), "input_ids"])]
    terms.append(graph.op("Slice", [graph.param("embeddings.position"), graph.const("onnx_zero", np.array([0], np.int64)),
                                    length, graph.const("onnx_axis0", np.array([0], np.int64))]))
    if "token_type_ids" in inputs:
        terms.append(graph.op("Gather", [graph.param("embeddings.token_type"), "token_type_ids"]))
    r = graph.requantize("embeddings", terms)
    keymask = graph.op("Unsqueeze", [graph.cast("attention_mask", TensorProto.INT32),
                                     graph.const("onnx_axis2", np.array([2], np.int64))])
    for index in range(meta["layers"]):
        r = _layer(graph, meta, f"layers.{index}", r, keymask, length)
    first = graph.op("Gather", [r, graph.const("onnx_index0", np.array(0, np.int64))], axis=1)
    pooled = graph.requantize("pooler", [graph.matmul(first, graph.param("pooler.weight"))])
    logits = graph.op("Add", [graph.matmul(pooled, graph.param("classifier.weight")),
                              graph.param("classifier.bias")])
    logits = graph.clamp("classifier", logits)
    graph.nodes.append(helper.make_node("Identity", [logits], ["logits_int"]))
    graph.nodes.append(helper.make_node(
        "DequantizeLinear", ["logits_int", graph.param("logit_scale"),
                             graph.const("onnx_logit_zero", np.zeros_like(params["classifier.bias"]))],
        ["logits"], axis=1))
    classes = int(params["classifier.bias"].shape[0])
    proto = helper.make_graph(
        graph.nodes, "mabert_integer",
        [helper.make_tensor_value_info(name, TensorProto.INT64, batch_sequence) for name in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("logits_int", TensorProto.INT32, ["batch", classes])],
        graph.initializers)
    return helper.make_model(proto, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mabert")


def save_integer_onnx(params: dict, meta: dict, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write the graph with `metadata` (e.g. the length limit) and the program's structure in its properties."""
    import json

    import onnx

    model = integer_graph(params, meta)
    onnx.helper.set_model_props(model, {**metadata, INTEGER_META_KEY: json.dumps(meta, sort_keys=True)})
    onnx.save(model, str(path))
    return Path(path)


def check_against_reference(path: str | Path, feeds: list[dict], threads: int | None = None) -> None:
    """Run the graph in ONNX Runtime and the NumPy reference on the same constants (read back from the file) and
    inputs; raise unless every integer logit is identical."""
    from .errors import MABertError
    from .export import onnx_feed, ort_session
    from .integer_reference import integer_logits

    params, meta = read_integer_onnx(path)
    session = ort_session(path, threads)
    for feed in feeds:
        inputs = onnx_feed(session, feed["input_ids"], feed["attention_mask"], feed.get("token_type_ids"))
        (got,) = session.run(["logits_int"], inputs)
        want = integer_logits(params, meta, inputs["input_ids"], inputs["attention_mask"],
                              inputs.get("token_type_ids"))
        if got.shape != want.shape or not np.array_equal(got.astype(np.int64), want):
            raise MABertError(f"the integer graph {path} does not reproduce its NumPy reference exactly (largest "
                              f"difference {np.abs(got.astype(np.int64) - want).max()}); nothing was written")


INTEGER_META_KEY = "mabert_integer_program"


def read_integer_onnx(path: str | Path) -> tuple[dict, dict]:
    """(params, meta) back from an integer graph, for the NumPy reference (`mabert.integer_reference`)."""
    import json

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    if INTEGER_META_KEY not in props:
        raise ValueError(f"{path} is not an integer-only mabert graph")
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    params = {name: value for name, value in stored.items() if ".onnx_" not in name and not name.startswith("onnx_")}
    for name, divisor in stored.items():  # each requantization's shift and bias, decoded from the graph's constants
        if name.endswith(".onnx_divisor"):
            step, shift = name[: -len(".onnx_divisor")], int(divisor).bit_length() - 1
            params[f"{step}.shift"] = np.array(shift, np.int64)
            params[f"{step}.bias"] = stored[f"{step}.onnx_offset_bias"] - (1 << (shift - 1)) - (1 << OFFSET_BITS)
    return params, json.loads(props[INTEGER_META_KEY])
