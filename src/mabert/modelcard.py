"""Model cards: the README.md (Hub format: YAML front matter + Markdown) of every model directory mabert writes.

`build_card(facts)` renders a card from a dict of facts; the facts themselves are kept in the front matter under
`mabert:`, so a later stage (evaluate --update-card, export) reads them back with `read_facts` and adds its own.
Facts (all optional): path, stage, config (the model's config dict), base_model, teacher, task, data, steps,
wall_time_s, final_loss, settings, metrics ([{task, split, examples, values, long_text}]), fold_error, parity
(the fused fp32 graph's deviation), audit ({file: {passed, forbidden}}), onnx_files, openvino_files,
source_model.
"""
from __future__ import annotations

import re
from pathlib import Path

from .choices import ATTENTION_APPROXIMATOR, ATTENTION_POLY, ATTENTION_RELU
from .io import atomic_file
from .registry import find_family, is_ma

_MA_KEYS = ("attention_kind", "softmax_input_size", "softmax_hidden_layer_size", "share_softmax_nn", "softmax_mask_mode",
            "norm_type", "ffn_hidden_act", "pooler_act", "powernorm_backward")
_ATTENTION_WORDS = {  # config.attention_kind → how the attention weights are computed
    ATTENTION_APPROXIMATOR: "softmax replaced by a two-layer ReLU network per score row",
    ATTENTION_RELU: "softmax replaced by ReLU(scores)/L (an option beyond the paper)",
    ATTENTION_POLY: "softmax itself evaluated with products, sums and ReLU (PolySoftmax, an option beyond the paper)",
}
_HUB_DATASETS = {"imdb": ("stanfordnlp/imdb", None), **{t: ("nyu-mll/glue", t.split("-")[0]) for t in (
    "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli-mm", "qnli", "rte", "wnli")}}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_STAGES = {"convert": "converted from its teacher by `mabert convert` (not yet trained as MA)",
           "import-original": "imported from a released MA-BERT checkpoint by `mabert import-original`",
           "fit-softmax": "with approximators fitted to the teacher's softmax by `mabert fit-softmax`",
           "kd-pretrain": "KD pre-trained on unlabelled text by `mabert kd-pretrain`",
           "distill": "KD fine-tuned from its teacher by `mabert distill`",
           "finetune": "fine-tuned by `mabert finetune`",
           "export": "fused and exported to ONNX by `mabert export`"}


def _pipeline_tag(config: dict) -> str:
    names = " ".join(config.get("architectures") or [])
    if "MaskedLM" in names:
        return "fill-mask"
    if "SequenceClassification" in names or config.get("id2label"):
        return "text-classification"
    return "feature-extraction"


def _hub_id(name) -> str | None:
    """Only a hub id belongs in `base_model`; a local path is named in the body instead."""
    name = str(name) if name else ""
    return name if _HUB_ID.match(name) and not Path(name).exists() else None


def _name(facts: dict) -> str:
    path = Path(facts.get("path") or "model")
    return f"{path.parent.name}/{path.name}" if path.name == "model" and path.parent.name else path.name


def _front_matter(facts: dict, config: dict) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    ma = is_ma(config)
    exported = facts.get("stage") == "export"
    tags = ["ma-bert", "matrix-arithmetic-only"] if ma else [config.get("model_type") or "bert"]
    tags += ["onnx", "optimum"] if exported else []
    tags += ["knowledge-distillation"] if facts.get("stage") in ("distill", "kd-pretrain") else []
    results, datasets = [], []
    for entry in facts.get("metrics", []):
        hub, subset = _HUB_DATASETS.get(entry.get("task"), (None, None))
        datasets += [hub] if hub and hub not in datasets else []
        results += [EvalResult(task_type="text-classification", dataset_type=hub or entry["task"],
                               dataset_name=entry["task"], dataset_config=subset, dataset_split=entry["split"],
                               metric_type=name, metric_value=value) for name, value in entry["values"].items()]
    hub, _ = _HUB_DATASETS.get(facts.get("task"), (None, None))
    datasets = ([hub] if hub and hub not in datasets else []) + datasets
    metrics = sorted({r.metric_type for r in results})
    saved = {k: v for k, v in facts.items() if k not in ("config", "path")}
    data = ModelCardData(library_name="transformers", base_model=_hub_id(facts.get("base_model")), tags=tags,
                         datasets=datasets or None, metrics=metrics or None, pipeline_tag=_pipeline_tag(config),
                         model_name=_name(facts) if results else None, eval_results=results or None, mabert=saved)
    return data.to_yaml()


