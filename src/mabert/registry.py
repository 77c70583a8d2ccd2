"""The model families mabert knows, and where each keeps its parts: the one place that owns these facts.

MA-BERT is built from BERT's modules and MA-DistilBERT from DistilBERT's, under the same names, so one entry
per family serves both the plain Hugging Face model (the teacher) and its MA version (the student). Code that
needs a part of a model — a layer's query projection, the embedding norm, the classifier, a config field
whose name differs between the families, the inputs a model takes — asks here instead of testing class names
or attributes:

    family_of(model_or_config)   the Family (raises MABertError for anything else)
    layer_parts(model)           a LayerParts per encoder layer: the very modules the model runs
    embedding_parts(model)       the embedding tables and norm
    head_parts(model)            pooler (or pre-classifier), its activation, classifier, logit bound
    head_of(model_or_config)     "seqcls" / "mlm" / "base"
    is_ma(model_or_config)       MA model or plain one
    model_input_names(model)     what forward() takes (DistilBERT has no token_type_ids)

Paths are dotted attribute paths (`nn.Module.get_submodule`), relative to the encoder (`model.base_model`) for
embeddings and layers, to a layer for the per-layer parts, and to the model for the head.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .choices import HEAD_BASE, HEAD_MLM, HEAD_SEQCLS, POOLER_RELU, POOLER_TANH
from .errors import MABertError

MA_PREFIX = "ma-"  # an MA family's model_type is the base family's with this prefix


@dataclass(frozen=True)
class ConfigNames:
    """Config fields whose names differ between the families (DistilBERT's own spelling vs BERT's)."""
    hidden: str        # width of the residual stream
    layers: str        # number of encoder layers
    heads: str         # attention heads per layer
    ffn: str           # FFN inner width
    activation: str    # the base model's activation (encoder FFN in the plain model; the MLM head's in MA models)


@dataclass(frozen=True)
class Family:
    name: str                       # "bert" / "distilbert": the plain model_type
    display: str                    # the MA family's name for people
    base: str                       # attribute (and state-dict prefix) of the encoder in a model with a head
    # embeddings, under the encoder
    embeddings: str
    word: str
    position: str
    token_type: str | None          # None: the family takes no token_type_ids
    embedding_norm: str
    # encoder layers, under the encoder
    layers: str
    # per-layer parts, under a layer
    attention: str                  # the module holding q/k/v (and, in MA models, the approximator slot)
    query: str                      # q/k/v under `attention`
    key: str
    value: str
    attention_out: str
    attention_norm: str
    ffn_in: str
    ffn_out: str
    ffn_activation: str             # an attribute path: its parent module owns the activation module
    output_norm: str
    # heads, under the model
    pooler: str                     # the Linear before the classifier (BERT's pooler, DistilBERT's pre-classifier)
    pooler_act_fixed: str | None    # None: the pooler activation is the config's `pooler_act` (tanh when absent)
    classifier: str
    mlm_decoder: str                # the vocabulary projection of the masked-LM head
    config: ConfigNames
    input_names: tuple[str, ...]    # what forward() and an exported graph take
    seqcls_architecture: str        # the plain family's sequence classifier (for export directories)

    @property
    def ma_model_type(self) -> str:
        return MA_PREFIX + self.name

    @property
    def model_types(self) -> tuple[str, str]:
        return self.name, self.ma_model_type

    def ma_config_class(self):
        from . import configuration

        return {"bert": configuration.MABertConfig, "distilbert": configuration.MADistilBertConfig}[self.name]

    def state_key(self, *path: str) -> str:
        """A state-dict key (or key prefix) of a model with a head: the encoder's prefix and `path` joined."""
        return ".".join((self.base, *path))

    def layer_key(self, index: int | str, *path: str) -> str:
        return self.state_key(self.layers, str(index), *path)


