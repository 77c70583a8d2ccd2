import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, BertTokenizerFast, pipeline

import mabert
from conftest import make_realistic, tiny_bert_config, tiny_distilbert_config
from mabert.errors import MABertError


def _models():
    return [
        mabert.MABertForSequenceClassification(tiny_bert_config(softmax_mask_mode="masked")),
        mabert.MADistilBertForSequenceClassification(tiny_distilbert_config(softmax_mask_mode="masked")),
    ]


@pytest.mark.parametrize("model", _models(), ids=["bert", "distilbert"])
def test_masked_mode_is_length_independent(model):
    """A 9-token sentence gives the same outputs unpadded, padded to 12, and padded to L = 16."""
    torch.manual_seed(0)
    make_realistic(model)
    ids = torch.randint(5, 64, (1, 9))
    with torch.no_grad():
        base = model(ids, attention_mask=torch.ones(1, 9), output_hidden_states=True)
        for total in (12, 16):
            padded = torch.cat([ids, torch.randint(5, 64, (1, total - 9))], dim=1)  # junk, not even pad ids
            mask = torch.cat([torch.ones(1, 9), torch.zeros(1, total - 9)], dim=1)
            out = model(padded, attention_mask=mask, output_hidden_states=True)
            torch.testing.assert_close(out.logits, base.logits, atol=1e-5, rtol=1e-5)
            for a, b in zip(out.hidden_states, base.hidden_states):
                torch.testing.assert_close(a[:, :9], b, atol=1e-5, rtol=1e-5)


def test_multiply_mode_depends_on_padding():
    """The upstream rule lets padded keys through, which is why the masked mode exists."""
    torch.manual_seed(0)
    model = make_realistic(mabert.MABertForSequenceClassification(tiny_bert_config(softmax_mask_mode="multiply")))
    ids = torch.randint(5, 64, (1, 9))
    padded = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = model(ids).logits
        b = model(padded, attention_mask=(torch.arange(16) < 9).long()[None]).logits
    assert (a - b).abs().max() > 1e-3


def test_sequence_longer_than_L_is_a_clear_error():
    model = mabert.MABertForSequenceClassification(tiny_bert_config())
    with pytest.raises(MABertError, match="accepts at most 16"):
        model(torch.ones(1, 17, dtype=torch.long))


def test_switches_each_work_alone():
    torch.manual_seed(0)
    ids = torch.randint(5, 64, (2, 10))
    for overrides in ({"use_softmax_approx": False}, {"norm_type": "layer"}, {"ffn_hidden_act": "gelu"},
                      {"share_softmax_nn": True}, {"pooler_act": "relu"}):
        model = mabert.MABertForSequenceClassification(tiny_bert_config(**overrides)).eval()
        assert torch.isfinite(model(ids).logits).all()
    no_approx = mabert.MABertModel(tiny_bert_config(use_softmax_approx=False))
    assert not any("softmax" in k for k in no_approx.state_dict())
    layer_norm = mabert.MABertModel(tiny_bert_config(norm_type="layer"))
    assert not any("running_phi" in k for k in layer_norm.state_dict())
    with pytest.raises(ValueError, match="norm_type"):
        tiny_bert_config(norm_type="batch")


def test_regression_head_uses_mse():
    model = mabert.MABertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    ids = torch.randint(5, 64, (3, 8))
    labels = torch.tensor([0.5, 2.0, 4.5])
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels))
    assert model.config.problem_type == "regression"


@pytest.mark.parametrize("config", [tiny_bert_config(share_softmax_nn=True), tiny_distilbert_config()],
                         ids=["bert-shared", "distilbert"])
