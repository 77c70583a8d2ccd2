import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertTokenizerFast

from conftest import make_realistic, tiny_bert_config
from mabert.cli import main
from mabert.data import load_imdb, load_task
from mabert.errors import MABertError
from mabert.longtext import document_logits, segments
from mabert.predict import torch_call
from mabert.evaluation import evaluate

WORDS = ("the movie was great bad a film good terrible plot acting and not fun boring it is very i liked hated "
         "story").split()


def long_text(n, seed):
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n))


def tiny_classifier(**overrides):
    config = tiny_bert_config(pooler_act="identity", softmax_mask_mode="masked", **overrides)
    return make_realistic(AutoModelForSequenceClassification.from_config(config))


def reference_logits(model, tokenizer, text, strategy, stride=None):
    """Each document's pieces run one at a time, unpadded, from token ids cut here by hand."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    budget = model.config.softmax_input_size - 2
    if len(ids) <= budget or strategy == "truncate":
        pieces = [ids[:budget]]
    elif strategy == "head-tail":
        pieces = [ids[:budget // 4] + ids[-(budget - budget // 4):]]
    else:
        step = stride or budget // 2
        starts = list(range(0, len(ids) - budget + 1, step))
        if starts[-1] != len(ids) - budget:
            starts.append(len(ids) - budget)
        pieces = [ids[s:s + budget] for s in starts]
    outs = []
    for piece in pieces:
        row = torch.tensor([[tokenizer.cls_token_id, *piece, tokenizer.sep_token_id]])
        with torch.no_grad():
            outs.append(model(row, attention_mask=torch.ones_like(row)).logits[0].double().numpy())
    return np.mean(outs, axis=0), len(pieces)


@pytest.mark.parametrize("strategy,stride", [("truncate", None), ("head-tail", None), ("windows", None),
                                             ("windows", 5)])
def test_document_logits_match_piecewise_reference(tiny_vocab, strategy, stride):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    model = tiny_classifier()
    texts = [long_text(n, seed) for seed, n in enumerate((3, 14, 15, 40, 61, 9))]
    got = document_logits(torch_call(model), tokenizer, texts, 16, strategy, stride, batch_size=4)
    for text, row in zip(texts, got):
        want, _ = reference_logits(model, tokenizer, text, strategy, stride)
        np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5)


def test_window_segments_cover_the_document(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    text = long_text(40, 1)
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = segments(tokenizer, [text], 16, "windows", stride=10)
    assert [len(p[1]) for p in pieces] == [16] * 4  # starts 0, 10, 20 and 26 (the last ends at the end)
    assert pieces[-1][1][1:-1] == ids[-14:] and pieces[0][1][1:-1] == ids[:14]
    with pytest.raises(MABertError, match="single texts"):
        segments(tokenizer, ["a"], 16, "windows", text_pairs=["b"])
    with pytest.raises(MABertError, match="unknown long-text strategy"):
        segments(tokenizer, ["a"], 16, "middle")


def write_imdb(root, reviews):
    for split, items in reviews.items():
        for label in ("pos", "neg"):
            (root / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)
        for i, (label, text) in enumerate(items):
            (root / "aclImdb" / split / label / f"{i}_{8 if label == 'pos' else 2}.txt").write_text(text)


def test_imdb_layout_cleaning_and_test_split(tmp_path):
    write_imdb(tmp_path, {"train": [("pos", "Great.<br /><br />Loved it"), ("neg", "Bad<br/>film")],
                          "test": [("neg", "Dull"), ("pos", "Fine <BR />work"), ("pos", "Fun")]})
    train = load_imdb("train", tmp_path)
    assert sorted(zip(train["text_a"], train["label"])) == [("Bad film", 0), ("Great. Loved it", 1)]
    task, dev = load_task("imdb", "dev", tmp_path / "aclImdb")  # no dev split: the test reviews
    assert task.metric == "accuracy" and sorted(dev["text_a"]) == ["Dull", "Fine work", "Fun"]
    with pytest.raises(MABertError, match="aclImdb layout"):
        load_imdb("train", tmp_path / "nothing")


def test_cli_evaluate_imdb_with_windows(tmp_path, tiny_vocab, capsys):
    import json

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    model = tiny_classifier()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    reviews = [("pos" if i % 2 else "neg", long_text(10 + 7 * i, i)) for i in range(8)]
    write_imdb(tmp_path, {"test": reviews, "train": reviews[:2]})
    _, data = load_task("imdb", "test", tmp_path)
    with torch.no_grad():
        predicted = [int(reference_logits(model, tokenizer, t, "windows", 4)[0].argmax()) for t in data["text_a"]]
    expected = float(np.mean(np.array(predicted) == np.array(data["label"])))
    assert main(["evaluate", str(tmp_path / "m"), "--task", "imdb", "--data-dir", str(tmp_path), "--split", "test",
                 "--long-text", "windows", "--stride", "4", "--out", str(tmp_path / "metrics.json")]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(expected) and result["long_text"] == "windows"
    assert result["examples"] == 8
    truncated = evaluate(model, tokenizer, data, load_task("imdb", "test", tmp_path)[0])
    heads = [int(reference_logits(model, tokenizer, t, "truncate")[0].argmax()) for t in data["text_a"]]
    assert truncated["accuracy"] == pytest.approx(float(np.mean(np.array(heads) == np.array(data["label"]))))
