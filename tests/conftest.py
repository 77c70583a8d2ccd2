import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[2] / "shared"
VECTORS = SHARED / "data" / "official-vectors"
GLUE = SHARED / "data" / "glue"


def default_sigint():
    """For subprocesses (preexec_fn) and tests that need Ctrl-C to raise KeyboardInterrupt: a runner that starts
    the suite in the background (non-interactive `cmd &`) hands every process SIGINT ignored, and Python then
    never raises KeyboardInterrupt, as Unix means it to."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def sigint_raises():
    import signal

    previous = signal.getsignal(signal.SIGINT)
    default_sigint()
    yield
    signal.signal(signal.SIGINT, previous)


def require_shared(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            raise AssertionError(f"{path} is missing: CI must run with ../shared beside the checkout")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture
def tiny_vocab(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        "the", "movie", "was", "great", "bad", "a", "film", "good", "terrible", "plot", "acting", "and", "not",
        "fun", "boring", "it", "is", "very", "i", "liked", "hated", "story", "."
    ]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def tiny_bert_config(**overrides):
    from mabert import MABertConfig

    settings = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                    max_position_embeddings=64, softmax_input_size=16, softmax_hidden_layer_size=24)
    settings.update(overrides)
    return MABertConfig(**settings)


def tiny_distilbert_config(**overrides):
    from mabert import MADistilBertConfig

    settings = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64,
                    softmax_input_size=16, softmax_hidden_layer_size=24)
    settings.update(overrides)
    return MADistilBertConfig(**settings)


def make_realistic(model, std=0.15, seed=0):
    """Weights of the size trained models have (default init makes every output ~0 and hides bugs)."""
    from mabert import PowerNorm

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.05)
            elif isinstance(module, PowerNorm):
                module.running_phi.copy_(torch.rand(module.running_phi.shape, generator=generator) * 3 + 0.2)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


def tiny_bert_teacher(vocab_size=40):
    """A plain BERT classifier with realistic weights: the teacher tiny students are converted from."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return make_realistic(BertForSequenceClassification(BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2))).eval()


def padded_pair(vocab_size=40):
    """(ids, mask): two rows of 9 tokens, the second padded after 4."""
    ids = torch.randint(5, vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


def assert_reloads_identically(model, folder, ids, mask, attention_kind):
    """save_pretrained → AutoModel.from_pretrained keeps the attention kind and every output bit."""
    from transformers import AutoModelForSequenceClassification

    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
    model.save_pretrained(folder)
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert loaded.config.attention_kind == attention_kind
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, want, atol=0, rtol=0)