def test_save_load_round_trip_through_auto_classes_and_pipeline(config, tmp_path, tiny_vocab):
    torch.manual_seed(0)
    config.vocab_size = 64
    model = AutoModelForSequenceClassification.from_config(config).eval()
    for module in model.modules():  # make PowerNorm statistics non-trivial so a lost buffer shows
        if isinstance(module, mabert.PowerNorm):
            module.running_phi.uniform_(0.5, 2.0)
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == config.model_type
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model)
    ids = torch.randint(5, 28, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert type(AutoModel.from_pretrained(tmp_path / "m")).__name__.endswith("Model")

    classify = pipeline("text-classification", model=str(tmp_path / "m"))
    result = classify("the movie was great and the acting was good .")
    enc = tokenizer("the movie was great and the acting was good .", return_tensors="pt")
    enc.pop("token_type_ids") if config.model_type == "ma-distilbert" else None
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1)[0]
    assert result[0]["label"] == model.config.id2label[int(probs.argmax())]
    assert result[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.parametrize("make", [
    lambda: mabert.MABertForSequenceClassification(tiny_bert_config(
        softmax_mask_mode="masked", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
    lambda: mabert.MADistilBertForSequenceClassification(tiny_distilbert_config(
        softmax_mask_mode="masked", dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)),
], ids=["bert", "distilbert"])
def test_training_statistics_are_padding_independent(make):
    """PowerNorm's batch statistics (training) and φ calibration count real tokens only: a sentence padded with
    junk to L trains through the same activations and gets the same φ as the sentence alone."""
    import copy

    from mabert.powernorm import PowerNorm, calibrate_running_phi

    torch.manual_seed(0)
    model = make_realistic(make())
    ids = torch.randint(5, 64, (2, 9))
    padded = torch.cat([ids, torch.randint(5, 64, (2, 7))], dim=1)
    mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 7)], dim=1).long()
    alone, with_padding = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    a = alone(ids, attention_mask=torch.ones(2, 9).long(), output_hidden_states=True)
    b = with_padding(padded, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    for x, y in zip(b.hidden_states, a.hidden_states):
        torch.testing.assert_close(x[:, :9], y, atol=1e-5, rtol=1e-5)
    for m, inputs in ((alone, (ids, torch.ones(2, 9).long())), (with_padding, (padded, mask))):
        calibrate_running_phi(m, [inputs], lambda model, batch: model(batch[0], attention_mask=batch[1]))
    phis = [[n.running_phi for n in m.modules() if isinstance(n, PowerNorm)] for m in (alone, with_padding)]
    assert len(phis[0]) > 0
    for p, q in zip(*phis):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
@pytest.mark.parametrize("overrides, counts_padding", [
    (dict(softmax_mask_mode="multiply"), True),
    (dict(softmax_mask_mode="masked"), False),
    (dict(softmax_mask_mode="multiply", attention_kind="relu"), False),
    (dict(softmax_mask_mode="multiply", attention_kind="poly"), False),
    (dict(softmax_mask_mode="multiply", use_softmax_approx=False), False),
], ids=["multiply", "masked", "relu", "poly", "exact-softmax"])
def test_training_statistics_count_padding_only_where_attention_reads_it(overrides, counts_padding, family):
    """With the released multiply masking, real tokens read padding rows, so PowerNorm's batch E[x²] counts every
    row as the reference does; where padded keys get weight 0 it counts the real tokens only. Checked on every
    norm's training output against NumPy."""
    import numpy as np

    from mabert.powernorm import PowerNorm

    torch.manual_seed(0)
    model = make_realistic(mabert.MABertForSequenceClassification(tiny_bert_config(**overrides)) if family == "bert"
                           else mabert.MADistilBertForSequenceClassification(tiny_distilbert_config(**overrides))).train()
    mask = torch.tensor([[1] * 16, [1] * 5 + [0] * 11])
    seen = []
    norms = [m for m in model.modules() if isinstance(m, PowerNorm)]
    hooks = [n.register_forward_hook(lambda m, args, out: seen.append((m, args[0].detach(), out.detach())))
             for n in norms]
    model(torch.randint(5, 64, (2, 16)), attention_mask=mask)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(norms) > 0
    real = mask.numpy().reshape(-1) != 0
    for norm, x, y in seen:
        rows = x.double().numpy().reshape(-1, x.shape[-1])
        counted = rows if counts_padding else rows[real]
        expected = (norm.weight.detach().double().numpy() * rows / np.sqrt((counted ** 2).mean(axis=0) + norm.eps)
                    + norm.bias.detach().double().numpy())
        np.testing.assert_allclose(y.numpy().reshape(-1, x.shape[-1]), expected, rtol=1e-4, atol=1e-5)
