"""mabert.registry: each family's parts are the modules the model runs, and no code outside the registry tells
families apart by class names or attributes."""
import re
from pathlib import Path

import pytest
import torch
from conftest import make_realistic, tiny_bert_config, tiny_distilbert_config
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

from mabert import MABertForMaskedLM, MABertForSequenceClassification, MADistilBertForSequenceClassification
from mabert.choices import (HEAD_BASE, HEAD_MLM, HEAD_SEQCLS, MASK_MODES, NORM_TYPES, POOLER_ACTIVATIONS,
                            POWERNORM_BACKWARDS)
from mabert.errors import MABertError
from mabert.registry import (
    BERT,
    DISTILBERT,
    embedding_parts,
    family_of,
    find_family,
    head_of,
    head_parts,
    is_ma,
    layer_parts,
    model_input_names,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "mabert"


def _ma_bert(**overrides):
    torch.manual_seed(0)
    return MABertForSequenceClassification(tiny_bert_config(num_labels=3, pooler_act="relu", **overrides)).eval()


def _ma_distilbert(**overrides):
    torch.manual_seed(0)
    return MADistilBertForSequenceClassification(tiny_distilbert_config(num_labels=3, **overrides)).eval()


def test_ma_bert_layer_parts_are_the_modules_the_model_runs():
    model = _ma_bert()
    parts = layer_parts(model)
    assert len(parts) == model.config.num_hidden_layers
    for p, layer in zip(parts, model.bert.encoder.layer):
        assert p.layer is layer
        assert p.attention is layer.attention.self
        assert p.query is layer.attention.self.query and p.key is layer.attention.self.key
        assert p.value is layer.attention.self.value
        assert p.attention_out is layer.attention.output.dense
        assert p.attention_norm is layer.attention.output.LayerNorm
        assert p.ffn_in is layer.intermediate.dense and p.ffn_out is layer.output.dense
        assert p.ffn_activation is layer.intermediate.intermediate_act_fn
        assert p.output_norm is layer.output.LayerNorm
        assert p.approximator is layer.attention.self.approximator and p.approximator is not None
        assert p.num_heads == model.config.num_attention_heads
    emb = embedding_parts(model)
    assert emb.word is model.bert.embeddings.word_embeddings
    assert emb.position is model.bert.embeddings.position_embeddings
    assert emb.token_type is model.bert.embeddings.token_type_embeddings
    assert emb.norm is model.bert.embeddings.LayerNorm
    head = head_parts(model)
    assert head.pooler is model.bert.pooler.dense and head.classifier is model.classifier
    assert head.pooler_act == "relu" and head.logit_bound is model.logit_bound


def test_ma_distilbert_layer_parts_are_the_modules_the_model_runs():
    model = _ma_distilbert(activation_bounds=True)
    parts = layer_parts(model)
    assert len(parts) == model.config.n_layers
    for p, block in zip(parts, model.distilbert.transformer.layer):
        assert p.layer is block and p.attention is block.attention
        assert p.query is block.attention.q_lin and p.key is block.attention.k_lin
        assert p.value is block.attention.v_lin and p.attention_out is block.attention.out_lin
        assert p.attention_norm is block.sa_layer_norm and p.output_norm is block.output_layer_norm
        assert p.ffn_in is block.ffn.lin1 and p.ffn_out is block.ffn.lin2
        assert p.ffn_activation is block.ffn.activation
        assert p.approximator is block.attention.approximator and p.approximator is not None
        assert p.num_heads == model.config.n_heads
    emb = embedding_parts(model)
    assert emb.word is model.distilbert.embeddings.word_embeddings and emb.token_type is None
    assert emb.norm is model.distilbert.embeddings.LayerNorm
    head = head_parts(model)
    assert head.pooler is model.pre_classifier and head.pooler_act == "relu"
    assert head.classifier is model.classifier and head.logit_bound is model.logit_bound is not None


def test_a_shared_approximator_is_one_object_in_every_layer():
    model = _ma_bert(share_softmax_nn=True)
    approximators = [p.approximator for p in layer_parts(model)]
    assert all(a is model.bert.softmax for a in approximators)


def test_layer_parts_change_what_the_model_computes():
    """Writing through the registry's handles changes the model's output: they are not copies."""
    model = make_realistic(_ma_distilbert())
    ids = torch.randint(5, 64, (2, 8))
    with torch.no_grad():
        before = model(ids).logits.clone()
        layer_parts(model)[0].value.weight.mul_(3.0)
        assert (model(ids).logits - before).abs().max() > 1e-3


def test_plain_hf_teachers_have_parts_but_no_approximator():
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=48)).eval()
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4,
                                                                  hidden_dim=48)).eval()
    for model, family in ((bert, BERT), (distil, DISTILBERT)):
        assert family_of(model) is family and not is_ma(model)
        parts = layer_parts(model)
        assert len(parts) == 2 and all(p.approximator is None for p in parts)
        assert head_parts(model).pooler_act == ("tanh" if family is BERT else "relu")
        assert head_parts(model).logit_bound is None
    assert layer_parts(bert)[1].query is bert.bert.encoder.layer[1].attention.self.query
    assert layer_parts(distil)[1].ffn_activation is distil.distilbert.transformer.layer[1].ffn.activation


