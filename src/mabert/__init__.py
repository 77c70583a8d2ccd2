"""mabert: matrix-arithmetic-only BERT (MA-BERT) models, conversion, fusion, export and benchmarks."""
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertTokenizer,
    BertTokenizerFast,
    DistilBertTokenizer,
    DistilBertTokenizerFast,
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

for _config, _base, _mlm, _seqcls, _slow, _fast in (
    (MABertConfig, MABertModel, MABertForMaskedLM, MABertForSequenceClassification, BertTokenizer, BertTokenizerFast),
    (MADistilBertConfig, MADistilBertModel, MADistilBertForMaskedLM, MADistilBertForSequenceClassification,
     DistilBertTokenizer, DistilBertTokenizerFast),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _mlm, exist_ok=True)
    AutoModelForSequenceClassification.register(_config, _seqcls, exist_ok=True)
    # the base family's tokenizers, for folders whose tokenizer_config.json names no class
    AutoTokenizer.register(_config, slow_tokenizer_class=_slow, fast_tokenizer_class=_fast, exist_ok=True)


def convert(*args, **kwargs):
    from .conversion import convert as _convert

    return _convert(*args, **kwargs)


def from_original_checkpoint(*args, **kwargs):
    from .original_checkpoint import from_original_checkpoint as _load

    return _load(*args, **kwargs)


__all__ = [
    "MABertConfig", "MADistilBertConfig", "MABertModel", "MABertForMaskedLM", "MABertForSequenceClassification",
    "MADistilBertModel", "MADistilBertForMaskedLM", "MADistilBertForSequenceClassification",
    "PowerNorm", "SoftmaxApproximator", "convert", "from_original_checkpoint",
]
