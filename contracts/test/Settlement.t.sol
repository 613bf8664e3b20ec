// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Settlement} from "../src/Settlement.sol";
import {CorollaCredit} from "../src/CorollaCredit.sol";
import {BalanceTree} from "./BalanceTree.sol";

contract SettlementTest is Test {
    Settlement settlement;
    CorollaCredit token;
    address owner = makeAddr("owner");
    address poster = makeAddr("poster");
    address alice = makeAddr("alice");
    address bob = makeAddr("bob");
    address carol = makeAddr("carol");

    event RootPosted(uint64 indexed epoch, bytes32 root, uint96 total);
    event Claimed(address indexed account, uint64 indexed epoch, uint256 amount, uint256 cumulative);
    event PosterChanged(address indexed previous, address indexed current);

    function setUp() public {
        settlement = new Settlement(owner, poster);
        token = settlement.token();
    }

    /// Tree over (alice, a), (bob, b), (carol, c); returns leaves and root.
    function _tree(uint256 a, uint256 b, uint256 c)
        internal
        view
        returns (bytes32[] memory leaves, bytes32 root)
    {
        leaves = new bytes32[](3);
        leaves[0] = BalanceTree.leaf(alice, a);
        leaves[1] = BalanceTree.leaf(bob, b);
        leaves[2] = BalanceTree.leaf(carol, c);
        root = BalanceTree.root(leaves);
    }

    function _post(uint64 epoch, uint256 a, uint256 b, uint256 c) internal returns (bytes32[] memory leaves) {
        bytes32 root;
        (leaves, root) = _tree(a, b, c);
        vm.prank(poster);
        settlement.postRoot(epoch, root, uint96(a + b + c));
    }

    // ---- token ----

    function test_TokenIsMintableOnlyBySettlement() public {
        assertEq(token.minter(), address(settlement));
        vm.expectRevert(abi.encodeWithSelector(CorollaCredit.NotMinter.selector, alice));
        vm.prank(alice);
        token.mint(alice, 1);
        vm.expectRevert(abi.encodeWithSelector(CorollaCredit.NotMinter.selector, owner));
        vm.prank(owner);
        token.mint(owner, 1);
    }

    // ---- posting ----

    function test_PostRootRecordsEpochAndEmits() public {
        (, bytes32 root) = _tree(10, 20, 30);
        vm.expectEmit(address(settlement));
        emit RootPosted(1, root, 60);
        vm.prank(poster);
        settlement.postRoot(1, root, 60);
        assertEq(settlement.latestEpoch(), 1);
        assertEq(settlement.latestRoot(), root);
        assertEq(settlement.latestTotal(), 60);
        assertEq(settlement.roots(1), root);
    }

    function test_PostRootAllowsGapsButNeverOverwrites() public {
        _post(1, 1, 1, 1);
        _post(5, 2, 2, 2);
        assertEq(settlement.latestEpoch(), 5);
        (, bytes32 root) = _tree(3, 3, 3);
        vm.startPrank(poster);
        vm.expectRevert(abi.encodeWithSelector(Settlement.EpochNotIncreasing.selector, 5, 5));
        settlement.postRoot(5, root, 9);
        vm.expectRevert(abi.encodeWithSelector(Settlement.EpochNotIncreasing.selector, 3, 5));
        settlement.postRoot(3, root, 9);
        vm.stopPrank();
    }

    function test_PostRootRejectsEpochZeroAndZeroRoot() public {
        vm.startPrank(poster);
        vm.expectRevert(abi.encodeWithSelector(Settlement.EpochNotIncreasing.selector, 0, 0));
        settlement.postRoot(0, bytes32(uint256(1)), 0);
        vm.expectRevert(Settlement.ZeroRoot.selector);
        settlement.postRoot(1, bytes32(0), 0);
        vm.stopPrank();
    }

    function test_PostRootRejectsDecreasingTotal() public {
        _post(1, 10, 10, 10);
        vm.expectRevert(abi.encodeWithSelector(Settlement.TotalDecreased.selector, 29, 30));
        vm.prank(poster);
        settlement.postRoot(2, bytes32(uint256(7)), 29);
    }

    function testFuzz_PostRootRevertsForAnyoneButPoster(address caller) public {
        vm.assume(caller != poster);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotPoster.selector, caller));
        vm.prank(caller);
        settlement.postRoot(1, bytes32(uint256(1)), 1);
    }

    // ---- poster management ----

    function test_OwnerReplacesPoster() public {
        address next = makeAddr("next");
        vm.expectEmit(address(settlement));
        emit PosterChanged(poster, next);
        vm.prank(owner);
        settlement.setPoster(next);
        assertEq(settlement.poster(), next);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotPoster.selector, poster));
        vm.prank(poster);
        settlement.postRoot(1, bytes32(uint256(1)), 1);
    }

    function test_SetPosterRevertsForNonOwnerAndZero() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, poster));
        vm.prank(poster);
        settlement.setPoster(poster);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        vm.prank(owner);
        settlement.setPoster(address(0));
    }

    function test_ConstructorRejectsZeroPoster() public {
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(owner, address(0));
    }

    // ---- claiming ----

    function test_ClaimPaysCumulativeAndEmits() public {
        bytes32[] memory leaves = _post(1, 100, 200, 300);
        vm.expectEmit(address(settlement));
        emit Claimed(bob, 1, 200, 200);
        vm.prank(carol); // anyone may submit; bob gets paid
        uint256 paid = settlement.claim(bob, 200, BalanceTree.proof(leaves, 1));
        assertEq(paid, 200);
        assertEq(token.balanceOf(bob), 200);
        assertEq(token.balanceOf(carol), 0);
        assertEq(settlement.claimed(bob), 200);
        assertEq(settlement.totalClaimed(), 200);
    }

    function test_SecondClaimPaysNothing() public {
        bytes32[] memory leaves = _post(1, 100, 200, 300);
        settlement.claim(alice, 100, BalanceTree.proof(leaves, 0));
        vm.expectRevert(abi.encodeWithSelector(Settlement.NothingToClaim.selector, alice, 100, 100));
        settlement.claim(alice, 100, BalanceTree.proof(leaves, 0));
        assertEq(token.balanceOf(alice), 100);
    }

    function test_ClaimAfterNewEpochPaysOnlyTheDifference() public {
        bytes32[] memory first = _post(1, 100, 200, 300);
        settlement.claim(alice, 100, BalanceTree.proof(first, 0));
        bytes32[] memory second = _post(2, 150, 200, 900);
        assertEq(settlement.claim(alice, 150, BalanceTree.proof(second, 0)), 50);
        assertEq(settlement.claim(carol, 900, BalanceTree.proof(second, 2)), 900);
        assertEq(token.balanceOf(alice), 150);
        assertEq(token.totalSupply(), 1050);
    }

    function test_ClaimAgainstSupersededRootFails() public {
        bytes32[] memory first = _post(1, 100, 200, 300);
        _post(2, 150, 200, 300);
        vm.expectRevert(Settlement.InvalidProof.selector);
        settlement.claim(alice, 100, BalanceTree.proof(first, 0));
    }

    function test_ClaimBeforeAnyRootReverts() public {
        vm.expectRevert(Settlement.NoRoot.selector);
        settlement.claim(alice, 1, new bytes32[](0));
    }

    function test_ClaimWithWrongAmountOrAccountReverts() public {
        bytes32[] memory leaves = _post(1, 100, 200, 300);
        bytes32[] memory proof = BalanceTree.proof(leaves, 0);
        vm.expectRevert(Settlement.InvalidProof.selector);
        settlement.claim(alice, 101, proof);
        vm.expectRevert(Settlement.InvalidProof.selector);
        settlement.claim(bob, 100, proof);
    }

    function test_ClaimCannotUseInnerNodeAsLeaf() public {
        // Double hashing of leaves stops a 64-byte inner node from passing as a leaf.
        bytes32[] memory leaves = _post(1, 100, 200, 300);
        bytes32 inner = keccak256(abi.encode(alice, uint256(100)));
        vm.expectRevert(Settlement.InvalidProof.selector);
        settlement.claim(address(uint160(uint256(inner))), 100, BalanceTree.proof(leaves, 0));
    }

    function test_ClaimNeverExceedsPostedTotal() public {
        // A tree whose leaves sum to more than the declared total cannot pay out more.
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = BalanceTree.leaf(alice, 80);
        leaves[1] = BalanceTree.leaf(bob, 80);
        vm.prank(poster);
        settlement.postRoot(1, BalanceTree.root(leaves), 100);
        settlement.claim(alice, 80, BalanceTree.proof(leaves, 0));
        vm.expectRevert(abi.encodeWithSelector(Settlement.ExceedsTotal.selector, 160, 100));
        settlement.claim(bob, 80, BalanceTree.proof(leaves, 1));
    }

    function testFuzz_ClaimPaysExactlyTheProvenBalanceOnce(uint256[5] memory balances, uint8 who) public {
        address[] memory accounts = new address[](5);
        bytes32[] memory leaves = new bytes32[](5);
        uint256 total;
        for (uint256 i = 0; i < 5; i++) {
            balances[i] = bound(balances[i], 1, 1e27);
            accounts[i] = address(uint160(0x1000 + i));
            leaves[i] = BalanceTree.leaf(accounts[i], balances[i]);
            total += balances[i];
        }
        vm.prank(poster);
        settlement.postRoot(1, BalanceTree.root(leaves), uint96(total));
        uint256 k = who % 5;
        bytes32[] memory proof = BalanceTree.proof(leaves, k);
        assertEq(settlement.claim(accounts[k], balances[k], proof), balances[k]);
        assertEq(token.balanceOf(accounts[k]), balances[k]);
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.NothingToClaim.selector, accounts[k], balances[k], balances[k])
        );
        settlement.claim(accounts[k], balances[k], proof);
    }

    function testFuzz_ClaimRejectsAnyOtherAmount(uint256 amount) public {
        bytes32[] memory leaves = _post(1, 100, 200, 300);
        vm.assume(amount != 100);
        vm.expectRevert(Settlement.InvalidProof.selector);
        settlement.claim(alice, amount, BalanceTree.proof(leaves, 0));
    }
}
