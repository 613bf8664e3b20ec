// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, console} from "forge-std/Test.sol";
import {VmSafe} from "forge-std/Vm.sol";
import {Settlement} from "../src/Settlement.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {CorollaCredit} from "../src/CorollaCredit.sol";
import {BalanceTree} from "./BalanceTree.sol";

/// Gas of the three operations that recur in production, in a steady state (earlier claims
/// and roots exist, so totals are already non-zero). Each test measures the one call with
/// gasleft() and asserts a budget; benchmarks/chain.py reads the "gas <op>:" log lines, and
/// `forge snapshot` keeps the per-test totals in .gas-snapshot.
contract GasTest is Test {
    Settlement settlement;
    CorollaCredit token;
    NodeRegistry registry;
    address poster = makeAddr("poster");
    bytes32[] leaves;
    bytes32[] claimProof;
    bytes32 constant NODE = bytes32(uint256(0xA11CE));
    uint256 verifierA = 0xA;
    uint256 verifierB = 0xB;

    uint256 constant ACCOUNTS = 1024; // 10-hash proofs: a large swarm's tree

    function _account(uint256 i) internal pure returns (address) {
        return address(uint160(0x100000 + i));
    }

    function setUp() public {
        settlement = new Settlement(address(this), poster);
        token = settlement.token();
        registry = new NodeRegistry(address(this), token, 1 days);
        for (uint256 i = 0; i < ACCOUNTS; i++) {
            leaves.push(BalanceTree.leaf(_account(i), 1e18 + i));
        }
        vm.prank(poster);
        settlement.postRoot(1, BalanceTree.root(leaves), uint96(ACCOUNTS * 2e18));
        // Earlier claims, as in any epoch after the first.
        settlement.claim(_account(0), 1e18, BalanceTree.proof(leaves, 0));
        settlement.claim(_account(1), 1e18 + 1, BalanceTree.proof(leaves, 1));

        claimProof = BalanceTree.proof(leaves, 777);

        registry.setVerifier(vm.addr(verifierA), true);
        registry.setVerifier(vm.addr(verifierB), true);
        registry.setQuorum(2);
        vm.startPrank(_account(0));
        registry.register(NODE);
        token.approve(address(registry), 1e18);
        registry.stake(NODE, 1e18);
        vm.stopPrank();
    }

    /// Coverage builds are unoptimised and instrumented: their gas says nothing about budgets.
    function _coverage() internal view returns (bool) {
        return vm.isContext(VmSafe.ForgeContext.Coverage);
    }

    function test_GasPostRoot() public {
        bytes32 root = keccak256("epoch 2");
        vm.prank(poster);
        uint256 g = gasleft();
        settlement.postRoot(2, root, uint96(ACCOUNTS * 3e18));
        g -= gasleft();
        console.log("gas postRoot:", g);
        if (!_coverage()) assertLt(g, 60_000);
    }

    function test_GasClaim() public {
        bytes32[] memory proof = claimProof;
        address account = _account(777);
        uint256 g = gasleft();
        settlement.claim(account, 1e18 + 777, proof);
        g -= gasleft();
        console.log("gas claim:", g);
        if (!_coverage()) assertLt(g, 80_000);
    }

    function test_GasSlash() public {
        bytes32 receipt = keccak256("failed receipt");
        bytes32 digest = registry.slashDigest(NODE, receipt, 1e17);
        bytes[] memory sigs = new bytes[](2);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(verifierA, digest);
        sigs[0] = abi.encodePacked(r, s, v);
        (v, r, s) = vm.sign(verifierB, digest);
        sigs[1] = abi.encodePacked(r, s, v);
        if (vm.addr(verifierB) < vm.addr(verifierA)) (sigs[0], sigs[1]) = (sigs[1], sigs[0]);
        uint256 g = gasleft();
        registry.slash(NODE, receipt, 1e17, sigs);
        g -= gasleft();
        console.log("gas slash (quorum 2):", g);
        if (!_coverage()) assertLt(g, 120_000);
    }
}
