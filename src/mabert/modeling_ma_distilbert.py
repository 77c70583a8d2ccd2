"""MA-DistilBERT: DistilBERT's embeddings and FFN from transformers, composed with the MA techniques.
Names follow DistilBertModel so released MA-DistilBERT checkpoints load as they are."""
from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel
from transformers.activations import get_activation
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
from transformers.models.distilbert.modeling_distilbert import FFN, Embeddings

from .attention import (
    ApproximatorSlot, build_approximator, check_heads, multi_head_attention, norm_statistics_scope, run_layers,
)
from .bounds import ActivationBound
from .configuration import MADistilBertConfig
from .feedforward import feedforward_activation
from .task_heads import key_mask_from, sequence_classification_loss
from .modeling_ma_bert import _flag, check_length
from .powernorm import make_norm
from .weight_init import init_ma_weights
from .registry import DISTILBERT


class MADistilBertSelfAttention(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        check_heads(config.dim, config.n_heads)
        self.n_heads = config.n_heads
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)
        self.dropout = nn.Dropout(config.attention_dropout)
        self._slot = ApproximatorSlot(self, config, shared_softmax)

    @property
    def approximator(self):
        return self._slot.get(self)

    def forward(self, hidden_states, key_mask=None):
        context, probs = multi_head_attention(
            self.q_lin(hidden_states), self.k_lin(hidden_states), self.v_lin(hidden_states),
            self.n_heads, key_mask, self.approximator, self.dropout,
        )
        return self.out_lin(context), probs


class MATransformerBlock(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        self.attention = MADistilBertSelfAttention(config, shared_softmax)
        self.sa_layer_norm = make_norm(config)
        self.ffn = FFN(config)
        self.ffn.activation = feedforward_activation(config.ffn_hidden_act)
        self.output_layer_norm = make_norm(config)

    def forward(self, hidden_states, key_mask=None):
        attended, probs = self.attention(hidden_states, key_mask)
        attended = self.sa_layer_norm(attended + hidden_states)
        return self.output_layer_norm(self.ffn(attended) + attended), probs


class MATransformer(nn.Module):
    def __init__(self, config, shared_softmax=None):
        super().__init__()
        self.layer = nn.ModuleList(MATransformerBlock(config, shared_softmax) for _ in range(config.n_layers))

    def forward(self, hidden_states, key_mask=None):
        return run_layers(self.layer, hidden_states, key_mask)


class MADistilBertPreTrainedModel(PreTrainedModel):
    config_class = MADistilBertConfig
    base_model_prefix = DISTILBERT.base

    def _init_weights(self, module):
        init_ma_weights(module, self.config.initializer_range)


class MADistilBertModel(MADistilBertPreTrainedModel):
    def __init__(self, config: MADistilBertConfig):
        super().__init__(config)
        shared = build_approximator(config) if config.use_softmax_approx and config.share_softmax_nn else None
        if shared is not None:
            self.softmax = shared
        self.embeddings = Embeddings(config)
        self.embeddings.LayerNorm = make_norm(config)
        self.transformer = MATransformer(config, shared)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, **unused):
        check_length(input_ids if input_ids is not None else inputs_embeds, self.config)
        with norm_statistics_scope(self.config, attention_mask):
            embeddings = self.embeddings(input_ids, inputs_embeds)
            key_mask = key_mask_from(attention_mask, embeddings.dtype)
            last, hidden_states, attentions = self.transformer(embeddings, key_mask)
        return BaseModelOutput(
            last_hidden_state=last,
            hidden_states=hidden_states if _flag(output_hidden_states, self.config.output_hidden_states) else None,
            attentions=attentions if _flag(output_attentions, self.config.output_attentions) else None,
        )


class MADistilBertForMaskedLM(MADistilBertPreTrainedModel):
    _tied_weights_keys = ["vocab_projector.weight"]

    def __init__(self, config: MADistilBertConfig):
        super().__init__(config)
        self.activation = get_activation(config.activation)
        self.distilbert = MADistilBertModel(config)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.vocab_projector

    def set_output_embeddings(self, new_embeddings):
        self.vocab_projector = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        outputs = self.distilbert(input_ids, attention_mask=attention_mask, **kwargs)
        hidden = self.vocab_layer_norm(self.activation(self.vocab_transform(outputs.last_hidden_state)))
        logits = self.vocab_projector(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class MADistilBertForSequenceClassification(MADistilBertPreTrainedModel):
    def __init__(self, config: MADistilBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = MADistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        # clamps the logits at inference to their calibrated range (see mabert.bounds); None when not bounded
        self.logit_bound = ActivationBound(config.num_labels) if config.activation_bounds else None
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        kwargs.pop("token_type_ids", None)
        outputs = self.distilbert(input_ids, attention_mask=attention_mask, **kwargs)
        pooled = nn.functional.relu(self.pre_classifier(outputs.last_hidden_state[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        if self.logit_bound is not None:
            logits = self.logit_bound(logits)
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