def test_family_of_models_configs_dicts_and_model_types():
    ma_bert, ma_distil = _ma_bert(), _ma_distilbert()
    assert family_of(ma_bert) is BERT and family_of(ma_bert.config) is BERT
    assert family_of(ma_distil) is DISTILBERT and family_of(ma_distil.config.to_dict()) is DISTILBERT
    assert family_of("bert") is BERT and family_of("ma-distilbert") is DISTILBERT
    assert family_of(DistilBertConfig()) is DISTILBERT
    assert is_ma(ma_bert) and is_ma({"model_type": "ma-distilbert"}) and not is_ma(BertConfig())
    assert model_input_names(ma_bert) == ("input_ids", "attention_mask", "token_type_ids")
    assert model_input_names(ma_distil) == ("input_ids", "attention_mask")
    assert model_input_names("roberta") == ("input_ids", "attention_mask", "token_type_ids")  # as before


def test_unknown_family_raises_one_line():
    assert find_family(torch.nn.Linear(2, 2)) is None
    for obj in (torch.nn.Linear(2, 2), {"model_type": "roberta"}, "gpt2"):
        with pytest.raises(MABertError) as info:
            family_of(obj)
        message = str(info.value)
        assert "\n" not in message and "bert, distilbert, ma-bert, ma-distilbert" in message
    with pytest.raises(MABertError, match="Linear"):
        layer_parts(torch.nn.Linear(2, 2))


def test_head_of_models_and_configs():
    assert head_of(_ma_bert()) == HEAD_SEQCLS
    assert head_of(MABertForMaskedLM(tiny_bert_config())) == HEAD_MLM
    assert head_of(_ma_bert().bert) == HEAD_BASE
    assert head_of({"architectures": ["DistilBertForSequenceClassification"]}) == HEAD_SEQCLS
    assert head_of(BertConfig(architectures=["BertForPreTraining"])) == HEAD_BASE
    assert head_of(BertConfig(architectures=["BertForPreTraining"]), pretraining_is_mlm=True) == HEAD_MLM
    with pytest.raises(MABertError, match="no sequence-classification head"):
        head_parts(MABertForMaskedLM(tiny_bert_config()))


def test_command_line_offers_the_choices_module():
    from mabert.cli import build_parser

    convert = build_parser()._subparsers._group_actions[0].choices["convert"]
    options = {a.dest: a.choices for a in convert._actions}
    assert tuple(options["mask_mode"]) == MASK_MODES and tuple(options["norm"]) == NORM_TYPES
    assert tuple(options["pooler_act"]) == POOLER_ACTIVATIONS
    assert tuple(options["powernorm_backward"]) == POWERNORM_BACKWARDS


# A family told apart by its class name, or by whether it has an attribute one family's modules have.
_FAMILY_CHECKS = [
    re.compile(r"__name__\s*(==|!=)(?!\s*['\"]__main__)"),
    re.compile(r"__name__\s*\.\s*(endswith|startswith)\("),
    re.compile(r"\bin\s+type\([^)]*\)\.__name__"),
    re.compile(r"\.get\(\s*type\([^)]*\)\.__name__"),
    re.compile(r"=\s*type\([^)]*\)\.__name__\s*$"),  # a class name kept in a variable, to be compared
    re.compile(r"hasattr\([^,]+,\s*['\"](query|key|value|q_lin|k_lin|v_lin|out_lin|dim|n_heads|n_layers|hidden_size"
               r"|approximator|_slot|bert|distilbert|encoder|transformer|pooler|pre_classifier|intermediate|ffn"
               r"|hidden_act|activation|token_type_embeddings|softmax)['\"]"),
    re.compile(r"model_type[^\n]*(==|!=|\bin\b)\s*[(\[{]?\s*['\"](ma-)?(distil)?bert['\"]"),
    re.compile(r"['\"](ma-)?(distil)?bert['\"]\s*(not\s+)?in\s+[^\n]*model_type"),
]


def test_no_family_checks_outside_the_registry():
    found = []
    for path in sorted(SRC.glob("*.py")):
        if path.name == "registry.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(pattern.search(line) for pattern in _FAMILY_CHECKS):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "family checks outside mabert/registry.py:\n" + "\n".join(found)


def test_the_family_check_patterns_catch_the_old_checks():
    """The grep above would have found the checks the registry replaced."""
    old = ['name = type(model).__name__', 'if hasattr(module, "bias") and type(module).__name__ == "BertLMPredictionHead":',
           'attr = _FFN_ACTIVATION_ATTRS.get(type(parent).__name__)', 'if hasattr(module, "q_lin"):',
           'return type(model).__name__.endswith("ForMaskedLM")',
           'return getattr(config, "activation", None) if hasattr(config, "dim") else None',
           'if getattr(model.config, "model_type", "") in ("distilbert", "ma-distilbert"):',
           'if "token_type_ids" in batch and "distilbert" not in getattr(model.config, "model_type", ""):']
    for line in old:
        assert any(p.search(line) for p in _FAMILY_CHECKS), line
    for fine in ['if __name__ == "__main__":', 'raise MABertError(f"got {type(model).__name__}")']:
        assert not any(p.search(fine) for p in _FAMILY_CHECKS), fine
