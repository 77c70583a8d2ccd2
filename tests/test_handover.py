import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import mabert
from mabert.handover import HandOver
from mabert.powernorm import PowerNorm
from conftest import make_realistic


def realistic_teacher():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=3))
    make_realistic(teacher)
    with torch.no_grad():  # LayerNorm weights away from 1/0 so a wrong copy would show
        for module in teacher.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return teacher.eval()


def padded_batch():
    ids = torch.randint(5, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def student_of(teacher):
    # real softmax, so that at λ = 0 the only differences left are the handed-over norms and activations
    return mabert.convert(teacher, use_softmax_approx=False, pooler_act="tanh").eval()


def test_handover_starts_as_the_teacher_and_ends_as_the_plain_student():
    teacher = realistic_teacher()
    student = student_of(teacher)
    batch = padded_batch()
    with torch.no_grad():
        plain = student(**batch).logits
        keys = list(student.state_dict())
        handover = HandOver(student, 0.5)
        assert handover.count == 5 + 2  # embedding + 2 per layer norms; one FFN activation per layer
        teacher_logits = teacher(**batch).logits
        torch.testing.assert_close(student(**batch).logits, teacher_logits, atol=1e-5, rtol=1e-5)
        assert (plain - teacher_logits).abs().max() > 1e-2  # the techniques do change this model
        handover.lam = 1.0
        torch.testing.assert_close(student(**batch).logits, plain, atol=0, rtol=0)
        handover.remove()
        assert list(student.state_dict()) == keys
        torch.testing.assert_close(student(**batch).logits, plain, atol=0, rtol=0)


def test_blend_is_the_weighted_sum_of_layer_norm_and_power_norm():
    teacher = realistic_teacher()
    student = student_of(teacher)
    norm = student.bert.embeddings.LayerNorm
    scale, shift = norm.inference_affine()
    teacher_norm = teacher.bert.embeddings.LayerNorm
    handover = HandOver(student, 0.5)
    handover.lam = 0.3
    x = torch.randn(2, 5, 32) * 2 + 0.5
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    layer_norm = (x - mean) / torch.sqrt(var + 1e-12) * teacher_norm.weight + teacher_norm.bias
    expected = 0.7 * layer_norm + 0.3 * (x * scale + shift)
    with torch.no_grad():
        torch.testing.assert_close(student.bert.embeddings.LayerNorm(x), expected, atol=1e-5, rtol=1e-5)
    # the LayerNorm crutch is frozen; the PowerNorm keeps training
    blend = student.bert.embeddings.LayerNorm
    assert not any(p.requires_grad for p in blend.old.parameters())
    assert all(p.requires_grad for p in blend.new.parameters())


def test_schedule_and_when_it_applies():
    student = student_of(realistic_teacher())
    assert HandOver.applies_to(student)
    handover = HandOver(student, 0.5)
    lams = []
    for step in (0, 25, 50, 99):
        handover.set_progress(step, 100)
        lams.append(handover.lam)
    assert lams == [0.0, 0.5, 1.0, 1.0]
    handover.remove()
    next(m for m in student.modules() if isinstance(m, PowerNorm)).iters.fill_(8)
    assert not HandOver.applies_to(student)  # an MA-trained student is left alone
    with pytest.raises(ValueError, match="fraction"):
        HandOver(student, 1.5)


def test_no_weight_decay_on_norm_scales_during_the_handover():
    """Decay goes by shape (matrices only): a PowerNorm γ renamed `…LayerNorm.new.weight` by the blend is exempt."""
    from mabert.train import parameter_groups

    student = student_of(realistic_teacher())
    HandOver(student, 0.5)
    decayed, exempt = parameter_groups(student, 0.01)
    assert decayed["weight_decay"] == 0.01 and exempt["weight_decay"] == 0.0
    names = {id(p): n for n, p in student.named_parameters()}
    norm_scales = [m.weight for m in student.modules() if isinstance(m, PowerNorm)]
    assert norm_scales and all(names[id(w)].endswith("LayerNorm.new.weight") for w in norm_scales)
    assert {id(w) for w in norm_scales} <= {id(p) for p in exempt["params"]}
    linear_weights = [m.weight for m in student.modules() if isinstance(m, torch.nn.Linear)]
    assert {id(w) for w in linear_weights} <= {id(p) for p in decayed["params"]}
    assert not {id(p) for p in decayed["params"]} & {id(p) for p in exempt["params"]}
