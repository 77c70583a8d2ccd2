"""Import the MA-BERT authors' released state dicts (MA-BERT, shared softmax, MA-DistilBERT)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .configuration import MABertConfig, MADistilBertConfig
from .errors import MABertError

# Original config field → mabert config field, for the fields whose names differ.
_ORIGINAL_FIELD_NAMES = {
    "predicition_head_hidden_act": "hidden_act",
    "ffn_activation": "ffn_hidden_act",
    "cls_activation": "activation",
}
_ORIGINAL_FIELDS_KEPT = {
    "num_attention_heads", "n_heads", "layer_norm_eps", "warmup_updates", "accumulation_step", "ffn_hidden_act",
    "hidden_act", "activation", "pad_token_id", "id2label", "label2id", "norm_type", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "dropout", "attention_dropout", "sinusoidal_pos_embds",
}
_LAYER_SOFTMAX = re.compile(r"^(bert\.encoder\.layer|distilbert\.transformer\.layer)\.\d+\.attention\.(self\.)?softmax\.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise MABertError(f"checkpoint {path} does not exist; pass the path of the released .pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or non-torch files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MABertError(
            f"{path} is not a readable PyTorch state dict ({reason[:120]}); is the file truncated or of another format?"
        ) from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MABertError(f"{path} holds no state dict of tensors; save one with torch.save(model.state_dict(), f)")
    return dict(obj)


def _original_config(path: str | Path | None) -> dict:
    if path is None:
        return {}
    raw = json.loads(Path(path).read_text())
    out = {}
    for key, value in raw.items():
        key = _ORIGINAL_FIELD_NAMES.get(key, key)
        if key in _ORIGINAL_FIELDS_KEPT:
            out[key] = value
    return out


def _detect(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(family, head) from key names."""
    if any(k.startswith("bert.") for k in state):
        family = "bert"
    elif any(k.startswith("distilbert.") for k in state):
        family = "distilbert"
    else:
        sample = next(iter(state))
        raise MABertError(
            f"not an MA-BERT or MA-DistilBERT checkpoint: keys start with neither 'bert.' nor 'distilbert.' "
            f"(first key {sample!r})"
        )
    if not any(".softmax." in k or "running_phi" in k for k in state):
        raise MABertError(
            "this state dict has no softmax approximator and no PowerNorm, so it is a plain "
            f"{family.upper()} checkpoint; build an MA student from it with `mabert convert` instead"
        )
    if "classifier.weight" in state:
        head = "seqcls"
    elif "cls.predictions.decoder.weight" in state or "vocab_projector.weight" in state:
        head = "mlm"
    else:
        head = "base"
    return family, head


def _shape(state, key) -> tuple[int, ...]:
    if key not in state:
        raise MABertError(f"checkpoint is missing {key!r}; the file is incomplete or from another architecture")
    return tuple(state[key].shape)


def _merge_shared_softmax(state: dict[str, torch.Tensor], prefix: str) -> bool:
    """The shared-softmax release stores its one approximator under the model's `softmax` and once per
    layer; keep the model-level copy after checking every alias is identical."""
    shared = {k[len(prefix + "softmax."):]: v for k, v in state.items() if k.startswith(prefix + "softmax.")}
    if not shared:
        return False
    for key in [k for k in state if _LAYER_SOFTMAX.match(k)]:
        suffix = key.split(".softmax.", 1)[1]
        if suffix not in shared or not torch.equal(state[key], shared[suffix]):
            raise MABertError(f"shared-softmax checkpoint: {key} differs from {prefix}softmax.{suffix}")
        del state[key]
    return True


def _bert_config(state, head, overrides) -> MABertConfig:
    vocab, hidden = _shape(state, "bert.embeddings.word_embeddings.weight")
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k)))
    approx_key = "bert.softmax.linear_relu_stack.0.weight"
    if approx_key not in state:
        approx_key = "bert.encoder.layer.0.attention.self.softmax.linear_relu_stack.0.weight"
    settings = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        max_position_embeddings=_shape(state, "bert.embeddings.position_embeddings.weight")[0],
        type_vocab_size=_shape(state, "bert.embeddings.token_type_embeddings.weight")[0],
        intermediate_size=_shape(state, "bert.encoder.layer.0.intermediate.dense.weight")[0],
        norm_type="power" if "bert.embeddings.LayerNorm.running_phi" in state else "layer",
        use_softmax_approx=approx_key in state,
        share_softmax_nn="bert.softmax.linear_relu_stack.0.weight" in state,
        ffn_hidden_act="relu",
    )
    if approx_key in state:
        settings["softmax_hidden_layer_size"], settings["softmax_input_size"] = state[approx_key].shape
    if head == "seqcls":
        settings["num_labels"] = _shape(state, "classifier.weight")[0]
    if head == "mlm":
        settings["tie_word_embeddings"] = torch.equal(
            state["cls.predictions.decoder.weight"], state["bert.embeddings.word_embeddings.weight"]
        )
    settings.update(overrides)
    return MABertConfig(**settings)


