"""Count the ATen operations of a training step: a device-independent proxy for GPU kernel launches.

A GPU step is launch-bound when it runs thousands of small operations; the count does not depend on
the machine, so it can be checked on CPU. ``count_ops`` runs a function under a dispatch mode that
counts every ATen operation reaching the backend, forward and backward.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: bookkeeping operations that launch no kernel
_FREE = {"detach", "view", "_unsafe_view", "alias", "t", "expand", "as_strided", "unsqueeze", "squeeze",
         "permute", "transpose", "slice", "select", "split", "split_with_sizes", "unbind", "empty",
         "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_to_copy_noop", "lift_fresh",
         "is_same_size", "_local_scalar_dense", "reshape", "unflatten", "flatten", "chunk", "narrow",
         "diagonal", "_reshape_alias", "view_as_real", "view_as_complex", "real", "imag"}


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _FREE:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> Counter:
    """The ATen operations (by name, views and allocations excluded) that ``fn()`` dispatches."""
    mode = _Counter()
    with mode:
        fn()
    return mode.ops


def training_step(metric, shape, seed: int = 0):
    """A function running one generator training step through ``metric``: sigmoid, loss, backward."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g).requires_grad_(True)
    target = torch.rand(shape, generator=g)

    def step():
        loss = metric(torch.sigmoid(logits), target).sum()
        loss.backward()

    return step
