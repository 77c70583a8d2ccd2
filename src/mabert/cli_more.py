"""Verbs for the later stages (fuse/export/audit, bench, training, demo) registered onto the CLI."""
from __future__ import annotations


def _export(args):
    from .export import audit, export_onnx, format_audit
    from .fuse import fuse
    from .io import load_classifier

    model = load_classifier(args.model)
    is_ma = getattr(model.config, "model_type", "").startswith("ma-")
    target = fuse(model) if is_ma and not args.no_fuse else model
    path = export_onnx(target, args.out, opset=args.opset)
    print(f"wrote {path} ({'fused MA' if target is not model else type(model).__name__})")
    if args.audit:
        print(format_audit(audit(path)))


def _audit(args):
    import json

    from .export import audit, format_audit

    report = audit(args.onnx)
    print(json.dumps(report, indent=2) if args.json else format_audit(report))
    return 0 if report["passed"] else 1


def add_verbs(verbs) -> None:
    p = verbs.add_parser("export", help="fuse an MA model (exactly) and export it to ONNX with dynamic axes")
    p.add_argument("model", help="model directory (MA or plain BERT)")
    p.add_argument("out", help="output .onnx file")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-fuse", action="store_true", help="export the unfused module graph")
    p.add_argument("--audit", action="store_true", help="print the operator audit afterwards")
    p.set_defaults(func=_export)

    p = verbs.add_parser("audit", help="list ONNX op types; exit 1 if any non-matrix-arithmetic op is present")
    p.add_argument("onnx")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_audit)
