"""mabert: matrix-arithmetic-only BERT (MA-BERT) models, conversion, fusion, export and benchmarks."""
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .configuration import MABertConfig, MADistilBertConfig
from .modeling_ma_bert import MABertForMaskedLM, MABertForSequenceClassification, MABertModel
from .modeling_ma_distilbert import (
    MADistilBertForMaskedLM,
    MADistilBertForSequenceClassification,
    MADistilBertModel,
)
from .powernorm import PowerNorm
from .softmax_approx import SoftmaxApproximator

__version__ = "0.1.0"

for _config, _base, _mlm, _seqcls in (
    (MABertConfig, MABertModel, MABertForMaskedLM, MABertForSequenceClassification),
    (MADistilBertConfig, MADistilBertModel, MADistilBertForMaskedLM, MADistilBertForSequenceClassification),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _mlm, exist_ok=True)
    AutoModelForSequenceClassification.register(_config, _seqcls, exist_ok=True)


def convert(*args, **kwargs):
    from .conversion import convert as _convert

    return _convert(*args, **kwargs)


def from_original_checkpoint(*args, **kwargs):
    from .checkpoint import from_original_checkpoint as _load

    return _load(*args, **kwargs)


__all__ = [
    "MABertConfig", "MADistilBertConfig", "MABertModel", "MABertForMaskedLM", "MABertForSequenceClassification",
    "MADistilBertModel", "MADistilBertForMaskedLM", "MADistilBertForSequenceClassification",
    "PowerNorm", "SoftmaxApproximator", "convert", "from_original_checkpoint",
]
