"""Stage 1 — convert: build an MA student from a Hugging Face BERT or DistilBERT teacher."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration import MABertConfig, MADistilBertConfig
from .errors import MABertError
from .fitting import init_approximator
from .models import HEADS, ma_model_class
from .powernorm import PowerNorm
from .softmax_approx import SoftmaxApproximator

_AUTO = {"seqcls": AutoModelForSequenceClassification, "mlm": AutoModelForMaskedLM, "base": AutoModel}


def _infer_head(config) -> str:
    names = " ".join(config.architectures or [])
    if "SequenceClassification" in names:
        return "seqcls"
    if "MaskedLM" in names or "PreTraining" in names:
        return "mlm"
    return "base"


def load_teacher(model_or_path, head: str | None = None, **load_kwargs):
    """A teacher nn.Module from a model object, a local directory or a hub id."""
    from .io import from_pretrained, model_source

    if isinstance(model_or_path, nn.Module):
        return model_or_path
    source = model_source(model_or_path)
    try:
        config = AutoConfig.from_pretrained(source, **load_kwargs)
    except (OSError, ValueError) as exc:
        raise MABertError(
            f"cannot load teacher {str(model_or_path)!r}: {str(exc).splitlines()[0]} "
            "(give a local model directory, or a hub id with network access)"
        ) from None
    if config.model_type not in ("bert", "distilbert"):
        raise MABertError(f"teacher is a {config.model_type!r} model; mabert converts BERT and DistilBERT only")
    head = head or _infer_head(config)
    return from_pretrained(_AUTO[head], source, **load_kwargs)


def _student_config(teacher_config, overrides: dict):
    base = teacher_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map"):
        base.pop(key, None)
    if teacher_config.model_type == "bert":
        base.setdefault("hidden_act", "gelu")  # MLM head keeps the teacher's activation
        return MABertConfig(**{**base, **overrides})
    base["activation"] = teacher_config.activation
    return MADistilBertConfig(**{**base, **overrides})


def _teacher_head(teacher: nn.Module) -> str:
    name = type(teacher).__name__
    if "SequenceClassification" in name:
        return "seqcls"
    if "MaskedLM" in name:
        return "mlm"
    if name in ("BertModel", "DistilBertModel"):
        return "base"
    raise MABertError(f"cannot convert a {name}; use a BERT/DistilBERT base, masked-LM or sequence-classification model")


def convert(model_or_path, head: str | None = None, num_labels: int | None = None, approximator_init_steps: int = 300,
            seed: int = 0, **config_overrides):
    """The MA student of a BERT/DistilBERT teacher.

    Every teacher tensor is copied (LayerNorm γ/β become PowerNorm γ/β); the approximators are
    initialised to imitate softmax on synthetic score rows; PowerNorm statistics start fresh and
    warm up during knowledge transfer. With `head="seqcls"` and a teacher without a classifier,
    a fresh classifier with `num_labels` outputs is added.
    """
    teacher = load_teacher(model_or_path, head)
    teacher_head = _teacher_head(teacher)
    head = head or teacher_head
    if head not in HEADS:
        raise MABertError(f"head must be one of {HEADS}, got {head!r}")
    overrides = dict(config_overrides)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    config = _student_config(teacher.config, overrides)
    torch.manual_seed(seed)
    student = ma_model_class(config.model_type, head)(config)

    source = teacher.state_dict()
    if head != teacher_head:
        # e.g. a bare BertModel teacher for a classification student: its keys lack the family prefix
        prefix = student.base_model_prefix + "."
        if teacher_head == "base":
            source = {prefix + k: v for k, v in source.items()}
    target = student.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    student.load_state_dict(copied, strict=False)
    for module in student.modules():
        if isinstance(module, SoftmaxApproximator):
            init_approximator(module, steps=approximator_init_steps, seed=seed)
    student.eval()
    student.conversion_report = {
        "copied": sorted(copied),
        "new": sorted(k for k in target if k not in copied),
        "dropped": sorted(k for k in source if k not in copied),
    }
    return student


def convert_to_dir(teacher, out_dir: str | Path, **kwargs) -> Path:
    """`mabert convert`: convert and write a model directory (safetensors, and the teacher's tokenizer when the
    teacher is a path or hub id: one without a tokenizer is refused, as the student could not be used)."""
    from .io import load_tokenizer, model_source, save_model_dir

    tokenizer = None
    if isinstance(teacher, (str, Path)):
        model_source(teacher)  # a wrong path is reported as such before its missing tokenizer
        tokenizer = load_tokenizer(teacher)
    return save_model_dir(convert(teacher, **kwargs), out_dir, tokenizer)


def powernorms(model: nn.Module) -> list[PowerNorm]:
    return [m for m in model.modules() if isinstance(m, PowerNorm)]
