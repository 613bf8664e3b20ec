// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {CorollaCredit} from "./CorollaCredit.sol";

/// @title Settlement
/// @notice The ledger's poster publishes one Merkle root of cumulative balances per epoch;
///         anyone can then claim for an account with a proof against the latest root.
///         The contract pays the difference between the proven cumulative balance and what
///         the account already claimed, so claiming twice pays nothing.
/// @dev Leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulative)))), inner
///      nodes hash the sorted pair (OpenZeppelin MerkleProof); see protocol/README.md.
///      Access control: the owner sets the poster; the poster posts roots; anyone claims.
contract Settlement is Ownable {
    /// @notice The credit token, deployed by and mintable only by this contract.
    CorollaCredit public immutable token;

    /// @notice The address allowed to post epoch roots (the ledger's chain key).
    address public poster;
    /// @notice Root of every posted epoch; claims are checked against the latest.
    mapping(uint64 epoch => bytes32) public roots;
    // The next three fill one storage slot (8 + 12 + 12 bytes), so a claim reads and writes it
    // once. They follow a mapping (a whole slot): after an address, the epoch would pack into
    // the address's slot and a claim would read two.
    /// @notice Id of the latest posted epoch (0 = none yet).
    uint64 public latestEpoch;
    /// @notice Sum of all cumulative balances in the latest tree, as declared by the poster.
    uint96 public latestTotal;
    /// @notice Sum of all claims ever paid (never exceeds `latestTotal`).
    uint96 public totalClaimed;
    /// @notice Amount already paid out per account.
    mapping(address account => uint256) public claimed;

    event PosterChanged(address indexed previous, address indexed current);
    event RootPosted(uint64 indexed epoch, bytes32 root, uint96 total);
    event Claimed(address indexed account, uint64 indexed epoch, uint256 amount, uint256 cumulative);

    error NotPoster(address caller);
    error ZeroAddress();
    error ZeroRoot();
    error EpochNotIncreasing(uint64 epoch, uint64 latest);
    error TotalDecreased(uint96 total, uint96 latest);
    error NoRoot();
    error InvalidProof();
    error NothingToClaim(address account, uint256 cumulative, uint256 alreadyClaimed);
    error ExceedsTotal(uint256 paidOut, uint256 total);

    /// @param owner_ Account that may replace the poster.
    /// @param poster_ The ledger's chain key, allowed to post roots.
    constructor(address owner_, address poster_) Ownable(owner_) {
        if (poster_ == address(0)) revert ZeroAddress();
        token = new CorollaCredit(address(this));
        poster = poster_;
        emit PosterChanged(address(0), poster_);
    }

    /// @notice Replace the poster (e.g. when the ledger rotates its key). Owner only.
    /// @param poster_ The new poster.
    function setPoster(address poster_) external onlyOwner {
        if (poster_ == address(0)) revert ZeroAddress();
        emit PosterChanged(poster, poster_);
        poster = poster_;
    }

    /// @notice Root of the latest posted epoch (zero before the first); claims are checked
    ///         against it. Read from `roots` rather than stored twice: saves postRoot a write.
    function latestRoot() external view returns (bytes32) {
        return roots[latestEpoch];
    }

    /// @notice Publish the balance root of `epoch`. Epoch ids strictly increase (gaps are
    ///         allowed, overwrites are not) and the declared total never decreases, since
    ///         balances in the tree are cumulative. Poster only.
    /// @param epoch The ledger's epoch id, greater than `latestEpoch`.
    /// @param root Merkle root of (account, cumulative) leaves.
    /// @param total Sum of the cumulative balances in the tree; caps total payouts. uint96 is
    ///        ample: the ledger keeps credits in int64.
    function postRoot(uint64 epoch, bytes32 root, uint96 total) external {
        if (msg.sender != poster) revert NotPoster(msg.sender);
        if (root == bytes32(0)) revert ZeroRoot();
        if (epoch <= latestEpoch) revert EpochNotIncreasing(epoch, latestEpoch);
        if (total < latestTotal) revert TotalDecreased(total, latestTotal);
        latestEpoch = epoch;
        latestTotal = total;
        roots[epoch] = root;
        emit RootPosted(epoch, root, total);
    }

    /// @notice Pay `account` its proven cumulative balance minus what it already claimed.
    ///         Anyone may submit; tokens always go to `account`.
    /// @param account The account whose leaf is proven.
    /// @param cumulative The account's cumulative balance in the latest tree.
    /// @param proof Sibling hashes from the leaf to the latest root.
    /// @return amount The amount minted to `account`.
    function claim(address account, uint256 cumulative, bytes32[] calldata proof)
        external
        returns (uint256 amount)
    {
        // One read of the shared slot, before anything else touches storage.
        (uint64 epoch, uint256 total, uint256 paid) = (latestEpoch, latestTotal, totalClaimed);
        if (epoch == 0) revert NoRoot();
        bytes32 root = roots[epoch];
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulative))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        uint256 already = claimed[account];
        if (cumulative <= already) revert NothingToClaim(account, cumulative, already);
        amount = cumulative - already;
        claimed[account] = cumulative;
        uint256 paidOut = paid + amount;
        if (paidOut > total) revert ExceedsTotal(paidOut, total);
        // casting to uint96 is safe because paidOut <= total, a uint96
        // forge-lint: disable-next-line(unsafe-typecast)
        totalClaimed = uint96(paidOut);
        token.mint(account, amount);
        emit Claimed(account, epoch, amount, cumulative);
    }
}
