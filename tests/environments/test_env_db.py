"""Each episode's database is a fresh, isolated copy; the state hash depends on content only."""
import json
import threading

import pytest

from environments.db import MockDatabase

FIXTURE = {"orders": [{"id": "1", "status": "pending", "amount": 10.5}, {"id": "2", "status": "shipped", "amount": 3}],
           "customers": [{"id": "C1", "name": "Ana", "tags": ["vip"]}]}


def test_fresh_copies_are_isolated_from_each_other_and_the_template():
    template = MockDatabase.from_fixture(FIXTURE)
    before = template.state_hash()
    a, b = template.fresh(), template.fresh()
    a.execute("UPDATE orders SET status = 'cancelled' WHERE id = '1'")
    assert a.query("SELECT status FROM orders WHERE id = '1'") == [{"status": "cancelled"}]
    assert b.query("SELECT status FROM orders WHERE id = '1'") == [{"status": "pending"}]
    assert template.state_hash() == before == b.state_hash() != a.state_hash()
    assert template.fresh().state_hash() == before


def test_parallel_episodes_do_not_share_state():
    template = MockDatabase.from_fixture(FIXTURE)
    hashes = {}

    def episode(n):
        db = template.fresh()
        db.execute("UPDATE orders SET amount = ? WHERE id = '1'", (n,))
        hashes[n] = (db.query("SELECT amount FROM orders WHERE id = '1'")[0]["amount"], db.state_hash())

    threads = [threading.Thread(target=episode, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [hashes[n][0] for n in range(4)] == [0, 1, 2, 3]
    assert len({h for _, h in hashes.values()}) == 4


def test_hash_ignores_insertion_order_of_rows_tables_and_keys():
    reordered = {"customers": [{"name": "Ana", "tags": ["vip"], "id": "C1"}],
                 "orders": [{"amount": 3, "status": "shipped", "id": "2"},
                            {"id": "1", "amount": 10.5, "status": "pending"}]}
    assert MockDatabase.from_fixture(FIXTURE).state_hash() == MockDatabase.from_fixture(reordered).state_hash()


def test_hash_changes_with_any_value_and_with_an_extra_row():
    base = MockDatabase.from_fixture(FIXTURE).state_hash()
    changed = json.loads(json.dumps(FIXTURE))
    changed["orders"][1]["amount"] = 4
    assert MockDatabase.from_fixture(changed).state_hash() != base
    db = MockDatabase.from_fixture(FIXTURE)
    db.execute("INSERT INTO orders (id, status, amount) VALUES ('3', 'pending', 1)")
    assert db.state_hash() != base


def test_columns_are_inferred_as_the_union_and_lists_kept_as_json():
    db = MockDatabase.from_fixture({"t": [{"a": 1}, {"b": "x"}]})
    assert db.query("SELECT * FROM t ORDER BY rowid") == [{"a": 1, "b": None}, {"a": None, "b": "x"}]
    assert MockDatabase.from_fixture(FIXTURE).query("SELECT tags FROM customers") == [{"tags": '["vip"]'}]


def test_explicit_schema_and_bad_fixtures(tmp_path):
    db = MockDatabase.from_fixture({"t": []}, schema={"t": "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER)"})
    assert db.tables() == ["t"] and db.query("SELECT * FROM t") == []
    with pytest.raises(ValueError, match="table 't' has no rows and no schema"):
        MockDatabase.from_fixture({"t": []})
    with pytest.raises(ValueError, match="not a valid SQL identifier"):
        MockDatabase.from_fixture({"t; DROP": [{"a": 1}]})
    with pytest.raises(ValueError, match="must be a list of row objects"):
        MockDatabase.from_fixture({"t": {"a": 1}})
    bad = tmp_path / "db.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="db.json: not valid JSON"):
        MockDatabase.from_json(bad)
