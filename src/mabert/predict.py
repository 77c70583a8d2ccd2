"""`mabert predict`: score a CSV/TSV/JSONL/plain-text file with a model directory or an exported ONNX model.

Rows are read with their line numbers; a bad row (empty text, missing column, undecodable or malformed line)
stops the run with every offending line named, so no row is skipped silently. Inputs run length-sorted in
padded batches (see `mabert.longtext`); the output keeps the input order and is written atomically.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from .batches import model_inputs, pads_to_full_length
from .errors import MABertError
from .export import graph_length_limit, onnx_feed, ort_session
from .io import atomic_file, load_classifier
from .longtext import document_logits, max_length_of

csv.field_size_limit(sys.maxsize)


@dataclass
class Scorer:
    call: Callable[[dict], np.ndarray]   # int64 input arrays → logits
    tokenizer: object
    max_length: int                      # L: longer documents go through a long-text strategy
    pad_to: int | None                   # fixed input length for models with the original multiply masking
    labels: list[str]                    # class names by id; empty for a regressor


def torch_call(model) -> Callable[[dict], np.ndarray]:
    """A call function for `mabert.longtext.document_logits` running a PyTorch sequence classifier."""
    import torch

    device = next(model.parameters()).device

    def call(batch):
        with torch.no_grad():
            inputs = model_inputs(model, {k: torch.from_numpy(v).to(device) for k, v in batch.items()})
            return model(**inputs).logits.float().cpu().numpy()

    return call


def onnx_call(path: str | Path, threads: int | None = None) -> Callable[[dict], np.ndarray]:
    """A call function running an exported ONNX model (fp32 or int8) with ONNX Runtime on the CPU."""
    session = ort_session(path, threads)
    return lambda batch: session.run(None, onnx_feed(session, batch["input_ids"], batch["attention_mask"],
                                                     batch["token_type_ids"]))[0]


def _labels(config) -> list[str]:
    """Class names by id; empty for a regressor or a bare graph (whose ids then serve as names)."""
    if config is None or config.num_labels == 1:
        return []
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def load_scorer(model: str | Path, tokenizer: str | Path | None = None, threads: int | None = None) -> Scorer:
    """A model directory (MA or plain HF), an export directory (its model.onnx), or an .onnx file (tokenizer and
    config.json from `tokenizer`, default the file's folder; L from the graph's metadata, else the config, else
    128). OpenVINO: an .xml file (openvino_model.xml, openvino_model_int8.xml), or a directory whose only graph is
    openvino_model.xml; an export directory holding model.onnx too runs model.onnx with ONNX Runtime."""
    from transformers import AutoConfig, AutoTokenizer

    import mabert  # noqa: F401  (registers the MA model types)

    path = Path(model)
    if not path.exists():
        raise MABertError(f"{path} not found: give a model directory, an export directory or an .onnx file")
    onnx_file = path if path.suffix == ".onnx" else (path / "model.onnx" if (path / "model.onnx").is_file() else None)
    if onnx_file is None and (path.suffix == ".xml" or (path / "openvino_model.xml").is_file()):
        onnx_file = path if path.suffix == ".xml" else path / "openvino_model.xml"  # an OpenVINO graph
    source = Path(tokenizer) if tokenizer else (onnx_file.parent if onnx_file else path)
    try:
        tok = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, TypeError):  # TypeError: a registered tokenizer class without its vocab file
        raise MABertError(f"no tokenizer in {source}; pass --tokenizer with the model directory it came from") from None
    if onnx_file is None:
        torch_model = load_classifier(path)
        config, call = torch_model.config, torch_call(torch_model)
    else:
        config = AutoConfig.from_pretrained(str(source)) if (source / "config.json").is_file() else None
        if onnx_file.suffix == ".xml":
            from .openvino_runtime import openvino_call

            call = openvino_call(onnx_file, threads)
        else:
            call = onnx_call(onnx_file, threads)
    limit = _graph_length_limit(onnx_file) if onnx_file else None
    pad_to = pads_to_full_length(SimpleNamespace(config=config))
    return Scorer(call, tok, limit or max_length_of(config), pad_to, _labels(config))


def _graph_length_limit(path: Path) -> int | None:
    """The L an exported graph records (ONNX metadata or OpenVINO rt_info; plain graphs may have none)."""
    if path.suffix == ".xml":
        from .openvino_runtime import length_limit, read_model

        return length_limit(read_model(path))
    return graph_length_limit(path)


def _decoded_lines(path: Path, errors: dict[int, str]):
    """The file's lines as text; a line that is not UTF-8 is recorded as an error (and replaced to keep going)."""
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors[number] = f"not UTF-8 (byte {exc.start})"
            line = raw.decode("utf-8", errors="replace")
        yield line.lstrip("\ufeff") if number == 1 else line