def _how_to_load_openvino(facts: dict, path: str) -> list[str]:
    files = facts.get("openvino_files", [])
    if "openvino_model.xml" not in files:
        return []
    int8 = '  # int8: file_name="openvino_model_int8.xml"' if "openvino_model_int8.xml" in files else ""
    return ["", "The OpenVINO IR beside it (`pip install optimum-intel==1.27.0`):", "", "```python",
            "from optimum.intel import OVModelForSequenceClassification", "",
            f'model = OVModelForSequenceClassification.from_pretrained({int8}',
            f'    "{path}", ov_config={{"INFERENCE_PRECISION_HINT": "f32"}})  # never bf16 (1e-3 off here)', "```"]


def _how_to_load(facts: dict, config: dict) -> list[str]:
    path = facts.get("path") or "path/to/model"
    if facts.get("stage") == "export":
        has_int8 = "model_quantized.onnx" in facts.get("onnx_files", [])
        int8 = '  # int8: file_name="model_quantized.onnx"' if has_int8 else ""
        return ["```python", "from optimum.onnxruntime import ORTModelForSequenceClassification",
                "from transformers import AutoTokenizer, pipeline", "",
                f'model = ORTModelForSequenceClassification.from_pretrained("{path}"){int8}',
                f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
                'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)',
                'classify("a film worth seeing", truncation=True)  # inputs longer than L must be truncated', "```", "",
                f"or `mabert predict {path} --input texts.csv --out predictions.csv` (long documents: `--long-text`). "
                "The graph needs only ONNX Runtime; the optimum classes come with `pip install optimum-onnx==0.1.0`."
                ] + _how_to_load_openvino(facts, path)
    task = _pipeline_tag(config)
    register = (["import mabert  # registers the MA model types with the transformers Auto classes"]
                if is_ma(config) else [])
    lines = ["```python", *register, "from transformers import pipeline", "",
             f'pipe = pipeline("{task}", model="{path}")', "```"]
    if task == "text-classification":
        lines += ["", f"Score a file: `mabert predict {path} --input texts.csv --out predictions.csv`; export a "
                      f"matrix-arithmetic-only ONNX graph: `mabert export {path} OUT_DIR`."]
    return lines


