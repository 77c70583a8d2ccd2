"""Stage 5 — benchmark: baseline BERT vs MA-BERT, interleaved in one run, same threads."""
from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .choices import MASK_MASKED, POOLER_RELU
from .io import atomic_file

SHAPES = {
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "tiny": dict(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
}


def random_pair(shape: str, seed: int = 0):
    """(BERT teacher, MA student) with random weights of a known shape: no download needed."""
    from transformers import BertConfig, BertForSequenceClassification

    from .conversion import convert

    torch.manual_seed(seed)
    teacher = BertForSequenceClassification(BertConfig(**SHAPES[shape], num_labels=2)).eval()
    student = convert(teacher, softmax_mask_mode=MASK_MASKED, pooler_act=POOLER_RELU, approximator_init_steps=50)
    return teacher, student


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 GEMM speed of this machine (GFLOP/s) at the benchmark's thread count."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def bert_matmul_flops(config, batch: int, length: int) -> float:
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 2 * batch * length * (4 * hidden * hidden + 2 * hidden * inter)
    attention = 2 * 2 * batch * length * length * hidden
    return layers * (dense + attention)


def ma_matmul_flops(config, batch: int, length: int, reassociate: bool) -> float:
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, approx_hidden = config.num_attention_heads, config.softmax_hidden_layer_size
    dim = hidden // heads
    dense = 2 * batch * length * (4 * hidden * hidden + 2 * hidden * inter)
    if reassociate:  # W1·K, Q·(W1K)ᵀ, W2ᵀ·V, H·(W2ᵀV)
        attention = 4 * 2 * batch * heads * length * approx_hidden * dim
    else:  # QKᵀ, S·W1ᵀ, ·W2ᵀ, P·V
        attention = batch * heads * 2 * (2 * length * length * dim + 2 * length * length * approx_hidden)
    return layers * (dense + attention)


def _session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_runner(path, threads):
    from .export import onnx_feed

    session = _session(path, threads)
    return lambda ids, mask: session.run(None, onnx_feed(session, ids.numpy(), mask.numpy()))[0]


def _torch_runner(model):
    def run(ids, mask):
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask)
        return out if isinstance(out, torch.Tensor) else out.logits
    return run


def _random_calibration(config, batches: int = 8, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    feeds = []
    for _ in range(batches):
        ids = torch.randint(1000 if config.vocab_size > 2000 else 5, config.vocab_size, (4, 64), generator=generator)
        mask = torch.ones_like(ids)
        mask[1:, 20 + int(torch.randint(0, 40, (1,), generator=generator)):] = 0
        feeds.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())})
    return feeds


def build_candidates(teacher, student, workdir: Path, threads: int, include_int8: bool = True,
                     calibration: list[dict] | None = None) -> dict:
    """(name → runner(ids, mask), fused student, name → ONNX file of the ORT candidates). Exports/optimises what
    the ORT candidates need into workdir."""
    from onnxruntime.transformers.optimizer import optimize_model

    from .export import export_onnx
    from .fuse import fuse
    from .quantize import quantize_dynamic_int8, quantize_static_int8

    fused = fuse(student)
    bert_onnx = export_onnx(teacher, workdir / "bert.onnx")
    optimized = optimize_model(str(bert_onnx), model_type="bert", num_heads=teacher.config.num_attention_heads,
                               hidden_size=teacher.config.hidden_size)
    optimized.save_model_to_file(str(workdir / "bert-opt.onnx"))
    ma_onnx = export_onnx(fused, workdir / "ma.onnx")
    files = {"BERT ORT optimized fp32": workdir / "bert-opt.onnx", "MA fused ORT fp32": ma_onnx}
    candidates = {
        "BERT eager (PyTorch)": _torch_runner(teacher),
        "BERT ORT optimized fp32": _ort_runner(workdir / "bert-opt.onnx", threads),
        "MA eager (PyTorch)": _torch_runner(student),
        "MA fused (PyTorch)": _torch_runner(fused),
        "MA fused ORT fp32": _ort_runner(ma_onnx, threads),
    }
    if include_int8:
        quantize_dynamic_int8(workdir / "bert-opt.onnx", workdir / "bert-opt-int8.onnx")
        quantize_dynamic_int8(ma_onnx, workdir / "ma-int8.onnx")
        quantize_static_int8(ma_onnx, workdir / "ma-static-int8.onnx", calibration or _random_calibration(student.config))
        candidates["BERT ORT dynamic int8"] = _ort_runner(workdir / "bert-opt-int8.onnx", threads)
        candidates["MA fused ORT int8"] = _ort_runner(workdir / "ma-int8.onnx", threads)
        candidates["MA fused ORT static int8"] = _ort_runner(workdir / "ma-static-int8.onnx", threads)
        files.update({"BERT ORT dynamic int8": workdir / "bert-opt-int8.onnx",
                      "MA fused ORT int8": workdir / "ma-int8.onnx",
                      "MA fused ORT static int8": workdir / "ma-static-int8.onnx"})
    return candidates, fused, files