def read_rows(path: str | Path, text_columns: list[str] | None = None) -> tuple[list[int], list[str], list | None]:
    """(line numbers, texts, second texts or None) of a .csv/.tsv (header row), .jsonl or plain-text file (one
    text per line). Raises MABertError naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise MABertError(f"{path} not found")
    suffix = path.suffix.lower()
    columns = text_columns or ["text"]
    if len(columns) > 2:
        raise MABertError(f"--text-columns takes one column or a pair, got {len(columns)}")
    errors: dict[int, str] = {}
    records = []  # (line, [values])
    lines = _decoded_lines(path, errors)
    if suffix in (".csv", ".tsv"):
        reader = csv.reader(lines, delimiter="\t" if suffix == ".tsv" else ",")
        header = next(reader, [])
        missing = [c for c in columns if c not in header]
        if missing:
            raise MABertError(f"{path}: columns {missing} not in header {header[:8]}; choose them with --text-columns")
        where = [header.index(c) for c in columns]
        for row in reader:  # a blank line is an empty row here (DictReader would skip it silently)
            if not row:
                errors.setdefault(reader.line_num, "empty line")
                continue
            records.append((reader.line_num, [row[i] if i < len(row) else None for i in where]))
    elif suffix == ".jsonl":
        for number, line in enumerate(lines, start=1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                errors.setdefault(number, "not a JSON object")
                continue
            if not isinstance(item, dict):
                errors.setdefault(number, "not a JSON object")
                continue
            records.append((number, [item.get(c) for c in columns]))
    else:
        if text_columns:
            raise MABertError(f"{path}: --text-columns is for .csv/.tsv/.jsonl files; a plain-text file has one "
                              "text per line")
        records = [(number, [line.rstrip("\r\n")]) for number, line in enumerate(lines, start=1)]
    for number, values in records:
        for column, value in zip(columns, values):
            if value is None:
                errors.setdefault(number, f"no {column!r} value")
            elif not isinstance(value, str):
                errors.setdefault(number, f"{column!r} is not a string")
            elif not value.strip():
                errors.setdefault(number, f"empty {column!r}" if suffix in (".csv", ".tsv", ".jsonl") else "empty line")
    if errors:
        shown = "; ".join(f"line {n}: {errors[n]}" for n in sorted(errors)[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise MABertError(f"{path}: {len(errors)} bad row(s): {shown}{more}; fix or remove them")
    if not records:
        raise MABertError(f"{path}: no rows to score")
    numbers = [n for n, _ in records]
    pairs = [v[1] for _, v in records] if len(columns) == 2 else None
    return numbers, [v[0] for _, v in records], pairs


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predictions(logits: np.ndarray, labels: list[str]) -> list[dict]:
    """One record per document: label, its probability and every class probability; or the regression value."""
    if logits.shape[-1] == 1:
        return [{"value": float(row[0])} for row in logits]
    names = labels or [str(i) for i in range(logits.shape[-1])]
    if len(names) != logits.shape[-1]:
        raise MABertError(f"the model gives {logits.shape[-1]} outputs but its config names {len(names)} labels")
    out = []
    for row in _softmax(logits):
        best = int(row.argmax())
        out.append({"label": names[best], "score": float(row[best]),
                    **{f"prob_{name}": float(p) for name, p in zip(names, row)}})
    return out


def write_predictions(path: str | Path, numbers: list[int], records: list[dict]) -> Path:
    """.jsonl, .tsv or (otherwise) .csv, one row per input in input order, with its input line number."""
    path = Path(path)
    rows = [{"line": n, **r} for n, r in zip(numbers, records)]
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            if path.suffix.lower() == ".jsonl":
                handle.writelines(json.dumps(r) + "\n" for r in rows)
            else:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]),
                                        delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                writer.writeheader()
                writer.writerows(rows)
    return path


def predict_file(model, input_path, out_path, text_columns=None, tokenizer=None, long_text: str = "truncate",
                 stride: int | None = None, batch_size: int = 32, threads: int | None = None,
                 progress: bool = True) -> dict:
    """Score every row of `input_path` and write the predictions to `out_path`; returns a small summary."""
    import time

    numbers, texts, pairs = read_rows(input_path, text_columns)
    scorer = load_scorer(model, tokenizer, threads)
    start = time.time()
    logits = document_logits(scorer.call, scorer.tokenizer, texts, scorer.max_length, long_text, stride, pairs,
                             batch_size, scorer.pad_to, progress)
    seconds = time.time() - start
    write_predictions(out_path, numbers, predictions(logits, scorer.labels))
    return {"rows": len(texts), "seconds": round(seconds, 2),
            "rows_per_second": round(len(texts) / max(seconds, 1e-6), 1),
            "max_length": scorer.max_length, "long_text": long_text, "out": str(out_path)}
