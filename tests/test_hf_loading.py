"""The model directories mabert writes work with the ecosystem's own loaders: transformers.pipeline for model
directories (fill-mask, text-classification), optimum's ORTModelForSequenceClassification for export directories."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, BertTokenizerFast, pipeline

import mabert
from conftest import make_realistic, tiny_bert_config, tiny_distilbert_config
from mabert.cli import main
from mabert.io import save_model_dir
from test_longtext import reference_logits
from test_predict import model_dir

TEXTS = ["the movie was great", "i hated the boring plot", "good"]


def mask_probabilities(model, tokenizer, text):
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    where = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
    return torch.softmax(logits[where], -1)


@pytest.mark.parametrize("config", [tiny_bert_config, tiny_distilbert_config])
@pytest.mark.parametrize("tokenizer_files", ["saved", "vocab only"])
def test_fill_mask_pipeline_on_ma_mlm(tmp_path, tiny_vocab, config, tokenizer_files):
    model = make_realistic(AutoModelForMaskedLM.from_config(config(softmax_mask_mode="masked")))
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    save_model_dir(model, tmp_path / "mlm", tokenizer)
    if tokenizer_files == "vocab only":  # e.g. a released checkpoint imported beside its vocab.txt
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp_path / "mlm" / name).unlink()
    fill = pipeline("fill-mask", model=str(tmp_path / "mlm"), top_k=3)
    got = fill("the movie was [MASK] .")
    want = mask_probabilities(model, tokenizer, "the movie was [MASK] .")
    top = torch.topk(want, 3)
    assert [g["token"] for g in got] == top.indices.tolist()
    np.testing.assert_allclose([g["score"] for g in got], top.values.numpy(), rtol=1e-4)


def test_text_classification_pipeline_on_ma_model_dir(tmp_path, tiny_vocab):
    model, path = model_dir(tmp_path, tiny_vocab)
    classify = pipeline("text-classification", model=str(path), top_k=None)
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    for text, scores in zip(TEXTS, classify(TEXTS)):
        want = torch.softmax(torch.from_numpy(reference_logits(model, tokenizer, text, "truncate")[0]), -1)
        got = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose([got["neg"], got["pos"]], want.numpy(), rtol=1e-4)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_optimum_ort_model_runs_export_dir_in_pipeline(tmp_path, tiny_vocab, int8, family):
    optimum = pytest.importorskip("optimum.onnxruntime")
    from transformers import AutoModelForSequenceClassification

    config = (tiny_bert_config(pooler_act="identity") if family == "bert" else tiny_distilbert_config())
    model = make_realistic(AutoModelForSequenceClassification.from_config(
        type(config)(**{**config.to_dict(), "softmax_mask_mode": "masked", "id2label": {0: "neg", 1: "pos"},
                        "label2id": {"neg": 0, "pos": 1}})))
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    save_model_dir(model, tmp_path / "m", tokenizer)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "exp")] + (["--int8"] if int8 else [])) == 0
    ort_model = optimum.ORTModelForSequenceClassification.from_pretrained(
        tmp_path / "exp", file_name="model_quantized.onnx" if int8 else "model.onnx")
    classify = pipeline("text-classification", model=ort_model, tokenizer=BertTokenizerFast.from_pretrained(
        tmp_path / "exp"), top_k=None)
    long = " ".join(["the movie was great"] * 10)  # 40 tokens: cut to L = 16 by truncation=True
    for text, scores in zip(TEXTS + [long], classify(TEXTS + [long], truncation=True)):
        want = torch.softmax(torch.from_numpy(reference_logits(model, tokenizer, text, "truncate")[0]), -1)
        got = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose([got["neg"], got["pos"]], want.numpy(), atol=0.05 if int8 else 1e-4)


def test_fill_mask_pipeline_on_imported_released_checkpoint(tmp_path):
    """The released MLM layout, imported with its tokenizer, runs in pipeline("fill-mask") as saved."""
    from conftest import VECTORS, require_shared
    from mabert.modelcard import read_facts

    folder = require_shared(VECTORS / "A-ma-bert-mlm")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 1000)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    assert main(["import-original", str(folder / "state_dict.pt"), str(tmp_path / "mlm"), "--config",
                 str(folder / "config.json"), "--tokenizer", str(tmp_path / "tok")]) == 0
    assert read_facts(tmp_path / "mlm")["stage"] == "import-original"
    fill = pipeline("fill-mask", model=str(tmp_path / "mlm"), top_k=2)
    got = fill("w7 w300 [MASK] w999")
    model = mabert.from_original_checkpoint(folder / "state_dict.pt", original_config=folder / "config.json")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    top = torch.topk(mask_probabilities(model, tokenizer, "w7 w300 [MASK] w999"), 2)
    assert [g["token"] for g in got] == top.indices.tolist()
    np.testing.assert_allclose([g["score"] for g in got], top.values.numpy(), rtol=1e-4)
