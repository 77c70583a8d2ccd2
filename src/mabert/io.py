"""Writing model directories atomically: a half-written directory never appears under the final name."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary directory beside `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path):
    """Yield a temporary file path beside `target`; renamed onto `target` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model_dir(model, out_dir: str | Path, tokenizer=None) -> Path:
    """save_pretrained (safetensors) plus the tokenizer, written atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def load_classifier(path: str | Path):
    """A sequence classifier (MA or plain HF) from a directory or hub id, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    import mabert  # noqa: F401  (registers the MA model types)
    from .errors import MABertError

    try:
        return AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MABertError(f"cannot load a sequence classifier from {str(path)!r}: {first[:160]}") from None


def load_model(path: str | Path):
    """A model with the head its config names (masked LM, sequence classifier, or the bare encoder), in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    import mabert  # noqa: F401  (registers the MA model types)
    from .errors import MABertError

    try:
        architectures = AutoConfig.from_pretrained(str(path)).architectures or []
        auto = AutoModel
        if any(a.endswith("ForMaskedLM") for a in architectures):
            auto = AutoModelForMaskedLM
        elif any(a.endswith("ForSequenceClassification") for a in architectures):
            auto = AutoModelForSequenceClassification
        return auto.from_pretrained(str(path)).eval()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MABertError(f"cannot load a model from {str(path)!r}: {first[:160]}") from None
