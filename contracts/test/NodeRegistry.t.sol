// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {Settlement} from "../src/Settlement.sol";
import {CorollaCredit} from "../src/CorollaCredit.sol";
import {BalanceTree} from "./BalanceTree.sol";

/// Shared set-up: tokens come from a real Settlement claim, so the registry is tested
/// against the token as deployed.
abstract contract RegistryFixture is Test {
    Settlement settlement;
    CorollaCredit token;
    NodeRegistry registry;
    address owner = makeAddr("owner");
    address poster = makeAddr("poster");
    address operator = makeAddr("operator");
    address other = makeAddr("other");
    bytes32 constant NODE = bytes32(uint256(0xA11CE));
    uint64 constant DELAY = 7 days;
    uint256[] verifierKeys;
    uint256 attesterKey = uint256(keccak256("attester"));

    function setUp() public virtual {
        settlement = new Settlement(owner, poster);
        token = settlement.token();
        registry = new NodeRegistry(owner, token, DELAY);
        _fund(operator, 1_000_000e18, other, 1_000_000e18);
        for (uint256 i = 1; i <= 3; i++) {
            verifierKeys.push(uint256(keccak256(abi.encode("verifier", i))));
        }
        // Sort keys by address so signature arrays are ascending.
        for (uint256 i = 0; i < 3; i++) {
            for (uint256 j = i + 1; j < 3; j++) {
                if (vm.addr(verifierKeys[j]) < vm.addr(verifierKeys[i])) {
                    (verifierKeys[i], verifierKeys[j]) = (verifierKeys[j], verifierKeys[i]);
                }
            }
        }
        vm.startPrank(owner);
        for (uint256 i = 0; i < 3; i++) {
            registry.setVerifier(vm.addr(verifierKeys[i]), true);
        }
        registry.setQuorum(2);
        registry.setAttester(vm.addr(attesterKey));
        vm.stopPrank();
    }

    /// `key`'s EIP-712 `Binding(nodeKey, operator_)` signature for this registry.
    function _attest(uint256 key, bytes32 nodeKey, address operator_) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, registry.bindingDigest(nodeKey, operator_));
        return abi.encodePacked(r, s, v);
    }

    /// Register `nodeKey` as `operator_` with the attester's attestation.
    function _register(address operator_, bytes32 nodeKey) internal {
        bytes memory attestation = _attest(attesterKey, nodeKey, operator_); // before the prank
        vm.prank(operator_);
        registry.register(nodeKey, attestation);
    }

    function _fund(address a, uint256 amountA, address b, uint256 amountB) internal {
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = BalanceTree.leaf(a, amountA);
        leaves[1] = BalanceTree.leaf(b, amountB);
        vm.prank(poster);
        settlement.postRoot(1, BalanceTree.root(leaves), uint96(amountA + amountB));
        settlement.claim(a, amountA, BalanceTree.proof(leaves, 0));
        settlement.claim(b, amountB, BalanceTree.proof(leaves, 1));
    }

    function _registerAndStake(uint256 amount) internal {
        _register(operator, NODE);
        vm.startPrank(operator);
        token.approve(address(registry), amount);
        registry.stake(NODE, amount);
        vm.stopPrank();
    }

    function _sig(uint256 key, bytes32 nodeKey, bytes32 receiptId, uint256 amount)
        internal
        view
        returns (bytes memory)
    {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, registry.slashDigest(nodeKey, receiptId, amount));
        return abi.encodePacked(r, s, v);
    }

    /// Signatures of the first `n` verifiers (ascending by address).
    function _quorumSigs(uint256 n, bytes32 nodeKey, bytes32 receiptId, uint256 amount)
        internal
        view
        returns (bytes[] memory sigs)
    {
        sigs = new bytes[](n);
        for (uint256 i = 0; i < n; i++) {
            sigs[i] = _sig(verifierKeys[i], nodeKey, receiptId, amount);
        }
    }
}

