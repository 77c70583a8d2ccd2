"""OpenVINO as a runtime: IR files from an exported ONNX graph (fp32, and int8 by NNCF post-training quantization),
call functions with the same contract as `mabert.predict.onnx_call`, and per-op-type timings.

OpenVINO and NNCF are optional (`pip install 'mabert[openvino]'`) and imported only here, when used.

Precision: the fp32 files keep fp32 weights (`save_model(..., compress_to_fp16=False)`), and models are compiled
with INFERENCE_PRECISION_HINT f32, since OpenVINO's CPU plugin otherwise runs in bf16 on CPUs that have it.
The length limit L of an MA graph (ONNX metadata `max_sequence_length`) is kept in the IR's rt_info and checked
on every call, like `mabert.export.onnx_feed` does for ONNX Runtime.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MABertError, one_line
from .export import graph_length_limit, refuse_longer_than
from .quantize import ATTENTION_SCOPE, POLY_SOFTMAX_SCOPE

FP32_XML = "openvino_model.xml"
INT8_XML = "openvino_model_int8.xml"
_RT_KEY = ["mabert", "max_sequence_length"]


def _openvino():
    try:
        import openvino
    except ImportError:
        raise MABertError("OpenVINO is not installed: pip install 'mabert[openvino]'") from None
    return openvino


@functools.cache
def _core():
    """One OpenVINO Core for the whole process. The CPU plugin, when first loaded, gives the main thread a small
    alternate signal stack; if the plugin is unloaded again (its last Core gone) that stack is freed while still
    installed, and the next SIGINT/SIGTERM (Ctrl-C) crashes the process with SIGSEGV. Keeping one Core keeps the
    plugin, and that stack, alive."""
    return _openvino().Core()


def _nncf():
    try:
        import nncf
    except ImportError:
        raise MABertError("NNCF (for OpenVINO int8) is not installed: pip install 'mabert[openvino]'") from None
    return nncf


INT8_NEEDS_TEXTS = ("--int8 --openvino calibrates the OpenVINO int8 model on real inputs: give --calibration-texts "
                    "FILE (task text, one per line; random token ids give activation ranges unlike real text)")


def require_openvino(int8: bool = False, calibration_texts=None, texts_needed: bool = True) -> None:
    """Fail early, in one line, when OpenVINO (and for int8 NNCF, and calibration text where the caller has no
    calibration inputs of its own) is missing."""
    _openvino()
    if int8:
        if texts_needed and not calibration_texts:
            raise MABertError(INT8_NEEDS_TEXTS)
        _nncf()


def _fit(feed: dict, input_names: list[str]) -> dict:
    """int64 arrays for exactly the inputs the model declares (zero token types where the feed has none)."""
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in feed.items() if v is not None}
    if "token_type_ids" not in arrays:
        arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise MABertError(f"the OpenVINO model takes inputs {input_names}; the feed lacks {missing}")
    return {name: arrays[name] for name in input_names}


def _input_names(model) -> list[str]:
    return [port.get_any_name() for port in model.inputs]


def length_limit(model) -> int | None:
    """L recorded in an OpenVINO model's rt_info (None for a plain graph)."""
    return int(model.get_rt_info(_RT_KEY).astype(str)) if model.has_rt_info(_RT_KEY) else None


def _convert(onnx_path: Path):
    ov = _openvino()
    if not onnx_path.is_file():
        raise MABertError(f"{onnx_path} does not exist; export one with `mabert export MODEL OUT.onnx`")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # the frontend raises its own types for unreadable graphs and unsupported ops
        raise MABertError(f"OpenVINO cannot convert {onnx_path}: {one_line(exc, 200)}") from None
    limit = graph_length_limit(onnx_path)
    if limit is not None:
        model.set_rt_info(str(limit), _RT_KEY)
    return model


def quantize_int8(model, calibration_feeds: list[dict]):
    """NNCF post-training quantization (transformer preset, min-max ranges from the calibration feeds) of an
    OpenVINO model; returns the int8 model. Feeds: input_ids/attention_mask[/token_type_ids] numpy arrays, from
    task text (random token ids give activation ranges unlike real inputs)."""
    import logging

    nncf = _nncf()
    feeds = list(calibration_feeds or [])
    if not feeds:
        raise MABertError("OpenVINO int8 needs calibration inputs from real text (e.g. --calibration-texts FILE)")
    names = _input_names(model)
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)  # NNCF logs its algorithm steps at INFO
    # with PolySoftmax the attention stays fp32, as in ORT static int8 (mabert.quantize: int8 scores reaching exp,
    # and its reciprocal's interpolant as an int8 "weight", would break it)
    poly = any(POLY_SOFTMAX_SCOPE in op.get_friendly_name() for op in model.get_ops())
    keep_float = nncf.IgnoredScope(patterns=[f".*{ATTENTION_SCOPE}.*"], validate=False) if poly else None
    try:
        quantized = nncf.quantize(model, nncf.Dataset(feeds, lambda feed: _fit(feed, names)),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                                  ignored_scope=keep_float)
    finally:
        nncf_logger.setLevel(level)
    limit = length_limit(model)
    if limit is not None:
        quantized.set_rt_info(str(limit), _RT_KEY)
    return quantized


def write_openvino(onnx_path: str | Path, directory: str | Path, int8: bool = False,
                   calibration_feeds: list[dict] | None = None) -> list[str]:
    """Write openvino_model.xml/.bin (and with `int8` openvino_model_int8.xml/.bin) into an existing folder
    (the temporary folder of an atomic write); returns the file names written."""
    ov = _openvino()
    directory = Path(directory)
    model = _convert(Path(onnx_path))
    ov.save_model(model, str(directory / FP32_XML), compress_to_fp16=False)
    files = [FP32_XML, FP32_XML.replace(".xml", ".bin")]
    if int8:
        ov.save_model(quantize_int8(model, calibration_feeds), str(directory / INT8_XML), compress_to_fp16=False)
        files += [INT8_XML, INT8_XML.replace(".xml", ".bin")]
    return files


