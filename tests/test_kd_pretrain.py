import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

import mabert
from mabert.cli import main
from mabert.data import load_texts
from mabert.errors import MABertError
from mabert.io import load_model
from mabert.powernorm import PowerNorm
from mabert.train import TrainSettings, kd_pretrain
from test_train import NEGATIVE, POSITIVE, tiny_teacher


def test_load_texts_reads_paragraphs_and_cuts_passages(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("one two three\nfour five six seven\n\neight nine\n")
    (tmp_path / "books" / "b.txt").write_text("ten eleven\n")
    (tmp_path / "books" / "skip.md").write_text("not read")
    texts = load_texts(tmp_path / "books", max_words=5, mixed_lengths=False)
    assert sorted(texts["text_a"]) == sorted(["one two three four five", "six seven", "eight nine", "ten eleven"])
    with pytest.raises(MABertError, match="not found"):
        load_texts(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MABertError, match="no .txt files"):
        load_texts(tmp_path / "empty")


def unlabelled(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(POSITIVE + NEGATIVE) * 3)
    return load_texts(path)


def test_kd_pretrain_trains_the_encoder_only(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_teacher()
    student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", accumulation_step=1,
                             approximator_init_steps=100)
    classifier = {k: v.clone() for k, v in student.classifier.state_dict().items()}
    summary = kd_pretrain(teacher, student, tokenizer, unlabelled(tmp_path), tmp_path / "kd",
                          TrainSettings(epochs=12, batch_size=8, lr=1e-3, handover=0.0))
    history = summary["history"]
    assert set(history[0]) == {"step", "hidden", "attention", "total"}
    first, last = sum(h["total"] for h in history[:5]), sum(h["total"] for h in history[-5:])
    assert last < 0.5 * first
    # PowerNorm statistics warmed up; the task head is left as it was
    assert all(int(m.iters.item()) == summary["steps"] for m in student.modules() if isinstance(m, PowerNorm))
    for name, value in student.classifier.state_dict().items():
        torch.testing.assert_close(value, classifier[name], atol=0, rtol=0)
    saved = load_model(tmp_path / "kd" / "model")
    batch = tokenizer(["the movie was great", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(saved(**batch).logits, student.eval()(**batch).logits)


def test_kd_pretrain_cli_with_mlm_heads(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=28, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=48, max_position_embeddings=64)).eval()
    student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", approximator_init_steps=10)
    assert type(student).__name__ == "MABertForMaskedLM"
    for model, name in ((teacher, "teacher"), (student, "student")):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    (tmp_path / "corpus.txt").write_text("\n\n".join(POSITIVE + NEGATIVE))
    code = main(["kd-pretrain", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
                 "--texts", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "kd"), "--max-steps", "4",
                 "--batch-size", "4"])
    assert code == 0
    history = json.loads((tmp_path / "kd" / "history.json").read_text())
    assert len(history) == 4 and all("mlm" in h and h["mlm"] > 0 for h in history)
    saved = load_model(tmp_path / "kd" / "model")
    assert type(saved).__name__ == "MABertForMaskedLM"
    assert all(int(m.iters.item()) == 4 for m in saved.modules() if isinstance(m, PowerNorm))
