import json

from huggingface_hub import ModelCard
from transformers import BertTokenizerFast

from conftest import tiny_bert_config
from mabert.cli import main
from mabert.conversion import convert_to_dir
from mabert.modelcard import build_card, read_facts
from test_longtext import write_imdb
from test_predict import model_dir
from test_train import sentiment_data, tiny_teacher


def card_of(path):
    return ModelCard((path / "README.md").read_text())


def test_card_front_matter_is_hub_metadata_and_keeps_facts():
    facts = {"stage": "distill", "teacher": "/tmp/teacher", "base_model": "google-bert/bert-base-uncased",
             "task": "imdb", "steps": 12, "settings": {"lr": 2e-5},
             "metrics": [{"task": "imdb", "split": "test", "examples": 25000, "long_text": "windows",
                          "values": {"accuracy": 0.875}}],
             "config": tiny_bert_config(num_labels=2, architectures=["MABertForSequenceClassification"]).to_dict()}
    card = ModelCard(build_card(facts))
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.base_model == "google-bert/bert-base-uncased" and data.datasets == ["stanfordnlp/imdb"]
    assert {"ma-bert", "knowledge-distillation"} <= set(data.tags) and data.metrics == ["accuracy"]
    result = data.eval_results[0]
    assert (result.dataset_split, result.metric_type, result.metric_value) == ("test", "accuracy", 0.875)
    assert data.to_dict()["mabert"] == {k: v for k, v in facts.items() if k != "config"}
    assert "| imdb | test | 25000 | windows | accuracy | 0.8750 |" in card.text
    assert "| `softmax_input_size` | 16 |" in card.text and "KD fine-tuned" in card.text
    local = ModelCard(build_card({**facts, "base_model": "/tmp"})).data  # a local path is no hub base model
    assert local.base_model is None


def test_training_stages_write_cards_and_evaluate_adds_metrics(tmp_path, tiny_vocab):
    from mabert.train import TrainSettings, finetune

    tokenizer = BertTokenizerFast(vocab_file=str(tiny_vocab))
    summary = finetune(tiny_teacher(), tokenizer, sentiment_data(1), tmp_path / "t", TrainSettings(max_steps=2),
                       card={"task": "rotten_tomatoes", "data": "12 sentences"})
    facts = read_facts(tmp_path / "t" / "model")
    assert facts["stage"] == "finetune" and facts["steps"] == summary["steps"] == 2
    assert facts["data"] == "12 sentences" and "metrics" not in facts
    convert_to_dir(str(tmp_path / "t" / "model"), tmp_path / "s", softmax_input_size=16, softmax_mask_mode="masked",
                   approximator_init_steps=5)
    card = card_of(tmp_path / "s")
    assert card.data.to_dict()["mabert"]["stage"] == "convert" and "`mabert convert`" in card.text
    assert "import mabert" in card.text and "| `softmax_mask_mode` | masked |" in card.text
    assert "| `powernorm_backward` | exact |" in card.text
    assert main(["convert", str(tmp_path / "t" / "model"), str(tmp_path / "s2"), "--softmax-input-size", "16",
                 "--powernorm-backward", "approximate"]) == 0
    assert "| `powernorm_backward` | approximate |" in card_of(tmp_path / "s2").text
    assert json.loads((tmp_path / "s2" / "config.json").read_text())["powernorm_backward"] == "approximate"

    write_imdb(tmp_path, {"test": [("pos", "the movie was great"), ("neg", "bad plot")]})
    args = ["evaluate", str(tmp_path / "s"), "--task", "imdb", "--data-dir", str(tmp_path), "--update-card"]
    assert main(args) == 0 and main(args + ["--long-text", "windows"]) == 0  # same task and split: replaced
    facts = read_facts(tmp_path / "s")
    assert facts["stage"] == "convert" and len(facts["metrics"]) == 1
    assert facts["metrics"][0]["split"] == "test" and facts["metrics"][0]["long_text"] == "windows"
    assert card_of(tmp_path / "s").data.eval_results[0].metric_type == "accuracy"
    assert main(["evaluate", "some/hub-id", "--task", "imdb", "--data-dir", str(tmp_path), "--update-card"]) == 2


def test_export_dir_card_names_parity_audit_and_source_facts(tmp_path, tiny_vocab, capsys):
    _, path = model_dir(tmp_path, tiny_vocab)
    (path / "README.md").write_text(build_card({"stage": "distill", "steps": 7, "config": {}}))
    assert main(["export", str(path), str(tmp_path / "exp"), "--int8"]) == 0
    facts = read_facts(tmp_path / "exp")
    assert facts["stage"] == "export" and facts["steps"] == 7 and facts["source_model"] == str(path)
    assert 0 <= facts["fold_error"] < 1e-9 and 0 <= facts["parity"] < 1e-4
    assert facts["audit"] == {"model.onnx": {"passed": True, "forbidden": {}},
                              "model_quantized.onnx": {"passed": True, "forbidden": {}}}
    text = card_of(tmp_path / "exp").text
    assert "folds verified in float64" in text and "operator audit of model.onnx: PASS" in text
    assert "ORTModelForSequenceClassification" in text
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["softmax_input_size"] == 16
    assert json.loads((tmp_path / "exp" / "tokenizer_config.json").read_text())["model_max_length"] == 16
    assert main(["export", str(path), str(tmp_path / "x.onnx"), "--int8"]) == 2
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (path / name).unlink()
    assert main(["export", str(path), str(tmp_path / "exp2")]) == 2
    assert "no tokenizer files" in capsys.readouterr().err and not (tmp_path / "exp2").exists()
