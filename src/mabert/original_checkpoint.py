"""Import the MA-BERT authors' released state dicts (MA-BERT, shared softmax, MA-DistilBERT)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .choices import BACKWARD_APPROXIMATE, HEAD_BASE, HEAD_MLM, HEAD_SEQCLS, NORM_LAYER, NORM_POWER
from .errors import MABertError
from .io import load_tokenizer, save_model_dir
from .registry import FAMILIES, Family, ma_model_class

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
# a per-layer approximator's keys: <encoder>.<layers>.N.<attention>.softmax.*
_LAYER_SOFTMAX = re.compile("^(" + "|".join(re.escape(f.state_key(f.layers)) + r"\.\d+\." + re.escape(f.attention)
                                             for f in FAMILIES) + r")\.softmax\.")


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
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MABertError(f"cannot read --config {path}: {exc.strerror}; give the original config.json") from None
    except ValueError as exc:  # JSON and UTF-8 errors
        raise MABertError(f"--config {path} is not valid JSON ({str(exc).splitlines()[0][:100]}); give the "
                          "original config.json") from None
    if not isinstance(raw, dict):
        raise MABertError(f"--config {path} holds no JSON object; give the original config.json")
    out = {}
    for key, value in raw.items():
        key = _ORIGINAL_FIELD_NAMES.get(key, key)
        if key in _ORIGINAL_FIELDS_KEPT:
            out[key] = value
    return out


def _detect(state: dict[str, torch.Tensor]) -> tuple[Family, str]:
    """(family, head) from key names."""
    family = next((f for f in FAMILIES if any(k.startswith(f.base + ".") for k in state)), None)
    if family is None:
        sample = next(iter(state))
        prefixes = " nor ".join(repr(f.base + ".") for f in FAMILIES)
        raise MABertError(
            f"not an MA-BERT or MA-DistilBERT checkpoint: keys start with neither {prefixes} (first key {sample!r})"
        )
    if not any(".softmax." in k or "running_phi" in k for k in state):
        raise MABertError(
            "this state dict has no softmax approximator and no PowerNorm, so it is a plain "
            f"{family.name.upper()} checkpoint; build an MA student from it with `mabert convert` instead"
        )
    if family.classifier + ".weight" in state:
        head = HEAD_SEQCLS
    elif any(f.mlm_decoder + ".weight" in state for f in FAMILIES):
        head = HEAD_MLM
    else:
        head = HEAD_BASE
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


def _infer_config(family: Family, state, head: str, overrides: dict):
    """Sizes from tensor shapes (at the keys mabert.registry names); the rest from overrides or the original
    defaults."""
    names = family.config
    embeddings = family.state_key(family.embeddings)
    word = f"{embeddings}.{family.word}.weight"
    vocab, hidden = _shape(state, word)
    shared_key = family.state_key("softmax.linear_relu_stack.0.weight")
    approx_key = (shared_key if shared_key in state
                  else family.layer_key(0, family.attention, "softmax.linear_relu_stack.0.weight"))
    layer = re.compile(re.escape(family.state_key(family.layers)) + r"\.(\d+)\.")
    settings = {
        "vocab_size": vocab,
        names.hidden: hidden,
        names.layers: 1 + max(int(m.group(1)) for k in state if (m := layer.match(k))),
        names.ffn: _shape(state, family.layer_key(0, family.ffn_in, "weight"))[0],
        "max_position_embeddings": _shape(state, f"{embeddings}.{family.position}.weight")[0],
        "norm_type": NORM_POWER if f"{embeddings}.{family.embedding_norm}.running_phi" in state else NORM_LAYER,
        "use_softmax_approx": approx_key in state,
        "share_softmax_nn": shared_key in state,
        "ffn_hidden_act": "relu",
        # not in the release: state dicts of mabert's own bounded models (mabert.bounds) carry their clamps
        "activation_bounds": any(k.endswith("bound.low") for k in state),
    }
    if family.token_type is not None:
        settings["type_vocab_size"] = _shape(state, f"{embeddings}.{family.token_type}.weight")[0]
    if approx_key in state:
        settings["softmax_hidden_layer_size"], settings["softmax_input_size"] = state[approx_key].shape
    if head == HEAD_SEQCLS:
        settings["num_labels"] = _shape(state, family.classifier + ".weight")[0]
    if head == HEAD_MLM:
        settings["tie_word_embeddings"] = torch.equal(state[family.mlm_decoder + ".weight"], state[word])
    settings["powernorm_backward"] = BACKWARD_APPROXIMATE  # further training as the release was trained
    overrides = dict(overrides)
    for alias in {f.config.heads for f in FAMILIES}:  # accept either spelling of the head count
        if alias in overrides and alias != names.heads:
            overrides.setdefault(names.heads, overrides.pop(alias))
    settings.update(overrides)
    return family.ma_config_class()(**settings)


def from_original_checkpoint(path, original_config=None, save_to=None, tokenizer=None, **config_overrides):
    """Load a released MA-BERT / MA-DistilBERT `.pt` state dict into the matching mabert model, strictly.

    Sizes come from tensor shapes; what shapes cannot tell (number of heads, activations, eps, PowerNorm
    schedule) comes from `config_overrides`, then from `original_config` (the original config.json),
    then the original defaults (12 heads, ReLU FFN, GELU head, eps 1e-12).
    Returns the model in eval mode; with `save_to` it is also written as a mabert model directory, with
    `tokenizer` (a tokenizer, or its folder or hub id) when given: the .pt files hold no vocabulary.
    """
    original = _original_config(original_config)
    state = read_state_dict(path)
    family, head = _detect(state)
    prefix = family.base + "."
    for buffer in ("embeddings.position_ids", "embeddings.token_type_ids"):
        state.pop(prefix + buffer, None)
    _merge_shared_softmax(state, prefix)
    overrides = {**original, **config_overrides}
    config = _infer_config(family, state, head, overrides)
    model = ma_model_class(config.model_type, head)(config)
    if head == HEAD_BASE:  # bare encoders are saved without the family prefix
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
        save_model_dir(model, save_to, _matching_tokenizer(tokenizer, config) if tokenizer is not None else None,
                       card={"stage": "import-original", "data": f"released checkpoint {Path(path).name}"})
    return model


def _matching_tokenizer(tokenizer, config):
    """`tokenizer` (loaded when a path or hub id), refused when it has ids the embedding table lacks."""
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if len(tokenizer) > config.vocab_size:
        raise MABertError(f"the tokenizer has {len(tokenizer):,} tokens but the checkpoint's vocabulary "
                          f"{config.vocab_size:,}; give the tokenizer the model was trained with")
    return tokenizer
