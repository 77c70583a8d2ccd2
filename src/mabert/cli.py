"""The `mabert` command line: parsing, the output guard, one-line errors and signals around the verbs of
`mabert.commands`."""
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

from .commands import add_verbs
from .errors import MABertError, Terminated, explain

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mabert", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    add_verbs(verbs)
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
