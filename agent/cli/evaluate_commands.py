"""`dknn-agent evaluate`: measure a bundle on your own held-out data and out-of-distribution sets."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from agent.cli.bundle_commands import add_trust_options, bundle_trust
from agent.errors import ConfigError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="measure a bundle on your own data: accuracy, validity, OOD detection, right vs wrong, speed",
        description="Score held-out data and out-of-distribution sets with the bundle and write a Markdown + JSON "
        "report with plots: the accuracy of the model and of DkNN, the validity of the p-values, AUROC and the "
        "share flagged at 1% / 5% false alarms for credibility against the softmax and energy scores on every "
        "set, how well each tells the model's right answers from its wrong ones (with a bootstrap interval), the "
        "share quarantined at the threshold, and inputs/s per core for Annoy and exact search.\n\n"
        "DATA as for fit: an .npz with named inputs (and 'y' labels), or NAME=FILE.npy,... An OOD set with labels "
        "(digits from another population, say) also gets accuracy and right-vs-wrong.",
        epilog="example:\n  dknn-agent evaluate --artifacts bundle/ --clean test.npz --ood noise=noise.npy "
        "--ood letters=letters.npz --out reports/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifacts", type=Path, required=True, help="bundle directory")
    parser.add_argument("--clean", required=True, metavar="DATA", help="labelled held-out inputs (not used by fit)")
    parser.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="NAME=DATA",
        help="an out-of-distribution set to separate from the clean one (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the report")
    parser.add_argument("--name", default=None, help="file name stem of the report (default: evaluation-<model>)")
    parser.add_argument(
        "--threshold", type=float, default=0.1, help="the agent's quarantine threshold (default: 0.1, the agent's)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass (default: 256)")
    parser.add_argument(
        "--index",
        choices=("annoy", "exact", "both"),
        default="both",
        help="neighbour backends to measure (default: both; exact is slow on large bundles)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_trust_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from agent.engine.data_files import load_dataset
    from agent.evaluation.report import EvaluationOptions, run_evaluation

    if not 0 < args.threshold < 1:
        raise ConfigError("--threshold must be in (0, 1)")
    if args.batch_size < 1 or args.bootstrap < 100:
        raise ConfigError("--batch-size must be at least 1 and --bootstrap at least 100")
    ood = {}
    for item in args.ood:
        name, sep, data = item.partition("=")
        if not sep or not name or not data or name == "clean" or name in ood:
            raise ConfigError(f"--ood {item!r}: use NAME=DATA with a new name other than clean")
        ood[name] = load_dataset(data, labelled=False)
    options = EvaluationOptions(
        artifacts=args.artifacts,
        clean=load_dataset(args.clean, labelled=True),
        ood=ood,
        out_dir=args.out,
        name=args.name,
        threshold=args.threshold,
        batch_size=args.batch_size,
        backends=("annoy", "exact") if args.index == "both" else (args.index,),
        trust=bundle_trust(args),
        bootstrap=args.bootstrap,
        command="dknn-agent " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]),
        progress=not args.quiet,
    )
    result = run_evaluation(options)
    stem = args.name or f"evaluation-{result['bundle']['model']}"
    print((args.out / f"{stem}.md").read_text())
    print(f"wrote {args.out / stem}.md and .json", file=sys.stderr)
    return 0
