"""Reading and writing model directories safely.

Writes are atomic (a temporary path beside the target, then a rename), and they never destroy what the user
did not ask to replace: `claim_output` is the one guard every writer goes through."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .choices import HEAD_BASE, HEAD_MLM, HEAD_SEQCLS
from .errors import MABertError, one_line
from .registry import head_of, is_ma

MARKER = ".mabert"
# Files by which a folder is recognised as written by mabert (the marker, or outputs of versions before it).
_OURS = (MARKER, "model.safetensors", "pytorch_model.bin", "state.json", "summary.json", "bench.json", "teacher.json")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def written_by_mabert(directory: Path) -> bool:
    """Whether a folder holds the marker or model files, i.e. may be replaced with --overwrite."""
    return any((directory / name).exists() for name in _OURS)


def _holds(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def _writable_anchor(path: Path) -> None:
    """The nearest existing folder above `path` must be a folder we may write into."""
    anchor = path.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise MABertError(f"cannot create {path}: {anchor} is a file, not a folder; choose another output path")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise MABertError(f"cannot write into {anchor} (permission denied); choose another output path")


def _not_an_input(target: Path, inputs) -> None:
    """The output may not be an input, a folder holding one, or a file inside an input folder."""
    for source in map(Path, inputs):
        real = source.expanduser().resolve()
        if source.expanduser().exists() and (_holds(target, real) or (target.is_file() and _holds(real, target))):
            what = "is" if target == real else "holds" if _holds(target, real) else "is part of"
            raise MABertError(f"{target} {what} an input of this command ({source}); write the output elsewhere")


def claim_output(target, *, inputs=(), overwrite: bool = False, directory: bool = True, reuse: bool = False,
                 alternatives: str = "") -> Path:
    """Check that writing `target` destroys nothing the user did not ask to replace; returns it resolved.

    A new path or an empty folder is always fine. An existing file, or a folder with contents, needs `overwrite`;
    a folder must also be one mabert wrote (`written_by_mabert`), and no input may be at stake (`_not_an_input`).
    With `reuse` a mabert folder is continued rather than replaced (--resume, the demo's finished stages)."""
    target = Path(target).expanduser().resolve()
    _not_an_input(target, inputs)
    _writable_anchor(target)
    if not target.exists():
        return target
    if target.is_dir() != directory:
        raise MABertError(f"{target} is a {'folder' if target.is_dir() else 'file'}, but this writes a "
                          f"{'folder' if directory else 'file'}; choose another path")
    if directory and not any(target.iterdir()):
        return target
    if directory and not written_by_mabert(target):
        raise MABertError(f"{target} holds files mabert did not write (no {MARKER} marker); refusing to replace or "
                          "add to it: choose a new or empty folder")
    if reuse or overwrite:
        return target
    raise MABertError(f"{target} already exists; pass --overwrite to replace it{alternatives}, or choose another path")


def mark_run_dir(path: Path) -> None:
    """Create a folder that a run fills as it goes (training, demo), marked as mabert's."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists():
        _write_marker(path)


def remove_if_unused(path: Path) -> None:
    """Remove a run folder that holds nothing but its marker (a run that failed before writing anything)."""
    if path.is_dir() and {p.name for p in path.iterdir()} <= {MARKER}:
        shutil.rmtree(path, ignore_errors=True)


def _write_marker(directory: Path) -> None:
    (directory / MARKER).write_text("written by mabert: `--overwrite` may replace this folder\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _sweep_stale(target: Path) -> None:
    """Remove temporaries of `target` left by a killed earlier run (their names carry the writer's pid)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(?:tmp|old)-(\d+)")
    for leftover in target.parent.glob(f".{target.name}.*"):
        match = pattern.match(leftover.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM wait until the block is done, so a rename pair is never left half-done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Writers replacing entries of one folder take turns (two at once could both find the name free)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary directory beside `target`; on success it replaces `target` in one rename (a folder
    that mabert did not write is never replaced) and is marked as mabert's."""
    target = Path(target).expanduser().resolve()
    _writable_anchor(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(target.parent):  # another writer may be renaming `target` right now
        claim_output(target, overwrite=True)
    _sweep_stale(target)
    tmp = old = None
    try:
        with _signals_held():  # an interrupt must not land between creating the folder and knowing its name
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))  # unique too: writers may overlap
        yield tmp
        _write_marker(tmp)
        with _folder_lock(target.parent), _signals_held():
            claim_output(target, overwrite=True)  # what is there now, not what was there at the start
            if target.exists():
                target.rename(old)
            tmp.rename(target)
    finally:
        with _signals_held():  # an interrupt arriving now must not cut the clean-up short and leave `old` behind
            for leftover in (tmp, old):
                if leftover is not None:
                    shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path):
    """Yield a temporary file path beside `target` (same suffix); renamed onto `target` when the block succeeds."""
    target = claim_output(target, overwrite=True, directory=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    tmp = None
    try:
        with _signals_held():  # an interrupt must not land between creating the file and knowing its name
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", suffix=target.suffix,
                                       dir=target.parent)
            os.close(fd)
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with _signals_held():
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def save_model_dir(model, out_dir: str | Path, tokenizer=None, card: dict | None = None) -> Path:
    """save_pretrained (safetensors), the tokenizer and a model card (README.md, from the model's config plus the
    `card` facts, see mabert.modelcard), written atomically. An MA model's tokenizer says it takes at most L
    tokens, so `truncation=True` cuts inputs to what the approximators accept."""
    from .modelcard import build_card

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _limit_tokenizer_length(tmp, max_input_length(model.config))
        facts = {**(card or {}), "path": str(out_dir), "config": model.config.to_dict()}
        (tmp / "README.md").write_text(build_card(facts), encoding="utf-8")
    return Path(out_dir)


def max_input_length(config) -> int | None:
    """L for a model with softmax approximators (their input width), else None."""
    return config.softmax_input_size if getattr(config, "use_softmax_approx", False) else None


def _limit_tokenizer_length(directory: Path, length: int | None) -> None:
    settings_file = directory / "tokenizer_config.json"
    if length is None or not settings_file.exists():
        return
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    settings["model_max_length"] = min(length, settings.get("model_max_length") or length)
    settings_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False))


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def _local_folder(text: str) -> Path | None:
    """The folder `text` names, or None for a hub id; a missing path or a file is a plain error."""
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise MABertError(f"{text} is a file; give a model directory")
    if _looks_like_path(text):
        raise MABertError(f"{text} does not exist; give a model directory (or a hub id)")
    return None


