"""Stage 1 — convert: build an MA student from a Hugging Face BERT or DistilBERT teacher."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .choices import HEAD_BASE, HEAD_MLM, HEAD_SEQCLS, HEADS
from .errors import MABertError
from .fitting import init_approximator
from .io import from_pretrained, load_classifier, load_tokenizer, model_source, save_model_dir
from .powernorm import PowerNorm
from .recipe import DEFAULTS
from .registry import FAMILIES, family_of, find_family, head_of, is_ma, ma_model_class
from .softmax_approx import SoftmaxApproximator

_AUTO = {HEAD_SEQCLS: AutoModelForSequenceClassification, HEAD_MLM: AutoModelForMaskedLM, HEAD_BASE: AutoModel}


def _infer_head(config) -> str:
    """The head a teacher config names; a pre-training checkpoint converts to a masked-LM student."""
    return head_of(config, pretraining_is_mlm=True)


def load_teacher(model_or_path, head: str | None = None, **load_kwargs):
    """A teacher nn.Module from a model object, a local directory or a hub id."""

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
    if find_family(config) is None or is_ma(config):
        plain = " and ".join(family.name for family in FAMILIES)
        raise MABertError(f"teacher is a {config.model_type!r} model; mabert converts {plain} models only")
    head = head or _infer_head(config)
    return from_pretrained(_AUTO[head], source, **load_kwargs)


def _student_config(teacher_config, overrides: dict):
    base = teacher_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map"):
        base.pop(key, None)
    family = family_of(teacher_config)
    # the MLM head keeps the teacher's activation (the encoder FFN's is `ffn_hidden_act`)
    base[family.config.activation] = getattr(teacher_config, family.config.activation, "gelu")
    return family.ma_config_class()(**{**base, **overrides})


def _teacher_head(teacher: nn.Module) -> str:
    family_of(teacher)  # a model of another family is refused here, in one line
    head = head_of(teacher)
    if head == HEAD_BASE and teacher.base_model is not teacher:  # a head mabert has no MA version of
        raise MABertError(f"cannot convert a {type(teacher).__name__}; use a BERT/DistilBERT base, masked-LM or "
                          "sequence-classification model")
    return head


def convert(model_or_path, head: str | None = None, num_labels: int | None = None, approximator_init_steps: int = 300,
            seed: int = 0, **config_overrides):
    """The MA student of a BERT/DistilBERT teacher.

    Every teacher tensor is copied (LayerNorm γ/β become PowerNorm γ/β); the approximators are
    initialised to imitate softmax on synthetic score rows; PowerNorm statistics start fresh and
    warm up during knowledge transfer; activation bounds (on unless `activation_bounds=False`) are
    calibrated when training ends. With `head="seqcls"` and a teacher without a classifier,
    a fresh classifier with `num_labels` outputs is added.
    """
    teacher = load_teacher(model_or_path, head)
    teacher_head = _teacher_head(teacher)
    head = head or teacher_head
    if head not in HEADS:
        raise MABertError(f"head must be one of {HEADS}, got {head!r}")
    # new students are bounded (`mabert.bounds`); the bounds are calibrated at the end of training
    overrides = {"activation_bounds": DEFAULTS.activation_bounds, "softmax_mask_mode": DEFAULTS.mask_mode,
                 "attention_kind": DEFAULTS.attention_kind, "powernorm_backward": DEFAULTS.powernorm_backward,
                 **config_overrides}
    if family_of(teacher).pooler_act_fixed is None and head != HEAD_MLM:  # a pooler whose activation is chosen
        overrides.setdefault("pooler_act", DEFAULTS.pooler_act)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    config = _student_config(teacher.config, overrides)
    torch.manual_seed(seed)
    student = ma_model_class(config.model_type, head)(config)

    source = teacher.state_dict()
    if head != teacher_head:
        # e.g. a bare BertModel teacher for a classification student: its keys lack the family prefix
        prefix = student.base_model_prefix + "."
        if teacher_head == HEAD_BASE:
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


def student_from_general(general, teacher: nn.Module, seed: int = 0, **config_overrides):
    """A task student from a general MA model (KD-pretrained encoder, a directory or model) and a task teacher:
    the general encoder, with the teacher's task head (pooler and classifier, or DistilBERT's pre-classifier and
    classifier) copied in, so task KD starts from the teacher's decision function instead of a random one.
    The student has the teacher's num_labels / problem type; `config_overrides` (e.g. pooler_act) are applied."""
    from transformers import AutoConfig

    teacher_head = _teacher_head(teacher)
    if teacher_head != HEAD_SEQCLS:
        raise MABertError("student_from_general needs a sequence-classification teacher (the task head is copied)")
    if isinstance(general, nn.Module):
        encoder_state, config = general.state_dict(), general.config.to_dict()
    else:
        config = AutoConfig.from_pretrained(general).to_dict()
        encoder_state = AutoModel.from_pretrained(general).state_dict()
    for key in ("architectures", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    config.update(num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
                  label2id=teacher.config.label2id, problem_type=teacher.config.problem_type, **config_overrides)
    config_class = family_of(config.pop("model_type")).ma_config_class()
    torch.manual_seed(seed)
    student = ma_model_class(config_class.model_type, HEAD_SEQCLS)(config_class(**config))
    prefix = student.base_model_prefix + "."
    encoder_state = {k if k.startswith(prefix) else prefix + k: v for k, v in encoder_state.items()}
    head = {k: v for k, v in teacher.state_dict().items() if not k.startswith(prefix)}
    # the pooler lives inside the encoder in BERT: take the teacher's
    head.update({k: v for k, v in teacher.state_dict().items() if k.startswith(prefix + "pooler.")})
    missing, unexpected = student.load_state_dict({**encoder_state, **head}, strict=False)
    unexpected = [k for k in unexpected if not k.endswith(("position_ids", "token_type_ids"))]
    missing = [k for k in missing if "bound" not in k]  # the logit bound is calibrated after task KD
    if missing or unexpected:
        raise MABertError(f"the general model and the teacher do not fit together (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); use a teacher of the general model's architecture")
    return student.eval()


def load_task_student(path, teacher: nn.Module, seed: int = 0):
    """The student for task KD from a directory: an MA sequence classifier as it is, or a general MA model (a
    bare or masked-LM encoder, e.g. from `mabert kd-pretrain`) made into one with the teacher's head."""

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise MABertError(f"cannot read the student config in {str(path)!r}: {str(exc).splitlines()[0][:160]}") from None
    if head_of(config) == HEAD_SEQCLS:
        return load_classifier(path)
    return student_from_general(path, teacher, seed=seed)


def convert_to_dir(teacher, out_dir: str | Path, **kwargs) -> Path:
    """`mabert convert`: convert and write a model directory (safetensors, and the teacher's tokenizer when the
    teacher is a path or hub id: one without a tokenizer is refused, as the student could not be used)."""

    tokenizer = None
    if isinstance(teacher, (str, Path)):
        model_source(teacher)  # a wrong path is reported as such before its missing tokenizer
        tokenizer = load_tokenizer(teacher)
    base = str(teacher) if isinstance(teacher, (str, Path)) else None
    return save_model_dir(convert(teacher, **kwargs), out_dir, tokenizer, card={"stage": "convert", "base_model": base})


def powernorms(model: nn.Module) -> list[PowerNorm]:
    return [m for m in model.modules() if isinstance(m, PowerNorm)]
