"""Per-image losses of frozen metrics with their input gradients in closed form, chunk by chunk.

Shared by the Watson metrics and Adaptive: when the metric's parameters are frozen and the target
needs no gradient, each image's value depends on its own pixels only, so a chunk of images can be
computed in one pass together with its gradient, without an autograd graph.
"""

from __future__ import annotations

import torch

from percept.execution import resolve_strategy


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


class FrozenPerImage(torch.autograd.Function):
    """Per-image distances of a frozen metric against a constant target, in chunks of images.

    Each image's distance depends on its own pixels only (any masking comes from the target), so
    ``grad_input[n] = grad_output[n] * d dist[n] / d input[n]``. ``chunk_fn(x, y, part, grad_out)``
    returns a chunk's values and, when ``grad_out`` is given, writes those per-image gradients into it,
    computed in closed form in the same pass. The backward pass is one multiplication; only the
    gradient (one input-sized tensor) outlives the forward pass, and the intermediates of one chunk
    at a time stay in cache.
    """

    @staticmethod
    def forward(ctx, input, target, chunk_fn, per_chunk, want_grad):
        values, grads = FrozenPerImage.run(input, target, chunk_fn, per_chunk, want_grad)
        if want_grad:
            # the gradients are an attribute, not a saved tensor: backward scales them in place. The
            # inputs are kept to recompute them should backward run again (retain_graph).
            ctx.grads, ctx.chunk_fn, ctx.per_chunk = grads, chunk_fn, per_chunk
            ctx.save_for_backward(input, target)
        return values

    @staticmethod
    def run(input, target, chunk_fn, per_chunk, want_grad):
        grads = torch.empty_like(input, memory_format=torch.contiguous_format) if want_grad else None
        values = []
        with torch.no_grad(), torch.autocast(input.device.type, enabled=False):
            for start in range(0, input.shape[0], per_chunk):
                part = slice(start, start + per_chunk)
                values.append(chunk_fn(input[part], target[part], part, None if grads is None else grads[part]))
        return torch.cat(values), grads

    @staticmethod
    def backward(ctx, grad_values):
        grads = ctx.grads
        if grads is None:  # a second backward pass: the first one scaled the gradients in place
            input, target = ctx.saved_tensors
            grads = FrozenPerImage.run(input, target, ctx.chunk_fn, ctx.per_chunk, True)[1]
        ctx.grads = None
        # in place: saves an input-sized buffer in every training step
        return grads.mul_(grad_values.to(grads.dtype).view(-1, *([1] * (grads.dim() - 1)))), None, None, None, None