def model_source(path: str | Path) -> str:
    """`path` checked as a model directory (config.json naming a model type, and weights), or passed on as a
    hub id, so that a wrong path gets a plain message instead of a hub or model-registry error."""
    local = _local_folder(str(path))
    if local is None:
        return str(path)
    config = local / "config.json"
    if not config.is_file():
        raise MABertError(f"{local} is not a model directory (no config.json); give the folder that holds "
                          "config.json and model.safetensors")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise MABertError(f"{config} is not a JSON object; the model directory is damaged") from None
    if not model_type:
        raise MABertError(f"{config} names no model_type; it was not written by transformers or mabert")
    if not any((local / name).exists() for name in _WEIGHTS):
        raise MABertError(f"{local} has no weights (model.safetensors); copy them there or write the model again")
    return str(local)


def from_pretrained(auto, path: str | Path, **kwargs):
    """`auto.from_pretrained` (in eval mode) with load failures turned into one plain line."""
    from safetensors import SafetensorError

    import mabert  # noqa: F401  (registers the MA model types)

    source = model_source(path)
    try:
        return auto.from_pretrained(source, **kwargs).eval()
    except SafetensorError as exc:
        raise MABertError(f"{source}: the weights file is corrupt or truncated ({one_line(exc, 120)}); write or "
                          "download the model again") from None
    except RuntimeError as exc:
        mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), None)
        if mismatch is None:
            raise
        raise MABertError(f"{source}: config.json and the weights disagree ({mismatch[:200]}); the config belongs to "
                          "another model") from None
    except (OSError, ValueError) as exc:
        raise MABertError(f"cannot load a model from {source!r}: {one_line(exc, 160)}") from None


def load_classifier(path: str | Path, **kwargs):
    """A sequence classifier (MA or plain HF) from a directory or hub id, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    return from_pretrained(AutoModelForSequenceClassification, path, **kwargs)


def load_model(path: str | Path):
    """A model with the head its config names (masked LM, sequence classifier, or the bare encoder), in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    import mabert  # noqa: F401  (registers the MA model types)

    try:
        architectures = AutoConfig.from_pretrained(model_source(path)).architectures or []
    except (OSError, ValueError) as exc:
        raise MABertError(f"cannot load a model config from {str(path)!r}: {one_line(exc, 160)}") from None
    auto = {HEAD_MLM: AutoModelForMaskedLM, HEAD_SEQCLS: AutoModelForSequenceClassification,
            HEAD_BASE: AutoModel}[head_of({"architectures": architectures})]
    return from_pretrained(auto, path)


def require_ma(model, path, role: str = "--student"):
    """`model` if it is an MA model; a plain BERT given where a student is expected is a usage error."""
    if not is_ma(model):
        model_type = getattr(model.config, "model_type", "")
        raise MABertError(f"{role} {path} is a plain {model_type} model, not an MA student; make one with "
                          f"`mabert convert {path} STUDENT_DIR`")
    return model


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a model (or a hub id's), with a plain message when there is none."""
    from transformers import AutoTokenizer

    import mabert  # noqa: F401  (registers the MA model types with AutoTokenizer)

    local = _local_folder(str(path))
    if local is not None and not any((local / name).exists() for name in _TOKENIZER_FILES):
        raise MABertError(f"{local} has no tokenizer (vocab.txt / tokenizer.json); save the teacher's tokenizer "
                          "there (tokenizer.save_pretrained)")
    try:
        return AutoTokenizer.from_pretrained(str(local or path))
    except (OSError, ValueError, KeyError) as exc:
        raise MABertError(f"cannot load a tokenizer from {str(path)!r}: {one_line(exc, 160)}") from None
