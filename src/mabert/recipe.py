"""The recipe that turns a pretrained BERT and a task into an MA student, shared by the demo and the benchmarks:
defaults in one dataclass, and the chain convert → fit → general KD → task student → task KD as functions.

1. `general_model`: the pretrained BERT converted (bounded, masked mode), its approximators fitted to the BERT's
   score rows, then KD pre-training (hidden states + attention maps, LayerNorm/GELU hand-over) on unlabelled
   passages of every length up to L — the paper's general distillation.
2. `task_student`: the general encoder with the task teacher's head; or, without a general model, the task teacher
   converted and fitted (the old single-stage path, kept for ablations).
3. `distill_task`: task KD with teacher-labelled augmentation (4-joined training examples for longer inputs,
   unlabelled passages learnt from the teacher's outputs), then φ and the activation bounds calibrated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .choices import BACKWARD_EXACT, HEAD_BASE, MASK_MASKED, POOLER_IDENTITY


@dataclass(frozen=True)
class Recipe:
    """Every default of the convert → fit → KD pipeline, in one place: `mabert.convert`, the command line
    (convert, distill, kd-pretrain, finetune), the demo and `benchmarks/glue_kd.py` take theirs from here."""
    mask_mode: str = MASK_MASKED       # any length ≤ L, padding-independent
    pooler_act: str = POOLER_IDENTITY  # no tanh; unlike ReLU initialised from tanh weights it cannot go dead
    activation_bounds: bool = True     # clamps calibrated after training: finite on any input (mabert.bounds)
    attention_kind: str = "approximator"  # or "relu" / "poly" (mabert.softmax_approx: ReLUAttention, PolySoftmax)
    powernorm_backward: str = BACKWARD_EXACT  # or "approximate", the reference's (mabert.powernorm)
    handover: float = 0.4              # share of the first KD run moving from LayerNorm/GELU to PowerNorm/ReLU
    batch_size: int = 32
    teacher_lr: float = 5e-5
    student_lr: float = 1e-4
    fit_steps: int = 400               # approximator fitting on the teacher's score rows
    # Off by default, for the demo's budget (docs/measurements.md): a 1,000-step general model (72 min here) gave
    # Rotten Tomatoes students better on joined inputs (4 joined −2.78 → ±0.00 / −0.85, two task-KD seeds) but
    # 0.59 / 0.80 below the teacher in domain, where the default is above it (SST-2, seed 0: −0.57 → +0.11, 4 joined
    # −5.05 → −0.92). Augmentation: on Rotten Tomatoes at 1 epoch it doubled the cost of task KD and lost 5.7 points
    # in domain while gaining 3 on joined inputs; on SST-2 with the general model +0.57 / +0.92 at 3.8× the KD time.
    general_steps: int = 0             # general KD steps (0: no general model; convert the task teacher)
    general_lr: float = 2e-4
    joined_fraction: float = 0.0       # labelled augmentation: this share of the training set joined 4 by 4
    unlabelled_passages: int = 0       # teacher-labelled augmentation: passages of every length
    perturbed_copies: int = 0          # teacher-labelled augmentation: word-perturbed copies of the training set
    perturb_rate: float = 0.15
    # after task KD, approximators learn softmax on rows longer than the task's inputs (mabert.length_calibration):
    # measured on the demo student (three seeds): 4 joined held-out sentences −9.5 → −2.4…−3.2 points, held-out
    # −0.11 → −0.11…+0.05
    length_steps: int = 6000           # 0: no length calibration
    length_short_weight: float = 16.0
    length_passages: int = 1024
    seed: int = 0

    def settings(self, lr: float, epochs: float = 1.0, max_steps: int | None = None):
        """The TrainSettings of one run of the recipe."""
        from .train import TrainSettings

        return TrainSettings(epochs=epochs, max_steps=max_steps, batch_size=self.batch_size, lr=lr, seed=self.seed,
                             handover=self.handover)


def finetune_teacher(teacher_source, tokenizer, train, num_labels: int, out_dir, recipe: Recipe, epochs: float,
                     label_names=()):
    """The baseline teacher: the pretrained BERT fine-tuned on the task (its config names the classes when
    `label_names` are given, so predictions say "fresh", not "LABEL_1"). Returns the training summary."""
    from transformers import AutoModelForSequenceClassification

    from .train import finetune

    torch.manual_seed(recipe.seed)  # the new classifier head is drawn here, before training seeds
    names = {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}} \
        if len(label_names) == num_labels else {}
    model = AutoModelForSequenceClassification.from_pretrained(teacher_source, num_labels=num_labels, **names)
    return finetune(model, tokenizer, train, Path(out_dir), recipe.settings(recipe.teacher_lr, epochs))


def general_model(teacher_source, tokenizer, passages, out_dir, recipe: Recipe, check_passages=None) -> dict:
    """Step 1 (see the module docstring); the model is saved in out_dir/model. Returns a record with the fit
    errors and, given `check_passages`, the per-layer hidden/attention error to the BERT on them."""
    from transformers import AutoModel

    from .conversion import convert
    from .evaluation import layer_errors
    from .fitting import fit_to_teacher
    from .train import kd_pretrain

    teacher = AutoModel.from_pretrained(teacher_source).eval()
    student = convert(teacher, head=HEAD_BASE, softmax_mask_mode=recipe.mask_mode, pooler_act=recipe.pooler_act,
                      activation_bounds=recipe.activation_bounds, attention_kind=recipe.attention_kind,
                      powernorm_backward=recipe.powernorm_backward, seed=recipe.seed)
    fit = fit_to_teacher(student, teacher, tokenizer, passages, steps=recipe.fit_steps, seed=recipe.seed)
    summary = kd_pretrain(teacher, student, tokenizer, passages, Path(out_dir),
                          recipe.settings(recipe.general_lr, max_steps=recipe.general_steps))
    record = {"steps": summary["steps"], "wall_time_s": summary["wall_time_s"], "passages": len(passages),
              "handover_modules": summary["handover_modules"],
              "approximator_mse_per_layer": fit["approximator_mse_per_layer"]}
    if check_passages is not None:
        record["held_out_layer_errors"] = layer_errors(summary["model"], teacher, tokenizer, check_passages)
    return record


def task_student(teacher, tokenizer, train, recipe: Recipe, general_dir=None):
    """Step 2: (student, record)."""
    from .conversion import convert, student_from_general
    from .fitting import fit_to_teacher

    if general_dir is not None:
        return student_from_general(general_dir, teacher, seed=recipe.seed), {"from": "general"}
    student = convert(teacher, softmax_mask_mode=recipe.mask_mode, pooler_act=recipe.pooler_act,
                      activation_bounds=recipe.activation_bounds, attention_kind=recipe.attention_kind,
                      powernorm_backward=recipe.powernorm_backward, seed=recipe.seed)
    record = fit_to_teacher(student, teacher, tokenizer, train, steps=recipe.fit_steps, seed=recipe.seed)
    return student, {"from": "teacher", **record}


def distill_task(teacher, student, tokenizer, train, out_dir, recipe: Recipe, epochs: float) -> dict:
    """Step 3: the KD summary (the student saved in out_dir/model), with the augmentation sizes."""
    from .corpora import task_augmentation
    from .train import distill

    calibrate = length_calibration_step(tokenizer, train, recipe)
    train, extra = task_augmentation(train, recipe.joined_fraction, recipe.unlabelled_passages, recipe.seed,
                                     perturbed=recipe.perturbed_copies, perturb_rate=recipe.perturb_rate)
    summary = distill(teacher, student, tokenizer, train, Path(out_dir), recipe.settings(recipe.student_lr, epochs),
                      extra_inputs=extra, after_training=calibrate)
    summary["labelled_examples"], summary["unlabelled_inputs"] = len(train), len(extra or [])
    return summary


def length_calibration_step(tokenizer, train, recipe: Recipe):
    """The after_training hook of task KD that runs `mabert.length_calibration` with texts made from the task's
    own `train` set, rows longer than its inputs reach (99th percentile) refitted to softmax; None when the recipe
    switches it off. The length is the task's, not KD's: with joined examples KD reaches L and nothing would be
    refitted, yet approximators tuned by KD on long rows did worse there than ones fitted to softmax (demo, 25 %
    joined: 4 joined held-out −7.05 points without calibration, −2.35 with it)."""
    if not recipe.length_steps:
        return None

    def calibrate(student):
        from .fitting import has_learnt_approximators
        from .length_calibration import NOT_APPLICABLE, calibrate_lengths, length_texts, seen_length

        if not has_learnt_approximators(student):  # before tokenizing texts nothing would use
            return {"length_calibration": NOT_APPLICABLE}
        seen = seen_length(tokenizer, train, student.config.softmax_input_size)
        texts = length_texts(train, recipe.length_passages, recipe.seed)
        return calibrate_lengths(student, tokenizer, texts, seen, steps=recipe.length_steps,
                                 short_weight=recipe.length_short_weight, seed=recipe.seed)

    return calibrate


DEFAULTS = Recipe()
