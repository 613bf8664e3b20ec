// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, console} from "forge-std/Test.sol";
import {VmSafe} from "forge-std/Vm.sol";
import {Settlement} from "../src/Settlement.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {CorollaCredit} from "../src/CorollaCredit.sol";
import {BalanceTree} from "./BalanceTree.sol";

/// Gas of the operations that recur in production, in a steady state: epoch 1 and epoch 2
/// roots are posted and two accounts claimed in epoch 1, so totals are already non-zero.
/// Each test measures the one call with gasleft() and asserts a budget; benchmarks/chain.py
/// reads the "gas <op>:" log lines. The rest of a test (copying the proof, signing, logging,
/// asserting) is left out of the per-test totals that `forge snapshot` keeps in
/// .gas-snapshot: vm.resetGasMetering() just before the call forgets the gas used so far and
/// vm.pauseGasMetering() just after it stops counting, so a total is the operation's call gas
/// plus ~420 gas of measuring. (Pausing at the start instead leaves ~3,400: the first call to
/// the cheatcode address is charged before the pause takes effect.) The set-up never touches
/// the measured contract, whose account and slots stay cold, as in a real transaction.
contract GasTest is Test {
    Settlement settlement;
    CorollaCredit token;
    NodeRegistry registry;
    address poster = makeAddr("poster");
    bytes32[] claimProof;
    bytes32[] repeatProof;
    bytes32 constant NODE = bytes32(uint256(0xA11CE));
    uint256 verifierA = 0xA;
    uint256 verifierB = 0xB;
    bytes32 constant RECEIPT = keccak256("failed receipt");
    bytes32 slashDigest; // signed by the verifiers; computed in setUp, so the registry stays cold

    uint256 constant ACCOUNTS = 1024; // 10-hash proofs: a large swarm's tree
    uint256 constant FIRST = 777; // claims for the first time, in epoch 2
    uint256 constant REPEAT = 1; // claimed in epoch 1, claims again in epoch 2

    function _account(uint256 i) internal pure returns (address) {
        return address(uint160(0x100000 + i));
    }

    /// Leaves of `epoch`'s tree: account i holds a cumulative epoch * 1e18 + i.
    function _leaves(uint256 epoch) internal pure returns (bytes32[] memory leaves) {
        leaves = new bytes32[](ACCOUNTS);
        for (uint256 i = 0; i < ACCOUNTS; i++) {
            leaves[i] = BalanceTree.leaf(_account(i), epoch * 1e18 + i);
        }
    }

    function setUp() public {
        settlement = new Settlement(address(this), poster);
        token = settlement.token();
        registry = new NodeRegistry(address(this), token, 1 days);

        bytes32[] memory epoch1 = _leaves(1);
        vm.prank(poster);
        settlement.postRoot(1, BalanceTree.root(epoch1), uint96(ACCOUNTS * 2e18));
        settlement.claim(_account(0), 1e18, BalanceTree.proof(epoch1, 0));
        settlement.claim(_account(REPEAT), 1e18 + REPEAT, BalanceTree.proof(epoch1, REPEAT));

        bytes32[] memory epoch2 = _leaves(2);
        vm.prank(poster);
        settlement.postRoot(2, BalanceTree.root(epoch2), uint96(ACCOUNTS * 3e18));
        claimProof = BalanceTree.proof(epoch2, FIRST);
        repeatProof = BalanceTree.proof(epoch2, REPEAT);

        registry.setVerifier(vm.addr(verifierA), true);
        registry.setVerifier(vm.addr(verifierB), true);
        registry.setQuorum(2);
        uint256 attester = 0xA77E57;
        registry.setAttester(vm.addr(attester));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(attester, registry.bindingDigest(NODE, _account(0)));
        vm.startPrank(_account(0));
        registry.register(NODE, abi.encodePacked(r, s, v));
        token.approve(address(registry), 1e18);
        registry.stake(NODE, 1e18);
        vm.stopPrank();
        slashDigest = registry.slashDigest(NODE, RECEIPT, 1e17);
    }

    /// Coverage builds are unoptimised and instrumented: their gas says nothing about budgets.
    function _coverage() internal view returns (bool) {
        return vm.isContext(VmSafe.ForgeContext.Coverage);
    }

    /// Log `gas <op>: g` for benchmarks/chain.py and assert the budget (metering is paused).
    function _report(string memory label, uint256 g, uint256 budget) internal view {
        console.log(label, g);
        if (!_coverage()) assertLt(g, budget);
    }

    function test_GasPostRoot() public {
        Settlement s = settlement;
        bytes32 root = keccak256("epoch 3");
        vm.prank(poster);
        vm.resetGasMetering();
        uint256 g = gasleft();
        s.postRoot(3, root, uint96(ACCOUNTS * 4e18));
        g -= gasleft();
        vm.pauseGasMetering();
        _report("gas postRoot:", g, 60_000);
    }

    /// An account's first claim: claimed[account] and its token balance are fresh slots.
    function test_GasClaim() public {
        Settlement s = settlement;
        bytes32[] memory proof = claimProof;
        address account = _account(FIRST);
        vm.resetGasMetering();
        uint256 g = gasleft();
        s.claim(account, 2e18 + FIRST, proof);
        g -= gasleft();
        vm.pauseGasMetering();
        _report("gas claim:", g, 80_000);
    }

    /// The common case: an operator that claimed in an earlier epoch claims again after a
    /// new root, so both of its slots already hold non-zero values.
    function test_GasClaimRepeat() public {
        Settlement s = settlement;
        bytes32[] memory proof = repeatProof;
        address account = _account(REPEAT);
        vm.resetGasMetering();
        uint256 g = gasleft();
        s.claim(account, 2e18 + REPEAT, proof);
        g -= gasleft();
        vm.pauseGasMetering();
        _report("gas claimRepeat:", g, 45_000);
    }

    function test_GasSlash() public {
        NodeRegistry r = registry;
        bytes32 digest = slashDigest;
        bytes[] memory sigs = new bytes[](2);
        (uint8 v, bytes32 rr, bytes32 ss) = vm.sign(verifierA, digest);
        sigs[0] = abi.encodePacked(rr, ss, v);
        (v, rr, ss) = vm.sign(verifierB, digest);
        sigs[1] = abi.encodePacked(rr, ss, v);
        if (vm.addr(verifierB) < vm.addr(verifierA)) (sigs[0], sigs[1]) = (sigs[1], sigs[0]);
        vm.resetGasMetering();
        uint256 g = gasleft();
        r.slash(NODE, RECEIPT, 1e17, sigs);
        g -= gasleft();
        vm.pauseGasMetering();
        _report("gas slash (quorum 2):", g, 120_000);
    }
}
