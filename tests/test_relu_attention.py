"""ReLU attention (attention_kind="relu"): its definition, padding independence, the hand-over from softmax,
conversion and saving. Fusion and ONNX parity for it run in test_fuse_export (CONFIGS)."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import mabert
from conftest import assert_reloads_identically, make_realistic, padded_pair, tiny_bert_config, tiny_bert_teacher
from mabert.handover import HandOver
from mabert.softmax_approx import ReLUAttention


def test_relu_attention_is_relu_of_masked_scores_over_L():
    scores = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float)[:, None, None, :]
    got = ReLUAttention(16)(scores, mask)
    want = torch.where((scores > 0) & (mask > 0), scores, torch.zeros(())) / 16
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exceeds this model's length L = 4"):
        ReLUAttention(4)(scores)


def test_padding_does_not_change_a_relu_attention_model():
    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(softmax_mask_mode="masked", attention_kind="relu", pooler_act="relu"))).eval()
    ids = torch.randint(5, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits, model(ids).logits,
                                   atol=1e-6, rtol=1e-6)


def test_relu_attention_has_no_parameters_and_cannot_be_shared():
    model = AutoModelForSequenceClassification.from_config(tiny_bert_config(attention_kind="relu"))
    assert not any("softmax" in key for key in model.state_dict())
    with pytest.raises(ValueError, match="share_softmax_nn does not apply"):
        tiny_bert_config(attention_kind="relu", share_softmax_nn=True)
    with pytest.raises(ValueError, match="attention_kind must be"):
        tiny_bert_config(attention_kind="linear")


def test_handover_blends_softmax_into_relu_attention(tmp_path):
    teacher = tiny_bert_teacher()
    student = mabert.convert(teacher, attention_kind="relu", softmax_input_size=16, pooler_act="tanh",
                             softmax_mask_mode="masked").eval()
    ids, mask = padded_pair()
    with torch.no_grad():
        plain = student(ids, attention_mask=mask).logits
        handover = HandOver(student, 0.5)
        assert handover.count == 5 + 2 + 2  # norms, FFN activations, and one attention per layer
        # at λ = 0 every technique is still the teacher's: softmax attention, LayerNorm, GELU
        torch.testing.assert_close(student(ids, attention_mask=mask).logits, teacher(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)
        handover.lam = 1.0
        torch.testing.assert_close(student(ids, attention_mask=mask).logits, plain, atol=0, rtol=0)
        handover.remove()
        assert all(isinstance(layer.attention.self.approximator, ReLUAttention) for layer in student.bert.encoder.layer)
    assert_reloads_identically(student, tmp_path, ids, mask, "relu")


def test_fit_to_teacher_only_calibrates_phi_for_relu_attention(tiny_vocab, monkeypatch):
    from datasets import Dataset
    from transformers import BertTokenizerFast

    import mabert.fitting as fitting

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_bert_teacher(tokenizer.vocab_size)
    student = mabert.convert(teacher, attention_kind="relu", softmax_input_size=16)
    texts = Dataset.from_dict({"text_a": ["the movie was great", "a boring plot and bad acting"] * 4})
    monkeypatch.setattr(fitting, "collect_score_rows", lambda *a, **k: pytest.fail("score rows collected"))
    record = fitting.fit_to_teacher(student, teacher, tokenizer, texts, steps=2)
    assert record == {"approximator_mse_per_layer": [], "score_rows_per_layer": 0, "phi_calibrated": True}
    phi = student.bert.encoder.layer[0].output.LayerNorm.running_phi
    assert not torch.equal(phi, torch.ones_like(phi))  # φ measured on the texts, not the initial 1
