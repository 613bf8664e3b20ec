// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Settlement} from "../src/Settlement.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {CorollaCredit} from "../src/CorollaCredit.sol";

/// The contracts against the vectors the Python side also asserts (protocol/vectors/).
contract VectorsTest is Test {
    struct Entry {
        address account;
        uint256 cumulative;
        bytes32 leaf;
        bytes32[] proof;
    }

    function _entries(string memory json) internal pure returns (Entry[] memory) {
        return abi.decode(vm.parseJson(json, ".entries"), (Entry[]));
    }

    function test_BalanceLeavesAndProofsMatchVectors() public view {
        string memory json = vm.readFile("protocol/vectors/balance_tree.json");
        bytes32 root = vm.parseJsonBytes32(json, ".root");
        Entry[] memory entries = _entries(json);
        assertGt(entries.length, 1);
        for (uint256 i = 0; i < entries.length; i++) {
            Entry memory e = entries[i];
            bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(e.account, e.cumulative))));
            assertEq(leaf, e.leaf, "leaf encoding");
            assertTrue(MerkleProof.verify(e.proof, root, leaf), "proof");
        }
        // A one-entry tree's root is its leaf.
        address account = vm.parseJsonAddress(json, ".single.account");
        uint256 cumulative = vm.parseJsonUint(json, ".single.cumulative");
        bytes32 single = keccak256(bytes.concat(keccak256(abi.encode(account, cumulative))));
        assertEq(single, vm.parseJsonBytes32(json, ".single.root"));
    }

    function test_SettlementPaysEveryVectorAccount() public {
        string memory json = vm.readFile("protocol/vectors/balance_tree.json");
        Entry[] memory entries = _entries(json);
        uint256 total;
        for (uint256 i = 0; i < entries.length; i++) {
            total += entries[i].cumulative;
        }
        Settlement settlement = new Settlement(address(this), address(this));
        settlement.postRoot(1, vm.parseJsonBytes32(json, ".root"), uint96(total));
        for (uint256 i = 0; i < entries.length; i++) {
            Entry memory e = entries[i];
            if (e.cumulative == 0) {
                vm.expectRevert(abi.encodeWithSelector(Settlement.NothingToClaim.selector, e.account, 0, 0));
                settlement.claim(e.account, 0, e.proof);
            } else {
                settlement.claim(e.account, e.cumulative, e.proof);
            }
            assertEq(settlement.token().balanceOf(e.account), e.cumulative);
        }
        assertEq(settlement.totalClaimed(), total);
    }

    function test_SlashDigestsAndSignaturesMatchVectors() public {
        string memory json = vm.readFile("protocol/vectors/eip712.json");
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".type"))),
            new NodeRegistry(address(this), CorollaCredit(address(0)), 0).SLASH_TYPEHASH()
        );
        uint256 n;
        for (; vm.keyExistsJson(json, string.concat(".slash[", vm.toString(n), "]")); n++) {
            _checkSlashCase(json, string.concat(".slash[", vm.toString(n), "]"));
        }
        assertEq(n, 3);
    }

    function _checkSlashCase(string memory json, string memory p) internal {
        vm.chainId(vm.parseJsonUint(json, string.concat(p, ".chain_id")));
        address where = vm.parseJsonAddress(json, string.concat(p, ".registry"));
        deployCodeTo("NodeRegistry.sol", abi.encode(address(this), address(0), uint64(0)), where);
        NodeRegistry registry = NodeRegistry(where);

        bytes32 nodeKey = vm.parseJsonBytes32(json, string.concat(p, ".node_key"));
        bytes32 receiptId = vm.parseJsonBytes32(json, string.concat(p, ".receipt_id"));
        uint256 amount = vm.parseUint(vm.parseJsonString(json, string.concat(p, ".amount")));
        assertEq(registry.domainSeparator(), vm.parseJsonBytes32(json, string.concat(p, ".domain_separator")));
        bytes32 structHash = keccak256(abi.encode(registry.SLASH_TYPEHASH(), nodeKey, receiptId, amount));
        assertEq(structHash, vm.parseJsonBytes32(json, string.concat(p, ".struct_hash")));
        assertEq(
            registry.slashDigest(nodeKey, receiptId, amount),
            vm.parseJsonBytes32(json, string.concat(p, ".digest"))
        );

        // The Python signature verifies on-chain: a one-verifier registry accepts it.
        address signer = vm.parseJsonAddress(json, string.concat(p, ".signer"));
        assertEq(signer, vm.addr(vm.parseJsonUint(json, string.concat(p, ".signer_private_key"))));
        registry.setVerifier(signer, true);
        uint256 attesterKey = 0xA77E57;
        registry.setAttester(vm.addr(attesterKey));
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(attesterKey, registry.bindingDigest(nodeKey, address(0xB0B)));
        vm.prank(address(0xB0B));
        registry.register(nodeKey, abi.encodePacked(r, s, v));
        bytes[] memory sigs = new bytes[](1);
        sigs[0] = vm.parseJsonBytes(json, string.concat(p, ".signature"));
        assertEq(registry.slash(nodeKey, receiptId, amount, sigs), 0); // nothing staked
        assertTrue(registry.slashedReceipts(receiptId));
    }

    function test_BindingDigestsAndSignaturesMatchVectors() public {
        string memory json = vm.readFile("protocol/vectors/eip712.json");
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".binding_type"))),
            new NodeRegistry(address(this), CorollaCredit(address(0)), 0).BINDING_TYPEHASH()
        );
        uint256 n;
        for (; vm.keyExistsJson(json, string.concat(".binding[", vm.toString(n), "]")); n++) {
            _checkBindingCase(json, string.concat(".binding[", vm.toString(n), "]"));
        }
        assertEq(n, 3);
    }

    function _checkBindingCase(string memory json, string memory p) internal {
        vm.chainId(vm.parseJsonUint(json, string.concat(p, ".chain_id")));
        address where = vm.parseJsonAddress(json, string.concat(p, ".registry"));
        deployCodeTo("NodeRegistry.sol", abi.encode(address(this), address(0), uint64(0)), where);
        NodeRegistry registry = NodeRegistry(where);

        bytes32 nodeKey = vm.parseJsonBytes32(json, string.concat(p, ".node_key"));
        address operator = vm.parseJsonAddress(json, string.concat(p, ".operator"));
        assertEq(registry.domainSeparator(), vm.parseJsonBytes32(json, string.concat(p, ".domain_separator")));
        bytes32 structHash = keccak256(abi.encode(registry.BINDING_TYPEHASH(), nodeKey, operator));
        assertEq(structHash, vm.parseJsonBytes32(json, string.concat(p, ".struct_hash")));
        assertEq(
            registry.bindingDigest(nodeKey, operator), vm.parseJsonBytes32(json, string.concat(p, ".digest"))
        );

        // The Python attestation admits exactly its operator once the signer is the attester.
        address signer = vm.parseJsonAddress(json, string.concat(p, ".signer"));
        assertEq(signer, vm.addr(vm.parseJsonUint(json, string.concat(p, ".signer_private_key"))));
        registry.setAttester(signer);
        bytes memory attestation = vm.parseJsonBytes(json, string.concat(p, ".signature"));
        vm.expectRevert(
            abi.encodeWithSelector(NodeRegistry.InvalidAttestation.selector, nodeKey, address(0xB0B))
        );
        vm.prank(address(0xB0B));
        registry.register(nodeKey, attestation);
        vm.prank(operator);
        registry.register(nodeKey, attestation);
        (address bound,,,) = registry.nodes(nodeKey);
        assertEq(bound, operator);
    }
}