def workloads(vocab: int, real_lengths: list[int] | None, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for batch in (1, 8):
        ids = torch.randint(1000, vocab, (batch, 128), generator=generator)
        out[f"b{batch}-s128"] = (ids, torch.ones_like(ids))
    if real_lengths:
        lengths = real_lengths[:8]
        longest = max(lengths)
        ids = torch.randint(1000, vocab, (len(lengths), longest), generator=generator)
        mask = (torch.arange(longest)[None] < torch.tensor(lengths)[:, None]).long()
        out[f"b{len(lengths)}-real(max {longest})"] = (ids, mask)
    return out


def run_benchmark(teacher, student, out_dir: str | Path, threads: int = 2, repeats: int = 20,
                  real_lengths: list[int] | None = None, include_int8: bool = True, seed: int = 0,
                  calibration: list[dict] | None = None, profile: bool = True) -> dict:
    """Interleaved timing of every candidate on every workload; writes bench.json and bench.png. With `profile`,
    also ORT's per-op-type kernel times of each ORT candidate on the largest workload (where the time goes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        candidates, fused, files = build_candidates(teacher, student, Path(tmp), threads, include_int8, calibration)
        gflops = matmul_gflops(threads)
        results = {}
        rng = random.Random(seed)
        for name, (ids, mask) in workloads(teacher.config.vocab_size, real_lengths, seed).items():
            times = {c: [] for c in candidates}
            for run in candidates.values():  # warm-up
                run(ids, mask)
            for _ in range(repeats):
                order = list(candidates)
                rng.shuffle(order)
                for candidate in order:
                    start = time.perf_counter()
                    candidates[candidate](ids, mask)
                    times[candidate].append(time.perf_counter() - start)
            batch, length = ids.shape
            rows = {}
            for candidate, samples in times.items():
                median = statistics.median(samples)
                rows[candidate] = {"median_ms": median * 1e3, "p90_ms": float(np.percentile(samples, 90)) * 1e3,
                                   "throughput_seq_s": batch / median}
            for baseline in ("BERT eager (PyTorch)", "BERT ORT optimized fp32", "BERT ORT dynamic int8"):
                if baseline in rows:
                    for candidate in rows:
                        rows[candidate][f"speedup_vs {baseline}"] = rows[baseline]["median_ms"] / rows[candidate]["median_ms"]
            results[name] = {
                "batch": batch, "length": length, "candidates": rows,
                "gemm_floor_ms": {
                    "BERT": bert_matmul_flops(teacher.config, batch, length) / (gflops * 1e9) * 1e3,
                    "MA": ma_matmul_flops(student.config, batch, length, fused.reassociate) / (gflops * 1e9) * 1e3,
                },
            }
        op_times = _profile(files, workloads(teacher.config.vocab_size, None, seed)["b8-s128"], threads) if profile else {}
    report = {"threads": threads, "repeats": repeats, "matmul_gflops": gflops, "op_times_ms_b8_s128": op_times,
              "model": {k: getattr(teacher.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                                "intermediate_size")},
              "workloads": results}
    with atomic_file(out_dir / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    plot_benchmark(report, out_dir / "bench.png")
    return report


def _profile(files: dict, workload, threads: int) -> dict:
    from .opprofile import op_type_times

    ids, mask = (t.numpy() for t in workload)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: op_type_times(path, feed, threads) for name, path in files.items()}


def plot_benchmark(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads_ = list(report["workloads"])
    candidates = list(next(iter(report["workloads"].values()))["candidates"])
    fig, axes = plt.subplots(1, len(workloads_), figsize=(5 * len(workloads_), 4.5), squeeze=False)
    for ax, name in zip(axes[0], workloads_):
        rows = report["workloads"][name]["candidates"]
        values = [rows[c]["median_ms"] for c in candidates]
        colors = ["#c44e52" if c.startswith("BERT") else "#4c72b0" for c in candidates]
        ax.barh(candidates, values, color=colors)
        ax.set_title(name)
        ax.set_xlabel("median latency (ms)")
        ax.invert_yaxis()
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def format_benchmark(report: dict) -> str:
    lines = [f"threads={report['threads']}  GEMM {report['matmul_gflops']:.1f} GFLOP/s  model {report['model']}"]
    for name, work in report["workloads"].items():
        lines.append(f"\n{name}   GEMM floor: BERT {work['gemm_floor_ms']['BERT']:.2f} ms, MA {work['gemm_floor_ms']['MA']:.2f} ms")
        lines.append(f"  {'candidate':<28}{'median ms':>10}{'p90 ms':>9}{'seq/s':>9}{'vs ORT':>8}{'vs int8':>8}")
        for candidate, row in work["candidates"].items():
            vs_ort = row.get("speedup_vs BERT ORT optimized fp32", float("nan"))
            vs_int8 = row.get("speedup_vs BERT ORT dynamic int8", float("nan"))
            lines.append(f"  {candidate:<28}{row['median_ms']:>10.2f}{row['p90_ms']:>9.2f}"
                         f"{row['throughput_seq_s']:>9.1f}{vs_ort:>8.2f}{vs_int8:>8.2f}")
    if report.get("op_times_ms_b8_s128"):
        from .opprofile import format_op_times

        lines.append("\nwhere the time goes (ORT kernel time per run, b8-s128):")
        lines += ["  " + format_op_times(name, times) for name, times in report["op_times_ms_b8_s128"].items()]
    return "\n".join(lines)
