"""Replace a block's linear layers with bitsandbytes int8 or nf4 ones.

Used to serve big models on small devices, and by tests to build a node that computes at
lower precision than it announces. bitsandbytes runs both on CPU (4-bit needs
out_features divisible by 32; `make_model` picks such widths). Mixtral's experts are 3D
parameters, not nn.Linear, and stay unquantized.
"""

from __future__ import annotations

import logging

import torch
from torch import nn


def _quantized(linear: nn.Linear, mode: str, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    weight = linear.weight.data
    if mode == "nf4":
        q: nn.Module = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=weight.dtype,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(weight.to("cpu"), requires_grad=False, quant_type="nf4")
    else:
        q = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=0.0,
            device="meta",
        )
        q.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
    if has_bias:
        q.bias = nn.Parameter(linear.bias.data.to("cpu"), requires_grad=False)
    return q.to(device)


def quantize_linears(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """In place: every nn.Linear inside `module` becomes an int8 or nf4 bitsandbytes layer."""
    if mode not in ("int8", "nf4"):
        raise ValueError(f"unknown quantization {mode!r}; use int8 or nf4")
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, _quantized(child, mode, device))
        else:
            quantize_linears(child, mode, device)
    return module.requires_grad_(False)
