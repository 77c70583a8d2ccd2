import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

import mabert
from mabert.errors import MABertError
from mabert.io import load_classifier
from mabert.evaluation import evaluate
from mabert.train import TrainSettings, distill, finetune

POSITIVE = ["the movie was great", "i liked the film", "good acting and fun story", "very good plot",
            "great fun", "i liked the acting"]
NEGATIVE = ["the movie was terrible", "i hated the film", "bad acting and boring story", "very bad plot",
            "boring", "i hated the acting"]


def sentiment_data(repeat=6):
    texts = (POSITIVE + NEGATIVE) * repeat
    labels = ([1] * len(POSITIVE) + [0] * len(NEGATIVE)) * repeat
    return Dataset.from_dict({"text_a": texts, "label": labels})


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=28, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def test_finetune_loss_falls_and_model_learns(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_teacher()
    summary = finetune(teacher, tokenizer, sentiment_data(), tmp_path / "t",
                       TrainSettings(epochs=15, batch_size=8, lr=2e-3))
    losses = [h["total"] for h in summary["history"]]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert evaluate(summary["model"], tokenizer, sentiment_data(1), mabert.data.RT_TASK)["accuracy"] == 1.0
    assert (tmp_path / "t" / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["steps"] == summary["steps"]


def test_distill_student_matches_teacher(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = finetune(tiny_teacher(), tokenizer, sentiment_data(), tmp_path / "t",
                       TrainSettings(epochs=15, batch_size=8, lr=2e-3))["model"]
    student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", warmup_updates=20,
                             accumulation_step=1, approximator_init_steps=100)
    summary = distill(teacher, student, tokenizer, sentiment_data(), tmp_path / "s",
                      TrainSettings(epochs=6, batch_size=8, lr=1e-3))
    history = summary["history"]
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in history)
    first, last = sum(h["total"] for h in history[:5]), sum(h["total"] for h in history[-5:])
    assert last < 0.5 * first
    assert evaluate(summary["model"], tokenizer, sentiment_data(1), mabert.data.RT_TASK)["accuracy"] == 1.0
    # handed over from LayerNorm/GELU (5 norms, 2 activations), and nothing of the blend is saved
    assert summary["handover_modules"] == 7
    saved = load_classifier(tmp_path / "s" / "model")
    assert list(saved.state_dict()) == list(student.state_dict()) and not any(".old." in k for k in saved.state_dict())


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    settings = dict(epochs=3, batch_size=8, lr=5e-4, save_every=5)
    full = finetune(tiny_teacher(), tokenizer, sentiment_data(), tmp_path / "full", TrainSettings(**settings))

    part = tmp_path / "part"
    first = finetune(tiny_teacher(), tokenizer, sentiment_data(), part, TrainSettings(**settings, stop_after=12))
    assert first["steps"] == 12 and (part / "checkpoint" / "state.json").exists()
    assert json.loads((part / "checkpoint" / "state.json").read_text())["step"] == 10
    resumed = finetune(tiny_teacher(seed=1), tokenizer, sentiment_data(), part, TrainSettings(**settings, resume=True))
    assert resumed["steps"] == full["steps"]
    # the history holds every step, from before the resume too, and it is the uninterrupted run's
    saved = json.loads((part / "history.json").read_text())
    assert [h["step"] for h in saved] == list(range(1, full["steps"] + 1))
    for a, b in zip(full["history"], saved):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5), a["step"]
    for (name, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_nan_stops_without_writing(tmp_path, tiny_vocab):
    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_teacher()
    with torch.no_grad():
        teacher.classifier.weight.fill_(float("nan"))
    with pytest.raises(MABertError, match="loss became nan at step 1"):
        finetune(teacher, tokenizer, sentiment_data(), tmp_path / "t", TrainSettings(epochs=1, batch_size=8))
    assert not (tmp_path / "t" / "model").exists()


DDP_SCRIPT = r'''
import sys, torch, hashlib
sys.path.insert(0, sys.argv[2])
from test_train import tiny_teacher, sentiment_data
from transformers import BertTokenizerFast
import mabert
from mabert.train import TrainSettings, distill
from accelerate import PartialState
tokenizer = BertTokenizerFast(vocab_file=sys.argv[3])
teacher = tiny_teacher()
student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", approximator_init_steps=10)
summary = distill(teacher, student, tokenizer, sentiment_data(), sys.argv[1], TrainSettings(max_steps=4, batch_size=4, lr=1e-3))
state = PartialState()
digest = hashlib.sha1(b"".join(v.detach().numpy().tobytes() for v in summary["model"].state_dict().values())).hexdigest()
open(f"{sys.argv[1]}/rank{state.process_index}.txt", "w").write(f"{state.num_processes} {summary['steps']} {digest}")
'''


@pytest.mark.slow
def test_accelerate_two_process_ranks_agree(tmp_path, tiny_vocab):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    # --multi_gpu on a machine without GPUs gives two CPU processes over gloo (accelerate's --cpu means one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
              str(script), str(tmp_path), str(Path(__file__).parent), str(tiny_vocab)]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(tmp_path / f"rank{i}.txt").read_text().split() for i in range(2)]
    assert ranks[0][0] == "2" and ranks[0][1] == "4"
    assert ranks[0] == ranks[1]  # same world size, steps and final weights on both ranks


