"""The texts and help details of ``supmim --help`` that are not argument definitions: the
notes under ``supmim bench --help``, the examples under ``supmim train --help``, and each
subcommand's description. No torch is imported here, so ``--help`` stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


BENCH_NOTES = """\
The three loops run on synthetic in-memory batches, interleaved over --rounds rounds; the
ratios are medians of each round's ratio, printed with their range. Per loop it also prints
page faults and kernel time per step, and MFU on GPUs.

The trainer's speed options, and where each is measured:
  train.compile=auto|true|false  torch.compile of the clean pass, the masked pass + decoder +
      MIM loss and the frozen tokenizer; auto = on CUDA only (--compile / --no-compile here).
  data.loader=auto|device|workers  decode data that fits (data.device_max_mb) once into a
      uint8 tensor on the training device and crop, flip and mask there in batches; --data
      here times the worker loader, benchmarks/loader_speed.py compares the two.
  mim.token_cache=DIR  token ids of K augmented views per image, precomputed by
      `supmim tokenizer cache`: the step runs no tokenizer; benchmarks/token_cache.py measures
      the tokenizer's share of the step with and without it.
"""


TRAIN_EXAMPLES = """\
examples:
  supmim train --data cifar10_small.tar.gz --preset cifar10 --out runs/mim
  supmim train --data DIR --out runs/base --no-mim --epochs 30 --set train.lr=5e-4
  supmim train --data DIR --out runs/mim --tokenizer runs/tok --set mim.mask_ratio=0.5
  supmim train --out runs/mim --resume auto          # continue after a stop or a crash
  torchrun --standalone --nproc_per_node 4 -m supmim.cli train --data DIR --out runs/ddp
`supmim config [--preset NAME]` prints the whole configuration: every key --set accepts.
"""


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(command path, parser, one-line help) of every subcommand, nested ones included."""
    for action in parser._actions:  # argparse keeps subcommands only in private fields
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from subcommands(sub, (*path, name))


def describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give each subcommand without a description its one-line help, so that
    ``supmim train --help`` says what the command does, as ``supmim --help`` does."""
    for _, sub, help_text in subcommands(parser):
        if sub.description is None:
            sub.description = help_text
