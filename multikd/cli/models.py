"""`multikd models` (the zoo, checking a checkpoint against it) and `multikd teachers
download` (the published CIFAR-100 teachers, checked against the zoo)."""

from __future__ import annotations

from multikd.cli.common import add_data_root, help_of


def add_models(sub) -> None:
    models = sub.add_parser(
        "models", help="list the model zoo, check checkpoints against it",
        description="Without an action: the zoo, as 'multikd models list'.",
    )
    models.set_defaults(func=_cmd_models_list, num_classes=100)
    msub = models.add_subparsers(title="models commands", metavar="ACTION")

    p = msub.add_parser("list", help="zoo architectures: parameter counts, stage features")
    p.add_argument("--num-classes", type=int, default=100, help="classifier outputs")
    p.set_defaults(func=_cmd_models_list)

    p = msub.add_parser(
        "check", help="load a checkpoint into an architecture and report whether it fits"
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="FILE", help="checkpoint file or run directory"
    )
    p.add_argument("--arch", required=True, help="zoo architecture or timm:<name>")
    p.add_argument(
        "--num-classes", type=int, default=None,
        help="classifier outputs (default: what the file records, else 100)",
    )
    p.set_defaults(func=_cmd_models_check)


def _cmd_models_list(args) -> int:
    from multikd.models import list_models
    from multikd.models.meta import describe_architecture

    from multikd.models.cost import human, model_cost

    rows = [describe_architecture(name, args.num_classes) for name in list_models()]
    width = max(len("name"), *(len(row["name"]) for row in rows))
    print(f"{'name':<{width}} {'params':>11}  {'MACs':>6}  {'pooled':>6}  "
          "stage features (C x H x W on 32x32)")
    for row in rows:
        stages = ", ".join("x".join(map(str, s)) for s in row["stage_feature_shapes"])
        pooled = row["pooled_feature_dim"]
        macs = human(model_cost(row["name"], args.num_classes).macs)
        print(f"{row['name']:<{width}} {row['params']:>11,}  {macs:>6}  {pooled:>6}  {stages}")
    print("MACs: multiply-accumulates per 32x32 image (convolutions and linear layers).")
    print("timm:<name> builds any timm architecture (no pretrained weights are downloaded).")
    return 0


def _cmd_models_check(args) -> int:
    from multikd.models import create_model
    from multikd.models.checkpoint import load_checkpoint, read_checkpoint

    ckpt = read_checkpoint(args.checkpoint)
    num_classes = args.num_classes or ckpt.num_classes or 100
    model = create_model(args.arch, num_classes=num_classes)
    meta = load_checkpoint(model, ckpt)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"ok: {ckpt.source} fits {model.arch_name} ({num_classes} classes): "
        f"{len(ckpt.state)} tensors, {params:,} parameters"
    )
    recorded = {k: v for k, v in meta.items() if _is_recorded_scalar(v)}
    if recorded:
        print("recorded: " + ", ".join(f"{k} {_recorded_text(v)}" for k, v in recorded.items()))
    return 0


def _is_recorded_scalar(value) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _recorded_text(value) -> str:
    import torch

    value = value.item() if isinstance(value, torch.Tensor) else value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def add_teachers(sub) -> None:
    teachers = sub.add_parser("teachers", help="download the published CIFAR-100 teachers")
    teachers.set_defaults(func=help_of(teachers))
    tsub = teachers.add_subparsers(title="teachers commands", metavar="ACTION")
    p = tsub.add_parser(
        "download", help="mdistiller's cifar_teachers.tar, checked against the zoo",
        description="Downloads the release archive (resumable), loads every checkpoint into "
        "its zoo architecture, puts OUT/<arch>_vanilla/ckpt_epoch_240.pth into place (the "
        "layout of mdistiller, RepDistiller and `multikd bench --teachers-dir OUT`), records "
        "the archive's sha256 in OUT/teachers-manifest.json, and, when CIFAR-100 is under "
        "the data root, compares each teacher's test accuracy with the published one.",
    )
    p.add_argument("--source", default="mdistiller", choices=["mdistiller"])
    p.add_argument("--out", default="teachers", help="teachers folder (default ./teachers)")
    p.add_argument("--url", help="download from this mirror (or file:///path) instead")
    p.add_argument("--force", action="store_true", help="replace teachers already in --out")
    add_data_root(p)
    p.add_argument("--no-eval", action="store_true", help="do not measure test accuracy")
    p.add_argument("--device", default="auto", help="for the accuracy: auto, cpu, cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=_cmd_teachers_download)


def _cmd_teachers_download(args) -> int:
    from multikd.bench.published import check_teachers, download_teachers

    out = download_teachers(args.out, source=args.source, url=args.url, force=args.force,
                            progress=not args.quiet)
    report = check_teachers(out, source=args.source, data_root=args.data_root,
                            evaluate=not args.no_eval, device=args.device)
    print(report.text())
    return 0 if report.all_ok else 1
