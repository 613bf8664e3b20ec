"""A causal LM whose blocks run in the swarm, with the Hugging Face model interface.

Embeddings, final norm and head run locally (`models.LocalParts`, trainable); blocks run
remotely. `model(input_ids)` is differentiable end to end (remote forward + backward), so
prompt tuning or adapters on local parameters work. `model.generate(...)` is transformers'
own GenerationMixin: the forward pass runs an inference session and sends only the
positions the nodes have not seen yet (our cache lives on the nodes, not in
`past_key_values`). `with model.inference_session(max_length=...)` shares one session
across several calls.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from client.inference_session import InferenceSession
from client.remote_sequence import RemoteBlocks
from client.swarm_context import DEFAULT_RECEIPT_BATCH, SwarmContext
from protocol.messages import MAX_RECEIPT_BATCH


class DistributedModelForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = PretrainedConfig
    base_model_prefix = "corolla"
    main_input_name = "input_ids"
    _supports_cache_class = False
    _supports_sdpa = True  # attention runs on the nodes; nothing to dispatch here

    def __init__(self, config: PretrainedConfig, parts: nn.Module, swarm: SwarmContext):
        super().__init__(config)
        self.parts = parts
        self.swarm = swarm
        self.remote = RemoteBlocks(swarm)
        self._session: InferenceSession | None = None
        self._generate_offset = 0  # session position when the current generate() began

    # ----- transformers plumbing -------------------------------------------------------

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the attention cache lives on the nodes

    def can_generate(self) -> bool:  # type: ignore[override]
        return True

    def get_input_embeddings(self) -> nn.Module:
        return self.parts.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.parts.lm_head

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _init_weights(self, module: nn.Module) -> None:
        pass  # weights come from the checkpoint

    # ----- sessions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def inference_session(self, max_length: int) -> Iterator[InferenceSession]:
        """Open one session through the swarm; generate() and forward() inside it reuse it."""
        if self._session is not None:
            raise RuntimeError("an inference session is already active on this model")
        session = InferenceSession(self.swarm, max_length)
        self._session = session
        try:
            yield session
        finally:
            self._session = None
            session.close()

    @property
    def active_session(self) -> InferenceSession | None:
        return self._session

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if self._session is not None:
            self._generate_offset = self._session.position
            try:
                return super().generate(inputs, *args, **kwargs)
            finally:
                self._session.collect_receipts()  # none left owed while the user pauses
        prompt_len = int(input_ids.shape[1]) if input_ids is not None else 1
        with self.inference_session(max_length=self._session_length(prompt_len, kwargs)):
            self._generate_offset = 0
            return super().generate(inputs, *args, **kwargs)

    def _session_length(self, prompt_len: int, kwargs: dict[str, Any]) -> int:
        config = kwargs.get("generation_config") or self.generation_config
        if kwargs.get("max_new_tokens") is not None:
            return prompt_len + int(kwargs["max_new_tokens"])
        if kwargs.get("max_length") is not None:
            return max(int(kwargs["max_length"]), prompt_len + 1)
        if getattr(config, "max_new_tokens", None) is not None:
            return prompt_len + int(config.max_new_tokens)
        return max(int(getattr(config, "max_length", 20) or 20), prompt_len + 1)

    # ----- forward ----------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits for the given tokens. Inside a session, only positions the nodes lack are sent."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        session = self._session
        _check_attention_mask(attention_mask, in_session=session is not None)
        if session is not None:
            seen = session.position - self._generate_offset
            if input_ids is not None:
                new = input_ids[:, seen:] if 0 <= seen < input_ids.shape[1] else input_ids
                hidden = self.parts.embed(new)
            else:
                assert inputs_embeds is not None
                new_embeds = inputs_embeds[:, seen:] if 0 <= seen < inputs_embeds.shape[1] else inputs_embeds
                hidden = self.parts.embed_norm(new_embeds)
            out = session.step(hidden)
        else:
            # inputs_embeds are word embeddings, as in transformers (BLOOM normalizes them first)
            hidden = self.parts.embed(input_ids) if inputs_embeds is None else self.parts.embed_norm(inputs_embeds)
            out = self.remote.apply(hidden)
        logits = self.parts.head(out)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            loss = nn.functional.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def close(self) -> None:
        """Leave the swarm (stops the client's DHT peer and its loop thread)."""
        self.swarm.close()


class PaddingNotSupportedError(ValueError):
    """An attention_mask the swarm cannot honour (the nodes attend to every position sent)."""


def _check_attention_mask(attention_mask: torch.Tensor | None, *, in_session: bool) -> None:
    """Refuse masks that would change the result, rather than return wrong logits.

    The nodes attend causally to every position they are sent: the protocol carries no mask.
    Trailing padding (each row: ones, then zeros) leaves the real positions of a plain
    forward exact, so it is allowed there; left padding, holes, or any padding while
    generating (new tokens would attend to the pads) is refused."""
    if attention_mask is None:
        return
    mask = attention_mask.to(torch.int64)
    if bool((mask == 1).all()):
        return
    right_padded = bool(((mask == 0) | (mask == 1)).all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())
    if in_session or not right_padded:
        raise PaddingNotSupportedError(
            "attention_mask has padding the swarm cannot honour (nodes attend to every position sent): "
            "generate prompts of different lengths one at a time or in batches of equal length; "
            "a plain forward accepts right padding only (transformers' generate reads a prompt token equal "
            "to the pad id as padding: pass attention_mask=torch.ones_like(input_ids) if it is a real token)")


class AutoDistributedModelForCausalLM:
    """`from_pretrained(model_dir_or_name, initial_peers=[...])` -> DistributedModelForCausalLM."""

    @staticmethod
    def from_pretrained(model: str, initial_peers: list[str], *, dtype: torch.dtype = torch.float32,
                        key: str | None = None, refresh_s: float = 10.0, ban_s: float = 60.0,
                        spending: Any = None, ledger: str | None = None, spend: int | None = None,
                        receipt_batch: int = DEFAULT_RECEIPT_BATCH, **kwargs: Any) -> DistributedModelForCausalLM:
        """Open the swarm serving `model`. With `ledger`, `key` and `spend`, the client escrows up
        to `spend` credits with the ledger and attaches priority tickets to its requests until the
        budget is used up, then falls back to free service. With `key`, `receipt_batch` is how
        many inference receipts a node may send together (1 = each with the next answer)."""
        if isinstance(receipt_batch, bool) or not isinstance(receipt_batch, int) \
                or not 1 <= receipt_batch <= MAX_RECEIPT_BATCH:
            raise ValueError(f"receipt_batch must be an integer from 1 to {MAX_RECEIPT_BATCH}, got {receipt_batch!r}")
        from client.routing import Router
        from client.swarm_connection import SwarmConnection
        from models.loading import resolve_model_dir
        from models.local_parts import LocalParts
        from models.manifest_builder import load_manifest

        model_dir = resolve_model_dir(model)
        manifest = load_manifest(model_dir)
        parts = LocalParts.load(model_dir, dtype=dtype)
        conn = SwarmConnection(list(initial_peers))
        manifest_hash = manifest.manifest_hash()
        router = Router(lambda: conn.announcements(manifest_hash), manifest.num_blocks,
                        refresh_s=refresh_s, ban_s=ban_s)
        if spending is None and spend:
            if not (ledger and key):
                raise ValueError("spending credits needs both ledger=URL and key=FILE")
            from client.spending import SpendingPolicy
            from protocol.identity import Identity

            spending = SpendingPolicy(ledger, Identity.load(key), int(spend))
        swarm = SwarmContext(conn, router, manifest_hash, manifest.num_blocks, spending=spending,
                             receipt_batch=receipt_batch)
        if key is not None:
            from client.receipt_book import ReceiptBook

            swarm.receipts = ReceiptBook.from_key_file(key)
            swarm.client_key = swarm.receipts.public_key
        config = copy.deepcopy(parts.config)
        model_obj = DistributedModelForCausalLM(config, parts, swarm)
        with contextlib.suppress(OSError, ValueError):
            model_obj.generation_config = GenerationConfig.from_pretrained(model_dir)
        model_obj.eval()
        return model_obj
