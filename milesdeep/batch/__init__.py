"""Library-scale runs: many inputs, one model load, per-file isolation, resume after a crash.

`expand_inputs` turns files, folders and list files into the files to process; a command
describes its per-file work as a `BatchJob`; `run_batch` runs it (skipping what a previous
run finished, recording what this one finishes) and returns a `BatchSummary`.
"""

from milesdeep.batch.inputs import VIDEO_EXTENSIONS, expand_inputs
from milesdeep.batch.job import BatchJob, FileWork
from milesdeep.batch.runner import BatchRunner, BatchSummary, FileOutcome, run_batch
from milesdeep.batch.state import STATE_NAME, StateDB

__all__ = ["VIDEO_EXTENSIONS", "STATE_NAME", "BatchJob", "BatchRunner", "BatchSummary",
           "FileOutcome", "FileWork", "StateDB", "expand_inputs", "run_batch"]
