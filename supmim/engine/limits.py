"""The two limits that stop a run on bad input: unreadable image files beyond
``data.max_bad_fraction`` of the data, and ``train.max_bad_steps`` non-finite steps in a row.

Both stop with a :class:`~supmim.errors.TrainingError` that names the cause and the fix; the
last checkpoint is left intact, so the run continues with ``--resume auto`` once it is fixed.
"""

from __future__ import annotations

from supmim.config import RunConfig
from supmim.data import read_bad_log
from supmim.data.splits import RunData
from supmim.errors import TrainingError
from supmim.run import RunDir


class RunLimits:
    """Checks a run's bad-file log and its skipped-step count against the config's limits."""

    def __init__(self, cfg: RunConfig, run: RunDir, data: RunData) -> None:
        self.cfg, self.run, self.data = cfg, run, data
        self._log_size = -1  # the bad-file log's size at the last check: unchanged, not reread

    def check_bad_files(self) -> None:
        """Stop once unreadable files exceed ``data.max_bad_fraction`` of the data."""
        path = self.run.bad_files_path
        size = path.stat().st_size if path.is_file() else 0
        if size == self._log_size:
            return
        self._log_size = size
        bad = read_bad_log(path)
        total = sum(len(ds) for ds in (self.data.train, self.data.eval, self.data.test)
                    if ds is not None)
        limit = self.cfg.data.max_bad_fraction
        if len(bad) > limit * total:
            listed = ", ".join(list(bad)[:3])
            raise TrainingError(
                f"{len(bad)} unreadable image files (more than data.max_bad_fraction={limit} "
                f"of {total}), e.g. {listed}; all are listed in '{path}'. Replace or remove "
                "them, or raise data.max_bad_fraction, then continue with --resume auto")

    def count_skip(self, skipped: dict[str, int], *, step: int, overflow: bool) -> None:
        """Count skipped step ``step`` (1-based) in ``skipped`` (``total``, ``in_row``); stop
        after ``train.max_bad_steps`` in a row. fp16's overflows do not count towards it."""
        skipped["total"] += 1
        skipped["in_row"] += 0 if overflow else 1
        limit = self.cfg.train.max_bad_steps
        if skipped["in_row"] >= limit:
            raise TrainingError(
                f"{skipped['in_row']} steps in a row had a non-finite loss or gradient "
                f"(up to step {step}; train.max_bad_steps={limit}). The last good "
                f"checkpoint '{self.run.latest()}' is intact. Lower train.lr, set "
                "train.clip_grad, or check the data, then continue with --resume auto")
