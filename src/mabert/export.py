"""Stage 4 — export: ONNX with dynamic batch and sequence axes, and the operator-purity audit."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .errors import MABertError
from .fuse import check_fold, fp32_deviation, fuse, parity_inputs
from .io import atomic_dir, atomic_file, load_classifier, max_input_length
from .longtext import max_length_of
from .modelcard import build_card, read_facts
from .registry import family_of, is_ma

# The op types a fused MA graph and its int8 versions are made of: matrix products, additions, products (Div
# only by a constant), ReLU, and data movement. Anything else (softmax, normalisations, transcendental or
# smooth activations, fused attention kernels…) fails the audit.
ALLOWED_OPS = {
    "": {"MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "Neg",
         "Gather", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Slice", "Concat", "Split", "Expand", "Flatten",
         "Shape", "Cast", "Constant", "ConstantOfShape", "Identity",
         "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"},
    "com.microsoft": {"QLinearAdd", "QLinearMul", "QLinearConcat"},
}
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
MAX_LENGTH_KEY = "max_sequence_length"


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
    token_type_ids (batch, sequence), output logits. An MA graph records its length limit L in the model's
    metadata (`max_sequence_length`), which `onnx_feed` checks."""
    import onnx

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
        limit = max_input_length(model.config)
        if limit is not None:
            graph = onnx.load(str(tmp))
            onnx.helper.set_model_props(graph, {MAX_LENGTH_KEY: str(limit)})
            onnx.save(graph, str(tmp))
    return path


def _constant_names(graph) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _subgraphs(node):
    import onnx

    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _audit_nodes(nodes, constants: set[str], functions: dict, counts: Counter, found: Counter, seen: set) -> None:
    """Count every node, inside If/Loop/Scan bodies and model-local functions too, and collect the ones outside
    the allow-list (Div only by a constant)."""
    for node in nodes:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (domain, node.op_type) in functions:
            if (domain, node.op_type) not in seen:  # a function body is audited once
                seen.add((domain, node.op_type))
                body = functions[domain, node.op_type]
                inner = {out for n in body.node if n.op_type == "Constant" for out in n.output}
                _audit_nodes(body.node, inner, functions, counts, found, seen)
            continue
        counts[node.op_type] += 1
        if node.op_type not in ALLOWED_OPS.get(domain, ()):
            found[node.op_type] += 1
        elif node.op_type == "Div" and node.input[1] not in constants:
            found["Div"] += 1
        for graph in _subgraphs(node):
            _audit_nodes(graph.node, constants | _constant_names(graph), functions, counts, found, seen)


def float_activations(model) -> list[str] | None:
    """Names of the float tensors that nodes of the main graph read, other than constants (types from ONNX shape
    inference; a graph output that no node reads, such as a final dequantization, is a result, not a step).
    None when the types cannot be inferred."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # inference refuses some graphs (unknown custom ops); then the question has no answer
        return None
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    read = {name for node in graph.node for name in node.input if name}
    return sorted(name for name in read - _constant_names(graph) if types.get(name) in floats)


def audit(path: str | Path) -> dict:
    """Op types with counts, and those outside the allow-list found anywhere in the model (subgraphs and local
    functions included), and the float tensors read inside the main graph (`float_activations`: their number;
    0 for an integer-only graph). An unreadable or empty model fails, with the reason in `problems`."""
    import onnx

    if not Path(path).is_file():
        raise MABertError(f"{path} does not exist; export a model with `mabert export MODEL OUT.onnx`")
    counts, found, problems, floats = Counter(), Counter(), [], None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf and onnx raise several types for damaged files
        problems.append(f"not a readable ONNX model ({type(exc).__name__})")
    else:
        functions = {(f.domain, f.name): f for f in model.functions}
        _audit_nodes(model.graph.node, _constant_names(model.graph), functions, counts, found, set())
        if not counts:
            problems.append("the graph has no nodes")
        floats = float_activations(model)
    return {"file": str(path), "op_counts": dict(sorted(counts.items())), "forbidden": dict(sorted(found.items())),
            "float_activations": None if floats is None else len(floats),
            "float_examples": (floats or [])[:3], "problems": problems, "passed": not found and not problems}


def format_audit(report: dict) -> str:
    lines = [f"{report['file']}: {sum(report['op_counts'].values())} nodes"]
    lines += [f"  {op:<28}{count:>6}{'   FORBIDDEN' if op in report['forbidden'] else ''}"
              for op, count in report["op_counts"].items()]
    floats = report.get("float_activations")
    if floats == 0:
        lines.append("integer-only: no float tensor is computed on the way to the logits")
    elif floats:
        lines.append(f"float tensors read inside the graph: {floats} (e.g. {', '.join(report['float_examples'])})")
    if report["passed"]:
        lines.append("PASS: matrix arithmetic only (no softmax, normalization or transcendental ops)")
    for problem in report.get("problems", ()):
        lines.append(f"FAIL: {problem}")
    if report["forbidden"]:
        names = ", ".join(f"{op}×{n}" for op, n in report["forbidden"].items())
        lines.append(f"FAIL: ops outside matrix arithmetic: {names}")
    return "\n".join(lines)


def ort_session(onnx_path: str | Path, threads: int | None = None, profile_prefix: str | None = None):
    """The one way mabert opens an ONNX Runtime session: CPU, `threads` intra-op threads, one inter-op thread, all
    graph optimisations (ORT's default), optionally profiling; a file ORT cannot load is one plain error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise MABertError(f"ONNX Runtime cannot load {onnx_path} ({type(exc).__name__}); export one with "
                          "`mabert export`") from None


