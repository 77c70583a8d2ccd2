"""Stage 4 — export: ONNX with dynamic batch and sequence axes, and the operator-purity audit."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .errors import MABertError
from .io import atomic_file

# Ops that compute a transcendental/normalising function, or hide one inside a fused kernel.
FORBIDDEN_OPS = {
    "Softmax", "LogSoftmax", "Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Tanh", "Sigmoid", "Exp", "Log",
    "Sqrt", "Pow", "Reciprocal", "ReduceMean", "LayerNormalization", "SkipLayerNormalization",
    "EmbedLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
    "RMSNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
    "MeanVarianceNormalization", "LpNormalization", "Attention", "MultiHeadAttention", "BiasSoftmax",
}
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out if isinstance(out, torch.Tensor) else out.logits


def _example(config, batch=2, length=16):
    ids = torch.randint(5, config.vocab_size, (batch, length))
    return ids, torch.ones(batch, length, dtype=torch.long), torch.zeros(batch, length, dtype=torch.long)


def export_onnx(model, path: str | Path, opset: int = 17) -> Path:
    """Export a fused MA model or any HF sequence classifier: inputs input_ids, attention_mask,
    token_type_ids (batch, sequence), output logits."""
    model.eval()
    wrapped = _LogitsOnly(model)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes["logits"] = {0: "batch"}
    path = Path(path)
    with atomic_file(path) as tmp, torch.no_grad():
        torch.onnx.export(
            wrapped, _example(model.config), str(tmp), input_names=INPUT_NAMES, output_names=["logits"],
            dynamic_axes=axes, opset_version=opset, dynamo=False,
        )
    return path


def _constant_names(graph) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def audit(path: str | Path) -> dict:
    """Op types with counts, and the forbidden ones found (Div counts only when dividing by a non-constant)."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise MABertError(f"{path} is not a readable ONNX model ({type(exc).__name__}); export one with `mabert export`") from None
    graph = model.graph
    counts = Counter(node.op_type for node in graph.node)
    constants = _constant_names(graph)
    found = Counter(node.op_type for node in graph.node if node.op_type in FORBIDDEN_OPS)
    dynamic_divs = sum(1 for node in graph.node if node.op_type == "Div" and node.input[1] not in constants)
    if dynamic_divs:
        found["Div"] = dynamic_divs
    return {"file": str(path), "op_counts": dict(sorted(counts.items())), "forbidden": dict(sorted(found.items())),
            "passed": not found}


def format_audit(report: dict) -> str:
    lines = [f"{report['file']}: {sum(report['op_counts'].values())} nodes"]
    lines += [f"  {op:<28}{count:>6}{'   FORBIDDEN' if op in report['forbidden'] else ''}"
              for op, count in report["op_counts"].items()]
    if report["passed"]:
        lines.append("PASS: matrix arithmetic only (no softmax, normalization or transcendental ops)")
    else:
        names = ", ".join(f"{op}×{n}" for op, n in report["forbidden"].items())
        lines.append(f"FAIL: forbidden ops present: {names}")
    return "\n".join(lines)


def onnx_feed(session, input_ids, attention_mask, token_type_ids=None) -> dict:
    """The inputs an ONNX Runtime session declares (DistilBERT graphs have no token_type_ids)."""
    import numpy as np

    arrays = {"input_ids": np.asarray(input_ids, dtype=np.int64),
              "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
    arrays["token_type_ids"] = (np.zeros_like(arrays["input_ids"]) if token_type_ids is None
                                else np.asarray(token_type_ids, dtype=np.int64))
    return {i.name: arrays[i.name] for i in session.get_inputs()}
