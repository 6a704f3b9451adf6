"""`multikd data`: inspect, verify, download and synthesize datasets."""

from __future__ import annotations

from multikd.cli.common import add_data_root, add_synthetic, help_of, synthetic_options


def add_data(sub) -> None:
    data = sub.add_parser("data", help="inspect, verify and synthesize datasets")
    data.set_defaults(func=help_of(data))
    dsub = data.add_subparsers(title="data commands", metavar="ACTION")

    p = dsub.add_parser("info", help="split sizes, class count, per-channel mean/std")
    p.add_argument("--dataset", default="synthetic",
                   help="synthetic (default), cifar100 or cifar10")
    add_data_root(p)
    p.add_argument("--val-size", type=int, default=0, help="validation images carved from train")
    add_synthetic(p)
    p.set_defaults(func=_cmd_data_info)

    p = dsub.add_parser("verify", help="compare the files with the official md5 checksums")
    p.add_argument("--dataset", default="cifar100", help="cifar100 or cifar10")
    add_data_root(p)
    p.set_defaults(func=_cmd_data_verify)

    p = dsub.add_parser(
        "synth-cifar", help="write synthetic images in the exact CIFAR pickle file format"
    )
    p.add_argument("--out", required=True, help="folder to write into (the data root)")
    p.add_argument("--dataset", default="cifar100", help="cifar100 or cifar10")
    p.add_argument("--train", type=int, default=5000, help="training images")
    p.add_argument("--test", type=int, default=1000, help="test images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_data_synth)

    p = dsub.add_parser(
        "download", help="download the official tarball (md5-checked, resumable), then verify",
        description="The only command that downloads a dataset. An interrupted download "
        "resumes when the same command is run again; nothing is extracted before the md5 "
        "matches, and the folder appears whole or not at all.",
    )
    p.add_argument("--dataset", default="cifar100", help="cifar100 (default) or cifar10")
    add_data_root(p)
    p.add_argument("--url", help="download from this mirror (or file:///path) instead")
    p.add_argument("--md5", help="with --url: the mirror's file checksum, if it is not the "
                   "official archive (the extracted files are still verified)")
    p.add_argument("--force", action="store_true",
                   help="replace a folder that is there but not the official files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=_cmd_data_download)


def _cmd_data_info(args) -> int:
    from multikd import data

    synthetic = synthetic_options(args.synthetic)
    print(data.describe(args.dataset, data_root=args.data_root, val_size=args.val_size,
                        synthetic=synthetic or None))
    return 0


def _cmd_data_verify(args) -> int:
    from multikd import data

    report = data.verify_checksums(args.dataset, data_root=args.data_root)
    print(report.text())
    return 0 if report.all_match else 1


def _cmd_data_download(args) -> int:
    from multikd.data.download import download_cifar

    download_cifar(args.dataset, data_root=args.data_root, url=args.url, md5=args.md5,
                   force=args.force, progress=not args.quiet)
    return _cmd_data_verify(args)


def _cmd_data_synth(args) -> int:
    from multikd import data

    folder = data.write_fake_cifar(
        args.out, dataset=args.dataset, train=args.train, test=args.test, seed=args.seed
    )
    print(f"wrote {args.dataset} files to {folder}")
    return 0
