"""Pure checks of a node's openings and receipts against what it committed to.

Each check returns None when it passes and a `Finding` (protocol Reason + a sentence)
when it does not. None of them needs weights or a network: they are cheap, so the
service runs the receipt-only ones (chaining, replay) on every receipt it pulls and the
opening ones on every challenged receipt, before spending compute on recomputation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.merkle import block_root, verify_block_proof
from protocol.messages import ACTIVATION_DTYPES
from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.tensor_hash import dtype_name, tensor_digest
from protocol.verdicts import Reason
from verifier.openings import Openings


@dataclass(frozen=True)
class Finding:
    """Why a receipt fails: the protocol reason code and a sentence for logs and dashboards."""

    reason: Reason
    detail: str


def check_shapes(receipt: Receipt, op: Openings) -> Finding | None:
    """Openings name the challenged receipt and block and have the step's shapes."""
    if op.receipt.id != receipt.receipt_id():
        return Finding(Reason.RECEIPT_MISMATCH, "node opened a different receipt than the one challenged")
    if not receipt.block_start <= op.block < receipt.block_end:
        return Finding(
            Reason.MALFORMED, f"block {op.block} outside span [{receipt.block_start}, {receipt.block_end})"
        )
    if op.leaf_index != op.block - receipt.block_start or op.num_leaves != receipt.num_blocks:
        return Finding(Reason.MALFORMED, "leaf index / leaf count do not match the block span")
    x, y = op.inputs, op.output
    if x.dim() != 3 or y.dim() != 3:
        return Finding(
            Reason.MALFORMED,
            f"openings must be [batch, positions, hidden], got {tuple(x.shape)}, {tuple(y.shape)}",
        )
    for t in (x, y):
        if dtype_name(t.dtype) not in ACTIVATION_DTYPES:
            return Finding(
                Reason.MALFORMED, f"openings dtype {dtype_name(t.dtype)} is not an activation dtype"
            )
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2] or not 0 < y.shape[1] <= x.shape[1]:
        return Finding(
            Reason.MALFORMED, f"input {tuple(x.shape)} and output {tuple(y.shape)} rows do not fit"
        )
    if y.shape[0] != receipt.batch or y.shape[0] * y.shape[1] != receipt.tokens:
        return Finding(
            Reason.MALFORMED,
            f"openings cover {y.shape[0]}x{y.shape[1]} rows, receipt claims batch {receipt.batch}, tokens {receipt.tokens}",
        )
    return None


def step_inputs(op: Openings):  # noqa: ANN201 - torch.Tensor
    """The input rows of the step itself (the last `new` positions of the prefix)."""
    return op.inputs[:, -op.new_positions :].contiguous()


def check_commitments(receipt: Receipt, op: Openings) -> Finding | None:
    """Openings hash to the receipt's commitments (exact: they are the node's own tensors).

    The output is a leaf under `blocks_root`; at the span's edges the step's input rows
    hash to `input_hash` and the output to `output_hash` (forward and inference receipts;
    for backward those two hashes are gradients). For an inner block, when the node sent
    the proof of the previous block's leaf, the step's input rows must be that leaf.
    """
    leaf = tensor_digest(op.output)
    if not verify_block_proof(leaf, op.leaf_index, op.num_leaves, op.proof, receipt.blocks_root):
        return Finding(
            Reason.MERKLE_MISMATCH, f"block {op.block} output is not under the receipt's blocks_root"
        )
    step_digest = tensor_digest(step_inputs(op))
    if receipt.kind != Kind.BACKWARD:
        if op.block == receipt.block_start and step_digest != receipt.input_hash:
            return Finding(
                Reason.OPENING_HASH_MISMATCH, "opened input does not hash to the receipt's input_hash"
            )
        if op.block == receipt.block_end - 1 and leaf != receipt.output_hash:
            return Finding(
                Reason.OPENING_HASH_MISMATCH, "last block output does not hash to the receipt's output_hash"
            )
    if op.leaves is not None:
        found = check_leaves(receipt, op, leaf, step_digest)
        if found:
            return found
    if op.block > receipt.block_start and op.input_proof is not None:
        if not verify_block_proof(
            step_digest, op.leaf_index - 1, op.num_leaves, op.input_proof, receipt.blocks_root
        ):
            return Finding(
                Reason.MERKLE_MISMATCH,
                f"block {op.block} input is not block {op.block - 1}'s committed output",
            )
    return None