def test_distill_ends_with_phi_measured_on_the_final_weights(tmp_path, tiny_vocab):
    from itertools import islice

    from mabert.data import tokenize
    from mabert.bounds import calibrate_bounds
    from mabert.powernorm import PowerNorm, calibrate_running_phi
    from mabert.batches import make_loader, model_inputs

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    teacher = tiny_teacher()
    runs = {}
    for batches in (0, 3):
        student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", accumulation_step=1,
                                 approximator_init_steps=10)
        summary = distill(teacher, student, tokenizer, sentiment_data(), tmp_path / f"s{batches}",
                          TrainSettings(epochs=2, batch_size=8, lr=1e-3, recalibrate_phi_batches=batches))
        assert summary["phi_recalibrated_batches"] == batches
        runs[batches] = summary["model"]
    running, recalibrated = runs[0], runs[3]
    stale = [m.running_phi.clone() for m in running.modules() if isinstance(m, PowerNorm)]
    # identical training; only φ and the bounds differ, and they are what calibration on the first 3 training batches gives
    loader = make_loader(tokenize(sentiment_data(), tokenizer, 16), tokenizer, 8, shuffle_seed=0)
    loader.sampler.choose_epoch(1)  # the loop left its sampler at the last epoch
    picked, forward = list(islice(iter(loader), 3)), lambda m, b: m(**model_inputs(m, b))
    calibrate_running_phi(running, picked, forward)
    assert calibrate_bounds(running, picked, forward) == summary["bounds_calibrated"] == 5 + 1  # norms + logits
    for name, value in recalibrated.state_dict().items():
        torch.testing.assert_close(running.state_dict()[name], value, msg=name)
    fresh = [m.running_phi for m in recalibrated.modules() if isinstance(m, PowerNorm)]
    assert len(stale) == 5 and max(float((a / b - 1).abs().max()) for a, b in zip(stale, fresh)) > 0.05


def test_seeded_teacher_runs_are_identical(tmp_path, tiny_vocab):
    """The classifier head is drawn inside from_pretrained: seeded before it, two runs give the same teacher."""
    from mabert.recipe import Recipe, finetune_teacher

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    base = tiny_teacher().bert
    base.save_pretrained(tmp_path / "pretrained")
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1234 + ord(name))  # whatever the global RNG state was before
        summary = finetune_teacher(tmp_path / "pretrained", tokenizer, sentiment_data(1), 2, tmp_path / name,
                                   Recipe(batch_size=8, seed=3), epochs=1)
        runs.append(summary["model"].state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key