def build_card(facts: dict) -> str:
    """The README.md text of a model directory, from `facts` (see the module docstring)."""
    config = facts.get("config") or {}
    ma = is_ma(config)
    kind = {"fill-mask": "masked language model", "text-classification": "sequence classifier",
            "feature-extraction": "encoder"}[_pipeline_tag(config)]
    family = find_family(config).display if ma and find_family(config) else str(config.get("model_type", "BERT"))
    stage = facts.get("stage")
    lines = [f"# {_name(facts)}", "",
             f"A{'n' if family[0] in 'AEIMO' else ''} {family} {kind}"
             + (f", {_STAGES[stage]}" if stage in _STAGES else "") + "."]
    if ma:
        attention = _ATTENTION_WORDS.get(config.get("attention_kind"), _ATTENTION_WORDS[ATTENTION_APPROXIMATOR])
        lines += ["", f"An MA-BERT (ICLR 2023) model: {attention}, GELU replaced by ReLU and LayerNorm by "
                      "PowerNorm, so that inference (after `mabert.fuse`) is matrix arithmetic and ReLU only.",
                  "", "## MA settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | {config[k]} |" for k in _MA_KEYS if k in config]
    lines += ["", "## Training", ""]
    for label, key in (("base model", "base_model"), ("teacher", "teacher"), ("source model", "source_model"),
                       ("task", "task"), ("data", "data"), ("steps", "steps"), ("wall time (s)", "wall_time_s"),
                       ("final loss", "final_loss")):
        if facts.get(key) is not None:
            lines.append(f"- {label}: {facts[key]}")
    settings = facts.get("settings") or {}
    if settings:
        lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if lines[-1] == "":
        lines.append("No training facts were recorded for this directory.")
    lines += ["", "## Evaluation", ""]
    if facts.get("metrics"):
        lines += ["| task | split | examples | long text | metric | value |", "|---|---|---|---|---|---|"]
        lines += [f"| {m['task']} | {m['split']} | {m.get('examples', '')} | {m.get('long_text', 'truncate')} | {name} "
                  f"| {value:.4f} |" for m in facts["metrics"] for name, value in m["values"].items()]
        if stage == "export":
            lines += ["", "Measured on the PyTorch model before export; the fused fp32 graph computes the same "
                          "function (parity below). int8 graphs differ: measure them with `mabert predict`."]
    else:
        lines.append("Not evaluated yet: `mabert evaluate DIR --task T --update-card` adds the metrics here.")
    if stage == "export":
        audit = facts.get("audit") or {}  # {file: {passed, forbidden}}
        lines += ["", "## Export", "",
                  f"- files: {', '.join(facts.get('onnx_files', []))}; inputs input_ids, attention_mask"
                  f"{', token_type_ids' if config.get('type_vocab_size') else ''}; output logits; at most "
                  f"{config.get('softmax_input_size', 512)} tokens",
                  f"- fusion: folds verified in float64 (relative error {facts['fold_error']:.1e}); the fp32 graph "
                  f"deviates from the unfused model by {facts['parity']:.1e} (max relative, random padded batches)"
                  if facts.get("parity") is not None else "- not fused (exported as is)",
                  *(f"- operator audit of {name}: " + ("PASS, matrix arithmetic only" if result["passed"] else "FAIL: "
                    + ", ".join(f"{op}×{n}" for op, n in result["forbidden"].items()))
                    for name, result in audit.items()),
                  *([f"- integer-only graph {facts['integer_file']}: int8 activations and weights, int32 products, "
                     "fixed-point requantization, no float tensor between the embedding lookup and the logits "
                     "(outputs logits_int and its per-class dequantization logits); calibrated on "
                     f"{facts['integer_calibration_texts']} texts; its integer logits equal those of the NumPy "
                     f"reference `mabert.integer_reference` on {facts['integer_reference_texts']} texts, alone and padded together"]
                    if facts.get("integer_file") else []),
                  *([f"- OpenVINO IR: {', '.join(facts['openvino_files'])} (same inputs and output"
                     + ("; int8 by NNCF post-training quantization" if len(facts["openvino_files"]) > 1 else "")
                     + "); `mabert predict DIR/openvino_model.xml` runs it"]
                    if facts.get("openvino_files") else [])]
    lines += ["", "## How to load", "", *_how_to_load(facts, config), ""]
    return f"---\n{_front_matter(facts, config)}\n---\n\n" + "\n".join(lines)


def read_facts(model_dir: str | Path) -> dict:
    """The facts kept in a directory's card ({} when it has none)."""
    from huggingface_hub import ModelCard

    readme = Path(model_dir) / "README.md"
    if not readme.is_file():
        return {}
    return dict(ModelCard(readme.read_text(encoding="utf-8")).data.to_dict().get("mabert") or {})


def write_card(model_dir: str | Path, facts: dict) -> Path:
    """Render `facts` (plus the directory's config.json) into `model_dir`/README.md, atomically."""
    import json

    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    facts = {**facts, "path": str(model_dir),
             "config": json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}}
    with atomic_file(model_dir / "README.md") as tmp:
        tmp.write_text(build_card(facts), encoding="utf-8")
    return model_dir / "README.md"


def add_metrics(model_dir: str | Path, entry: dict) -> Path:
    """Record one evaluation ({task, split, examples, values[, long_text]}) in a directory's card, replacing an
    earlier one of the same task and split."""
    facts = read_facts(model_dir)
    others = [m for m in facts.get("metrics", []) if (m["task"], m["split"]) != (entry["task"], entry["split"])]
    return write_card(model_dir, {**facts, "metrics": others + [entry]})