contract NodeRegistryTest is RegistryFixture {
    event NodeRegistered(bytes32 indexed nodeKey, address indexed operator);
    event Staked(bytes32 indexed nodeKey, uint256 amount, uint256 stake);
    event WithdrawalRequested(bytes32 indexed nodeKey, uint256 amount, uint64 unlockAt);
    event Withdrawn(bytes32 indexed nodeKey, address indexed operator, uint256 amount);
    event Slashed(bytes32 indexed nodeKey, bytes32 indexed receiptId, uint256 requested, uint256 slashed);
    event VerifierSet(address indexed verifier, bool enabled);
    event QuorumSet(uint256 quorum);
    event AttesterSet(address indexed attester);

    // ---- registration ----

    function test_RegisterBindsKeyToCaller() public {
        bytes memory attestation = _attest(attesterKey, NODE, operator);
        vm.expectEmit(address(registry));
        emit NodeRegistered(NODE, operator);
        vm.prank(operator);
        registry.register(NODE, attestation);
        (address op,,,) = registry.nodes(NODE);
        assertEq(op, operator);
    }

    function test_RegisterRejectsTakenAndZeroKey() public {
        _register(operator, NODE);
        bytes memory forOther = _attest(attesterKey, NODE, other);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.KeyTaken.selector, NODE, operator));
        vm.prank(other);
        registry.register(NODE, forOther);
        bytes memory zero = _attest(attesterKey, bytes32(0), other);
        vm.expectRevert(NodeRegistry.ZeroKey.selector);
        vm.prank(other);
        registry.register(bytes32(0), zero);
    }

    function _expectRegisterRefused(address caller, bytes32 nodeKey, bytes memory attestation) internal {
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InvalidAttestation.selector, nodeKey, caller));
        vm.prank(caller);
        registry.register(nodeKey, attestation);
        (address op,,,) = registry.nodes(nodeKey);
        assertEq(op, address(0));
    }

    /// The squatting the attestation prevents: another address cannot use (or copy) the
    /// operator's attestation to take its key.
    function test_AttestationForAnotherOperatorReverts() public {
        _expectRegisterRefused(other, NODE, _attest(attesterKey, NODE, operator));
    }

    function test_AttestationForAnotherKeyReverts() public {
        _expectRegisterRefused(operator, NODE, _attest(attesterKey, bytes32(uint256(0xB0B)), operator));
    }

    function test_AttestationFromNonAttesterReverts() public {
        _expectRegisterRefused(operator, NODE, _attest(uint256(keccak256("stranger")), NODE, operator));
        _expectRegisterRefused(operator, NODE, _attest(verifierKeys[0], NODE, operator));
    }

    function test_AttestationForAnotherChainOrRegistryReverts() public {
        // The same terms signed for another chain id, then for another registry address.
        uint256 chainId = block.chainid;
        vm.chainId(chainId + 1);
        bytes memory otherChain = _attest(attesterKey, NODE, operator);
        vm.chainId(chainId);
        _expectRegisterRefused(operator, NODE, otherChain);

        NodeRegistry twin = new NodeRegistry(owner, token, DELAY);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(attesterKey, twin.bindingDigest(NODE, operator));
        assertTrue(twin.bindingDigest(NODE, operator) != registry.bindingDigest(NODE, operator));
        _expectRegisterRefused(operator, NODE, abi.encodePacked(r, s, v));
    }

    function test_MalformedAttestationReverts() public {
        _expectRegisterRefused(operator, NODE, hex"1234");
        _expectRegisterRefused(operator, NODE, new bytes(65)); // recovers to no address
    }

    function test_NobodyRegistersBeforeAnAttesterIsSet() public {
        NodeRegistry fresh = new NodeRegistry(owner, token, DELAY);
        assertEq(fresh.attester(), address(0));
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InvalidAttestation.selector, NODE, operator));
        vm.prank(operator);
        fresh.register(NODE, new bytes(65));
    }

    function test_NewAttesterVoidsOldAttestations() public {
        bytes memory old = _attest(attesterKey, NODE, operator);
        uint256 nextKey = uint256(keccak256("next attester"));
        vm.expectEmit(address(registry));
        emit AttesterSet(vm.addr(nextKey));
        vm.prank(owner);
        registry.setAttester(vm.addr(nextKey));
        assertEq(registry.attester(), vm.addr(nextKey));
        _expectRegisterRefused(operator, NODE, old);
        bytes memory fresh = _attest(nextKey, NODE, operator);
        vm.prank(operator);
        registry.register(NODE, fresh);
        (address op,,,) = registry.nodes(NODE);
        assertEq(op, operator);
    }

    function test_SetAttesterRejectsZeroAddress() public {
        vm.expectRevert(NodeRegistry.ZeroAddress.selector);
        vm.prank(owner);
        registry.setAttester(address(0));
    }

    function testFuzz_OnlyOwnerSetsAttester(address caller) public {
        vm.assume(caller != owner);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, caller));
        vm.prank(caller);
        registry.setAttester(caller);
        assertEq(registry.attester(), vm.addr(attesterKey));
    }

    // ---- staking and unbonding ----

    function test_StakeMovesTokensIntoRegistry() public {
        _register(operator, NODE);
        vm.startPrank(operator);
        token.approve(address(registry), 500e18);
        vm.expectEmit(address(registry));
        emit Staked(NODE, 500e18, 500e18);
        registry.stake(NODE, 500e18);
        vm.stopPrank();
        (,, uint256 stake, uint256 unbonding) = registry.nodes(NODE);
        assertEq(stake, 500e18);
        assertEq(unbonding, 0);
        assertEq(token.balanceOf(address(registry)), 500e18);
        assertEq(registry.totalStaked(), 500e18);
    }

    function test_StakeRevertsForNonOperatorUnknownNodeAndZero() public {
        _registerAndStake(100e18);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotOperator.selector, NODE, other));
        vm.prank(other);
        registry.stake(NODE, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnknownNode.selector, bytes32(uint256(9))));
        vm.prank(operator);
        registry.stake(bytes32(uint256(9)), 1);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        vm.prank(operator);
        registry.stake(NODE, 0);
    }

    function test_WithdrawAfterUnbondingDelay() public {
        _registerAndStake(100e18);
        uint64 unlockAt = uint64(block.timestamp) + DELAY;
        vm.expectEmit(address(registry));
        emit WithdrawalRequested(NODE, 40e18, unlockAt);
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 40e18);

        vm.warp(unlockAt - 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StillUnbonding.selector, unlockAt));
        vm.prank(operator);
        registry.withdraw(NODE);

        vm.warp(unlockAt);
        uint256 before = token.balanceOf(operator);
        vm.expectEmit(address(registry));
        emit Withdrawn(NODE, operator, 40e18);
        vm.prank(operator);
        assertEq(registry.withdraw(NODE), 40e18);
        assertEq(token.balanceOf(operator), before + 40e18);
        (,, uint256 stake, uint256 unbonding) = registry.nodes(NODE);
        assertEq(stake, 60e18);
        assertEq(unbonding, 0);
        assertEq(registry.totalStaked(), 60e18);
    }

    function test_NewRequestRestartsTheDelay() public {
        _registerAndStake(100e18);
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 10e18);
        vm.warp(block.timestamp + DELAY - 1);
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 10e18);
        vm.warp(block.timestamp + 1);
        vm.expectRevert();
        vm.prank(operator);
        registry.withdraw(NODE);
    }

    function test_WithdrawalPathsRevertForOthersAndBadAmounts() public {
        _registerAndStake(100e18);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotOperator.selector, NODE, other));
        vm.prank(other);
        registry.requestWithdrawal(NODE, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InsufficientStake.selector, 101e18, 100e18));
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 101e18);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 0);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NothingUnbonding.selector, NODE));
        vm.prank(operator);
        registry.withdraw(NODE);
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 1e18);
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotOperator.selector, NODE, other));
        vm.prank(other);
        registry.withdraw(NODE);
    }

    // ---- slashing ----

    function test_QuorumOfVerifiersSlashesStake() public {
        _registerAndStake(100e18);
        bytes32 receipt = keccak256("failed receipt");
        bytes[] memory sigs = _quorumSigs(2, NODE, receipt, 30e18);
        vm.expectEmit(address(registry));
        emit Slashed(NODE, receipt, 30e18, 30e18);
        vm.prank(other); // anyone may submit
        assertEq(registry.slash(NODE, receipt, 30e18, sigs), 30e18);
        (,, uint256 stake,) = registry.nodes(NODE);
        assertEq(stake, 70e18);
        assertEq(token.balanceOf(address(registry)), 70e18);
        assertEq(token.totalSupply(), 2_000_000e18 - 30e18); // burned
        assertTrue(registry.slashedReceipts(receipt));
    }

    function test_SlashReachesUnbondingStakeAndCapsAtTotal() public {
        _registerAndStake(100e18);
        vm.prank(operator);
        registry.requestWithdrawal(NODE, 80e18);
        bytes32 receipt = keccak256("r");
        assertEq(registry.slash(NODE, receipt, 500e18, _quorumSigs(2, NODE, receipt, 500e18)), 100e18);
        (,, uint256 stake, uint256 unbonding) = registry.nodes(NODE);
        assertEq(stake + unbonding, 0);
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NothingUnbonding.selector, NODE));
        vm.prank(operator);
        registry.withdraw(NODE);
    }

    function test_ReceiptIsSlashableOnce() public {
        _registerAndStake(100e18);
        bytes32 receipt = keccak256("r");
        bytes[] memory sigs = _quorumSigs(2, NODE, receipt, 10e18);
        registry.slash(NODE, receipt, 10e18, sigs);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.ReceiptAlreadySlashed.selector, receipt));
        registry.slash(NODE, receipt, 10e18, sigs);
    }

    function test_SlashBelowQuorumReverts() public {
        _registerAndStake(100e18);
        bytes32 receipt = keccak256("r");
        bytes[] memory sigs = _quorumSigs(1, NODE, receipt, 1e18);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotEnoughSignatures.selector, 1, 2));
        registry.slash(NODE, receipt, 1e18, sigs);
    }

    function test_SlashWithDuplicateSignerReverts() public {
        _registerAndStake(100e18);
        bytes32 receipt = keccak256("r");
        bytes[] memory sigs = new bytes[](2);
        sigs[0] = _sig(verifierKeys[0], NODE, receipt, 1e18);
        sigs[1] = sigs[0];
        vm.expectRevert(
            abi.encodeWithSelector(NodeRegistry.SignersNotAscending.selector, vm.addr(verifierKeys[0]))
        );
        registry.slash(NODE, receipt, 1e18, sigs);
    }

    function test_SlashByNonVerifierReverts() public {
        _registerAndStake(100e18);
        bytes32 receipt = keccak256("r");
        uint256 outsider = uint256(keccak256("outsider"));
        bytes[] memory sigs = new bytes[](2);
        sigs[0] = _sig(verifierKeys[0], NODE, receipt, 1e18);
        sigs[1] = _sig(outsider, NODE, receipt, 1e18);
        address first = vm.addr(verifierKeys[0]);
        address second = vm.addr(outsider);
        if (second < first) (sigs[0], sigs[1]) = (sigs[1], sigs[0]);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotVerifier.selector, second));
        registry.slash(NODE, receipt, 1e18, sigs);
    }

    function test_SignatureForOtherTermsDoesNotSlash() public {
        _registerAndStake(100e18);
        bytes32 receipt = keccak256("r");
        // Signed for 1 token, submitted for 50: recovers other addresses, not verifiers.
        bytes[] memory sigs = _quorumSigs(2, NODE, receipt, 1e18);
        vm.expectRevert();
        registry.slash(NODE, receipt, 50e18, sigs);
        vm.expectRevert();
        registry.slash(NODE, keccak256("other receipt"), 1e18, sigs);
        (,, uint256 stake,) = registry.nodes(NODE);
        assertEq(stake, 100e18);
    }

    function test_SlashRejectsMalformedSignature() public {
        _registerAndStake(100e18);
        bytes[] memory sigs = new bytes[](2);
        sigs[0] = hex"1234";
        sigs[1] = hex"5678";
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureLength.selector, 2));
        registry.slash(NODE, keccak256("r"), 1, sigs);
    }

    function test_SlashUnknownNodeOrZeroAmountReverts() public {
        bytes32 receipt = keccak256("r");
        bytes[] memory sigs = _quorumSigs(2, NODE, receipt, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnknownNode.selector, NODE));
        registry.slash(NODE, receipt, 1, sigs);
        _registerAndStake(1e18);
        sigs = _quorumSigs(2, NODE, receipt, 0);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        registry.slash(NODE, receipt, 0, sigs);
    }

    function test_RemovedVerifierCannotSlash() public {
        _registerAndStake(100e18);
        vm.prank(owner);
        registry.setVerifier(vm.addr(verifierKeys[0]), false);
        bytes32 receipt = keccak256("r");
        bytes[] memory sigs = _quorumSigs(2, NODE, receipt, 1e18);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotVerifier.selector, vm.addr(verifierKeys[0])));
        registry.slash(NODE, receipt, 1e18, sigs);
    }

    function testFuzz_SlashNeverTakesMoreThanStake(uint256 staked, uint256 unbond, uint256 amount) public {
        staked = bound(staked, 1, 1_000_000e18);
        unbond = bound(unbond, 0, staked);
        amount = bound(amount, 1, type(uint256).max);
        _registerAndStake(staked);
        if (unbond > 0) {
            vm.prank(operator);
            registry.requestWithdrawal(NODE, unbond);
        }
        bytes32 receipt = keccak256(abi.encode(staked, unbond, amount));
        uint256 slashed = registry.slash(NODE, receipt, amount, _quorumSigs(2, NODE, receipt, amount));
        assertEq(slashed, amount < staked ? amount : staked);
        (,, uint256 stake, uint256 unbonding) = registry.nodes(NODE);
        assertEq(stake + unbonding, staked - slashed);
        assertEq(token.balanceOf(address(registry)), registry.totalStaked());
    }

    // ---- verifier set ----

    function test_OwnerManagesVerifiersAndQuorum() public {
        address v = makeAddr("v4");
        vm.expectEmit(address(registry));
        emit VerifierSet(v, true);
        vm.prank(owner);
        registry.setVerifier(v, true);
        assertTrue(registry.isVerifier(v));
        assertEq(registry.verifierCount(), 4);
        vm.expectEmit(address(registry));
        emit QuorumSet(4);
        vm.prank(owner);
        registry.setQuorum(4);
        assertEq(registry.quorum(), 4);
    }

    function test_VerifierSetGuards() public {
        vm.startPrank(owner);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.BadQuorum.selector, 4, 3));
        registry.setQuorum(4);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.BadQuorum.selector, 0, 3));
        registry.setQuorum(0);
        address v0 = vm.addr(verifierKeys[0]);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.VerifierUnchanged.selector, v0, true));
        registry.setVerifier(v0, true);
        registry.setQuorum(3);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.BadQuorum.selector, 3, 2));
        registry.setVerifier(v0, false);
        vm.stopPrank();
    }

    function testFuzz_OnlyOwnerManagesVerifiers(address caller) public {
        vm.assume(caller != owner);
        vm.startPrank(caller);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, caller));
        registry.setVerifier(caller, true);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, caller));
        registry.setQuorum(1);
        vm.stopPrank();
    }
}
