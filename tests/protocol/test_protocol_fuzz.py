"""Decoders face the network: any input gives a value or a ValueError, never another exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.binding import Binding
from protocol.receipts import RECEIPT_DOMAIN, RECEIPT_SIZE, SIGNED_SIZE, Receipt, SignedReceipt
from protocol.tickets import SIGNED_TICKET_SIZE, TICKET_DOMAIN, SignedTicket
from protocol.vectors.generate import NODE, receipt_fixture
from protocol.verdicts import SIGNED_VERDICT_SIZE, VERDICT_DOMAIN, SignedVerdict

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_value_error(fn, data) -> None:
    try:
        fn(data)
    except ValueError:
        pass


def _framed(domain: bytes, size: int):
    """Bytes with the right tag and length, so the fuzzer reaches the field checks."""
    return st.binary(min_size=size - len(domain), max_size=size - len(domain)).map(lambda b: domain + b)


@FAST
@given(st.one_of(st.binary(max_size=600), _framed(RECEIPT_DOMAIN, RECEIPT_SIZE), _framed(RECEIPT_DOMAIN, SIGNED_SIZE)))
def test_receipt_decoders_never_crash(data):
    _decodes_or_value_error(Receipt.decode, data)
    _decodes_or_value_error(SignedReceipt.from_bytes, data)


@FAST
@given(st.one_of(st.binary(max_size=300), _framed(TICKET_DOMAIN, SIGNED_TICKET_SIZE),
                 _framed(VERDICT_DOMAIN, SIGNED_VERDICT_SIZE)))
def test_ticket_and_verdict_decoders_never_crash(data):
    _decodes_or_value_error(SignedTicket.from_bytes, data)
    _decodes_or_value_error(SignedVerdict.from_bytes, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=10,
)
GOOD = receipt_fixture().sign(NODE).to_json()


@FAST
@given(st.sampled_from(sorted(GOOD["receipt"])), json_values)
def test_receipt_json_with_any_field_replaced_never_crashes(field, value):
    d = {**GOOD, "receipt": {**GOOD["receipt"], field: value}}
    _decodes_or_value_error(SignedReceipt.from_json, d)


@FAST
@given(json_values)
def test_any_json_value_never_crashes_the_parsers(value):
    for parse in (SignedReceipt.from_json, SignedTicket.from_json, SignedVerdict.from_json, Binding.from_json):
        _decodes_or_value_error(parse, value)


@given(st.binary(max_size=200), st.floats(allow_nan=False), st.text(max_size=40), st.booleans())
def test_response_meta_round_trips_every_field(receipt, compute_ms, notice, follows):
    from dataclasses import asdict

    from protocol.messages import ResponseMeta

    meta = ResponseMeta(receipt, compute_ms, notice, follows)
    assert meta.to_meta() == asdict(meta)  # the spelled-out encoder misses no field
    assert ResponseMeta.from_meta(meta.to_meta()) == meta
