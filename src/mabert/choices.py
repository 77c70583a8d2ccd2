"""The named choices of mabert's settings, defined once: configs validate against them, the command line offers
them (argparse `choices=`), and the code compares with these names rather than with string literals.
Plain tuples of strings (they go into config.json and onto the command line as they are). No imports: the
command line reads this before torch is loaded."""
from __future__ import annotations

# softmax_mask_mode (mabert.softmax_approx): "multiply" is the released MA-BERT rule (scores × 0/1 key mask);
# "masked" also zeroes the outputs at padded keys (padding-independent, any length ≤ L).
MASK_MULTIPLY, MASK_MASKED = "multiply", "masked"
MASK_MODES = (MASK_MULTIPLY, MASK_MASKED)

# attention_kind (mabert.softmax_approx): the paper's softmax approximator; or, not in the paper, ReLU(scores)/L, or
# "poly": softmax itself evaluated with matrix arithmetic and ReLU (no parameters, nothing to fit)
ATTENTION_APPROXIMATOR, ATTENTION_RELU, ATTENTION_POLY = "approximator", "relu", "poly"
ATTENTION_KINDS = (ATTENTION_APPROXIMATOR, ATTENTION_RELU, ATTENTION_POLY)

# norm_type (mabert.powernorm.make_norm)
NORM_POWER, NORM_LAYER = "power", "layer"
NORM_TYPES = (NORM_POWER, NORM_LAYER)

# powernorm_backward (mabert.powernorm.PowerNorm, training only): "exact" differentiates through the batch statistic
# the forward divides by; "approximate" is the reference's PowerNorm backward with its running correction Γ
BACKWARD_EXACT, BACKWARD_APPROXIMATE = "exact", "approximate"
POWERNORM_BACKWARDS = (BACKWARD_EXACT, BACKWARD_APPROXIMATE)

# pooler_act (MA-BERT's pooler; mabert.task_heads.pooler_activation): "tanh" as in BERT, or none transcendental
POOLER_TANH, POOLER_RELU, POOLER_IDENTITY = "tanh", "relu", "identity"
POOLER_ACTIVATIONS = (POOLER_TANH, POOLER_RELU, POOLER_IDENTITY)

# ffn_hidden_act offered on the command line (mabert.feedforward accepts any transformers activation name);
# "relu" is MA-BERT's, the others the originals it replaces
FFN_RELU = "relu"
FFN_ACTIVATIONS = (FFN_RELU, "gelu", "gelu_new", "silu")

# model heads (mabert.registry.ma_model_class, mabert convert --head)
HEAD_SEQCLS, HEAD_MLM, HEAD_BASE = "seqcls", "mlm", "base"
HEADS = (HEAD_SEQCLS, HEAD_MLM, HEAD_BASE)
