"""int8 variants of exported ONNX models (ONNX Runtime quantization tools)."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from .errors import MABertError
from .io import atomic_file

# ONNX node-name scopes of a fused model's attention and of a fused PolySoftmax (mabert.fuse: FusedLayer.approximator)
ATTENTION_SCOPE, POLY_SOFTMAX_SCOPE = "/approximator/", "/approximator/softmax/"


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> Path:
    """Weights int8, activations quantized on the fly (ORT dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_file(dst) as tmp, _quiet():
        import onnx

        # fused ORT ops (Attention, SkipLayerNorm…) have no shape inference: say the default type is fp32
        nodes = onnx.load(str(src), load_external_data=False).graph.node
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, nodes_to_exclude=_poly_attention(nodes),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(dst)


def _poly_attention(nodes) -> list[str]:
    """The names of the attention nodes (ONNX graph nodes) of a graph with PolySoftmax, which stay fp32 (its
    reciprocal's interpolant is a constant matrix a quantizer would take for a weight; int8 scores would reach exp
    in steps of ~0.2); [] for other graphs."""
    if not any(POLY_SOFTMAX_SCOPE in node.name for node in nodes):
        return []
    return [node.name for node in nodes if ATTENTION_SCOPE in node.name]


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs a warning per integer shape tensor it skips; they say nothing actionable."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class _Calibration:
    """ORT calibration reader; fits each feed to the graph's inputs (zero token types where absent)."""

    def __init__(self, feeds, input_names):
        def fit(feed):
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in feed.items()}
            feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
            return {name: feed[name] for name in input_names}

        self.feeds = iter([fit(f) for f in feeds])

    def get_next(self):
        return next(self.feeds, None)


def _single_rows(feeds: list[dict]) -> list[dict]:
    """Every row of `feeds` as its own feed, right-padded (id 0, mask 0) to the longest: ORT's histogram
    calibrators stack all feeds' activations, which must then have one shape."""
    longest = max(np.shape(f["input_ids"])[1] for f in feeds)
    rows = []
    for feed in feeds:
        for index in range(np.shape(feed["input_ids"])[0]):
            rows.append({k: np.pad(np.asarray(v)[index:index + 1], ((0, 0), (0, longest - np.shape(v)[1])))
                         for k, v in feed.items()})
    return rows


def quantize_static_int8(src: str | Path, dst: str | Path, calibration_feeds: list[dict],
                         percentile: bool = False) -> Path:
    """Static int8 (calibrated activation ranges, QOperator integer kernels): every MatMul/Add runs in
    int8 with scales fixed at export time. `calibration_feeds`: ONNX input dicts from task data. Ranges are the
    activations' min/max, or with `percentile` their 99.999th percentiles (slower; on the demo student 79.28 %
    instead of 78.32 %, fp32 79.33 %: a few outliers no longer stretch a whole tensor's scale)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(src), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    # With PolySoftmax the attention (q·kᵀ, softmax, ·v) stays fp32 between the int8 dense products. ORT's
    # calibrator still takes ranges of every tensor of a quantized op type, excluded nodes included, and tensors
    # of one value far from 0 have no finite histogram (a Newton product s·r ≈ 1 ± 1e-7, a tournament slice of
    # padded keys at −10⁴): Add, Mul and Slice are then not quantized.
    keep_float = _poly_attention(graph.node)
    op_types = ["MatMul", "Gather", "Relu", "Transpose", "Reshape", "Unsqueeze", "Concat"]
    if not keep_float:
        op_types += ["Add", "Mul", "Slice"]
    input_names = [i.name for i in graph.input if i.name not in initializers]
    if percentile:
        calibration_feeds = _single_rows(calibration_feeds)

    with atomic_file(dst) as tmp, _quiet():
        quantize_static(
            str(src), str(tmp), _Calibration(calibration_feeds, input_names), quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
            calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            extra_options={"ActivationSymmetric": False},
        )
    return Path(dst)


def onnx_predict(path: str | Path, batches, threads: int = 2) -> np.ndarray:
    """Logits of an ONNX model over (input_ids, attention_mask[, token_type_ids]) numpy batches."""
    from .export import onnx_feed, ort_session

    session = ort_session(path, threads)
    return np.concatenate([session.run(None, onnx_feed(session, *batch))[0] for batch in batches])


def text_calibration_feeds(tokenizer, texts, max_length: int, limit: int = 300) -> list[dict]:
    """Calibration inputs from task text: one unpadded input per text (at most `limit` texts), truncated to L."""
    feeds = []
    for text in list(texts)[:limit]:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        feed = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if "token_type_ids" in encoded:
            feed["token_type_ids"] = encoded["token_type_ids"]
        feeds.append({k: np.asarray(v, dtype=np.int64) for k, v in feed.items()})
    if not feeds:
        raise MABertError("no calibration texts: give a file with one text per line")
    return feeds
