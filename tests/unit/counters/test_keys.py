"""Keyed hashing: deterministic under one secret, different under another, domain-separated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from service.redis.keys import ENTITY_BYTES, MEMBER_BYTES, KeyHasher, counter_tag, field_domain

SECRET = bytes(range(32))
ID = "11010519900307123X"
PHONE = "13812345678"


def test_entity_hash_is_stable_short_and_opaque() -> None:
    hasher = KeyHasher(SECRET)
    first = hasher.entity([("id_number", ID)])
    assert first == KeyHasher(SECRET).entity([("id_number", ID)])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", first)  # 16 bytes, base64url without padding
    assert ENTITY_BYTES == 16
    assert ID not in first and ID[:6] not in first
    assert KeyHasher(bytes(32)).entity([("id_number", ID)]) != first


def test_domains_separate_the_same_digits() -> None:
    hasher = KeyHasher(SECRET)
    assert hasher.entity([("phone", PHONE)]) != hasher.entity([("account", PHONE)])
    # composite keys are framed, so parts cannot slide into each other
    assert hasher.entity([("a", "bc"), ("d", "e")]) != hasher.entity([("a", "b"), ("cd", "e")])
    assert hasher.entity([("id_number", ID), ("carrier", "x")]) != hasher.entity([("carrier", "x"), ("id_number", ID)])


def test_roles_of_one_entity_share_a_domain() -> None:
    assert {field_domain(f) for f in ("person.id_number", "applicant.id_number", "payer.id_number")} == {"id_number"}
    assert {
        field_domain(f)
        for f in (
            "transfer.payer_account",
            "transfer.payee_account",
            "closure.account_number",
            "card_opening.account_number",
        )
    } == {"account"}
    assert field_domain("sim_sale.carrier") == field_domain("closure.carrier") == "carrier"
    assert field_domain("closure.msisdn") == field_domain("buyer.phone") == "phone"
    assert field_domain("sim_sale.device_id") == field_domain("transfer.device_id") == "device"
    assert field_domain("outlet.outlet_id") != field_domain("outlet.clerk_id")
    assert field_domain("card_opening.account_class") == "card_opening.account_class"


def test_identifier_equals_single_field_entity() -> None:
    hasher = KeyHasher(SECRET)
    assert hasher.identifier("transfer.payee_account", "6222021234567890") == hasher.entity(
        [("account", "6222021234567890")]
    )


def test_members_are_short_and_unlinkable_across_entities() -> None:
    hasher = KeyHasher(SECRET)
    one, two = hasher.entity([("account", "1")]), hasher.entity([("account", "2")])
    member = hasher.member(one, "account", "6222021234567890")
    assert len(member) == MEMBER_BYTES == 8
    assert member == hasher.member(one, "account", "6222021234567890")
    assert member != hasher.member(two, "account", "6222021234567890")
    assert member != hasher.member(one, "id_number", "6222021234567890")


def test_counter_key_carries_a_cluster_hash_tag() -> None:
    hasher = KeyHasher(SECRET)
    entity = hasher.entity([("id_number", ID)])
    assert hasher.counter_key(entity, "banks") == f"rg:c2:{{{entity}}}:banks"
    assert KeyHasher(SECRET, prefix="t").counter_key(entity, "x").startswith("t:c2:{")


def test_short_secret_refused_and_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        KeyHasher(b"short")
    assert SECRET.hex() not in repr(KeyHasher(SECRET))


def test_hashes_are_standard_hmac_sha256() -> None:
    for secret in (SECRET, bytes(range(64)), bytes(range(100))):  # short, block-sized, hashed first
        hasher = KeyHasher(secret)
        framed = b"k" + b"2:id%d:%b" % (len(ID), ID.encode())
        expected = base64.urlsafe_b64encode(hmac.digest(secret, framed, "sha256")[:16]).rstrip(b"=").decode()
        assert hasher.entity([("id", ID)]) == expected
        entity = hasher.entity([("id", ID)])
        member = b"m" + b"5:phone%d:%b" % (len(PHONE), PHONE.encode()) + entity.encode()
        assert hasher.member(entity, "phone", PHONE) == hmac.digest(secret, member, "sha256")[:8]


def test_counter_tags_and_entity_keys() -> None:
    assert counter_tag("banks") == hashlib.sha256(b"banks").digest()[:2] != counter_tag("bank")
    hasher = KeyHasher(SECRET)
    entity = hasher.entity([("id_number", ID)])
    assert hasher.entity_key(entity) == f"rg:c2:{{{entity}}}"
    assert hasher.counter_key(entity, "banks").startswith(hasher.entity_key(entity) + ":")
