"""Stage 2 — train: teacher fine-tuning, approximator fitting, and KD fine-tuning, on one loop that runs
alone or under `accelerate launch` (DDP), with atomic checkpoints, --resume and a NaN guard."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from .attention import request_attention_maps
from .batches import EpochShuffle, make_loader, model_inputs, pads_to_full_length
from .bounds import calibrate_bounds
from .choices import HEAD_MLM
from .data import tokenize
from .errors import MABertError, one_line
from .handover import HandOver
from .io import atomic_dir, atomic_file, save_model_dir
from .kd_losses import ATTENTION_WEIGHT, IGNORE_LABEL, KDWeights, kd_loss, representation_loss
from .powernorm import PowerNorm, calibrate_running_phi
from .registry import head_of


@dataclass
class TrainSettings:
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.1
    seed: int = 0
    save_every: int = 0            # steps between checkpoints (0: none)
    stop_after: int | None = None  # end this job at this step (schedule still spans the whole run; --resume later)
    resume: bool = False
    log_every: int = 10
    kd: KDWeights = field(default_factory=KDWeights)
    # distill only: fraction of the run over which a fresh student is handed over from LayerNorm/GELU to
    # PowerNorm/ReLU (see mabert.handover); 0 switches at once, as the reference does
    handover: float = 0.5
    # training batches used at the end to re-estimate PowerNorm φ (while in warm-up) and to calibrate the activation
    # bounds of a bounded MA model (0: keep the running φ, leave the bounds as they are)
    recalibrate_phi_batches: int = 16


def _labels_key(batch):
    if "labels" not in batch and "label" in batch:
        batch["labels"] = batch.pop("label")
    return batch


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (≥ 2-D: linear weights, embeddings) only; biases and norm scales
    (1-D) are exempt. Decided by shape, not by name: during the hand-over a PowerNorm's γ is called
    `…LayerNorm.new.weight`, which name patterns missed."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]


@dataclass
class TrainResult:
    """What `train_loop` hands to the stage that saves: numbers for the record and the live trained objects."""
    steps: int
    total_steps: int         # of the whole run; steps < total_steps when the job stopped early (stop_after)
    wall_time_s: float
    history: list[dict]      # one {"step", loss terms…} per step, from the first step of the run (resumes included)
    model: torch.nn.Module   # unwrapped from DDP
    accelerator: object


def train_loop(model, loader, step_loss, out_dir: Path, settings: TrainSettings, description: str,
               extra_models=(), before_step=None, find_unused_parameters: bool = False) -> TrainResult:
    """Generic loop. `step_loss(model, batch)` gets the prepared (possibly DDP-wrapped) model and returns a
    dict of loss terms with a "total"; `before_step(step, total_steps)`, if given, runs before each step
    (step counted from 0, also after a resume)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])
    set_seed(settings.seed)
    steps_per_epoch = len(loader)
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=settings.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    # accelerate keeps this sampler object inside its wrapped loader; the epoch is chosen on it directly
    shuffle = loader.sampler if isinstance(loader.sampler, EpochShuffle) else None
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    for extra in extra_models:
        extra.to(accelerator.device)
    checkpoint_dir = out_dir / "checkpoint"
    step, history = 0, []
    # what a checkpoint must share with the run that resumes it
    run = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "batch_size": settings.batch_size,
           "lr": settings.lr, "seed": settings.seed}
    if settings.resume and (checkpoint_dir / "state.json").exists():
        step, history = _resume(accelerator, checkpoint_dir, run)
    start = time.time()
    bar = tqdm(total=total_steps, initial=step, desc=description, disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    last_step = min(total_steps, settings.stop_after or total_steps)
    while step < last_step:
        epoch, skip = divmod(step, steps_per_epoch)
        if shuffle is not None:
            shuffle.choose_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in batches:
            torch.manual_seed(settings.seed * 100003 + step)  # dropout identical after a resume
            if before_step is not None:
                before_step(step, total_steps)
            terms = step_loss(model, _labels_key(batch))
            loss = terms["total"]
            if not torch.isfinite(loss.detach()).all():
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                raise MABertError(f"{description}: loss became {loss.item()} at step {step + 1} ({parts}); nothing was "
                                  "saved. Lower --lr or check the data")
            accelerator.backward(loss)
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            record = {"step": step, **{k: float(v.detach()) for k, v in terms.items()}}
            history.append(record)
            if step % settings.log_every == 0 or step == total_steps:
                bar.set_postfix(loss=f"{record['total']:.4f}")
            bar.update(1)
            if settings.save_every and step % settings.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, checkpoint_dir, step, run, history)
            if step >= last_step:
                break
    bar.close()
    accelerator.wait_for_everyone()
    return TrainResult(step, total_steps, time.time() - start, history, accelerator.unwrap_model(model), accelerator)


def _save_checkpoint(accelerator, checkpoint_dir: Path, step: int, run: dict, history: list) -> None:
    """Optimizer/scheduler/RNG state, the step, the run's settings and the loss history so far, atomically."""
    if accelerator.is_main_process:
        with atomic_dir(checkpoint_dir) as tmp:
            accelerator.save_state(str(tmp))
            (tmp / "history.json").write_text(json.dumps(history))
            (tmp / "state.json").write_text(json.dumps({"step": step, "run": run}))
    accelerator.wait_for_everyone()


