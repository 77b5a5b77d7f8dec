"""Cohorts: explain a folder of scans on Dask, resumable, with a results table and an HTML report.

:func:`explain_many` (Python) and ``napari-vitcam batch`` (the command line)
explain every scan of a folder, a glob or a CSV on a local Dask cluster or an
existing one; see ``docs/batch.md``. Dask, pyarrow and rich are the ``batch``
extra: ``pip install 'napari-vitcam[batch]'``; they are imported only when a
batch runs.
"""

from napari_vitcam.batch.cases import BatchSettings, Case, find_cases
from napari_vitcam.batch.run import BatchRun, explain_many, run_batch

__all__ = ["BatchRun", "BatchSettings", "Case", "explain_many", "find_cases", "run_batch"]
