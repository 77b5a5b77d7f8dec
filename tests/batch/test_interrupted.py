"""A batch killed with SIGKILL mid-way, then rerun: every case exactly once, nothing finished lost, no partial file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tests.batch.cohort import Cohort

from napari_vitcam.batch import run_batch
from napari_vitcam.batch.ledger import CASES_FOLDER, HEATMAPS_FOLDER, PARTIAL_MARK

# Runs the batch with one in-process worker; the third heatmap write stops half-way (a real half-written
# temporary file on disk) and says so through a file, so that the kill lands at a known point.
SCRIPT = """
import os, sys, time
from pathlib import Path
from napari_vitcam.volumes.numpy_files import NpyWriter

checkpoint, scans, outdir, gate = sys.argv[1:5]
original = NpyWriter.write_to
calls = []

def write_to(self, path, heatmap, **options):
    calls.append(path)
    if len(calls) == 3:
        Path(path).write_bytes(b"\\x93NUMPY" + bytes(40))  # half of a file
        Path(gate + ".tmp").write_text(str(path))
        os.replace(gate + ".tmp", gate)  # the test sees the gate whole or not at all
        while True:
            time.sleep(1)
    return original(self, path, heatmap, **options)

NpyWriter.write_to = write_to
from napari_vitcam.batch import run_batch
run_batch(checkpoint, scans, outdir, workers=1, processes=False, device="cpu", table_format="csv")
"""


def test_a_run_killed_mid_way_and_restarted_finishes_every_case_exactly_once(cohort: Cohort, tmp_path: Path):
    for seed in range(3, 7):  # more NumPy scans, so that the kill comes with cases finished and cases to do
        np.save(cohort.scans / f"more{seed}.npy", np.load(cohort.scans / "scan0.npy") + seed)
    out, gate = tmp_path / "out", tmp_path / "gate"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(cohort.checkpoint), str(cohort.scans), str(out), str(gate)],
            env=env,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while not gate.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.exists(), f"the batch never reached its third heatmap: {log.read_text()[-2000:]}"
        assert process.poll() is None, log.read_text()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    # what the killed run left: its finished cases, whole, and a half-written file under a temporary name only
    finished = [json.loads(p.read_text()) for p in (out / CASES_FOLDER).glob("*.json")]
    ok_before = {r["case"]: r for r in finished if r["status"] == "ok"}
    assert len(ok_before) >= 2, finished
    partial = Path(gate.read_text())
    assert partial.exists() and PARTIAL_MARK in partial.name and partial.name.startswith(".")
    for record in ok_before.values():
        np.load(out / record["heatmap"])  # whole files
    assert not (out / "results.csv").exists() and not (out / "report.html").exists()

    run = run_batch(cohort.checkpoint, cohort.scans, out, workers=1, processes=False, device="cpu", table_format="csv")

    cases = sorted(p.name for p in cohort.scans.iterdir())
    assert len(run.rows) == len(cases) == 9
    assert sorted(Path(r["path"]).name for r in run.rows) == cases  # each case once
    assert len(list((out / CASES_FOLDER).glob("*.json"))) == len(cases)
    problems = [(r["name"], r["status"], r["error"], r["skipped"]) for r in run.rows]
    assert run.failed == 1 and run.skipped == len(ok_before), problems  # the corrupt file only; finished kept
    rows = {r["case"]: r for r in run.rows}
    for case, record in ok_before.items():
        assert rows[case]["run"] == record["run"] and rows[case]["skipped"]
    assert partial in run.removed_partials
    assert not [p for p in out.rglob("*") if PARTIAL_MARK in p.name]
    heatmaps = sorted((out / HEATMAPS_FOLDER).iterdir())
    assert [p.name for p in heatmaps] == sorted(Path(r["heatmap"]).name for r in run.rows if r["heatmap"])
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + len(cases)