def _resume(accelerator, checkpoint_dir: Path, run: dict) -> tuple[int, list]:
    """(step, history so far) from a checkpoint of the same run; another run's checkpoint is refused."""
    state = json.loads((checkpoint_dir / "state.json").read_text())
    saved = state.get("run", run)  # checkpoints from before this record are taken as they are
    changed = [f"{key} {saved[key]} → {value}" for key, value in run.items() if saved.get(key, value) != value]
    if changed:
        raise MABertError(f"{checkpoint_dir} belongs to a run with other settings ({', '.join(changed)}); resume "
                          "with the same options and data, or start afresh with --overwrite")
    try:
        accelerator.load_state(str(checkpoint_dir))
    except Exception as exc:  # torch/accelerate raise several types for a checkpoint of another model
        raise MABertError(f"cannot resume from {checkpoint_dir}: {one_line(exc, 160)}; it was saved for another "
                          "model, so start afresh with --overwrite") from None
    history_file = checkpoint_dir / "history.json"
    return state["step"], json.loads(history_file.read_text()) if history_file.exists() else []


def finetune(model, tokenizer, train_set, out_dir, settings: TrainSettings, max_length: int = 128,
             card: dict | None = None) -> dict:
    """Plain fine-tuning (the teacher; an MA model gets its PowerNorm φ re-estimated at the end, as in KD).
    `card`: facts for the model card (mabert.modelcard), e.g. base_model, task, data."""

    out_dir = Path(out_dir)
    loader = make_loader(tokenize(train_set, tokenizer, max_length), tokenizer, settings.batch_size, settings.seed,
                         pads_to_full_length(model))
    result = train_loop(model, loader, lambda m, b: {"total": m(**model_inputs(model, b), labels=b["labels"]).loss},
                        out_dir, settings, "fine-tune teacher")
    calibration = calibrate_for_inference(model, model, loader, settings.recalibrate_phi_batches)
    summary = _finish(result, tokenizer, out_dir, settings, {"stage": "finetune", **(card or {})})
    summary.update(calibration)
    return summary


def distill(teacher, student, tokenizer, train_set, out_dir, settings: TrainSettings, extra_inputs=None,
            card: dict | None = None, after_training=None) -> dict:
    """KD fine-tuning of an MA student on a labelled task. `extra_inputs` (a dataset with text_a[/text_b] and no
    labels) are teacher-labelled augmentation: the student learns the teacher's logits, hidden states and
    attention maps on them, without the task term. `after_training(student) → dict` runs on the finished,
    calibrated student before it is saved (e.g. `mabert.length_calibration`); its record joins the summary."""
    from datasets import concatenate_datasets

    out_dir = Path(out_dir)
    request_attention_maps(teacher)
    teacher.eval()
    max_length = student.config.softmax_input_size
    encoded = tokenize(train_set, tokenizer, max_length)
    if extra_inputs is not None and len(extra_inputs):
        unlabelled = float("nan") if student.config.num_labels == 1 else IGNORE_LABEL
        extra = tokenize(extra_inputs.remove_columns([c for c in extra_inputs.column_names if c == "label"]),
                         tokenizer, max_length)
        extra = extra.add_column("label", [unlabelled] * len(extra)).cast(encoded.features)
        encoded = concatenate_datasets([encoded, extra])
    loader = make_loader(encoded, tokenizer, settings.batch_size, settings.seed, pads_to_full_length(student))
    num_labels = student.config.num_labels

    def step_loss(model, batch):
        with torch.no_grad():
            t_out = teacher(**model_inputs(teacher, batch), output_hidden_states=True, output_attentions=True)
        s_out = model(**model_inputs(student, batch), output_hidden_states=True, output_attentions=True)
        return kd_loss(s_out, t_out, batch["labels"], batch["attention_mask"], settings.kd, num_labels)

    return _kd_run(teacher, student, student, loader, step_loss, tokenizer, out_dir, settings, "distill MA student",
                   {"stage": "distill", **(card or {})}, after_training)


