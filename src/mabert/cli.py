"""The `mabert` command line: one verb per stage."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import MABertError


def _convert(args):
    from .conversion import convert_to_dir

    overrides = {"softmax_mask_mode": args.mask_mode, "norm_type": args.norm, "share_softmax_nn": args.share_softmax,
                 "softmax_input_size": args.softmax_input_size, "softmax_hidden_layer_size": args.softmax_hidden_size,
                 "ffn_hidden_act": args.ffn_act, "activation_bounds": not args.no_bounds}
    if args.head != "mlm":  # masked-LM models have no pooler
        overrides["pooler_act"] = args.pooler_act
    path = convert_to_dir(args.teacher, args.out_dir, head=args.head, num_labels=args.num_labels, **overrides)
    print(f"wrote MA student to {path}")


def _import_original(args):
    from .checkpoint import from_original_checkpoint

    overrides = {}
    if args.heads:
        overrides["num_attention_heads"] = args.heads
    model = from_original_checkpoint(args.checkpoint, original_config=args.config, save_to=args.out_dir, **overrides)
    print(f"loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) "
          f"into {args.out_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mabert", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("convert", help="build an MA student from a BERT/DistilBERT teacher (path or hub id)")
    p.add_argument("teacher")
    p.add_argument("out_dir")
    p.add_argument("--head", choices=["seqcls", "mlm", "base"])
    p.add_argument("--num-labels", type=int)
    p.add_argument("--mask-mode", choices=["multiply", "masked"], default="masked",
                   help="masked: any length ≤ L, padding-independent; multiply: the original rule")
    p.add_argument("--norm", choices=["power", "layer"], default="power")
    p.add_argument("--share-softmax", action="store_true")
    p.add_argument("--softmax-input-size", type=int, default=128)
    p.add_argument("--softmax-hidden-size", type=int, default=128)
    p.add_argument("--ffn-act", default="relu")
    p.add_argument("--pooler-act", choices=["tanh", "relu", "identity"], default="relu",
                   help="relu (default) leaves no transcendental op; tanh keeps BERT's pooler as is")
    p.add_argument("--no-bounds", action="store_true",
                   help="no activation bounds (by default clamps calibrated after training keep outputs finite)")
    p.set_defaults(func=_convert)

    p = verbs.add_parser("import-original", help="import a released MA-BERT/MA-DistilBERT .pt state dict")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--config", help="the original config.json, if you have it")
    p.add_argument("--heads", type=int, help="number of attention heads (not inferable; default 12)")
    p.set_defaults(func=_import_original)

    from . import cli_more

    cli_more.add_verbs(verbs)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except MABertError as exc:
        print(f"mabert {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
