// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Settlement} from "../src/Settlement.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {CorollaCredit} from "../src/CorollaCredit.sol";
import {BalanceTree} from "./BalanceTree.sol";

/// Drives Settlement like a ledger would: cumulative balances only grow, each epoch posts
/// their tree, and claims (including repeated and stale ones) arrive in any order.
contract SettlementHandler is Test {
    Settlement public settlement;
    uint256 public constant N = 6;
    uint256[N] public cumulative; // latest posted balances
    uint256[N] public paid; // ghost: what each account received
    uint256 public postedTotal;
    uint64 public epoch;

    constructor(Settlement settlement_) {
        settlement = settlement_;
    }

    function account(uint256 i) public pure returns (address) {
        return address(uint160(0xC0FFEE00 + i));
    }

    function _leaves() internal view returns (bytes32[] memory leaves) {
        leaves = new bytes32[](N);
        for (uint256 i = 0; i < N; i++) {
            leaves[i] = BalanceTree.leaf(account(i), cumulative[i]);
        }
    }

    function postEpoch(uint256[N] memory earned, uint8 skip) external {
        uint256 total;
        for (uint256 i = 0; i < N; i++) {
            cumulative[i] += bound(earned[i], 0, 1e24);
            total += cumulative[i];
        }
        epoch += 1 + (skip % 3); // gaps are allowed
        postedTotal = total;
        vm.prank(settlement.poster());
        settlement.postRoot(epoch, BalanceTree.root(_leaves()), uint96(total));
    }

    function claim(uint256 who) external {
        if (epoch == 0) return;
        uint256 i = who % N;
        uint256 before = settlement.token().balanceOf(account(i));
        try settlement.claim(account(i), cumulative[i], BalanceTree.proof(_leaves(), i)) returns (
            uint256 amount
        ) {
            paid[i] += amount;
            assertEq(settlement.token().balanceOf(account(i)), before + amount);
        } catch {
            // Only an account with nothing new may be refused.
            assertEq(settlement.claimed(account(i)), cumulative[i]);
        }
    }

    function claimWithWrongAmount(uint256 who, uint256 amount) external {
        if (epoch == 0) return;
        uint256 i = who % N;
        vm.assume(amount != cumulative[i]);
        vm.expectRevert();
        settlement.claim(account(i), amount, BalanceTree.proof(_leaves(), i));
    }
}

contract SettlementInvariantTest is Test {
    Settlement settlement;
    SettlementHandler handler;

    function setUp() public {
        settlement = new Settlement(address(this), address(0xA11));
        handler = new SettlementHandler(settlement);
        targetContract(address(handler));
    }

    function invariant_TotalClaimedNeverExceedsPostedTotal() public view {
        assertLe(settlement.totalClaimed(), settlement.latestTotal());
        assertEq(settlement.latestTotal(), handler.postedTotal());
    }

    function invariant_NoAccountIsPaidMoreThanItsCumulativeBalance() public view {
        uint256 sum;
        for (uint256 i = 0; i < handler.N(); i++) {
            address a = handler.account(i);
            assertLe(handler.paid(i), handler.cumulative(i));
            assertEq(settlement.claimed(a), handler.paid(i)); // paid exactly once per credit
            assertEq(settlement.token().balanceOf(a), handler.paid(i));
            sum += handler.paid(i);
        }
        assertEq(settlement.totalClaimed(), sum);
        assertEq(settlement.token().totalSupply(), sum);
    }
}

