// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";

/// @title CorollaCredit
/// @notice The credit token: one token base unit is one ledger credit. Only the settlement
///         contract that deployed it can mint, and it mints exactly what accounts claim.
///         Holders may burn (the node registry burns slashed stake).
contract CorollaCredit is ERC20, ERC20Burnable {
    /// @notice The only address allowed to mint (the Settlement contract).
    address public immutable minter;

    /// @notice Thrown when anyone but the minter calls `mint`.
    error NotMinter(address caller);

    constructor(address minter_) ERC20("Corolla Credit", "CRL") {
        minter = minter_;
    }

    /// @notice Mint `amount` to `to`; callable only by the minter.
    /// @param to Recipient of the new tokens.
    /// @param amount Amount in base units.
    function mint(address to, uint256 amount) external {
        if (msg.sender != minter) revert NotMinter(msg.sender);
        _mint(to, amount);
    }
}
