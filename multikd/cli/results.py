"""`multikd table`, `multikd report` and `multikd plot`: finished runs into tables, one
HTML page and plots."""

from __future__ import annotations

from multikd.errors import MultikdError


def add_results(sub) -> None:
    p = sub.add_parser(
        "table",
        help="runs folder -> comparison table (mean ± std over seeds, best in bold)",
        description="One row per student and teacher set, one column per method (student "
        "alone, each strategy with logits only and with + features, each teacher); cells "
        "'mean ± sample std (n seeds)'. Unfinished runs are skipped with a warning. Several "
        "folders (the --out folders of several jobs of one sweep) make one table; runs of "
        "different configs under one label are refused.",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", nargs="+",
                   help="folder(s) searched recursively for runs")
    p.add_argument(
        "--metric", choices=["last", "best", "val"], default="last",
        help="last-epoch test accuracy (default), best-epoch (optimistic: selected on test), "
        "or test accuracy at the best validation epoch (runs with a validation split)",
    )
    p.add_argument("--format", dest="fmt", choices=["md", "csv", "tex"], default="md")
    p.add_argument(
        "--vs", metavar="LABEL",
        help="paired differences to one column instead of accuracies: 'student' (the student "
        "alone), 'uniform' or any method label; each cell is the mean difference with its "
        "interval (t over paired seeds, or bootstrap over test images for one seed), "
        "significant ones in bold",
    )
    p.add_argument("--confidence", type=float, default=0.95,
                   help="interval level for --vs (default 0.95)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="average copies of one run (same config and seed, e.g. a folder passed "
                   "twice or copied) instead of refusing them; --vs pairs each seed once anyway")
    p.add_argument("--cost", action="store_true",
                   help="also measure inference images/s of the student and each teacher on "
                   "--device at --cost-batch (parameters and MACs are always shown)")
    p.add_argument("--cost-batch", type=int, default=256, metavar="B",
                   help="batch size for --cost (default 256)")
    p.add_argument("--device", default="cpu", help="device for --cost (default cpu; e.g. cuda)")
    p.add_argument("--out", metavar="FILE", help="write the table here (default: print it)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser(
        "report",
        help="runs folder -> one self-contained HTML page (tables, plots, suite, teachers)",
        description="Writes RUNS_DIR/report.html: the last/best (and val) tables, the paired "
        "differences to the student alone, every plot embedded, the suite file, the "
        "teachers' verified accuracies and the versions; it opens offline anywhere.",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="a bench output folder or any runs folder")
    p.add_argument("--out", metavar="FILE", help="where to write it (default RUNS_DIR/report.html)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "plot",
        help="runs folder -> PNG plots: test accuracy per epoch, teacher weights per strategy",
        description="For each student and teacher set: <dataset>_<student>_<teachers>_acc.png "
        "(test accuracy per epoch, mean over seeds, one line per method) and ..._weights.png "
        "(each teacher's mean weight per epoch, one panel per strategy).",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder searched recursively for runs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the PNG files into")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_plot)


def _cmd_table(args) -> int:
    from multikd.atomic import atomic_write_text
    from multikd.results import paired, tables

    if args.vs:
        table = paired.paired_table(tables.collect_runs(args.runs_dir), metric=args.metric,
                                    vs=args.vs, confidence=args.confidence)
        text = paired.format_paired(table, fmt=args.fmt)
    else:
        table = tables.load_table(args.runs_dir, metric=args.metric,
                                  allow_duplicates=args.allow_duplicates)
        if args.cost:
            from multikd.results.costs import add_throughput

            if args.cost_batch < 1:
                raise MultikdError(f"--cost-batch must be >= 1, got {args.cost_batch}")
            add_throughput(table.attrs["costs"], device=args.device, batch_size=args.cost_batch)
            table.attrs["speed"] = f"{args.device}, batch {args.cost_batch}, fp32, eval mode"
        text = tables.format_table(table, fmt=args.fmt)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_report(args) -> int:
    from multikd.results.report import write_report

    print(f"wrote {write_report(args.runs_dir, args.out)}")
    return 0


def _cmd_plot(args) -> int:
    from multikd.results import plots

    for path in plots.plot_runs(args.runs_dir, args.out):
        print(path)
    return 0
