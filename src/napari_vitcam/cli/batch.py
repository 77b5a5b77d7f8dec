"""``napari-vitcam batch``: explain a cohort of scans on Dask, resumable, with a results table and a report.

INPUTS is a folder (its volume files and DICOM series folders), a glob pattern
(quote it: 'scans/**/*.nii.gz') or a CSV with a ``path`` column (optionally
``label``, ``mask`` and ``key``). Per scan, OUTDIR gets the heatmap
(``heatmaps/NAME.heatmap.nii.gz`` with the scan's geometry, ``.npy`` without)
and a row of ``results.parquet`` (or ``.csv``); ``report.html`` shows every
case. Rerunning the same command skips finished cases and retries failed
ones. Exit status: 0 when every scan was explained, 3 when some failed (their
rows say why), 1 when the batch could not start. See docs/batch.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_vitcam.cli.options import add_device, add_nonfinite, add_target_and_class, add_trust
from napari_vitcam.core.errors import VitcamError
from napari_vitcam.core.vocabulary import UPSAMPLE_MODES, one_line
from napari_vitcam.engine.explainers import EXPLAINERS

PROG = "napari-vitcam batch"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="native checkpoint, MONAI bundle folder or weights file")
    parser.add_argument("inputs", help="a folder of scans, a quoted glob pattern, or a CSV with a path column")
    parser.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (created; rerun to resume)")
    parser.add_argument(
        "--method",
        default="gradcam",
        help=f"explainer: gradcam (default), auto (the one chosen for this kind of model, see docs/evaluation.md; "
        f"the table names the method used) or one of {', '.join(EXPLAINERS)}",
    )
    add_target_and_class(parser)
    parser.add_argument("--upsample", default="smooth", choices=UPSAMPLE_MODES)
    parser.add_argument("--orientation", default=None, metavar="CODES", help="the model's frame, e.g. RAS")
    add_nonfinite(parser, "scans with NaN/Inf voxels: an error row (default) or replace them")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="pointing tolerance in voxels (default: half a token)"
    )
    add_device(parser)
    add_trust(parser)
    parser.add_argument(
        "--workers", type=int, default=None, help="local workers (default: one per GPU, else one per core, at most 4)"
    )
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="use a running Dask scheduler, e.g. tcp://host:8786"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the local workers as threads of this process (quick to start; no separate processes)",
    )
    parser.add_argument("--format", dest="table_format", default="parquet", choices=("parquet", "csv"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from napari_vitcam.batch.run import run_batch

    try:
        run = run_batch(
            args.checkpoint,
            args.inputs,
            args.outdir,
            method=args.method,
            target_layer=args.target,
            class_idx=args.class_idx,
            upsample=args.upsample,
            orientation=args.orientation,
            nonfinite=args.nonfinite,
            tolerance=args.tolerance,
            device=args.device,
            trust=args.trust,
            workers=args.workers,
            scheduler=args.scheduler,
            processes=False if args.in_process else None,
            table_format=args.table_format,
            progress=not args.no_progress,
        )
    except (VitcamError, OSError) as error:
        print(f"{PROG}: {one_line(error, limit=400)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished cases are kept: rerun the same command to continue", file=sys.stderr)
        return 130
    print(run.summary())
    for row in run.rows:
        if row["status"] != "ok":
            print(f"  failed: {row['path']}: {row['error']}")
    print(f"table: {run.table}")
    print(f"report: {run.report}")
    return 0 if run.failed == 0 else 3
