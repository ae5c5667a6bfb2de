"""The first convolution of an image network, faster to differentiate on CPU: :class:`StemConv2d`.

A strided convolution on few input channels (AlexNet's 11x11/4, SqueezeNet's 3x3/2 first layer) computes its
input gradient as the transposed convolution of its space-to-depth form, 2-2.5x faster on CPU; the values are
the plain convolution's. :func:`with_stem_convs` swaps them into a network (sharing its parameters).

>>> import torch, torch.nn as nn
>>> from percept.stem_conv import with_stem_convs
>>> net = with_stem_convs(nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU()))
>>> type(net[0]).__name__, net(torch.rand(1, 3, 16, 16)).shape
('StemConv2d', torch.Size([1, 8, 8, 8]))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _space_to_depth_weight(w: torch.Tensor, s: int) -> torch.Tensor:
    """(O, C, kh, kw) kernel of a stride-s convolution -> (O, C*s*s, ceil(kh/s), ceil(kw/s)) kernel of the
    equivalent stride-1 convolution on ``pixel_unshuffle(x, s)`` (zero taps pad the kernel to multiples of s)."""
    o, c, kh, kw = w.shape
    kh2, kw2 = -(-kh // s), -(-kw // s)
    wp = F.pad(w, (0, kw2 * s - kw, 0, kh2 * s - kh))
    return wp.view(o, c, kh2, s, kw2, s).permute(0, 1, 3, 5, 2, 4).reshape(o, c * s * s, kh2, kw2)


class _StemConvFunction(torch.autograd.Function):
    """A strided convolution with few input channels (a network's first layer) whose input gradient is
    computed as the transposed convolution of its space-to-depth form: C*s*s output channels instead of C
    keep the transposed convolution efficient (2-2.5x faster on CPU for AlexNet's 11x11/4 and SqueezeNet's
    3x3/2 first layers). The forward pass is the plain convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: tuple[int, int]):
        ctx.stride, ctx.padding, ctx.shape = stride, padding, x.shape
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, g):  # every operation below is differentiable: double backward works through it
        x, weight = ctx.saved_tensors
        s, (ph, pw) = ctx.stride, ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w2 = _space_to_depth_weight(weight, s)
            if g.dim() == 4 and g.stride(1) == 1 and g.shape[1] > 1:
                w2 = w2.contiguous(memory_format=torch.channels_last)
            full = F.pixel_shuffle(F.conv_transpose2d(g, w2), s)
            h, w = ctx.shape[-2:]
            grad_x = full[..., ph : ph + h, pw : pw + w]
            if grad_x.shape[-2:] != (h, w):  # bottom/right rows that no output reads
                grad_x = F.pad(grad_x, (0, w - grad_x.shape[-1], 0, h - grad_x.shape[-2]))
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, g, stride=s, padding=(ph, pw))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class StemConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input gradient uses :class:`_StemConvFunction` on CPU (same values, same state dict).

    Built by :meth:`from_conv` around an existing convolution's parameters (see :func:`with_stem_convs`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad and x.device.type == "cpu":  # measured on CPU only
            return _StemConvFunction.apply(x, self.weight, self.bias, self.stride[0], self.padding)
        return super().forward(x)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> StemConv2d:
        """A StemConv2d with ``conv``'s options that shares its weight and bias (nothing is copied)."""
        with torch.device("meta"):  # the placeholders are replaced at once
            stem = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                       bias=conv.bias is not None, padding_mode=conv.padding_mode)
        stem.weight, stem.bias = conv.weight, conv.bias
        return stem.train(conv.training)


def _is_stem(m: nn.Module) -> bool:
    """A strided convolution on few channels (an image-facing first layer) that :class:`StemConv2d` speeds up."""
    return (
        type(m) is nn.Conv2d
        and m.in_channels <= 4
        and m.groups == 1
        and m.dilation == (1, 1)
        and m.stride[0] == m.stride[1] > 1
        and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple)
    )


def with_stem_convs(module: nn.Module) -> nn.Module:
    """``module`` with every stem convolution (see :class:`StemConv2d`) replaced by a StemConv2d sharing its
    parameters; the children are replaced in place, a stem ``module`` itself is returned replaced."""
    if _is_stem(module):
        return StemConv2d.from_conv(module)
    for name, child in module.named_children():
        new = with_stem_convs(child)
        if new is not child:
            setattr(module, name, new)
    return module


__all__ = ["StemConv2d", "with_stem_convs"]