BERT = Family(
    name="bert", display="MA-BERT", base="bert",
    embeddings="embeddings", word="word_embeddings", position="position_embeddings",
    token_type="token_type_embeddings", embedding_norm="LayerNorm",
    layers="encoder.layer",
    attention="attention.self", query="query", key="key", value="value",
    attention_out="attention.output.dense", attention_norm="attention.output.LayerNorm",
    ffn_in="intermediate.dense", ffn_out="output.dense", ffn_activation="intermediate.intermediate_act_fn",
    output_norm="output.LayerNorm",
    pooler="bert.pooler.dense", pooler_act_fixed=None, classifier="classifier", mlm_decoder="cls.predictions.decoder",
    config=ConfigNames(hidden="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                       ffn="intermediate_size", activation="hidden_act"),
    input_names=("input_ids", "attention_mask", "token_type_ids"),
    seqcls_architecture="BertForSequenceClassification",
)

DISTILBERT = Family(
    name="distilbert", display="MA-DistilBERT", base="distilbert",
    embeddings="embeddings", word="word_embeddings", position="position_embeddings",
    token_type=None, embedding_norm="LayerNorm",
    layers="transformer.layer",
    attention="attention", query="q_lin", key="k_lin", value="v_lin",
    attention_out="attention.out_lin", attention_norm="sa_layer_norm",
    ffn_in="ffn.lin1", ffn_out="ffn.lin2", ffn_activation="ffn.activation",
    output_norm="output_layer_norm",
    # DistilBERT's head is Linear → ReLU → Linear: a pooler with a fixed ReLU, then the classifier
    pooler="pre_classifier", pooler_act_fixed=POOLER_RELU, classifier="classifier", mlm_decoder="vocab_projector",
    config=ConfigNames(hidden="dim", layers="n_layers", heads="n_heads", ffn="hidden_dim", activation="activation"),
    input_names=("input_ids", "attention_mask"),
    seqcls_architecture="DistilBertForSequenceClassification",
)

FAMILIES = (BERT, DISTILBERT)
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
# what a model of an unknown family is fed (the BERT inputs, as every caller did before the registry)
DEFAULT_INPUT_NAMES = BERT.input_names


def _model_type(obj) -> str | None:
    """The model_type of a model, a config, a config dict or a model_type string."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return obj.get("model_type")
    config = getattr(obj, "config", obj)
    return getattr(config, "model_type", None)


def find_family(obj) -> Family | None:
    """The family of a model, config, config dict or model_type string; None when it is none of mabert's."""
    return _BY_MODEL_TYPE.get(_model_type(obj))


def family_of(obj) -> Family:
    """The family of a model, config, config dict or model_type string; a one-line MABertError otherwise."""
    family = find_family(obj)
    if family is None:
        what = type(obj).__name__ if isinstance(obj, nn.Module) else "the model"
        raise MABertError(f"{what} is of model type {_model_type(obj)!r}; mabert works with "
                          f"{', '.join(sorted(_BY_MODEL_TYPE))} models only")
    return family


def is_ma(obj) -> bool:
    """Whether a model / config / config dict / model_type is an MA one (False for plain and unknown ones)."""
    return str(_model_type(obj) or "").startswith(MA_PREFIX)


def model_input_names(obj) -> tuple[str, ...]:
    """The inputs a model's forward() (or its exported graph) takes; BERT's for a model of an unknown family."""
    family = find_family(obj)
    return family.input_names if family is not None else DEFAULT_INPUT_NAMES


def head_of(obj, pretraining_is_mlm: bool = False) -> str:
    """"seqcls", "mlm" or "base": of a model by its class, of a config by its `architectures`. With
    `pretraining_is_mlm`, a *ForPreTraining architecture counts as masked-LM (its MLM head is kept)."""
    if isinstance(obj, nn.Module):
        names = [type(obj).__name__]
    else:
        names = list((obj.get("architectures") if isinstance(obj, dict) else getattr(obj, "architectures", None)) or [])
    if any("SequenceClassification" in name for name in names):
        return HEAD_SEQCLS
    if any("MaskedLM" in name or (pretraining_is_mlm and "PreTraining" in name) for name in names):
        return HEAD_MLM
    return HEAD_BASE


# --- parts of a model ---------------------------------------------------------------------------------------------
@dataclass
class LayerParts:
    """One encoder layer's modules, the same objects the model runs (`is`-identical)."""
    layer: nn.Module
    attention: nn.Module              # holds query/key/value (and the approximator slot in MA models)
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_out: nn.Linear
    attention_norm: nn.Module         # PowerNorm / LayerNorm after attention (+ residual)
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_activation_owner: nn.Module   # the module whose attribute `ffn_activation_attr` is the FFN activation
    ffn_activation_attr: str
    output_norm: nn.Module            # after the FFN (+ residual)
    approximator: nn.Module | None    # the softmax approximator (shared or the layer's own); None: real softmax
    num_heads: int

    @property
    def ffn_activation(self) -> nn.Module:
        return getattr(self.ffn_activation_owner, self.ffn_activation_attr)


@dataclass
class EmbeddingParts:
    module: nn.Module
    word: nn.Embedding
    position: nn.Embedding
    token_type: nn.Embedding | None
    norm: nn.Module


@dataclass
class HeadParts:
    """A sequence classifier's head: logits = bound(classifier(act(pooler(h[:, 0]))))."""
    pooler: nn.Linear
    pooler_act: str                   # one of mabert.choices.POOLER_ACTIVATIONS
    classifier: nn.Linear
    logit_bound: nn.Module | None     # MA models' logit clamp (None when not bounded, and in plain models)


def _encoder(model: nn.Module) -> nn.Module:
    """The bare encoder of a model with or without a head (transformers' `base_model`: the model itself when it
    has no head, else its `Family.base` attribute)."""
    return model.base_model


def _split(path: str) -> tuple[str, str]:
    parent, _, attr = path.rpartition(".")
    return parent, attr


def layer_parts(model: nn.Module) -> list[LayerParts]:
    family = family_of(model)
    heads = getattr(model.config, family.config.heads)
    parts = []
    for layer in _encoder(model).get_submodule(family.layers):
        attention = layer.get_submodule(family.attention)
        owner, attr = _split(family.ffn_activation)
        parts.append(LayerParts(
            layer=layer, attention=attention,
            query=attention.get_submodule(family.query), key=attention.get_submodule(family.key),
            value=attention.get_submodule(family.value),
            attention_out=layer.get_submodule(family.attention_out),
            attention_norm=layer.get_submodule(family.attention_norm),
            ffn_in=layer.get_submodule(family.ffn_in), ffn_out=layer.get_submodule(family.ffn_out),
            ffn_activation_owner=layer.get_submodule(owner), ffn_activation_attr=attr,
            output_norm=layer.get_submodule(family.output_norm),
            approximator=attention.approximator if is_ma(model) else None,
            num_heads=heads,
        ))
    return parts


def embedding_parts(model: nn.Module) -> EmbeddingParts:
    family = family_of(model)
    embeddings = _encoder(model).get_submodule(family.embeddings)
    return EmbeddingParts(
        module=embeddings, word=embeddings.get_submodule(family.word),
        position=embeddings.get_submodule(family.position),
        token_type=embeddings.get_submodule(family.token_type) if family.token_type else None,
        norm=embeddings.get_submodule(family.embedding_norm),
    )


def head_parts(model: nn.Module) -> HeadParts:
    family = family_of(model)
    if head_of(model) != HEAD_SEQCLS:
        raise MABertError(f"{type(model).__name__} has no sequence-classification head; give a sequence classifier")
    pooler_act = family.pooler_act_fixed or getattr(model.config, "pooler_act", POOLER_TANH)
    return HeadParts(
        pooler=model.get_submodule(family.pooler), pooler_act=pooler_act,
        classifier=model.get_submodule(family.classifier),
        logit_bound=model.logit_bound if is_ma(model) else None,
    )


def ma_model_class(model_type: str, head: str):
    """The MA model class that serves (an MA model_type, a head)."""
    from . import modeling_ma_bert as b
    from . import modeling_ma_distilbert as d  # imported here: the modeling files import this registry

    table = {
        (BERT.ma_model_type, HEAD_SEQCLS): b.MABertForSequenceClassification,
        (BERT.ma_model_type, HEAD_MLM): b.MABertForMaskedLM,
        (BERT.ma_model_type, HEAD_BASE): b.MABertModel,
        (DISTILBERT.ma_model_type, HEAD_SEQCLS): d.MADistilBertForSequenceClassification,
        (DISTILBERT.ma_model_type, HEAD_MLM): d.MADistilBertForMaskedLM,
        (DISTILBERT.ma_model_type, HEAD_BASE): d.MADistilBertModel,
    }
    return table[model_type, head]
