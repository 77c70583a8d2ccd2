"""Which MA model class serves a (model type, head) pair."""
from __future__ import annotations

from .choices import HEAD_BASE, HEAD_MLM, HEAD_SEQCLS, HEADS  # noqa: F401  (HEADS: imported from here before)
from .registry import BERT, DISTILBERT


def ma_model_class(model_type: str, head: str):
    from . import modeling_ma_bert as b
    from . import modeling_ma_distilbert as d

    table = {
        (BERT.ma_model_type, HEAD_SEQCLS): b.MABertForSequenceClassification,
        (BERT.ma_model_type, HEAD_MLM): b.MABertForMaskedLM,
        (BERT.ma_model_type, HEAD_BASE): b.MABertModel,
        (DISTILBERT.ma_model_type, HEAD_SEQCLS): d.MADistilBertForSequenceClassification,
        (DISTILBERT.ma_model_type, HEAD_MLM): d.MADistilBertForMaskedLM,
        (DISTILBERT.ma_model_type, HEAD_BASE): d.MADistilBertModel,
    }
    return table[model_type, head]