def _distilbert_config(state, head, overrides) -> MADistilBertConfig:
    vocab, dim = _shape(state, "distilbert.embeddings.word_embeddings.weight")
    layers = 1 + max(
        int(m.group(1)) for k in state if (m := re.match(r"distilbert\.transformer\.layer\.(\d+)\.", k))
    )
    approx_key = "distilbert.softmax.linear_relu_stack.0.weight"
    if approx_key not in state:
        approx_key = "distilbert.transformer.layer.0.attention.softmax.linear_relu_stack.0.weight"
    settings = dict(
        vocab_size=vocab,
        dim=dim,
        n_layers=layers,
        max_position_embeddings=_shape(state, "distilbert.embeddings.position_embeddings.weight")[0],
        hidden_dim=_shape(state, "distilbert.transformer.layer.0.ffn.lin1.weight")[0],
        norm_type="power" if "distilbert.embeddings.LayerNorm.running_phi" in state else "layer",
        use_softmax_approx=approx_key in state,
        share_softmax_nn="distilbert.softmax.linear_relu_stack.0.weight" in state,
        ffn_hidden_act="relu",
    )
    if approx_key in state:
        settings["softmax_hidden_layer_size"], settings["softmax_input_size"] = state[approx_key].shape
    if head == "seqcls":
        settings["num_labels"] = _shape(state, "classifier.weight")[0]
    if head == "mlm":
        settings["tie_word_embeddings"] = torch.equal(
            state["vocab_projector.weight"], state["distilbert.embeddings.word_embeddings.weight"]
        )
    if "n_heads" not in overrides and "num_attention_heads" in overrides:
        overrides = {**overrides, "n_heads": overrides.pop("num_attention_heads")}
    settings.update(overrides)
    return MADistilBertConfig(**settings)


def _model_class(family: str, head: str):
    from . import modeling_ma_bert as b
    from . import modeling_ma_distilbert as d

    return {
        ("bert", "mlm"): b.MABertForMaskedLM,
        ("bert", "seqcls"): b.MABertForSequenceClassification,
        ("bert", "base"): b.MABertModel,
        ("distilbert", "mlm"): d.MADistilBertForMaskedLM,
        ("distilbert", "seqcls"): d.MADistilBertForSequenceClassification,
        ("distilbert", "base"): d.MADistilBertModel,
    }[family, head]


def from_original_checkpoint(path, original_config=None, save_to=None, **config_overrides):
    """Load a released MA-BERT / MA-DistilBERT `.pt` state dict into the matching mabert model, strictly.

    Sizes come from tensor shapes; what shapes cannot tell (number of heads, activations, eps, PowerNorm
    schedule) comes from `config_overrides`, then from `original_config` (the original config.json),
    then the original defaults (12 heads, ReLU FFN, GELU head, eps 1e-12).
    Returns the model in eval mode; with `save_to` it is also written as a mabert model directory.
    """
    state = read_state_dict(path)
    family, head = _detect(state)
    prefix = "bert." if family == "bert" else "distilbert."
    for buffer in ("embeddings.position_ids", "embeddings.token_type_ids"):
        state.pop(prefix + buffer, None)
    _merge_shared_softmax(state, prefix)
    overrides = {**_original_config(original_config), **config_overrides}
    config = (_bert_config if family == "bert" else _distilbert_config)(state, head, overrides)
    model = _model_class(family, head)(config)
    if head == "base":  # bare encoders are saved without the family prefix
        state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise MABertError(f"checkpoint tensors do not fit the inferred architecture: {detail}") from None
    if missing or unexpected:
        raise MABertError(
            "checkpoint does not match the inferred architecture: "
            + (f"missing {len(missing)} keys (e.g. {missing[0]}) " if missing else "")
            + (f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})" if unexpected else "")
            + "; pass the right overrides or check the file"
        )
    model.eval()
    if save_to is not None:
        from .io import save_model_dir

        save_model_dir(model, save_to)
    return model