def graph_length_limit(onnx_path: str | Path) -> int | None:
    """The L an exported MA graph records in its metadata (plain graphs and int8 copies may have none)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return int(props[MAX_LENGTH_KEY]) if MAX_LENGTH_KEY in props else None


def refuse_longer_than(length: int, limit: int | None) -> None:
    """One plain error for inputs longer than a graph's L, whichever runtime runs it."""
    if limit is not None and length > int(limit):
        raise MABertError(f"inputs of {length} tokens are longer than this MA model takes (L = {limit}); truncate "
                          f"them to {limit} tokens (tokenizer(..., truncation=True, max_length={limit}))")


def onnx_feed(session, input_ids, attention_mask, token_type_ids=None) -> dict:
    """The inputs an ONNX Runtime session declares (DistilBERT graphs have no token_type_ids), refused with a
    plain message when longer than the length limit the graph records."""
    import numpy as np

    refuse_longer_than(np.shape(input_ids)[-1], session.get_modelmeta().custom_metadata_map.get(MAX_LENGTH_KEY))
    arrays = {"input_ids": np.asarray(input_ids, dtype=np.int64),
              "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
    arrays["token_type_ids"] = (np.zeros_like(arrays["input_ids"]) if token_type_ids is None
                                else np.asarray(token_type_ids, dtype=np.int64))
    return {i.name: arrays[i.name] for i in session.get_inputs()}


INTEGER_FILE = "model_integer.onnx"
INTEGER_CHECK_INPUTS = 32


def _padded(feeds: list[dict]) -> dict:
    """One right-padded batch of single-row feeds (pad id 0, mask 0)."""
    import numpy as np

    longest = max(f["input_ids"].shape[1] for f in feeds)
    batch = {}
    for key in feeds[0]:
        rows = [np.pad(f[key][0], (0, longest - f[key].shape[1])) for f in feeds]
        batch[key] = np.stack(rows).astype(np.int64)
    return batch


def export_integer_onnx(model, path: str | Path, calibration_feeds: list[dict], threads: int | None = None,
                        fused=None) -> dict:
    """The integer-only graph of an MA classifier (`mabert.integer_model`), calibrated on `calibration_feeds`
    (single-text ONNX feeds, `text_calibration_feeds`), written only once ONNX Runtime reproduces the NumPy
    reference's integer logits exactly on the first texts, one by one and as one padded batch. `fused`: the
    model's fused form when the caller has it (its folds already checked)."""
    from .integer_model import build_integer_model
    from .integer_onnx import check_against_reference, save_integer_onnx

    if not is_ma(model):
        raise MABertError("only MA models have an integer-only form; export a BERT with `mabert export` (fp32) or "
                          "--int8")
    if not calibration_feeds:
        raise MABertError("the integer-only graph needs calibration text (at least one input)")
    fused = fuse(model) if fused is None else fused
    batches = [tuple(torch.from_numpy(feed[name]) for name in INPUT_NAMES if name in feed) for feed in
               calibration_feeds]
    params, meta = build_integer_model(fused, batches)
    checks = calibration_feeds[:INTEGER_CHECK_INPUTS]
    with atomic_file(path) as tmp:
        save_integer_onnx(params, meta, tmp, {MAX_LENGTH_KEY: str(max_input_length(model.config))})
        check_against_reference(tmp, [*checks, _padded(checks)], threads)
    return {"integer_file": Path(path).name, "integer_calibration_texts": len(calibration_feeds),
            "integer_reference_texts": len(checks)}


def export_model_dir(model_dir: str | Path, out_dir: str | Path, fuse_model: bool = True, int8: bool = False,
                     opset: int = 17, openvino: bool = False, calibration_texts: list[str] | None = None,
                     integer: bool = False) -> dict:
    """`mabert export MODEL DIR`: a directory that optimum's ORTModelForSequenceClassification and
    transformers.pipeline load: model.onnx (+ model_quantized.onnx, dynamic int8), config.json, the tokenizer
    (model_max_length = L) and a model card. The config names the base family (bert/distilbert), whose input
    names the graph has, so loaders without mabert read it; the MA settings stay in it as extra keys.
    With `openvino` also openvino_model.xml/.bin (+ with `int8` openvino_model_int8.xml/.bin, NNCF-quantized and
    calibrated on `calibration_texts`, which it then requires). With `integer` also model_integer.onnx, the
    integer-only graph calibrated on `calibration_texts` (`export_integer_onnx`). Returns the card's facts."""
    import json

    from transformers import AutoTokenizer

    from .quantize import quantize_dynamic_int8

    if openvino:
        from .openvino_runtime import require_openvino

        require_openvino(int8, calibration_texts)  # before the model is loaded and fused
    if integer and not calibration_texts:
        raise MABertError("the integer-only graph is calibrated on task text: give --calibration-texts FILE (one "
                          "text per line)")
    model = load_classifier(model_dir)
    if integer and not (is_ma(model) and fuse_model):
        raise MABertError("only a fused MA model has an integer-only form (drop --integer, or --no-fuse)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError):  # TypeError: a registered tokenizer class without its vocab file
        raise MABertError(f"{model_dir} has no tokenizer files, which an export directory needs; save the tokenizer "
                          "there, or export to a single .onnx file") from None
    target, fusion = model, {}
    if is_ma(model) and fuse_model:
        fold_error = check_fold(model)
        target = fuse(model, check=False)
        lengths = sorted({min(16, model.config.softmax_input_size), model.config.softmax_input_size})
        fusion = {"fold_error": fold_error,
                  "parity": fp32_deviation(model, target, [parity_inputs(model.config, length=n) for n in lengths])}
    config = model.config.to_dict()
    if is_ma(model):  # the plain family's type and classifier (mabert.registry)
        family = family_of(model)
        config["model_type"], config["architectures"] = family.name, family.seqcls_architecture
    # pipeline(..., truncation=True) then cuts inputs to what the graph accepts
    tokenizer.model_max_length = max_length_of(model.config, min(tokenizer.model_max_length,
                                                                 model.config.max_position_embeddings))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        files = [export_onnx(target, tmp / "model.onnx", opset=opset).name]
        if int8:
            files.append(quantize_dynamic_int8(tmp / "model.onnx", tmp / "model_quantized.onnx").name)
        ir_files, integer_facts = {}, {}
        if integer:
            from .quantize import text_calibration_feeds

            feeds = text_calibration_feeds(tokenizer, calibration_texts, tokenizer.model_max_length)
            integer_facts = export_integer_onnx(model, tmp / INTEGER_FILE, feeds, fused=target)
            files.append(INTEGER_FILE)
        if openvino:
            from .openvino_runtime import write_openvino
            from .quantize import text_calibration_feeds

            feeds = text_calibration_feeds(tokenizer, calibration_texts, tokenizer.model_max_length) if int8 else None
            written = write_openvino(tmp / "model.onnx", tmp, int8, feeds)
            ir_files = {"openvino_files": [f for f in written if f.endswith(".xml")]}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tokenizer.save_pretrained(tmp)
        audits = {name: audit(tmp / name) for name in files}
        facts = {**read_facts(model_dir), "stage": "export", "source_model": str(model_dir), **fusion,
                 "audit": {n: {"passed": a["passed"], "forbidden": a["forbidden"]} for n, a in audits.items()},
                 "onnx_files": files, **ir_files, **integer_facts}
        (tmp / "README.md").write_text(build_card({**facts, "path": str(out_dir), "config": model.config.to_dict()}),
                                       encoding="utf-8")
    return facts
