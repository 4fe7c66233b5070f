"""What the command lines print: the libraries' own progress bars and load reports kept out of it."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Progress bars and load reports of datasets/transformers drown the per-epoch lines of a CLI."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
