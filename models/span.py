"""A span of consecutive transformer blocks: the unit a node serves and a verifier recomputes.

`BlockSpan` runs blocks [start, end) of one model on one device and dtype: a full causal
forward (positions 0..T-1), an incremental step against a `SpanCache`, the backward pass
w.r.t. its input, and a single block on its own. Outputs match the same layers inside the
full `transformers` model (see tests/models/).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.architectures import BlockArch, arch_for_config
from models.loading import checkpoint_prefix, load_block_layer, load_config, resolve_model_dir, weight_map
from models.manifest_builder import block_hash, load_manifest, stored_tensors
from models.span_cache import SpanCache, cache_nbytes
from protocol.manifests import ModelManifest

QUANTIZE_CHOICES = (None, "int8", "nf4")

SpanOutput = torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]


@dataclass(eq=False, repr=False)
class BlockSpan:
    """Blocks [start, end) of one model on one device and dtype."""

    start: int
    end: int
    dtype: torch.dtype
    device: torch.device
    manifest: ModelManifest
    hidden_size: int
    arch: BlockArch
    layers: nn.ModuleList
    model_dir: Path
    quantize: str | None = None
    _position_module: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        model: str | Path,
        start: int,
        end: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        quantize: str | None = None,
    ) -> BlockSpan:
        """Read only the weights of blocks [start, end), checking each against the manifest."""
        if quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, not {quantize!r}")
        model_dir = resolve_model_dir(model)
        config = load_config(model_dir)
        arch = arch_for_config(config)
        manifest = load_manifest(model_dir)
        if not 0 <= start < end <= manifest.num_blocks:
            raise ValueError(f"block span [{start}, {end}) is not within [0, {manifest.num_blocks})")
        device = torch.device(device)
        wmap = weight_map(model_dir)
        prefixes = {
            i: checkpoint_prefix(wmap, arch.block_prefix(i), arch.base_prefix) for i in range(start, end)
        }
        files = {f for k, f in wmap.items() if any(k.startswith(p) for p in prefixes.values())}
        tensors = stored_tensors(model_dir, sorted(files))
        layers = nn.ModuleList()
        for i, prefix in prefixes.items():
            if block_hash(tensors, prefix)[0] != manifest.block_hashes[i]:
                raise ValueError(f"weights of block {i} in {model_dir} do not match the model manifest")
            layers.append(load_block_layer(arch, model_dir, i, wmap, dtype, device))
        if quantize is not None:
            from models.quantization import quantize_linears

            for layer in layers:
                quantize_linears(layer, quantize, device)
        return cls(
            start=start,
            end=end,
            dtype=dtype,
            device=device,
            manifest=manifest,
            hidden_size=manifest.hidden_size,
            arch=arch,
            layers=layers,
            model_dir=model_dir,
            quantize=quantize,
            _position_module=arch.new_position_module(device),
        )

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        quant = f" {self.quantize}" if self.quantize else ""
        return (
            f"BlockSpan({self.arch.name} blocks [{self.start}, {self.end}) {dtype}{quant} on {self.device})"
        )

    # ---- shapes and memory --------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.end - self.start

    def cache_nbytes(self, batch: int, max_length: int) -> int:
        """Bytes a cache for `batch` sequences of `max_length` positions will take."""
        kv_heads, head_dim = self.arch.kv_shape()
        return cache_nbytes(self.num_blocks, batch, max_length, kv_heads, head_dim, self.dtype)

    def new_cache(self, batch: int, max_length: int) -> SpanCache:
        kv_heads, head_dim = self.arch.kv_shape()
        return SpanCache(self.start, self.end, batch, max_length, kv_heads, head_dim, self.dtype, self.device)

    def _check_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.ndim != 3 or hidden.shape[-1] != self.hidden_size or hidden.shape[1] == 0:
            raise ValueError(
                f"hidden states must have shape [batch, seq>0, {self.hidden_size}], got {list(hidden.shape)}"
            )
        if hidden.dtype != self.dtype:
            raise ValueError(f"hidden states must be {self.dtype}, got {hidden.dtype}")
        return hidden.to(self.device)

    def _check_padding(
        self,
        hidden: torch.Tensor,
        past: int,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        batch, length = hidden.shape[:2]
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + length):
            raise ValueError(
                f"attention_mask must have shape [batch, cached+new] = [{batch}, {past + length}], "
                f"got {list(attention_mask.shape)}"
            )
        if position_ids is not None and (
            position_ids.ndim != 2
            or position_ids.shape[0] not in (1, batch)
            or position_ids.shape[1] != length
        ):
            raise ValueError(
                f"position_ids must have shape [1 or {batch}, {length}], got {list(position_ids.shape)}"
            )

    # ---- compute ------------------------------------------------------------------------
    def _run(
        self,
        hidden: torch.Tensor,
        cache: SpanCache | None,
        block_outputs: bool,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> SpanOutput:
        return _collect(self.iter_blocks(hidden, cache, attention_mask, position_ids), hidden, block_outputs)

    def iter_blocks(
        self,
        hidden: torch.Tensor,
        cache: SpanCache | None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """The span's layers one at a time: yields each block's output as it is computed.

        The one implementation of running the span (`forward`/`step` consume it whole; the
        node's scheduler runs it block by block so that urgent work can cut in between,
        node/block_steps.py). Each `next()` runs in the caller's grad mode. With a cache, the
        caller commits the step (`iter_step` does).
        """
        hidden = self._check_hidden(hidden)
        past = cache.length if cache is not None else 0
        self._check_padding(hidden, past, attention_mask, position_ids)
        windows = [self.arch.sliding_window(i) for i in range(self.start, self.end)]
        inputs = self.arch.layer_inputs(
            self._position_module, hidden, past, set(windows), attention_mask, position_ids
        )
        for layer, window in zip(self.layers, windows, strict=True):
            hidden = self.arch.call_layer(layer, hidden, inputs, window, cache)
            yield hidden

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        block_outputs: bool = False,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> SpanOutput:
        """Causal forward of positions 0..T-1 of hidden [B, T, H], no cache.

        Optional, for padded batches: attention_mask [B, T] (1 token, 0 padding) and
        position_ids [1|B, T] (default 0..T-1), as in `transformers`."""
        hidden = self._check_hidden(hidden)
        with torch.no_grad():
            return self._run(hidden, None, block_outputs, attention_mask, position_ids)

    def step(
        self,
        hidden: torch.Tensor,
        cache: SpanCache,
        *,
        block_outputs: bool = False,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> SpanOutput:
        """Positions cache.length .. cache.length+T-1; appends them to the cache.

        Raises ValueError (cache unchanged) if they do not fit in cache.max_length. With
        padding, attention_mask covers all positions so far: [B, cache.length + T]."""
        with torch.no_grad():
            return _collect(self.iter_step(hidden, cache, attention_mask, position_ids), hidden, block_outputs)

    def iter_step(
        self,
        hidden: torch.Tensor,
        cache: SpanCache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """`step` one block at a time (see iter_blocks); the cache counts the new positions
        once the last block has run. Checks, and reserves the positions, at the call: raises
        ValueError (cache unchanged) before any block runs."""
        hidden = self._check_hidden(hidden)
        if hidden.shape[0] != cache.batch:
            raise ValueError(f"batch {hidden.shape[0]} does not match the cache's batch {cache.batch}")
        if (cache.start, cache.end) != (self.start, self.end):
            raise ValueError("cache belongs to another span")
        self._check_padding(hidden, cache.length, attention_mask, position_ids)
        cache.begin_step(hidden.shape[1])
        return _committing(self.iter_blocks(hidden, cache, attention_mask, position_ids), cache)

    def backward(
        self,
        hidden: torch.Tensor,
        grad_output: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """d(loss)/d(hidden) given d(loss)/d(output), recomputing the forward (weights frozen)."""
        hidden = self._check_hidden(hidden)
        if grad_output.shape != hidden.shape:
            raise ValueError(
                f"grad_output shape {list(grad_output.shape)} must equal hidden shape {list(hidden.shape)}"
            )
        grad_output = grad_output.to(device=self.device, dtype=self.dtype)
        with torch.enable_grad():
            leaf = hidden.detach().requires_grad_(True)
            out = self._run(leaf, None, False, attention_mask, position_ids)
            assert isinstance(out, torch.Tensor)
            (grad,) = torch.autograd.grad(out, leaf, grad_output)
        return grad

    def block_forward(
        self,
        index: int,
        hidden: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Only absolute block `index`, positions 0..L-1, no cache (what a verifier recomputes)."""
        if not self.start <= index < self.end:
            raise ValueError(f"block {index} is not in this span [{self.start}, {self.end})")
        hidden = self._check_hidden(hidden)
        self._check_padding(hidden, 0, attention_mask, position_ids)
        window = self.arch.sliding_window(index)
        with torch.no_grad():
            inputs = self.arch.layer_inputs(
                self._position_module, hidden, 0, {window}, attention_mask, position_ids
            )
            return self.arch.call_layer(self.layers[index - self.start], hidden, inputs, window, None)


def _collect(blocks: Iterator[torch.Tensor], hidden: torch.Tensor, block_outputs: bool) -> SpanOutput:
    """Run a span's blocks to the end: the last output, with every block's output if asked."""
    outputs = list(blocks)
    last = outputs[-1] if outputs else hidden
    return (last, outputs) if block_outputs else last


def _committing(blocks: Iterator[torch.Tensor], cache: SpanCache) -> Iterator[torch.Tensor]:
    yield from blocks
    cache.commit_step()
