"""The released-checkpoint format, checked against outputs of the authors' own code."""
import pytest
import torch

import mabert
from conftest import VECTORS, require_shared

CASES = ["A-ma-bert-mlm", "D-ma-bert-seqcls"]


def cases():
    root = VECTORS
    found = sorted(p.name for p in root.iterdir() if (p / "state_dict.pt").exists()) if root.exists() else []
    return found or CASES


@pytest.mark.parametrize("case", cases())
def test_reproduces_official_outputs(case):
    folder = require_shared(VECTORS / case)
    model = mabert.from_original_checkpoint(folder / "state_dict.pt", original_config=folder / "config.json")
    io = torch.load(folder / "io.pt", weights_only=True)
    inputs = {k: io[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in io}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.logits, io["logits"], atol=1e-5, rtol=0)
    assert len(out.hidden_states) == len(io["hidden_states"])
    for got, want in zip(out.hidden_states, io["hidden_states"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert len(out.attentions) == len(io["attentions"])
    for got, want in zip(out.attentions, io["attentions"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", cases())
def test_import_with_heads_override_only(case):
    """Without the original config the defaults apply; heads come from the override."""
    folder = require_shared(VECTORS / case)
    model = mabert.from_original_checkpoint(folder / "state_dict.pt", num_attention_heads=4)
    io = torch.load(folder / "io.pt", weights_only=True)
    with torch.no_grad():
        logits = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"],
                       token_type_ids=io["token_type_ids"]).logits
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=0)


def test_wrong_head_count_changes_outputs():
    folder = require_shared(VECTORS / "D-ma-bert-seqcls")
    model = mabert.from_original_checkpoint(folder / "state_dict.pt", num_attention_heads=2)
    io = torch.load(folder / "io.pt", weights_only=True)
    with torch.no_grad():
        hidden = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"],
                       token_type_ids=io["token_type_ids"], output_hidden_states=True).hidden_states
    assert (hidden[-1] - io["hidden_states"][-1]).abs().max() > 1e-3


def _shared_softmax_state(folder):
    """Re-create the shared-softmax release layout: one approximator under 13 names (bert.softmax + each layer)."""
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    shared = {k.split(".softmax.", 1)[1]: v for k, v in state.items()
              if k.startswith("bert.encoder.layer.0.attention.self.softmax.")}
    for key in [k for k in state if ".softmax." in k]:
        state[key] = shared[key.split(".softmax.", 1)[1]].clone()
    for suffix, value in shared.items():
        state[f"bert.softmax.{suffix}"] = value.clone()
    return state


def test_shared_softmax_layout(tmp_path):
    folder = require_shared(VECTORS / "A-ma-bert-mlm")
    state = _shared_softmax_state(folder)
    assert sum(k.endswith("linear_relu_stack.0.weight") for k in state) == 3  # 1 + 2 layers (13 for 12 layers)
    torch.save(state, tmp_path / "shared.pt")
    model = mabert.from_original_checkpoint(tmp_path / "shared.pt", num_attention_heads=4, save_to=tmp_path / "out")
    assert model.config.share_softmax_nn
    layers = model.bert.encoder.layer
    assert layers[0].attention.self.approximator is layers[1].attention.self.approximator is model.bert.softmax
    # the reference run of this layout: the per-layer model with layer 0's approximator in every layer
    reference = mabert.from_original_checkpoint(folder / "state_dict.pt", num_attention_heads=4)
    reference.bert.encoder.layer[1].attention.self.softmax.load_state_dict(
        reference.bert.encoder.layer[0].attention.self.softmax.state_dict())
    ids = torch.randint(1, 1000, (2, 128))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
        reloaded = mabert.MABertForMaskedLM.from_pretrained(tmp_path / "out")
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_shared_softmax_aliases_must_agree(tmp_path):
    folder = require_shared(VECTORS / "A-ma-bert-mlm")
    state = _shared_softmax_state(folder)
    state["bert.encoder.layer.1.attention.self.softmax.linear_relu_stack.0.bias"] += 1
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(mabert.errors.MABertError, match="differs from bert.softmax"):
        mabert.from_original_checkpoint(tmp_path / "bad.pt")
