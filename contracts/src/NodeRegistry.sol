// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {CorollaCredit} from "./CorollaCredit.sol";

/// @title NodeRegistry
/// @notice Node operators bind their node's Ed25519 key to their address and stake credits
///         behind it. Stake leaves only after an unbonding delay, and until then both bonded
///         and unbonding stake can be slashed by a quorum of registered verifiers who sign
///         an EIP-712 `Slash` naming a failed receipt (each receipt slashable once).
/// @dev Access control, in full: the owner manages the verifier set, the quorum and the
///      attester; an operator registers a key only with the attester's EIP-712 `Binding`
///      of that key to the operator's address; the operator bound to a key stakes, unbonds
///      and withdraws for it; anyone may submit a slash that carries `quorum` distinct
///      verifier signatures. Ed25519 cannot be checked on-chain, so the attester (the
///      ledger's chain key) checks off-chain that the key holder signed the binding message
///      (protocol/binding.py) and attests it; without an attester nobody can register.
contract NodeRegistry is Ownable, EIP712 {
    using SafeERC20 for IERC20;

    /// @notice EIP-712 type of a slash authorisation (see protocol/eip712.py).
    bytes32 public constant SLASH_TYPEHASH =
        keccak256("Slash(bytes32 nodeKey,bytes32 receiptId,uint256 amount)");
    /// @notice EIP-712 type of the attester's statement that `operator` holds `nodeKey`.
    bytes32 public constant BINDING_TYPEHASH = keccak256("Binding(bytes32 nodeKey,address operator)");

    struct Node {
        address operator; // who registered the key; zero = unregistered
        uint64 unlockAt; // when `unbonding` may be withdrawn
        uint256 stake; // bonded stake
        uint256 unbonding; // stake on its way out, still slashable
    }

    /// @notice The staked token (CorollaCredit).
    CorollaCredit public immutable token;
    /// @notice Seconds between a withdrawal request and the withdrawal.
    uint64 public immutable unbondingDelay;

    /// @notice Who attests key bindings (zero until the owner sets one: no registration).
    address public attester;
    /// @notice Signatures needed to slash.
    uint256 public quorum;
    /// @notice Number of registered verifiers.
    uint256 public verifierCount;
    /// @notice Whether an address is a registered verifier.
    mapping(address => bool) public isVerifier;
    /// @notice Registered nodes by Ed25519 public key.
    mapping(bytes32 nodeKey => Node) public nodes;
    /// @notice Receipts that were already the subject of a slash.
    mapping(bytes32 receiptId => bool) public slashedReceipts;
    /// @notice Sum of bonded and unbonding stake over all nodes (= tokens held).
    uint256 public totalStaked;

    event VerifierSet(address indexed verifier, bool enabled);
    event QuorumSet(uint256 quorum);
    event AttesterSet(address indexed attester);
    event NodeRegistered(bytes32 indexed nodeKey, address indexed operator);
    event Staked(bytes32 indexed nodeKey, uint256 amount, uint256 stake);
    event WithdrawalRequested(bytes32 indexed nodeKey, uint256 amount, uint64 unlockAt);
    event Withdrawn(bytes32 indexed nodeKey, address indexed operator, uint256 amount);
    event Slashed(bytes32 indexed nodeKey, bytes32 indexed receiptId, uint256 requested, uint256 slashed);

    error ZeroKey();
    error ZeroAddress();
    error InvalidAttestation(bytes32 nodeKey, address operator);
    error ZeroAmount();
    error KeyTaken(bytes32 nodeKey, address operator);
    error NotOperator(bytes32 nodeKey, address caller);
    error UnknownNode(bytes32 nodeKey);
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingUnbonding(bytes32 nodeKey);
    error StillUnbonding(uint64 unlockAt);
    error BadQuorum(uint256 quorum, uint256 verifierCount);
    error VerifierUnchanged(address verifier, bool enabled);
    error NotEnoughSignatures(uint256 given, uint256 quorum);
    error SignersNotAscending(address signer);
    error NotVerifier(address signer);
    error ReceiptAlreadySlashed(bytes32 receiptId);

    /// @param owner_ Manager of the verifier set and quorum.
    /// @param token_ The staked token.
    /// @param unbondingDelay_ Seconds a withdrawal waits (and stays slashable).
    constructor(address owner_, CorollaCredit token_, uint64 unbondingDelay_)
        Ownable(owner_)
        EIP712("Corolla NodeRegistry", "1")
    {
        token = token_;
        unbondingDelay = unbondingDelay_;
        quorum = 1;
        emit QuorumSet(1);
    }

    // ---- verifier set (owner) ----

    /// @notice Add or remove a verifier. Removing one may not leave fewer than `quorum`.
    /// @param verifier The verifier's signing address.
    /// @param enabled True to add, false to remove.
    function setVerifier(address verifier, bool enabled) external onlyOwner {
        if (isVerifier[verifier] == enabled) revert VerifierUnchanged(verifier, enabled);
        isVerifier[verifier] = enabled;
        if (enabled) {
            verifierCount += 1;
        } else {
            verifierCount -= 1;
            if (verifierCount < quorum) revert BadQuorum(quorum, verifierCount);
        }
        emit VerifierSet(verifier, enabled);
    }

    /// @notice Set how many distinct verifier signatures a slash needs (1..verifierCount).
    /// @param quorum_ The new quorum.
    function setQuorum(uint256 quorum_) external onlyOwner {
        if (quorum_ == 0 || quorum_ > verifierCount) revert BadQuorum(quorum_, verifierCount);
        quorum = quorum_;
        emit QuorumSet(quorum_);
    }

    /// @notice Set the address whose EIP-712 `Binding` signatures admit registrations.
    ///         Attestations by a previous attester stop working.
    /// @param attester_ The attester's signing address (the ledger's chain key); not zero.
    function setAttester(address attester_) external onlyOwner {
        if (attester_ == address(0)) revert ZeroAddress();
        attester = attester_;
        emit AttesterSet(attester_);
    }

    // ---- operators ----

    /// @notice Bind `nodeKey` (raw Ed25519 public key) to the caller, first come first served,
    ///         with the attester's EIP-712 `Binding(nodeKey, caller)` on this chain and registry.
    /// @param nodeKey The node's 32-byte Ed25519 public key.
    /// @param attestation The attester's 65-byte signature over `bindingDigest(nodeKey, msg.sender)`.
    function register(bytes32 nodeKey, bytes calldata attestation) external {
        if (nodeKey == bytes32(0)) revert ZeroKey();
        address current = nodes[nodeKey].operator;
        if (current != address(0)) revert KeyTaken(nodeKey, current);
        // A malformed signature recovers to zero, which never matches (even with no attester).
        (address signer,,) = ECDSA.tryRecoverCalldata(bindingDigest(nodeKey, msg.sender), attestation);
        if (signer == address(0) || signer != attester) revert InvalidAttestation(nodeKey, msg.sender);
        nodes[nodeKey].operator = msg.sender;
        emit NodeRegistered(nodeKey, msg.sender);
    }

    /// @notice Add `amount` of stake to a node the caller operates (needs token approval).
    /// @param nodeKey The node's key.
    /// @param amount Tokens to move from the caller into stake.
    function stake(bytes32 nodeKey, uint256 amount) external {
        Node storage node = _operated(nodeKey);
        if (amount == 0) revert ZeroAmount();
        node.stake += amount;
        totalStaked += amount;
        IERC20(address(token)).safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(nodeKey, amount, node.stake);
    }

    /// @notice Move `amount` of bonded stake to unbonding; it stays slashable until
    ///         `unbondingDelay` from now (a new request restarts the delay for all of it).
    /// @param nodeKey The node's key.
    /// @param amount Stake to unbond.
    function requestWithdrawal(bytes32 nodeKey, uint256 amount) external {
        Node storage node = _operated(nodeKey);
        if (amount == 0) revert ZeroAmount();
        if (amount > node.stake) revert InsufficientStake(amount, node.stake);
        node.stake -= amount;
        node.unbonding += amount;
        uint64 unlockAt = uint64(block.timestamp) + unbondingDelay;
        node.unlockAt = unlockAt;
        emit WithdrawalRequested(nodeKey, amount, unlockAt);
    }

    /// @notice Pay out all unbonding stake once the delay has passed.
    /// @param nodeKey The node's key.
    /// @return amount Tokens sent to the operator.
    function withdraw(bytes32 nodeKey) external returns (uint256 amount) {
        Node storage node = _operated(nodeKey);
        amount = node.unbonding;
        if (amount == 0) revert NothingUnbonding(nodeKey);
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp < node.unlockAt) revert StillUnbonding(node.unlockAt);
        node.unbonding = 0;
        totalStaked -= amount;
        IERC20(address(token)).safeTransfer(msg.sender, amount);
        emit Withdrawn(nodeKey, msg.sender, amount);
    }

    // ---- slashing (anyone, with a verifier quorum) ----

    /// @notice Burn up to `amount` of a node's stake (bonded first, then unbonding) for a
    ///         failed receipt, authorised by `quorum` verifiers' EIP-712 signatures.
    /// @param nodeKey The node to slash.
    /// @param receiptId Id of the failed receipt (protocol receipt id); slashable once.
    /// @param amount Amount the verifiers agreed to slash.
    /// @param signatures 65-byte signatures by distinct verifiers, ordered by signer address.
    /// @return slashed The amount actually burned (capped at the node's stake).
    function slash(bytes32 nodeKey, bytes32 receiptId, uint256 amount, bytes[] calldata signatures)
        external
        returns (uint256 slashed)
    {
        Node storage node = nodes[nodeKey];
        if (node.operator == address(0)) revert UnknownNode(nodeKey);
        if (amount == 0) revert ZeroAmount();
        if (slashedReceipts[receiptId]) revert ReceiptAlreadySlashed(receiptId);
        _checkQuorum(slashDigest(nodeKey, receiptId, amount), signatures);
        slashedReceipts[receiptId] = true;

        uint256 fromStake = amount < node.stake ? amount : node.stake;
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < node.unbonding ? rest : node.unbonding;
        node.stake -= fromStake;
        node.unbonding -= fromUnbonding;
        slashed = fromStake + fromUnbonding;
        totalStaked -= slashed;
        if (slashed > 0) token.burn(slashed);
        emit Slashed(nodeKey, receiptId, amount, slashed);
    }

    /// @notice The EIP-712 digest verifiers sign to authorise a slash.
    /// @param nodeKey The node to slash.
    /// @param receiptId The failed receipt.
    /// @param amount The amount to slash.
    function slashDigest(bytes32 nodeKey, bytes32 receiptId, uint256 amount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(SLASH_TYPEHASH, nodeKey, receiptId, amount)));
    }

    /// @notice The EIP-712 digest the attester signs to let `operator` register `nodeKey`.
    /// @param nodeKey The node's Ed25519 public key.
    /// @param operator The address that may register it.
    function bindingDigest(bytes32 nodeKey, address operator) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(BINDING_TYPEHASH, nodeKey, operator)));
    }

    /// @notice The EIP-712 domain separator (name "Corolla NodeRegistry", version "1").
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _checkQuorum(bytes32 digest, bytes[] calldata signatures) private view {
        uint256 needed = quorum;
        if (signatures.length < needed) revert NotEnoughSignatures(signatures.length, needed);
        address previous = address(0);
        for (uint256 i = 0; i < signatures.length; i++) {
            address signer = ECDSA.recover(digest, signatures[i]);
            if (signer <= previous) revert SignersNotAscending(signer);
            if (!isVerifier[signer]) revert NotVerifier(signer);
            previous = signer;
        }
    }

    function _operated(bytes32 nodeKey) private view returns (Node storage node) {
        node = nodes[nodeKey];
        if (node.operator == address(0)) revert UnknownNode(nodeKey);
        if (node.operator != msg.sender) revert NotOperator(nodeKey, msg.sender);
    }
}
