import csv
import json

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from mabert.cli import main
from mabert.errors import MABertError
from mabert.predict import read_rows
from test_longtext import long_text, reference_logits, tiny_classifier


def model_dir(tmp_path, tiny_vocab, **overrides):
    model = tiny_classifier(**overrides)
    if model.config.num_labels == 2:
        model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(tmp_path / "m")
    BertTokenizerFast(vocab_file=str(tiny_vocab)).save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def expected_probabilities(model, tokenizer, texts, strategy="truncate"):
    logits = np.stack([reference_logits(model, tokenizer, t, strategy)[0] for t in texts])
    return torch.softmax(torch.from_numpy(logits), -1).numpy()


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_read_rows_formats(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"great, truly"\n2,"two\nlines"\n3,fine\n')
    assert read_rows(tmp_path / "a.csv") == ([2, 4, 5], ["great, truly", "two\nlines", "fine"], None)
    (tmp_path / "a.tsv").write_text("q\ts\nwho?\thim\n")
    assert read_rows(tmp_path / "a.tsv", ["q", "s"]) == ([2], ["who?"], ["him"])
    (tmp_path / "a.jsonl").write_text('{"review": "good"}\n{"review": "bad", "x": 1}\n')
    assert read_rows(tmp_path / "a.jsonl", ["review"]) == ([1, 2], ["good", "bad"], None)
    (tmp_path / "a.txt").write_bytes("\ufeffone\r\ntwo\n".encode())
    assert read_rows(tmp_path / "a.txt") == ([1, 2], ["one", "two"], None)


def test_bad_rows_are_reported_by_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(MABertError, match=r"2 bad row\(s\): line 2: empty line; line 4: not UTF-8"):
        read_rows(tmp_path / "bad.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\nnot json\n{"text": " "}\n')
    with pytest.raises(MABertError, match="line 2: no 'text' value; line 3: not a JSON object; line 4: empty 'text'"):
        read_rows(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("text,other\nok,1\n,2\n\nshort\n")
    with pytest.raises(MABertError, match="line 3: empty 'text'; line 4: empty line"):
        read_rows(tmp_path / "bad.csv")
    (tmp_path / "pair.tsv").write_text("a\tb\nx\n")
    with pytest.raises(MABertError, match="line 2: no 'b' value"):
        read_rows(tmp_path / "pair.tsv", ["a", "b"])
    with pytest.raises(MABertError, match=r"columns \['review'\] not in header"):
        read_rows(tmp_path / "bad.csv", ["review"])


def test_cli_predict_model_dir_in_input_order(tmp_path, tiny_vocab):
    model, path = model_dir(tmp_path, tiny_vocab)
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    texts = [long_text(n, n) for n in (30, 2, 11, 5, 22, 1, 8)]  # lengths unsorted, some longer than L = 16
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    assert main(["predict", str(path), "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.csv"),
                 "--text-columns", "body", "--batch-size", "3", "--long-text", "head-tail"]) == 0
    rows = read_csv(tmp_path / "out.csv")
    want = expected_probabilities(model, tokenizer, texts, "head-tail")
    assert [int(r["line"]) for r in rows] == list(range(1, 8))
    np.testing.assert_allclose([[float(r["prob_neg"]), float(r["prob_pos"])] for r in rows], want, rtol=1e-4)
    assert [r["label"] for r in rows] == [["neg", "pos"][i] for i in want.argmax(-1)]


def test_cli_predict_regression_and_bad_input_writes_nothing(tmp_path, tiny_vocab):
    model, path = model_dir(tmp_path, tiny_vocab, num_labels=1)
    texts = ["the movie was great", "bad plot"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert main(["predict", str(path), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o.jsonl")]) == 0
    got = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    want = [reference_logits(model, tokenizer, t, "truncate")[0][0] for t in texts]
    assert [g["line"] for g in got] == [1, 2]
    np.testing.assert_allclose([g["value"] for g in got], want, rtol=1e-4)
    (tmp_path / "in.txt").write_text("fine\n\n")
    assert main(["predict", str(path), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("int8", [False, True])
def test_cli_predict_export_dir_and_onnx_file(tmp_path, tiny_vocab, int8):
    model, path = model_dir(tmp_path, tiny_vocab)
    args = ["export", str(path), str(tmp_path / "exp")] + (["--int8"] if int8 else [])
    assert main(args) == 0
    texts = [long_text(n, n) for n in (3, 25, 9, 14)]
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(texts) + "\n")
    target = tmp_path / "exp" / ("model_quantized.onnx" if int8 else "")
    assert main(["predict", str(target), "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.tsv"),
                 "--long-text", "windows"]) == 0
    with open(tmp_path / "o.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    got = np.array([[float(r["prob_neg"]), float(r["prob_pos"])] for r in rows])
    want = expected_probabilities(model, BertTokenizerFast(vocab_file=str(tiny_vocab)), texts, "windows")
    np.testing.assert_allclose(got, want, atol=0.05 if int8 else 1e-4)
    # a single-file export takes its tokenizer and config from --tokenizer
    assert main(["export", str(path), str(tmp_path / "m.onnx")]) == 0
    assert main(["predict", str(tmp_path / "m.onnx"), "--tokenizer", str(path), "--input", str(tmp_path / "in.csv"),
                 "--out", str(tmp_path / "o2.csv"), "--long-text", "windows"]) == 0
    np.testing.assert_allclose([[float(r["prob_neg"]), float(r["prob_pos"])] for r in read_csv(tmp_path / "o2.csv")],
                               want, rtol=1e-4)
