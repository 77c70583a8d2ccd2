import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import mabert
from conftest import VECTORS, require_shared
from mabert.cli import main
from mabert.errors import MABertError


def _golden_state():
    return torch.load(require_shared(VECTORS / "A-ma-bert-mlm") / "state_dict.pt", weights_only=True)


def _one_line(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("mabert import-original: error:")
    return err


def test_truncated_file(tmp_path, capsys):
    data = (require_shared(VECTORS / "A-ma-bert-mlm") / "state_dict.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    err = _one_line(capsys, ["import-original", str(tmp_path / "cut.pt"), str(tmp_path / "out")])
    assert "not a readable PyTorch state dict" in err
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello")
    assert "not a readable PyTorch state dict" in _one_line(capsys, ["import-original", str(tmp_path / "notes.pt"), str(tmp_path / "o")])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "no state dict of tensors" in _one_line(capsys, ["import-original", str(tmp_path / "list.pt"), str(tmp_path / "o")])


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MABertError, match="not a readable PyTorch state dict"):
        mabert.from_original_checkpoint(tmp_path / "evil.pt")


def test_other_architecture(tmp_path, capsys):
    torch.save({"transformer.h.0.attn.weight": torch.zeros(2, 2)}, tmp_path / "gpt.pt")
    assert "neither 'bert.' nor 'distilbert.'" in _one_line(capsys, ["import-original", str(tmp_path / "gpt.pt"), str(tmp_path / "o")])
    plain = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=16))
    torch.save(plain.state_dict(), tmp_path / "bert.pt")
    assert "with `mabert convert`" in _one_line(capsys, ["import-original", str(tmp_path / "bert.pt"), str(tmp_path / "o")])


def test_missing_key(tmp_path, capsys):
    state = _golden_state()
    del state["bert.encoder.layer.1.output.LayerNorm.running_phi"]
    torch.save(state, tmp_path / "missing.pt")
    err = _one_line(capsys, ["import-original", str(tmp_path / "missing.pt"), str(tmp_path / "o"), "--heads", "4"])
    assert "missing 1 keys" in err and "running_phi" in err


def test_bad_head_count(tmp_path, capsys):
    err = _one_line(capsys, ["import-original", str(require_shared(VECTORS / "A-ma-bert-mlm") / "state_dict.pt"),
                             str(tmp_path / "o"), "--heads", "5"])
    assert "not divisible by 5 attention heads" in err


def test_cli_import_writes_loadable_dir(tmp_path, capsys):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertTokenizerFast

    folder = require_shared(VECTORS / "A-ma-bert-mlm")
    args = ["import-original", str(folder / "state_dict.pt"), str(tmp_path / "o"), "--config", str(folder / "config.json")]
    assert "give --tokenizer" in _one_line(capsys, args)
    assert not (tmp_path / "o").exists()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                  + [f"w{i}" for i in range(995)]) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    assert main([*args, "--tokenizer", str(tmp_path / "tok")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "o")  # the directory is complete
    assert len(tokenizer) == 1000 and tokenizer.model_max_length == 128  # at most L tokens
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "o").eval()
    io = torch.load(folder / "io.pt", weights_only=True)
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"],
                       token_type_ids=io["token_type_ids"]).logits
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_distilbert_release_layout_round_trip(tmp_path, shared):
    """MA-DistilBERT .pt files use DistilBERT names; shared-softmax ones repeat the approximator per layer."""
    from conftest import make_realistic, tiny_distilbert_config

    model = make_realistic(mabert.MADistilBertForMaskedLM(tiny_distilbert_config(share_softmax_nn=shared)))
    state = model.state_dict()
    if shared:
        for layer in range(2):
            for suffix, value in model.distilbert.softmax.state_dict().items():
                state[f"distilbert.transformer.layer.{layer}.attention.softmax.{suffix}"] = value.clone()
    torch.save(state, tmp_path / "ma-distilbert.pt")
    loaded = mabert.from_original_checkpoint(tmp_path / "ma-distilbert.pt", n_heads=4)
    assert type(loaded) is mabert.MADistilBertForMaskedLM and loaded.config.share_softmax_nn is shared
    assert loaded.config.softmax_input_size == 16 and loaded.config.n_layers == 2
    assert loaded.config.powernorm_backward == "approximate"  # trained further as the release was
    ids = torch.randint(5, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
