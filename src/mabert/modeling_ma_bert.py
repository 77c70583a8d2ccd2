"""MA-BERT: BERT's embeddings, output blocks, pooler and heads from transformers, composed with the
MA techniques. Module and parameter names follow BertModel so released checkpoints load as they are."""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertIntermediate,
    BertLMPredictionHead,
    BertOnlyMLMHead,
    BertOutput,
    BertPooler,
    BertSelfOutput,
)

from .attention import (
    ApproximatorSlot, build_approximator, check_heads, multi_head_attention, norm_statistics_scope, run_layers,
)
from .bounds import ActivationBound
from .configuration import MABertConfig
from .errors import MABertError
from .feedforward import feedforward_activation
from .task_heads import key_mask_from, pooler_activation, sequence_classification_loss
from .powernorm import make_norm
from .weight_init import init_ma_weights
from .registry import BERT


def _with_norm(block: nn.Module, config) -> nn.Module:
    block.LayerNorm = make_norm(config)
    return block


class MABertSelfAttention(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        check_heads(config.hidden_size, config.num_attention_heads)
        self.num_attention_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self._slot = ApproximatorSlot(self, config, shared_softmax)

    @property
    def approximator(self):
        return self._slot.get(self)

    def forward(self, hidden_states, key_mask=None):
        return multi_head_attention(
            self.query(hidden_states), self.key(hidden_states), self.value(hidden_states),
            self.num_attention_heads, key_mask, self.approximator, self.dropout,
        )


class MABertAttention(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        self.self = MABertSelfAttention(config, shared_softmax)
        self.output = _with_norm(BertSelfOutput(config), config)

    def forward(self, hidden_states, key_mask=None):
        context, probs = self.self(hidden_states, key_mask)
        return self.output(context, hidden_states), probs


class MABertLayer(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        self.attention = MABertAttention(config, shared_softmax)
        self.intermediate = BertIntermediate(config)
        self.intermediate.intermediate_act_fn = feedforward_activation(config.ffn_hidden_act)
        self.output = _with_norm(BertOutput(config), config)

    def forward(self, hidden_states, key_mask=None):
        attended, probs = self.attention(hidden_states, key_mask)
        return self.output(self.intermediate(attended), attended), probs


class MABertEncoder(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        self.layer = nn.ModuleList(MABertLayer(config, shared_softmax) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states, key_mask=None):
        return run_layers(self.layer, hidden_states, key_mask)


class MABertPreTrainedModel(PreTrainedModel):
    config_class = MABertConfig
    base_model_prefix = BERT.base

    def _init_weights(self, module):
        init_ma_weights(module, self.config.initializer_range)
        if isinstance(module, BertLMPredictionHead) and getattr(module, "bias", None) is not None:
            module.bias.data.zero_()


def check_length(input_ids_or_embeds: torch.Tensor, config) -> None:
    length = input_ids_or_embeds.shape[1]
    if config.use_softmax_approx and length > config.softmax_input_size:
        raise MABertError(
            f"input has {length} tokens but this model's softmax approximator accepts at most "
            f"{config.softmax_input_size}; truncate (tokenizer max_length={config.softmax_input_size})"
        )


class MABertModel(MABertPreTrainedModel):
    def __init__(self, config: MABertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        shared = build_approximator(config) if config.use_softmax_approx and config.share_softmax_nn else None
        if shared is not None:
            self.softmax = shared
        self.embeddings = _with_norm(BertEmbeddings(config), config)
        self.encoder = MABertEncoder(config, shared)
        self.pooler = None
        if add_pooling_layer:
            self.pooler = BertPooler(config)
            self.pooler.activation = pooler_activation(config.pooler_act)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **unused,
    ):
        check_length(input_ids if input_ids is not None else inputs_embeds, self.config)
        with norm_statistics_scope(self.config, attention_mask):
            embeddings = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                         position_ids=position_ids, inputs_embeds=inputs_embeds)
            key_mask = key_mask_from(attention_mask, embeddings.dtype)
            sequence_output, hidden_states, attentions = self.encoder(embeddings, key_mask)
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled,
            hidden_states=hidden_states if _flag(output_hidden_states, self.config.output_hidden_states) else None,
            attentions=attentions if _flag(output_attentions, self.config.output_attentions) else None,
        )


def _flag(value, default) -> bool:
    return bool(default if value is None else value)


class MABertForMaskedLM(MABertPreTrainedModel):
    _tied_weights_keys = ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]

    def __init__(self, config: MABertConfig):
        super().__init__(config)
        self.bert = MABertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class MABertForSequenceClassification(MABertPreTrainedModel):
    def __init__(self, config: MABertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MABertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        # clamps the logits at inference to their calibrated range (see mabert.bounds); None when not bounded
        self.logit_bound = ActivationBound(config.num_labels) if config.activation_bounds else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        if self.logit_bound is not None:
            logits = self.logit_bound(logits)
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
