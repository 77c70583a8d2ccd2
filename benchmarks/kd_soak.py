"""A long KD run on a small model (a benchmark, not a test): the loss must stay finite and fall.

    .venv/bin/python benchmarks/kd_soak.py --out soak
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def kd_soak(out, steps=2000):
    """A long KD run on a small model: loss must stay finite and fall."""
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from mabert.conversion import convert
    from mabert.train import TrainSettings, distill, finetune

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "great", "awful", "film", "plot", "not",
             "very", "the", "was", "fun", "dull"]
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    generator = torch.Generator().manual_seed(0)
    texts, labels = [], []
    for _ in range(512):
        picks = torch.randint(5, len(words), (6,), generator=generator).tolist()
        sentence = [words[i] for i in picks]
        score = sum(w in ("good", "great", "fun") for w in sentence) - sum(w in ("bad", "awful", "dull") for w in sentence)
        texts.append(" ".join(sentence))
        labels.append(int(score > 0))
    data = Dataset.from_dict({"text_a": texts, "label": labels})
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=128, num_labels=2))
    teacher = finetune(teacher, tokenizer, data, out / "soak-teacher", TrainSettings(epochs=10, batch_size=16, lr=1e-3))["model"]
    student = convert(teacher, softmax_input_size=32, softmax_mask_mode="masked", warmup_updates=1000,
                      accumulation_step=1)
    summary = distill(teacher, student, tokenizer, data, out / "soak-student",
                      TrainSettings(max_steps=steps, batch_size=16, lr=2e-4))
    losses = [h["total"] for h in summary["history"]]
    first, last = sum(losses[:100]) / 100, sum(losses[-100:]) / 100
    return {"steps": len(losses), "all_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
            "mean_loss_first_100": first, "mean_loss_last_100": last}



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="soak")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = kd_soak(out, args.steps)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(result)


if __name__ == "__main__":
    main()
