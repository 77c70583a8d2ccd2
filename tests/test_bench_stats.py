"""The benchmark's statistics (intervals, stopping rule) on synthetic timings, its workloads, the bench.json
schema of a tiny run, and how the report renders an interval. No assertion here depends on measured speed."""
import itertools
import json

import numpy as np
import pytest

from mabert.bench import (RT_TOKEN_LENGTH_QUANTILES, draw_lengths, fixed_workload, format_ratio, median_interval,
                          ratio_interval, real_workload, run_rounds)


def _pairs(rounds, ratio, noise, seed, drift=0.0):
    """Round times of a baseline and a candidate `ratio` × faster, each with independent lognormal noise, both
    scaled by a shared per-round machine factor of lognormal spread `drift`."""
    rng = np.random.default_rng(seed)
    machine = np.exp(rng.normal(0, drift, rounds))
    baseline = 0.010 * ratio * machine * np.exp(rng.normal(0, noise, rounds))
    candidate = 0.010 * machine * np.exp(rng.normal(0, noise, rounds))
    return baseline, candidate


def test_interval_contains_the_true_ratio_and_narrows_with_rounds():
    hits = 0
    for seed in range(40):
        value, low, high = ratio_interval(*_pairs(30, 1.25, 0.1, seed))
        assert low <= value <= high
        hits += low <= 1.25 <= high
    assert hits >= 32  # nominal 95 %: 38 of 40 expected; the seeds are fixed, so this is deterministic
    widths = [np.subtract(*ratio_interval(*_pairs(n, 1.25, 0.1, 7))[2:0:-1]) for n in (20, 80, 400)]
    assert widths[0] > widths[1] > widths[2] and widths[2] < widths[0] / 2.5


def test_median_interval_covers_the_true_median_and_narrows():
    hits = 0
    for seed in range(40):  # lognormal times around 10 ms: the true median is 10 ms
        low, high = median_interval(0.010 * np.exp(np.random.default_rng(seed).normal(0, 0.2, 30)))
        hits += low <= 0.010 <= high
    assert hits >= 32
    widths = [np.subtract(*median_interval(0.010 * np.exp(np.random.default_rng(3).normal(0, 0.2, n)))[::-1])
              for n in (20, 80, 400)]
    assert widths[0] > widths[1] > widths[2]


def test_interval_is_paired_by_round():
    """A machine that slows down by ±50 % from round to round hits both candidates of a round alike: the paired
    interval stays tight; breaking the pairing (shuffling one side's rounds) widens it."""
    baseline, candidate = _pairs(40, 0.8, 0.01, 3, drift=0.5)
    value, low, high = ratio_interval(baseline, candidate)
    assert value == pytest.approx(0.8, rel=0.05) and low >= 0.95 * value and high <= 1.05 * value
    _, low_u, high_u = ratio_interval(baseline, np.random.default_rng(0).permutation(candidate))
    assert high_u - low_u > 4 * (high - low)


def test_interval_input_checks():
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])
    assert ratio_interval([2.0], [1.0]) == (2.0, 2.0, 2.0)


def _synthetic_step(ratios: dict, noise: float, seed: int = 0):
    """One round: {name: seconds} with the baseline "bert" and candidates `ratio` × faster."""
    rng = np.random.default_rng(seed)

    def step():
        machine = np.exp(rng.normal(0, 0.2))
        times = {"bert": 0.01 * machine * np.exp(rng.normal(0, noise))}
        times.update({name: 0.01 / r * machine * np.exp(rng.normal(0, noise)) for name, r in ratios.items()})
        return times
    return step


def test_rounds_stop_once_every_interval_is_within_tolerance():
    ratios = {"ma-a": 1.3, "ma-b": 0.7}
    result = run_rounds(_synthetic_step(ratios, 0.02), [(n, "bert") for n in ratios], max_rounds=500,
                        max_seconds=1e9, min_rounds=10, quiet=True)
    assert result["stopped"] == "converged" and 10 <= result["rounds"] < 500
    assert all(len(t) == result["rounds"] for t in result["times"].values())
    for row in result["ratios"]:
        assert row["converged"] and row["rounds"] == result["rounds"]
        assert row["low"] >= 0.95 * row["value"] and row["high"] <= 1.05 * row["value"]
        assert row["low"] <= ratios[row["candidate"]] <= row["high"]