def check_leaves(receipt: Receipt, op: Openings, leaf: bytes, step_digest: bytes) -> Finding | None:
    """With all leaves opened (32 bytes per block), every block of the span is checked a little.

    The leaves must rebuild `blocks_root`; the challenged block's input is its
    predecessor's leaf; and no block's output may equal its input, which is what a skipped
    block produces (leaf k == leaf k-1, or leaf 0 == input_hash), whichever block was drawn.
    """
    leaves = op.leaves or []
    if len(leaves) != receipt.num_blocks or block_root(leaves) != receipt.blocks_root:
        return Finding(Reason.MERKLE_MISMATCH, "opened leaves do not rebuild the receipt's blocks_root")
    if leaves[op.leaf_index] != leaf:
        return Finding(Reason.MERKLE_MISMATCH, f"block {op.block} output is not its opened leaf")
    if op.leaf_index > 0 and leaves[op.leaf_index - 1] != step_digest:
        return Finding(
            Reason.MERKLE_MISMATCH, f"block {op.block} input is not block {op.block - 1}'s committed output"
        )
    firsts = [receipt.input_hash] if receipt.kind != Kind.BACKWARD else []
    chain = firsts + list(leaves)
    for k in range(1, len(chain)):
        if chain[k] == chain[k - 1]:
            block = receipt.block_start + k - len(firsts)
            return Finding(
                Reason.OUTPUT_MISMATCH, f"block {block} output equals its input: the block was skipped"
            )
    return None


def check_prefix(receipt: Receipt, op: Openings, history: Iterable[Receipt]) -> Finding | None:
    """The prefix rows of an inference step equal the inputs committed at earlier steps.

    Only decidable for the span's first block (earlier receipts commit to its input
    rows by `input_hash`); earlier steps missing from `history` are skipped.
    """
    if receipt.kind != Kind.INFERENCE or op.block != receipt.block_start or receipt.step == 0:
        return None
    earlier = sorted(
        (
            r
            for r in history
            if r.session_id == receipt.session_id
            and r.node_key == receipt.node_key
            and r.kind == Kind.INFERENCE
            and r.step < receipt.step
            and r.block_start == receipt.block_start
        ),
        key=lambda r: r.step,
    )
    steps = {r.step: r for r in earlier}
    if len(steps) != receipt.step:
        return None  # incomplete history: nothing provable
    offset = 0
    prefix = op.inputs.shape[1] - op.new_positions
    for step in range(receipt.step):
        r = steps[step]
        new = r.tokens // max(r.batch, 1)
        chunk = op.inputs[:, offset : offset + new].contiguous()
        if offset + new > prefix or tensor_digest(chunk) != r.input_hash:
            return Finding(
                Reason.OPENING_HASH_MISMATCH, f"prefix rows of step {step} differ from that step's input_hash"
            )
        offset += new
    if offset != prefix:
        return Finding(
            Reason.OPENING_HASH_MISMATCH, "prefix length does not match the session's earlier steps"
        )
    return None


def _same_step(a: Receipt, b: Receipt) -> bool:
    return (a.session_id, a.step, a.client_key, a.model, a.kind) == (
        b.session_id,
        b.step,
        b.client_key,
        b.model,
        b.kind,
    )


def check_chain(receipt: SignedReceipt, neighbours: Iterable[SignedReceipt]) -> Finding | None:
    """Node k's output hash is node k+1's input hash for the same client, session and step.

    A break is blamed on this receipt only when the neighbour's receipt is acknowledged
    by the client and this one is not: the client checks the output hash of what it
    received before counter-signing, so an acknowledged neighbour proves what really
    travelled. Both acknowledged means the client itself broke the chain.
    """
    r = receipt.receipt
    if r.kind == Kind.BACKWARD:
        return None
    mine_acked = receipt.verify_client()
    for n in neighbours:
        nr = n.receipt
        if n.id == receipt.id or not _same_step(r, nr):
            continue
        broken = (nr.block_end == r.block_start and nr.output_hash != r.input_hash) or (
            nr.block_start == r.block_end and r.output_hash != nr.input_hash
        )
        if broken and n.verify_client() and not mine_acked:
            return Finding(
                Reason.CHAIN_MISMATCH,
                f"hashes do not chain with the acknowledged receipt of blocks [{nr.block_start}, {nr.block_end})",
            )
    return None


def check_replay(receipt: Receipt, earlier: Iterable[Receipt]) -> Finding | None:
    """The same output for a different input of the same blocks can only be a replay.

    Two honest computations of one input give one output (so equal inputs with equal
    outputs are fine); a repeated output hash with a different input hash is an old
    output served again, within a session or across sessions. Only receipts strictly
    before this one's timestamp count, so the original is never blamed for its replay.
    """
    if receipt.kind == Kind.BACKWARD:
        return None
    rid = receipt.receipt_id()
    for e in earlier:
        if (
            e.receipt_id() != rid
            and e.output_hash == receipt.output_hash
            and e.input_hash != receipt.input_hash
            and e.kind != Kind.BACKWARD
            and e.timestamp_ms < receipt.timestamp_ms
            and (e.model, e.block_start, e.block_end)
            == (receipt.model, receipt.block_start, receipt.block_end)
        ):
            return Finding(
                Reason.REPLAY,
                f"output already returned for another input in receipt {e.receipt_id().hex()[:16]}",
            )
    return None


def check_openings(receipt: Receipt, op: Openings, history: Iterable[Receipt] = ()) -> Finding | None:
    """All opening checks in order, first failure wins."""
    return check_shapes(receipt, op) or check_commitments(receipt, op) or check_prefix(receipt, op, history)
