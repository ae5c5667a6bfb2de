"""The fast path of the frozen Watson and Adaptive metrics: per-image values with their input gradients formed
in the same pass, chunk by chunk.

When the metric's parameters are frozen and the target needs no gradient, each image's value depends on its
own pixels only, so a chunk of images can be computed in one pass together with its gradient, without an
autograd graph. The formula is the metric's one formula (:mod:`percept.functional.watson`,
:mod:`percept.functional.adaptive`), which also returns the closed-form gradient when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from percept.execution import no_autocast, resolve_strategy


def cached_constants(owner: torch.nn.Module, params: Iterable[torch.Tensor], key: Any, compute: Callable[[], Any]):
    """``compute()``, the parameter-derived constants of a frozen metric, computed again only when they can differ.

    A training loop calls a frozen metric with the same parameters every step; deriving its constants anew
    (thresholds, masking exponents, log-partition lookups: tens of small operations, on a GPU as many kernel
    launches) is work repeated for nothing. The result is kept on ``owner`` under a key of ``key`` and each
    parameter's storage, dtype, device and version counter, so loading weights, in-place edits (optimisers,
    ``load_state_dict``, ``torch.no_grad()`` assignments) and ``.to()`` all recompute it. Edits through
    ``param.data`` bypass the version counter (as they bypass autograd's own checks) and are not seen.

    Not cached: while autograd records a graph through a parameter that requires grad (the constants must
    be differentiable then), under ``torch.compile`` tracing, and for parameters made under inference mode.
    The constants are built outside inference mode and without grad, so a later autograd step may use them.
    """
    params = tuple(params)
    if (
        (torch.is_grad_enabled() and any(p.requires_grad for p in params))
        or torch.compiler.is_compiling()
        or any(p.is_inference() for p in params)  # a metric built under inference mode: no version counter
    ):
        return compute()
    full_key = (key, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
    entry = owner.__dict__.get("_constants_entry")  # one read: replicas in threads may share the dict's value
    if entry is not None and entry[0] == full_key:
        return entry[1]
    with torch.inference_mode(False), torch.no_grad():
        value = compute()
    owner.__dict__["_constants_entry"] = (full_key, value)
    return value


def images_per_chunk(strategy: str, device: torch.device, n: int, per_image: int, budget: int) -> int:
    """Images per chunk under ``strategy`` (see :mod:`percept.execution`): the whole batch when batched,
    else :func:`balanced_chunks` of at most ``budget`` values (0: no limit)."""
    if resolve_strategy(strategy, device) == "batched" or budget <= 0:
        return n
    return balanced_chunks(n, per_image, budget)


def balanced_chunks(n: int, per_image: int, budget: int) -> int:
    """Images per chunk: at most ``budget`` values (``per_image`` each, at least one image), then
    evened out so that the same number of chunks have balanced sizes."""
    per_chunk = max(1, budget // per_image)
    return -(-n // -(-n // per_chunk))


#: ``formula(x, y, part, grad_out=None) -> values (n,)`` of the images ``part`` (a slice) of the batch; when
#: ``grad_out`` (like ``x``, contiguous) is given, the gradient of the values w.r.t. ``x`` is written into it
Formula = Callable[..., torch.Tensor]


class FrozenPerImage(torch.autograd.Function):
    """Per-image values ``formula(input, target)`` (N,) of a frozen metric against a constant target.

    ``grad_input[n] = grad_output[n] * d value[n] / d input[n]``: the forward pass runs ``formula`` on chunks
    of ``per_chunk`` images, each writing its closed-form gradient into one input-sized tensor, the only thing
    kept; backward scales it. The intermediates of one chunk at a time stay in the CPU caches.

    A backward pass that builds a graph (``create_graph=True``: double backward, gradient penalties) goes
    through autograd on the same formula instead, recomputed on the whole batch, so that the gradient is
    itself differentiable.
    """

    @staticmethod
    def forward(ctx, input: torch.Tensor, target: torch.Tensor, formula: Formula, per_chunk: int) -> torch.Tensor:
        values, grads = FrozenPerImage.run(input, target, formula, per_chunk, ctx.needs_input_grad[0])
        # the gradients are an attribute, not a saved tensor: backward scales them in place. The inputs
        # are kept to recompute them (a second backward pass, or a differentiable one).
        ctx.grads, ctx.formula, ctx.per_chunk = grads, formula, per_chunk
        ctx.save_for_backward(input, target)
        return values

    @staticmethod
    def run(input, target, formula: Formula, per_chunk: int, want_grad: bool):
        """(values (N,), gradients like ``input`` or None), a chunk of images at a time."""
        grads = torch.empty_like(input, memory_format=torch.contiguous_format) if want_grad else None
        values = []
        with torch.no_grad(), no_autocast(input.device.type):
            for start in range(0, input.shape[0], per_chunk):
                part = slice(start, start + per_chunk)
                values.append(formula(input[part], target[part], part, None if grads is None else grads[part]))
        return values[0] if len(values) == 1 else torch.cat(values), grads

    @staticmethod
    def backward(ctx, grad_values):
        input, target = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient with a graph, from autograd on the formula
            with torch.enable_grad(), no_autocast(input.device.type):
                values = ctx.formula(input, target, slice(0, input.shape[0]))
            (grads,) = torch.autograd.grad(values, input, grad_values.to(values.dtype), create_graph=True)
            return grads, None, None, None
        grads = ctx.grads
        if grads is None:  # a second backward pass: the first one scaled the gradients in place
            grads = FrozenPerImage.run(input, target, ctx.formula, ctx.per_chunk, True)[1]
        ctx.grads = None
        # in place: saves an input-sized buffer in every training step
        return grads.mul_(grad_values.to(grads.dtype).view(-1, *([1] * (grads.dim() - 1)))), None, None, None
