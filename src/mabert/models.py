"""Which MA model class serves a (model type, head) pair."""
from __future__ import annotations

HEADS = ("seqcls", "mlm", "base")


def ma_model_class(model_type: str, head: str):
    from . import modeling_ma_bert as b
    from . import modeling_ma_distilbert as d

    table = {
        ("ma-bert", "seqcls"): b.MABertForSequenceClassification,
        ("ma-bert", "mlm"): b.MABertForMaskedLM,
        ("ma-bert", "base"): b.MABertModel,
        ("ma-distilbert", "seqcls"): d.MADistilBertForSequenceClassification,
        ("ma-distilbert", "mlm"): d.MADistilBertForMaskedLM,
        ("ma-distilbert", "base"): d.MADistilBertModel,
    }
    return table[model_type, head]
