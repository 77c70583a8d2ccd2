import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

import mabert
from conftest import VECTORS, make_realistic, require_shared, tiny_bert_config, tiny_distilbert_config
from mabert.errors import MABertError
from mabert.export import audit, export_onnx, onnx_feed
from mabert.fuse import FusedMAModel, check_parity, fuse

CONFIGS = {
    "bert-multiply": lambda: tiny_bert_config(),
    "bert-masked-shared-relu-pooler": lambda: tiny_bert_config(softmax_mask_mode="masked", share_softmax_nn=True,
                                                               pooler_act="relu"),
    "distilbert-masked": lambda: tiny_distilbert_config(softmax_mask_mode="masked"),
}


def _padded_batch(length, vocab=64):
    torch.manual_seed(3)
    ids = torch.randint(5, vocab, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    mask[2, 2:] = 0
    return ids, mask


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("reassociate", [True, False])
def test_fused_matches_unfused_on_padded_batches(name, reassociate):
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS[name]()))
    fused = fuse(model, reassociate=reassociate)
    assert not any(isinstance(m, mabert.PowerNorm) for m in fused.modules())
    for length in (16, 7):
        ids, mask = _padded_batch(length)
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits
            got = fused(ids, attention_mask=mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fuses_released_checkpoint_exactly():
    folder = require_shared(VECTORS / "D-ma-bert-seqcls")
    model = mabert.from_original_checkpoint(folder / "state_dict.pt", original_config=folder / "config.json")
    io = torch.load(folder / "io.pt", weights_only=True)
    with torch.no_grad():
        got = fuse(model)(io["input_ids"], io["attention_mask"], io["token_type_ids"])
    torch.testing.assert_close(got, io["logits"], atol=1e-5, rtol=0)


def test_parity_check_fails_on_non_finite_outputs():
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS["bert-multiply"]()))
    fused = fuse(model)
    nan_out = lambda ids, attention_mask=None: torch.full((ids.shape[0], model.config.num_labels), float("nan"))
    with pytest.raises(MABertError, match="disagrees"):
        check_parity(model, nan_out)
    model.classifier.bias.data.fill_(float("inf"))
    with pytest.raises(MABertError, match="not finite"):
        check_parity(model, fused)


def test_refuses_what_cannot_be_fused_exactly():
    with pytest.raises(MABertError, match="only PowerNorm"):
        fuse(AutoModelForSequenceClassification.from_config(tiny_bert_config(norm_type="layer")))
    with pytest.raises(MABertError, match="real softmax"):
        fuse(AutoModelForSequenceClassification.from_config(tiny_bert_config(use_softmax_approx=False)))


@pytest.mark.parametrize("name", CONFIGS)
def test_onnx_matches_pytorch_and_passes_audit(name, tmp_path):
    import onnxruntime as ort

    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS[name]()))
    path = export_onnx(fuse(model), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for length in (16, 9):  # dynamic sequence axis
        ids, mask = _padded_batch(length)
        feed = onnx_feed(session, ids.numpy(), mask.numpy())
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits.numpy()
        np.testing.assert_allclose(session.run(None, feed)[0], want, atol=1e-5, rtol=1e-4)
    report = audit(path)
    has_tanh = model.config.to_dict().get("pooler_act") == "tanh"
    assert report["passed"] is (not has_tanh), report
    if has_tanh:
        assert report["forbidden"] == {"Tanh": 1}  # the BERT pooler, reported by name
    assert report["op_counts"]["MatMul"] > 0 and "Softmax" not in report["op_counts"]


def test_plain_bert_fails_audit_naming_ops(tmp_path, capsys):
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=48)).eval()
    path = export_onnx(bert, tmp_path / "bert.onnx")
    report = audit(path)
    assert not report["passed"]
    assert {"Softmax", "Erf", "Tanh"} <= set(report["forbidden"])
    assert {"LayerNormalization", "Sqrt"} & set(report["forbidden"])
    from mabert.cli import main

    assert main(["audit", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "Softmax" in out


def test_cli_fuse_export_audit(tmp_path, tiny_vocab):
    from mabert.cli import main

    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(pooler_act="identity", softmax_mask_mode="masked")))
    model.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "m.onnx")]) == 0
    assert main(["audit", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()
