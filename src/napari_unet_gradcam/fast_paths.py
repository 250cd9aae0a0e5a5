"""Speed only: the fast forward and backward paths, each exact, each checked in tests/test_fast_paths.py.

* :func:`run_net`: ``net(x)`` on cached channels-last, detached copies of the weights.
* :func:`double_conv`: a leaner backward pass through the U-Net's double convolutions when only
  inputs need gradients.

Nothing here changes a result; take this module away and the algorithm (engine.py) is the same.

Grad-CAM asks for d(score)/d(activation) with the network frozen (eval mode, no parameter
gradients). Autograd then still pays for the BatchNorm backward as a separate pass over every
activation, and at each decoder block it computes the gradient of the whole concatenated
input, skip-connection half included, only to drop that half. Here each conv-BN-ReLU unit runs
its forward op for op as the modules do (so labels and logits are bit-identical to
``predict()``), and its backward is one ReLU mask and one input-gradient convolution whose
weights carry the BatchNorm scale and only the input channels that need a gradient.

Used only when it is exact: eval mode, grad mode on, no parameter requiring grad (training and
fine-tuning keep autograd), and no hook on the block or inside it (a hooked submodule must run).
"""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules import module as _module

_cache_guard = threading.Lock()


def run_net(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` with frozen (detached) weights, channels-last where that is fast; the module is untouched.

    oneDNN's and cuDNN's channels-last kernels run the U-Net's 3x3 convolutions (forward and
    backward) markedly faster (bench/bench_speed.py); copying the weights costs little next to
    one pass. Detached weights let the double convolutions take their lean backward
    (:func:`double_conv`). Hooks on the module's submodules fire as usual.

    A 3-D (5-D) input runs in its own layout: channels-last here is measured for 2-D only.
    """
    channels_last = x.dim() == 4 and x.device.type in ("cpu", "cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return functional_call(net, _frozen_params(net, channels_last), (x,))


_param_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict]] = weakref.WeakKeyDictionary()


def _frozen_params(net: nn.Module, channels_last: bool) -> dict[str, torch.Tensor]:
    """The weight copies, made once and again only when a parameter changed (its storage or version)."""
    named = list(net.named_parameters())
    key = (channels_last, *((p.data_ptr(), p._version, p.device) for _, p in named))
    with _cache_guard:
        cached = _param_cache.get(net)
    if cached is not None and cached[0] == key:
        return cached[1]
    fmt = torch.channels_last if channels_last else torch.preserve_format
    with torch.no_grad():
        params = {k: (v.contiguous(memory_format=fmt) if v.ndim == 4 else v).detach() for k, v in named}
    with _cache_guard:
        _param_cache[net] = (key, params)
    return params


def _global_hooks() -> bool:
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return any(getattr(_module, n, None) for n in names)


def _hooked(block: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in block.modules()
    )


def applies(double_conv: nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether the lean backward gives exactly what autograd would for this call."""
    if not torch.is_grad_enabled() or double_conv.training:
        return False
    if not any(t.requires_grad for t in inputs):
        return False
    if any(t is not None and t.requires_grad for t in _tensors(double_conv)):
        return False
    return not _hooked(double_conv) and not _global_hooks()


def _tensors(double_conv: nn.Module) -> list[torch.Tensor | None]:
    out = []
    for m in double_conv.modules():
        if isinstance(m, nn.Conv2d):
            out += [m.weight, m.bias]
        elif isinstance(m, nn.BatchNorm2d):
            out += [m.weight, m.bias, m.running_mean, m.running_var]
    return out


def _unit_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """nn.Conv2d -> nn.BatchNorm2d (eval) -> nn.ReLU(inplace=True), the same calls the modules make."""
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.relu(y, inplace=True)


class _ConvBnRelu(torch.autograd.Function):
    """relu(bn(conv(cat(skip, x)))) whose backward returns input gradients only."""

    @staticmethod
    def forward(ctx, skip, x, conv, bn, grad_is_ours):
        inp = x if skip is None else torch.cat([skip, x], dim=1)
        y = _unit_forward(conv, bn, inp)
        # In eval mode BatchNorm is a per-channel scale (plus shift), so its backward folds into
        # the convolution's weights.
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        want_skip = skip is not None and ctx.needs_input_grad[0]
        first = 0 if (skip is None or want_skip) else skip.shape[1]
        w = conv.weight[:, first:] * scale[:, None, None, None]
        if w.device.type in ("cpu", "cuda"):
            w = w.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(y, w)
        ctx.conv_args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.in_shape = (inp.shape[0], inp.shape[1] - first, *inp.shape[2:])
        ctx.split = skip.shape[1] if want_skip else 0  # 0: only x gets a gradient
        ctx.grad_is_ours = grad_is_ours
        return y

    @staticmethod
    def backward(ctx, grad):
        y, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        if ctx.grad_is_ours and not torch.is_grad_enabled():  # create_graph keeps it out of place
            # The gradient was made by the next unit's backward for this unit alone: mask it in
            # place rather than fault in a fresh activation-sized buffer.
            g = torch.ops.aten.threshold_backward.grad_input(grad, y, 0, grad_input=grad)
        else:
            g = torch.ops.aten.threshold_backward(grad, y, 0)
        # An uninitialised input of the gradient's layout: only its shape and strides are read.
        like = torch.empty(ctx.in_shape, dtype=g.dtype, device=g.device, memory_format=_layout(g))
        gin = torch.ops.aten.convolution_backward(
            g, like, w, None, stride, padding, dilation, False, [0, 0], groups, (True, False, False)
        )[0]
        if not ctx.split:
            return None, gin, None, None, None
        return gin[:, : ctx.split], gin[:, ctx.split :], None, None, None


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def double_conv(block: nn.Module, skip: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """A DoubleConv's output for ``cat(skip, x)`` (or ``x``) with the lean backward."""
    conv1, bn1, _, conv2, bn2, _ = block.double_conv
    # h feeds only conv2, so the gradient reaching conv1's unit is conv2's fresh output.
    h = _ConvBnRelu.apply(skip, x, conv1, bn1, True)
    return _ConvBnRelu.apply(None, h, conv2, bn2, False)
