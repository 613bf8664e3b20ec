"""Block and balance Merkle trees: every proof verifies, every wrong claim fails."""

from __future__ import annotations

import pytest

from protocol.hashing import digest
from protocol.merkle import (
    EMPTY_ROOT,
    BalanceTree,
    block_proof,
    block_root,
    verify_balance_proof,
    verify_block_proof,
)


@pytest.mark.parametrize("n", range(1, 18))
def test_every_block_proof_verifies_and_only_at_its_index(n):
    leaves = [digest(b"%d" % i) for i in range(n)]
    root = block_root(leaves)
    for i in range(n):
        proof = block_proof(leaves, i)
        assert verify_block_proof(leaves[i], i, n, proof, root)
        if n > 1:
            assert not verify_block_proof(leaves[i], (i + 1) % n, n, proof, root)
            assert not verify_block_proof(leaves[(i + 1) % n], i, n, proof, root)
            assert not verify_block_proof(leaves[i], i, n, proof[:-1], root)


def test_block_root_depends_on_order_and_single_leaf_is_its_leaf_node():
    a, b = digest(b"a"), digest(b"b")
    assert block_root([a, b]) != block_root([b, a])
    assert block_root([a]) == digest(b"\x00" + a)
    assert block_root([a, b]) == digest(b"\x01" + digest(b"\x00" + a) + digest(b"\x00" + b))
    with pytest.raises(ValueError):
        block_root([])


def test_block_proof_rejects_garbage_without_raising():
    assert not verify_block_proof(b"x" * 32, 0, 2, [b"short"], b"r" * 32)
    assert not verify_block_proof(b"x" * 32, -1, 2, [], b"r" * 32)
    assert not verify_block_proof(b"x" * 32, 0, 1, [b"y" * 32], block_root([b"x" * 32]))


def _accounts(n):
    return [("0x" + digest(b"acct%d" % i)[:20].hex(), i * 1000 + 1) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_balance_tree_proofs_verify_for_every_account(n):
    entries = _accounts(n)
    tree = BalanceTree(entries)
    assert BalanceTree(list(reversed(entries))).root == tree.root  # order-independent
    for account, cumulative in entries:
        proof = tree.proof(account)
        assert verify_balance_proof(account, cumulative, proof, tree.root)
        assert verify_balance_proof(account.upper().replace("0X", "0x"), cumulative, proof, tree.root)
        assert not verify_balance_proof(account, cumulative + 1, proof, tree.root)


def test_balance_tree_refuses_duplicates_and_has_a_zero_empty_root():
    (account, _), = _accounts(1)
    with pytest.raises(ValueError, match="twice"):
        BalanceTree([(account, 1), (account.lower(), 2)])
    assert BalanceTree([]).root == EMPTY_ROOT
    with pytest.raises(KeyError):
        BalanceTree(_accounts(2)).proof("0x" + "00" * 20)
