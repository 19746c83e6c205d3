"""Deprecated: moved to :mod:`supmim.run.tokenizer`; this alias will be removed in a later
release."""

from supmim.run.tokenizer import (FACTORS, evaluate_tokenizer_for_run, grid_plan,  # noqa: F401
                                  tokenizer_datasets, train_tokenizer_for_run)
from supmim.files import write_json  # noqa: F401