def export_openvino(onnx_path: str | Path, out_dir: str | Path, int8: bool = False,
                    calibration_feeds: list[dict] | None = None) -> dict:
    """Convert a fused MA (or a plain BERT) ONNX graph to OpenVINO IR in `out_dir`, written whole and atomically
    (a folder mabert wrote is replaced; the ONNX file may not lie inside it). Batch and sequence axes stay
    dynamic. With `int8` also the NNCF-quantized model, calibrated on `calibration_feeds`.
    Returns {"dir", "files", "max_sequence_length"}."""
    from .io import atomic_dir, claim_output

    onnx_path = Path(onnx_path)
    claim_output(out_dir, inputs=[onnx_path], overwrite=True)
    if int8 and not calibration_feeds:
        raise MABertError("OpenVINO int8 needs calibration inputs from real text (calibration_feeds)")
    with atomic_dir(out_dir) as tmp:
        files = write_openvino(onnx_path, tmp, int8, calibration_feeds)
    return {"dir": str(out_dir), "files": files, "max_sequence_length": graph_length_limit(onnx_path)}


def _xml_path(model_dir_or_xml: str | Path) -> Path:
    path = Path(model_dir_or_xml)
    if path.is_dir():
        path = path / FP32_XML
    if not path.is_file():
        raise MABertError(f"{path} not found; write an OpenVINO model with `mabert export MODEL DIR --openvino`")
    return path


def read_model(model_dir_or_xml: str | Path):
    """The OpenVINO model of an .xml file, or a directory's openvino_model.xml."""
    _openvino()  # the one-line error when it is missing
    path = _xml_path(model_dir_or_xml)
    try:
        return _core().read_model(str(path))
    except Exception as exc:
        raise MABertError(f"OpenVINO cannot read {path}: {one_line(exc, 200)}; write it again with "
                          "`mabert export MODEL DIR --openvino`") from None


def _config(threads: int | None, hint: str = "LATENCY", profile: bool = False) -> dict:
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if profile:
        config["PERF_COUNT"] = True
    return config


def _compile(model, threads, hint="LATENCY", profile=False):
    try:
        return _core().compile_model(model, "CPU", _config(threads, hint, profile))
    except Exception as exc:
        raise MABertError(f"OpenVINO cannot compile the model for the CPU: {one_line(exc, 200)}") from None


def openvino_call(model_dir_or_xml: str | Path, threads: int | None = None,
                  hint: str = "LATENCY") -> Callable[[dict], np.ndarray]:
    """A call function (feed dict of int64 input_ids, attention_mask, token_type_ids → logits) running an
    OpenVINO model (a directory's openvino_model.xml, or an .xml file such as openvino_model_int8.xml) on the
    CPU: `threads` inference threads, LATENCY hint (one stream: each call is one request, as in the benchmark
    and `mabert predict`), fp32 precision."""
    model = read_model(model_dir_or_xml)
    limit, names = length_limit(model), _input_names(model)
    request = _compile(model, threads, hint).create_infer_request()

    def call(batch):
        refuse_longer_than(np.shape(batch["input_ids"])[-1], limit)
        request.infer(_fit(batch, names))
        return request.get_output_tensor(0).data.copy()

    return call


def openvino_profile(model_dir_or_xml: str | Path, feed: dict, threads: int = 2, runs: int = 5) -> dict[str, float]:
    """Mean milliseconds per run spent in each executed op type of the compiled model (OpenVINO's PERF_COUNT
    counters, one warm-up run not counted), largest first; the types are the CPU plugin's fused nodes
    (FullyConnected, MatMul, Eltwise, Subgraph…), not the ONNX ops. Same shape as `opprofile.op_type_times`."""
    model = read_model(model_dir_or_xml)
    names = _input_names(model)
    refuse_longer_than(np.shape(feed["input_ids"])[-1], length_limit(model))
    request = _compile(model, threads, profile=True).create_infer_request()
    inputs = _fit(feed, names)
    request.infer(inputs)  # warm-up (counters are per inference, so it is simply not summed)
    totals: dict[str, float] = defaultdict(float)
    for _ in range(runs):
        request.infer(inputs)
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                totals[info.node_type] += info.real_time.total_seconds() * 1e3 / runs
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def openvino_candidates(ma_onnx: str | Path, bert_onnx: str | Path, calibration_feeds: list[dict] | None,
                        workdir: str | Path, threads: int) -> dict[tuple[str, str], tuple[Callable, Path]]:
    """Benchmark candidates: (family "ma"/"bert", precision "fp32"/"int8") → (call(feed dict) → logits, the IR's
    .xml). Writes the IR files under `workdir` (ma-openvino/, bert-openvino/). Give the plain BERT export
    (`export_onnx`), not ORT's optimized graph, whose com.microsoft fused ops are ORT's own; OpenVINO fuses
    attention and normalisation itself. Without calibration feeds the int8 candidates are left out."""
    workdir = Path(workdir)
    int8 = bool(calibration_feeds)
    candidates = {}
    for family, onnx_path in (("ma", ma_onnx), ("bert", bert_onnx)):
        folder = workdir / f"{family}-openvino"
        export_openvino(onnx_path, folder, int8=int8, calibration_feeds=calibration_feeds)
        for precision, xml in [("fp32", FP32_XML)] + ([("int8", INT8_XML)] if int8 else []):
            candidates[family, precision] = openvino_call(folder / xml, threads), folder / xml
    return candidates
