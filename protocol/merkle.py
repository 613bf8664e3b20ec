"""The two Merkle trees of Corolla.

* Block tree (off-chain, project hash): commits a receipt to each block's output so a
  verifier can challenge one block. Leaf node = H(0x00 || leaf), inner = H(0x01 || l || r);
  an odd node at any level is carried up unchanged; the root of one leaf is its leaf node.
* Balance tree (on-chain, keccak256): OpenZeppelin `MerkleProof`-compatible. Leaves are
  `keccak256(keccak256(abi.encode(address, uint256)))` sorted ascending, inner nodes hash
  the sorted pair, an odd node is carried up. The root of an empty tree is 32 zero bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from protocol.hashing import DIGEST_SIZE, digest

EMPTY_ROOT = bytes(32)

# ----- block tree --------------------------------------------------------------------


def _block_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ValueError("a block Merkle tree needs at least one leaf")
    level = [digest(b"\x00" + bytes(leaf)) for leaf in leaves]
    levels = [level]
    while len(level) > 1:
        nxt = [digest(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    return levels


def block_root(leaves: Sequence[bytes]) -> bytes:
    """Root over per-block output digests, in block order."""
    return _block_levels(leaves)[-1][0]


def block_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling nodes from leaf `index` up to the root (levels where it is carried are skipped)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    proof = []
    for level in _block_levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def verify_block_proof(leaf: bytes, index: int, n_leaves: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff `leaf` is leaf `index` of an `n_leaves` tree with `root`. Never raises on bad input."""
    try:
        if not 0 <= index < n_leaves or any(len(p) != DIGEST_SIZE for p in proof):
            return False
        node = digest(b"\x00" + bytes(leaf))
        width, used = n_leaves, 0
        while width > 1:
            if index ^ 1 < width:
                if used >= len(proof):
                    return False
                sibling = proof[used]
                used += 1
                node = digest(b"\x01" + (sibling + node if index & 1 else node + sibling))
            index //= 2
            width = (width + 1) // 2
        return used == len(proof) and node == root
    except (TypeError, ValueError):
        return False


# ----- balance tree (OpenZeppelin MerkleProof) -----------------------------------------


def balance_leaf(account: str, cumulative: int) -> bytes:
    """`keccak256(keccak256(abi.encode(address account, uint256 cumulative)))`."""
    if cumulative < 0 or cumulative >= 2**256:
        raise ValueError("cumulative must fit a uint256")
    return keccak(keccak(abi_encode(["address", "uint256"], [to_checksum_address(account), cumulative])))


def _hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class BalanceTree:
    """Cumulative claimable balances of one epoch; `.root` goes on-chain, `.proof()` to claimers."""

    def __init__(self, entries: Sequence[tuple[str, int]]):
        self.leaves: dict[str, bytes] = {}
        for account, cumulative in entries:
            key = to_checksum_address(account)
            if key in self.leaves:
                raise ValueError(f"account {key} appears twice in the balance tree")
            self.leaves[key] = balance_leaf(key, cumulative)
        level = sorted(self.leaves.values())
        self._levels = [level]
        while len(level) > 1:
            nxt = [_hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self._levels.append(nxt)
            level = nxt
        self._index = {leaf: i for i, leaf in enumerate(self._levels[0])}

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self._levels[0] else EMPTY_ROOT

    def proof(self, account: str) -> list[bytes]:
        """Proof for `account` (KeyError if it has no leaf)."""
        index = self._index[self.leaves[to_checksum_address(account)]]
        proof = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index //= 2
        return proof


def verify_balance_proof(account: str, cumulative: int, proof: Sequence[bytes], root: bytes) -> bool:
    """What `MerkleProof.verify(proof, root, leaf)` answers on-chain. Never raises on bad input."""
    try:
        node = balance_leaf(account, cumulative)
        for sibling in proof:
            node = _hash_pair(node, bytes(sibling))
        return node == root
    except (TypeError, ValueError):
        return False