def kd_pretrain(teacher, student, tokenizer, texts, out_dir, settings: TrainSettings, mlm_probability: float = 0.15,
                card: dict | None = None):
    """KD pre-training on unlabelled text: hidden-state and attention-map distillation (β·(Σ hidden MSE +
    100·Σ attention MSE)), plus the student's MLM loss when both models have an MLM head. PowerNorm statistics
    warm up here; a fresh student is handed over from LayerNorm/GELU as in `distill`. Task heads are untouched."""
    from transformers import DataCollatorForLanguageModeling

    out_dir = Path(out_dir)
    request_attention_maps(teacher)
    teacher.eval()
    with_mlm = _has_mlm_head(student) and _has_mlm_head(teacher)
    encoded = tokenize(texts, tokenizer, student.config.softmax_input_size)
    pad_to = pads_to_full_length(student)
    collator = (DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, pad_to_multiple_of=pad_to)
                if with_mlm else DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to else "longest",
                                                         max_length=pad_to))
    loader = DataLoader(encoded, batch_size=settings.batch_size, sampler=EpochShuffle(len(encoded), settings.seed),
                        collate_fn=collator)
    # without MLM only the encoder is trained: heads would get no gradient (and stall DDP)
    trained = student if with_mlm else student.base_model
    teacher_body = teacher if with_mlm else teacher.base_model

    def step_loss(model, batch):
        with torch.no_grad():
            t_out = teacher_body(**model_inputs(teacher, batch), output_hidden_states=True, output_attentions=True)
        extra = {"labels": batch["labels"]} if with_mlm else {}
        s_out = model(**model_inputs(student, batch), output_hidden_states=True, output_attentions=True, **extra)
        terms = representation_loss(s_out, t_out, batch["attention_mask"])
        terms["total"] = settings.kd.beta * (terms["hidden"] + ATTENTION_WEIGHT * terms["attention"])
        if with_mlm:
            terms["mlm"] = s_out.loss
            terms["total"] = terms["total"] + s_out.loss
        return terms

    return _kd_run(teacher, student, trained, loader, step_loss, tokenizer, out_dir, settings,
                   "KD pre-train MA student", {"stage": "kd-pretrain", **(card or {})})


def _has_mlm_head(model) -> bool:
    return head_of(model) == HEAD_MLM


def _kd_run(teacher, student, trained, loader, step_loss, tokenizer, out_dir, settings, description, card,
            after_training=None) -> dict:
    """Runs a KD loop on `trained` (the student or its encoder) with the LayerNorm/GELU hand-over for a fresh
    student, calibrates it for inference, runs `after_training(student)` if given, and saves the whole student."""
    handover = None
    if settings.handover and HandOver.applies_to(student):
        handover = HandOver(student, settings.handover)
    elif settings.handover:
        tqdm.write(f"{description}: the student's PowerNorms are already trained; no LayerNorm/GELU hand-over")
    try:
        result = train_loop(trained, loader, step_loss, out_dir, settings, description, extra_models=(teacher,),
                            before_step=handover.set_progress if handover else None,
                            find_unused_parameters=trained is not student)
    finally:
        if handover is not None:
            handover.remove()
    calibration = calibrate_for_inference(trained, student, loader, settings.recalibrate_phi_batches)
    if after_training is not None and result.steps < result.total_steps:
        # a job cut short by stop_after (to be resumed): the hook belongs to the finished run only
        calibration["after_training"] = f"skipped: stopped at step {result.steps} of {result.total_steps}"
        card = {**card, "after_training": calibration["after_training"]}
    elif after_training is not None:
        calibration.update(after_training(student))
        card = {**card, **{k: v for k, v in calibration.items() if k == "length_calibration"}}
    result.model = student
    summary = _finish(result, tokenizer, out_dir, settings, card)
    summary["handover_modules"] = handover.count if handover else 0
    summary.update(calibration)
    return summary


def calibrate_for_inference(trained, student, loader, batches: int) -> dict:
    """Inference statistics from `batches` training batches with the final weights (the same batches on every
    rank, so DDP ranks stay identical):
    - PowerNorm φ, while in warm-up: training divides by batch statistics, and the running φ that inference uses
      averages statistics of weights long gone (after a hand-over, φ of the last FFN norms was measured 25× too
      large and the student predicted one class);
    - then the activation bounds of a bounded model (`mabert.bounds`), from the φ-normalised model.
    Returns {"phi_recalibrated_batches": n, "bounds_calibrated": count}."""
    from itertools import islice

    if not batches:
        return {"phi_recalibrated_batches": 0, "bounds_calibrated": 0}
    device = next(trained.parameters()).device
    picked = list(islice(iter(loader), batches))

    def forward(model, batch):
        return model(**{k: v.to(device) for k, v in model_inputs(student, batch).items()})

    norms = [m for m in student.modules() if isinstance(m, PowerNorm)]
    in_warmup = bool(norms) and all(int(n.iters.item()) <= n.warmup_iters for n in norms)
    if in_warmup:
        calibrate_running_phi(trained, picked, forward)
    return {"phi_recalibrated_batches": len(picked) if in_warmup else 0,
            "bounds_calibrated": calibrate_bounds(trained, picked, forward)}


def _finish(result: TrainResult, tokenizer, out_dir: Path, settings: TrainSettings, card: dict) -> dict:
    """Save the model (with its card), history.json and summary.json; returns the summary plus the live model."""
    model, history = result.model.eval(), result.history
    summary = {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 2),
               "final_loss": history[-1]["total"] if history else None,
               "settings": {k: v for k, v in asdict(settings).items()}}
    if result.accelerator.is_main_process:
        save_model_dir(model, out_dir / "model", tokenizer, card={**card, **summary})
        with atomic_file(out_dir / "history.json") as tmp:
            tmp.write_text(json.dumps(history))
        with atomic_file(out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    summary["history"] = history
    summary["model"] = model
    return summary
