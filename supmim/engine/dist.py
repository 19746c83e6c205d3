"""Process-group helpers. Everything works unchanged in a single process (no torchrun).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup` starts the default
process group: NCCL with one GPU per process (``LOCAL_RANK``), gloo on CPU. Multi-node runs
need nothing more than torchrun's own rendezvous arguments.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Only the main process writes files, logs and progress bars."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun set up the environment for; returns this process's
    device (``cuda:LOCAL_RANK`` on GPUs). A no-op outside torchrun."""
    if not launched_by_torchrun() or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum across processes (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# what gloo and NCCL say when a peer process is gone (gloo raises a plain RuntimeError)
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "gloo/transport",
              "NCCL communicator was aborted", "ProcessGroupNCCL")


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process died."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and is_distributed() and \
        any(marker in str(err) for marker in _PEER_GONE)


def broadcast_object(obj: object) -> object:
    """The main process's ``obj`` on every process (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def gradient_sync(step_model: torch.nn.Module, model: torch.nn.Module, *, enabled: bool,
                  fsdp: bool) -> Iterator[None]:
    """Forward and backward inside reduce their gradients across processes only when
    ``enabled``; otherwise gradients accumulate locally (the micro-steps of an accumulated
    step before its last: one reduction per optimizer step). DDP's ``no_sync`` on the
    step model, FSDP2's ``set_requires_gradient_sync`` on the sharded root ``model``; a
    no-op in a single process."""
    if enabled or not is_distributed():
        yield
        return
    if fsdp:
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        return
    ddp = getattr(step_model, "_orig_mod", step_model)  # the DDP module under torch.compile
    with ddp.no_sync():  # type: ignore[operator]
        yield


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: one unit per transformer block (encoder and decoder), the rest in the root.

    Parameters are sharded across processes and gathered block by block in forward and
    backward, so a ViT-L's weights, gradients and AdamW state are split ``world`` ways.
    """
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import fully_shard
    for module in list(model.modules()):
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer
               ) -> tuple[dict[str, torch.Tensor], dict]:
    """Unsharded model and optimizer state dicts (optimizer keyed by parameter name), on the
    CPU; a collective call (every process), full results on the main process."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=opts),
            get_optimizer_state_dict(model, optimizer, options=opts))


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    weights: dict[str, torch.Tensor], optim_by_name: dict) -> None:
    """Load unsharded states (from :func:`full_state`) into a sharded or plain model,
    whatever the number of processes that saved them."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_by_name, options=opts)


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank r takes positions r, r + world, ...

    Unlike ``DistributedSampler`` nothing is repeated to even out the shards, so summed
    counts cover every sample exactly once.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.rank, self.world = size, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))