/// Drives NodeRegistry with stakes, unbonding, withdrawals, time and quorum slashes.
contract RegistryHandler is Test {
    NodeRegistry public registry;
    CorollaCredit public token;
    uint256 public constant NODES = 3;
    uint256[2] verifierKeys = [uint256(0xA1), uint256(0xB2)];
    uint256 public staked; // ghost: tokens in
    uint256 public withdrawn; // ghost: tokens out to operators
    uint256 public slashed; // ghost: tokens burned
    uint256 receipts;

    constructor(NodeRegistry registry_, CorollaCredit token_) {
        registry = registry_;
        token = token_;
        if (vm.addr(verifierKeys[1]) < vm.addr(verifierKeys[0])) {
            (verifierKeys[0], verifierKeys[1]) = (verifierKeys[1], verifierKeys[0]);
        }
    }

    function operator(uint256 i) public pure returns (address) {
        return address(uint160(0x0BE7A70 + i));
    }

    function nodeKey(uint256 i) public pure returns (bytes32) {
        return bytes32(0x1000 + i);
    }

    function stake(uint256 who, uint256 amount) external {
        uint256 i = who % NODES;
        amount = bound(amount, 1, token.balanceOf(operator(i)) + 1);
        vm.startPrank(operator(i));
        token.approve(address(registry), amount);
        if (amount > token.balanceOf(operator(i))) {
            vm.expectRevert();
            registry.stake(nodeKey(i), amount);
        } else {
            registry.stake(nodeKey(i), amount);
            staked += amount;
        }
        vm.stopPrank();
    }

    function requestWithdrawal(uint256 who, uint256 amount) external {
        uint256 i = who % NODES;
        (,, uint256 bonded,) = registry.nodes(nodeKey(i));
        if (bonded == 0) return;
        vm.prank(operator(i));
        registry.requestWithdrawal(nodeKey(i), bound(amount, 1, bonded));
    }

    function withdraw(uint256 who) external {
        uint256 i = who % NODES;
        (, uint64 unlockAt,, uint256 unbonding) = registry.nodes(nodeKey(i));
        vm.prank(operator(i));
        if (unbonding == 0 || block.timestamp < unlockAt) {
            vm.expectRevert();
            registry.withdraw(nodeKey(i));
        } else {
            withdrawn += registry.withdraw(nodeKey(i));
        }
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 0, 10 days));
    }

    function slash(uint256 who, uint256 amount) external {
        uint256 i = who % NODES;
        amount = bound(amount, 1, 1e24);
        bytes32 receipt = bytes32(++receipts);
        bytes32 digest = registry.slashDigest(nodeKey(i), receipt, amount);
        bytes[] memory sigs = new bytes[](2);
        for (uint256 k = 0; k < 2; k++) {
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(verifierKeys[k], digest);
            sigs[k] = abi.encodePacked(r, s, v);
        }
        slashed += registry.slash(nodeKey(i), receipt, amount, sigs);
    }

    function slashWithOneSignature(uint256 who) external {
        uint256 i = who % NODES;
        bytes32 receipt = bytes32(++receipts);
        bytes[] memory sigs = new bytes[](1);
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(verifierKeys[0], registry.slashDigest(nodeKey(i), receipt, 1));
        sigs[0] = abi.encodePacked(r, s, v);
        vm.expectRevert();
        registry.slash(nodeKey(i), receipt, 1, sigs);
    }
}

contract RegistryInvariantTest is Test {
    Settlement settlement;
    CorollaCredit token;
    NodeRegistry registry;
    RegistryHandler handler;
    uint256 constant FUNDS = 1_000e18;

    function setUp() public {
        settlement = new Settlement(address(this), address(this));
        token = settlement.token();
        registry = new NodeRegistry(address(this), token, 1 days);
        handler = new RegistryHandler(registry, token);
        uint256 n = handler.NODES();
        bytes32[] memory leaves = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) {
            leaves[i] = BalanceTree.leaf(handler.operator(i), FUNDS);
        }
        settlement.postRoot(1, BalanceTree.root(leaves), uint96(n * FUNDS));
        uint256 attesterKey = 0xA77E57;
        registry.setAttester(vm.addr(attesterKey));
        for (uint256 i = 0; i < n; i++) {
            address op = handler.operator(i);
            bytes32 key = handler.nodeKey(i);
            settlement.claim(op, FUNDS, BalanceTree.proof(leaves, i));
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(attesterKey, registry.bindingDigest(key, op));
            vm.prank(op);
            registry.register(key, abi.encodePacked(r, s, v));
        }
        registry.setVerifier(vm.addr(0xA1), true);
        registry.setVerifier(vm.addr(0xB2), true);
        registry.setQuorum(2);
        targetContract(address(handler));
    }

    function invariant_StakeAccountingBalances() public view {
        uint256 sum;
        for (uint256 i = 0; i < handler.NODES(); i++) {
            (,, uint256 bonded, uint256 unbonding) = registry.nodes(handler.nodeKey(i));
            sum += bonded + unbonding;
        }
        assertEq(registry.totalStaked(), sum);
        assertEq(token.balanceOf(address(registry)), sum);
        assertEq(sum, handler.staked() - handler.withdrawn() - handler.slashed());
    }

    function invariant_TokensAreConservedExceptBurns() public view {
        uint256 n = handler.NODES();
        uint256 held = token.balanceOf(address(registry));
        for (uint256 i = 0; i < n; i++) {
            held += token.balanceOf(handler.operator(i));
        }
        assertEq(held, n * FUNDS - handler.slashed());
        assertEq(token.totalSupply(), n * FUNDS - handler.slashed());
    }
}
