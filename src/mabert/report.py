"""The demo report: a terminal summary and report.md with plots, from the stage records."""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_file
from .metrics import DECIDED_MARGIN, headline


def _curves(out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: out / name / "history.json" for name in ("teacher", "student")}
    runs = {k: json.loads(v.read_text()) for k, v in runs.items() if v.exists()}
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (name, history) in zip(axes[0], runs.items()):
        steps = [h["step"] for h in history]
        for key in [k for k in history[0] if k != "step"]:
            values = [h[key] for h in history]
            window = max(1, len(values) // 30)
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, label=key)
        ax.set_yscale("log")
        ax.set_title(f"{name} training loss")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    with atomic_file(out / "training_curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return "training_curves.png"


def summary_rows(records: dict) -> list[tuple[str, str]]:
    rows = []
    teacher, student = records.get("teacher", {}), records.get("distill", {})
    if teacher and student:
        key, t_value = headline(teacher["metrics"])
        _, s_value = headline(student["metrics"])
        rows.append((f"teacher {key} ({teacher.get('eval_split', 'held-out')})", f"{t_value:.4f}"))
        rows.append((f"MA student {key}", f"{s_value:.4f}  (Δ {100 * (s_value - t_value):+.2f} points)"))
    export = records.get("export", {})
    onnx_metrics = export.get("onnx_metrics", {})
    fp32 = headline(onnx_metrics["ma-student"])[1] if "ma-student" in onnx_metrics else None
    for name, metrics in onnx_metrics.items():
        key, value = headline(metrics)
        delta = f"  (Δ vs fp32 {100 * (value - fp32):+.2f} points)" if fp32 is not None and name != "ma-student" else ""
        rows.append((f"{name} ONNX {key}", f"{value:.4f}{delta}"))
    if export and "fused_fp32_deviation" in export:
        rows.append(("fused / ONNX fp32 deviation from the student (relative)",
                     f"{export['fused_fp32_deviation']:.1e} / {export['onnx_fp32_deviation']:.1e}"))
    integer = export.get("integer", {})
    if "audit" in integer:
        floats = integer["audit"]["float_activations"]
        rows.append(("integer-only ONNX (model_integer.onnx)",
                     f"integer logits identical to the NumPy reference on {integer['integer_reference_texts']} texts; "
                     f"float tensors inside the graph: {floats}; audit "
                     + ("PASS" if integer["audit"]["passed"] else "FAIL")))
    if export:
        audit = export["audit_student"]
        rows.append(("audit MA student ONNX", "PASS" if audit["passed"] else f"FAIL {audit['forbidden']}"))
        rows.append(("audit BERT teacher ONNX", "PASS" if export["audit_teacher"]["passed"]
                     else "FAIL (has " + ", ".join(export["audit_teacher"]["forbidden"]) + ")"))
    bench = records.get("bench", {}).get("bench")
    if bench:
        from .bench import FORMAT, format_ratio

        if bench.get("format") != FORMAT:
            rows.append(("benchmark", "recorded by an earlier mabert version (no intervals): delete bench.json "
                                      "here and rerun the demo"))
        else:
            for work, data in bench["workloads"].items():
                for ratio in data["ratios"]:
                    if ratio["candidate"]["runtime"] != "torch":
                        rows.append((f"{work}: {ratio['candidate']['name']} vs {ratio['baseline']['name']}",
                                     format_ratio(ratio)))
    return rows


def benchmark_note(bench: dict) -> list[str]:
    """One paragraph on how to read the speedups, naming every interval that did not converge."""
    from .bench import FORMAT

    if bench.get("format") != FORMAT:
        return []
    tolerance = 100 * bench["timing"]["tolerance"]
    unconverged = [f"{work}: {r['candidate']['name']} vs {r['baseline']['name']}"
                   for work, data in bench["workloads"].items() for r in data["ratios"] if not r["converged"]]
    verdict = (f"{len(unconverged)} interval(s) did not narrow to ±{tolerance:g} % before the budget ran out, so "
               f"those ratios are uncertain: {'; '.join(unconverged)}." if unconverged
               else f"Every interval narrowed to ±{tolerance:g} %.")
    return ["Speedups are BERT's median time over MA's (> 1: MA faster) with 95 % bootstrap intervals over "
            f"interleaved rounds, written \"1.08× [1.03–1.12]\". {verdict}", ""]


def general_section(general: dict) -> list[str]:
    errors = general["held_out_layer_errors"]
    return ["", "## General MA model (KD pre-training on bundled English of every length)", "",
            f"{general['steps']} steps on {general['passages']:,} passages in {general['wall_time_s']:.0f} s; "
            "error to the pretrained BERT on 128 held-out passages:", "",
            "| layer | " + " | ".join(str(i) for i in range(len(errors["hidden_mse"]))) + " |",
            "|---" * (len(errors["hidden_mse"]) + 1) + "|",
            "| hidden MSE | " + " | ".join(f"{e:.3f}" for e in errors["hidden_mse"]) + " |",
            "| attention MSE | – | " + " | ".join(f"{e:.2e}" for e in errors["attention_mse"]) + " |"]


def usage_section(out: Path, predict: dict, integer: bool) -> list[str]:
    """How to use what the demo made: the export directory, its model cards, and the predict example's output."""
    import csv

    lines = ["", "## Use the student", "",
             "`export/` is the deployable model (fused `model.onnx`, dynamic int8 `model_quantized.onnx`, "
             + ("the integer-only `model_integer.onnx`, " if integer else "") + "config, tokenizer); it loads with optimum's `ORTModelForSequenceClassification` and `transformers.pipeline` "
             "(see its `README.md`, the model card; `teacher/model` and `student/model` have cards too). "
             "Scoring a file:", "", "```", predict["command"], "```", ""]
    texts = (out / "predict" / "examples.txt").read_text(encoding="utf-8").splitlines()
    with open(out / "predict" / "predictions.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    lines += ["| line | text | label | probability |", "|---|---|---|---|"]
    for row in rows:
        text = texts[int(row["line"]) - 1]
        text = (text[:77] + "…") if len(text) > 78 else text
        lines.append(f"| {row['line']} | {text.replace('|', '/')} | {row['label']} | {float(row['score']):.3f} |")
    return lines


def _share(value) -> str:
    """A fraction to four places; "–" where the record has none (regression, older records, nothing decided)."""
    return "–" if value is None else f"{value:.4f}"


def robustness_section(robustness: dict) -> list[str]:
    """Held-out metrics per length bucket, then agreement with the teacher on text never distilled on."""
    lines = ["", "## What users meet", "", "Held-out examples by length (tokens), teacher / MA student:", "",
             "| set | tokens | examples | teacher | MA student | Δ points |", "|---|---|---|---|---|---|"]
    for name, pair in robustness["in_domain"].items():
        key, t_all = headline(pair["teacher"])
        s_all = headline(pair["student"])[1]
        lines.append(f"| {name} | all | | {t_all:.4f} | {s_all:.4f} | {100 * (s_all - t_all):+.2f} |")
        for bucket, t_metrics in pair["teacher"]["by_length"].items():
            s_metrics = pair["student"]["by_length"][bucket]
            t_value, s_value = headline(t_metrics)[1], headline(s_metrics)[1]
            lines.append(f"| {name} | {bucket} | {t_metrics['examples']} | {t_value:.4f} | {s_value:.4f} | "
                         f"{100 * (s_value - t_value):+.2f} |")
    if robustness.get("out_of_domain"):
        lines += ["", "Text the student was never distilled on (no labels): agreement with the teacher, on all "
                  f"inputs and on those the teacher decides (its top two class probabilities ≥ {DECIDED_MARGIN} "
                  "apart), and the largest |logit| of each model:", "",
                  "| text | examples | median tokens | agreement | teacher decided | agreement where decided | "
                  "student max abs logit | teacher max abs logit | non-finite |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in robustness["out_of_domain"].items():
            lines.append(f"| {name} | {row['examples']} | {row['median_tokens']:.0f} | "
                         f"{_share(row.get('agreement'))} | {_share(row.get('teacher_decided_share'))} | "
                         f"{_share(row.get('agreement_where_teacher_decided'))} | "
                         f"{row['student_max_abs_logit']:.2f} | {row['teacher_max_abs_logit']:.2f} | "
                         f"{row['student_non_finite']} |")
    return lines


def write_report(out: Path, records: dict, settings: dict) -> Path:
    rows = summary_rows(records)
    width = max((len(k) for k, _ in rows), default=10)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    curves = _curves(out)
    lines = ["# mabert demo report", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    export = records.get("export")
    if export:
        lines += ["", "## Operator audit", "", "| op | BERT teacher | MA student |", "|---|---|---|"]
        teacher_ops, student_ops = export["audit_teacher"]["op_counts"], export["audit_student"]["op_counts"]
        for op in sorted(set(teacher_ops) | set(student_ops)):
            lines.append(f"| {op} | {teacher_ops.get(op, '')} | {student_ops.get(op, '')} |")
    fitted = next((r for r in (records.get("general"), records.get("convert")) if r and "approximator_mse_per_layer" in r),
                  None)
    if fitted and fitted["approximator_mse_per_layer"]:  # empty: nothing was fitted (ReLU attention, PolySoftmax)
        errors = fitted["approximator_mse_per_layer"]
        lines += ["", "## Approximator fit (MSE to softmax on teacher score rows)", "",
                  " ".join(f"layer {i + 1}: {e:.2e}" for i, e in enumerate(errors))]
    if records.get("general"):
        lines += general_section(records["general"])
    if records.get("predict", {}).get("command"):
        lines += usage_section(out, records["predict"], integer="audit" in (export or {}).get("integer", {}))
    if records.get("robustness"):
        lines += robustness_section(records["robustness"])
    if curves:
        lines += ["", "## Training", "", f"![training curves]({curves})"]
    if (out / "bench" / "bench.png").exists():
        from .bench import format_benchmark

        lines += ["", "## Benchmark", "", "![benchmark](bench/bench.png)", ""]
        lines += benchmark_note(records["bench"]["bench"]) + ["```", format_benchmark(records["bench"]["bench"]), "```"]
    lines += ["", "## Stage times (s)", ""] + [f"- {k}: {v.get('stage_seconds', '?')}" for k, v in records.items()]
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    path = out / "report.md"
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines))
    print(f"\nreport: {path}")
    return path
