from api.idempotency import body_hash


def test_body_hash_ignores_key_order_and_whitespace_but_not_values():
    assert body_hash(b'{"a":1,"b":2}') == body_hash(b'{ "b": 2, "a": 1 }')
    assert body_hash(b'{"a":1}') != body_hash(b'{"a":2}')
    assert body_hash(b"not json") == body_hash(b"not json")