def test_noisy_rounds_end_unconverged_at_the_round_budget():
    result = run_rounds(_synthetic_step({"ma": 1.1}, 0.8), [("ma", "bert")], max_rounds=30, max_seconds=1e9,
                        quiet=True)
    assert result["stopped"] == "max_rounds" and result["rounds"] == 30
    (row,) = result["ratios"]
    assert not row["converged"] and row["rounds"] == 30
    assert row["high"] / row["value"] - 1 > 0.05 or 1 - row["low"] / row["value"] > 0.05
    assert "not converged" in format_ratio(row) and "after 30 rounds" in format_ratio(row)


def test_time_budget_and_minimum_rounds():
    """A fake clock ticking one second per reading: the 5 s budget ends the run after 5 rounds, and even noiseless
    timings (a zero-width interval) do not count as converged before min_rounds."""
    clock = itertools.count().__next__
    result = run_rounds(lambda: {"bert": 2.0, "ma": 1.0}, [("ma", "bert")], max_rounds=100, max_seconds=5,
                        min_rounds=10, clock=clock, quiet=True)
    assert result["stopped"] == "max_seconds" and result["rounds"] == 5
    (row,) = result["ratios"]
    assert (row["value"], row["low"], row["high"]) == (2.0, 2.0, 2.0) and not row["converged"]


def test_format_ratio():
    row = {"value": 1.0812, "low": 1.031, "high": 1.1249, "rounds": 40, "converged": True}
    assert format_ratio(row) == "1.08× [1.03–1.12]"
    assert format_ratio({**row, "high": 1.30, "converged": False}) == \
        "1.08× [1.03–1.30], not converged (±20 % after 40 rounds)"


def test_real_lengths_follow_the_table_and_batches_are_padded_to_their_longest_row():
    lengths = np.array(draw_lengths(20000, seed=1))
    assert lengths.min() >= RT_TOKEN_LENGTH_QUANTILES[0] and lengths.max() <= RT_TOKEN_LENGTH_QUANTILES[-1]
    for q, expected in ((25, 19), (50, 26), (75, 35), (95, 47)):
        assert abs(np.percentile(lengths, q) - expected) <= 1.5
    assert max(draw_lengths(500, max_length=40)) == 40

    work = real_workload(2000, batch=8, batches=3, seed=0)
    assert work.name == "b8-real" and len(work.batches) == 3
    for rows, (ids, mask) in zip(work.lengths, work.batches):
        assert ids.shape == (8, max(rows)) and mask.sum(1).tolist() == rows
    given = real_workload(2000, batch=4, lengths=[5, 9, 3, 12, 7])
    assert given.lengths == [[5, 9, 3, 12], [7]] and [ids.shape[1] for ids, _ in given.batches] == [12, 7]
    fixed = fixed_workload(2000, 2, 16)
    assert fixed.name == "b2-s16" and fixed.batches[0][1].sum() == 32
    assert fixed.facts() == {"description": "2 × 16 tokens", "batch": 2, "batches": 1, "lengths": [[16, 16]],
                             "padded_lengths": [16]}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from mabert.bench import SHAPES, run_benchmark
    from mabert.conversion import convert

    out = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)  # random_pair("tiny") without fitting the approximators: only the schema matters here
    teacher = BertForSequenceClassification(BertConfig(**SHAPES["tiny"], num_labels=2)).eval()
    student = convert(teacher, softmax_mask_mode="masked", pooler_act="relu", approximator_init_steps=0)
    workloads = [real_workload(teacher.config.vocab_size, 4, lengths=[5, 9, 3, 12, 7, 4])]
    run_benchmark(teacher, student, out, workloads=workloads, max_rounds=2, include_int8=False, profile=False,
                  quiet=True)
    return out


def test_bench_json_names_candidates_and_ratios_by_fields(tiny_report):
    saved = json.loads((tiny_report / "bench.json").read_text())
    assert saved["format"] == 2 and saved["timing"]["max_rounds"] == 2
    (work,) = saved["workloads"].values()
    assert saved["workloads"].keys() == {"b4-real"} and work["padded_lengths"] == [12, 7] and work["rounds"] == 2
    fields = ("family", "runtime", "precision", "variant", "name")
    assert {tuple(c[f] for f in fields[:4]) for c in work["candidates"]} == {
        ("bert", "torch", "fp32", "eager"), ("bert", "onnxruntime", "fp32", "optimized"),
        ("ma", "torch", "fp32", "eager"), ("ma", "torch", "fp32", "fused"), ("ma", "onnxruntime", "fp32", "fused")}
    by_name = {c["name"]: c for c in work["candidates"]}
    for row in work["candidates"]:
        assert len(row["round_ms"]) == 2 and 0 < row["median_ms"] <= row["p90_ms"]
    assert {(r["candidate"]["name"], r["baseline"]["name"]) for r in work["ratios"]} == {
        ("MA eager (PyTorch)", "BERT eager (PyTorch)"), ("MA fused (PyTorch)", "BERT eager (PyTorch)"),
        ("MA fused ORT fp32", "BERT ORT optimized fp32")}
    for ratio in work["ratios"]:
        candidate, baseline = ratio["candidate"], ratio["baseline"]
        assert set(candidate) == set(baseline) == set(fields)
        assert (candidate["family"], baseline["family"]) == ("ma", "bert")
        assert candidate["runtime"] == baseline["runtime"] and candidate["precision"] == baseline["precision"]
        medians = np.median(by_name[baseline["name"]]["round_ms"]) / np.median(by_name[candidate["name"]]["round_ms"])
        assert ratio["value"] == pytest.approx(medians, rel=1e-3)
        assert ratio["low"] <= ratio["value"] <= ratio["high"]
        assert ratio["rounds"] == 2 and ratio["converged"] is False  # 2 rounds < min_rounds
    assert (tiny_report / "bench.png").stat().st_size > 1000


def test_report_renders_intervals_and_says_when_they_did_not_converge(tiny_report, tmp_path):
    from mabert.bench import format_benchmark
    from mabert.report import summary_rows, write_report

    bench = json.loads((tiny_report / "bench.json").read_text())
    text = format_benchmark(bench)
    assert "MA fused ORT fp32 vs BERT ORT optimized fp32" in text and "not converged (" in text
    assert "stopped: round budget spent; 0 of 3 intervals converged" in text
    # a converged ratio renders as value [low–high]; the ORT ratios are the ones the summary lists
    ratio = next(r for r in bench["workloads"]["b4-real"]["ratios"] if r["candidate"]["runtime"] == "onnxruntime")
    ratio.update(value=1.0812, low=1.031, high=1.1249, converged=True)
    rows = dict(summary_rows({"bench": {"bench": bench}}))
    assert rows == {"b4-real: MA fused ORT fp32 vs BERT ORT optimized fp32": "1.08× [1.03–1.12]"}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.png").write_bytes((tiny_report / "bench.png").read_bytes())
    report = write_report(tmp_path, {"bench": {"bench": bench}}, {}).read_text()
    assert "| b4-real: MA fused ORT fp32 vs BERT ORT optimized fp32 | 1.08× [1.03–1.12] |" in report
    assert "2 interval(s) did not narrow to ±5 % before the budget ran out" in report
    assert "b4-real: MA eager (PyTorch) vs BERT eager (PyTorch)" in report
    # a record written before the intervals existed does not break the report
    old = {"threads": 2, "workloads": {"b8-s128": {"candidates": {"MA fused ORT fp32": {"median_ms": 1.0}}}}}
    assert "earlier mabert version" in dict(summary_rows({"bench": {"bench": old}}))["benchmark"]
    assert "earlier mabert version" in format_benchmark(old)
