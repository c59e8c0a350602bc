"""Generate Acme Shop's ``db.json``, ``tasks.json`` and ``split.json`` (deterministic for a seed).

Design
------
The database is 20 customers with 3 orders each (6-digit ids, shuffled statuses, amounts 15-450 USD). Tasks
are then drawn from the data, by family of graded difficulty, each a tau2-bench task:

1. ``status`` / ``tracking``: one lookup by order id; the answer must be communicated (DB + COMMUNICATE).
2. ``total_by_email``: find the customer, list the orders, tell one order's total (DB + COMMUNICATE).
3. ``cancel`` / ``address`` / ``refund``: one allowed write by order id (DB + ACTION).
4. ``refund_over_limit``: a refund above the policy limit; the right action is ``escalate_to_human``.
5. ``cancel_shipped``: cancelling is not allowed; tell the tracking number instead (DB + COMMUNICATE).
6. ``cancel_and_refund``: five steps by email: cancel one order, then refund another, or escalate when
   the refund is above the limit (DB + ACTION).

Every task has a check that an agent doing nothing fails, and ``DB`` in its basis, so a wrong write fails.
Run ``python -m environments.acme_shop.make_tasks`` to rewrite the files (byte-identical for the same seed).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from environments.acme_shop.tools import REFUND_LIMIT

FOLDER = Path(__file__).resolve().parent
FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam", "Maya",
         "Noah", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tara"]
LAST = ["Silva", "Okafor", "Martin", "Patel", "Rossi", "Haddad", "Kim", "Lefevre", "Costa", "Berg", "Tanaka",
        "Murphy", "Cohen", "Novak", "Ivanova", "Horvat", "Reyes", "Lund", "Aziz", "Moreau"]
STREETS = ["Oak Street", "Maple Avenue", "Harbor Road", "Elm Lane", "Hill Drive", "Lake View", "Mill Road"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Fairview", "Georgetown"]
ITEMS = ["desk lamp", "rain jacket", "coffee grinder", "yoga mat", "bluetooth speaker", "backpack", "tea kettle",
         "running shoes", "office chair", "blender", "monitor stand", "board game"]
STATUSES = ["pending", "processing", "shipped", "delivered", "cancelled"]


def _address(rng: random.Random) -> str:
    return f"{rng.randint(1, 999)} {rng.choice(STREETS)}, {rng.choice(CITIES)}"


def make_db(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    customers, orders = [], []
    ids = rng.sample(range(100000, 1000000), 60)
    statuses = (STATUSES * 12)[:60]
    statuses[40:52] = ["delivered"] * 12  # more delivered orders for the refund families
    rng.shuffle(statuses)
    for c in range(20):
        customer_id = f"C{c + 1:03d}"
        address = _address(rng)
        customers.append({"customer_id": customer_id, "name": f"{FIRST[c]} {LAST[c]}",
                          "email": f"{FIRST[c].lower()}.{LAST[c].lower()}@example.com", "address": address})
        for item in rng.sample(ITEMS, 3):
            n = len(orders)
            status = statuses[n]
            shipped = status in ("shipped", "delivered")
            orders.append({"order_id": str(ids[n]), "customer_id": customer_id, "item": item, "status": status,
                           "amount": round(rng.uniform(15, 450), 2), "address": address,
                           "carrier": rng.choice(["UPS", "DHL", "FedEx"]) if shipped else None,
                           "tracking_number": f"TRK{rng.randint(10**8, 10**9 - 1)}" if shipped else None,
                           "cancel_reason": None})
    return {"customers": customers, "orders": orders}


def _task(family: str, reason: str, known: str, actions: list[dict[str, Any]], basis: list[str],
          communicate: list[str] | None = None, unknown: str | None = None) -> dict[str, Any]:
    for index, action in enumerate(actions):
        action.setdefault("action_id", f"{index}")
    return {"id": family, "description": {"purpose": family},
            "user_scenario": {"persona": "A polite customer of Acme Shop.", "instructions": {
                "domain": "acme_shop", "reason_for_call": reason, "known_info": known, "unknown_info": unknown,
                "task_instructions": "Answer the agent's questions with what you know. End when it is done."}},
            "evaluation_criteria": {"actions": actions, "communicate_info": communicate or [],
                                    "reward_basis": basis}}


def _act(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "requestor": "assistant"}


def _single_order_tasks(rng: random.Random, orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_status = {s: [o for o in orders if o["status"] == s] for s in STATUSES}
    unshipped = by_status["pending"] + by_status["processing"]
    shipped = by_status["shipped"] + by_status["delivered"]
    cheap = [o for o in by_status["delivered"] if o["amount"] <= REFUND_LIMIT]
    dear = [o for o in by_status["delivered"] if o["amount"] > REFUND_LIMIT]
    tasks = []
    for o in rng.sample(orders, 6):
        tasks.append(_task("status", f"You want to know the status of your {o['item']} order.",
                           f"Your order id is {o['order_id']}.", [_act("get_order", order_id=o["order_id"])],
                           ["DB", "COMMUNICATE"], [o["status"]]))
    for o in rng.sample(shipped, 5):
        tasks.append(_task("tracking", f"You want the tracking number of your {o['item']} order.",
                           f"Your order id is {o['order_id']}.", [_act("track_order", order_id=o["order_id"])],
                           ["DB", "COMMUNICATE"], [o["tracking_number"]]))
    for o in rng.sample(unshipped, 5):
        reason = rng.choice(["no_longer_needed", "ordered_by_mistake"])
        tasks.append(_task("cancel", f"You want to cancel your {o['item']} order: {reason.replace('_', ' ')}.",
                           f"Your order id is {o['order_id']}.",
                           [_act("get_order", order_id=o["order_id"]),
                            _act("cancel_order", order_id=o["order_id"], reason=reason)], ["DB", "ACTION"]))
    for o in rng.sample(unshipped, 5):
        new = _address(rng)
        tasks.append(_task("address", f"You moved and want your {o['item']} order shipped to {new}.",
                           f"Your order id is {o['order_id']}. Your new address is {new}.",
                           [_act("change_address", order_id=o["order_id"], address=new)], ["DB", "ACTION"]))
    for o in rng.sample(cheap, min(5, len(cheap))):
        tasks.append(_task("refund", f"Your {o['item']} arrived damaged and you want a refund.",
                           f"Your order id is {o['order_id']}.",
                           [_act("get_order", order_id=o["order_id"]),
                            _act("refund_order", order_id=o["order_id"], reason="damaged")], ["DB", "ACTION"]))
    for o in rng.sample(dear, min(4, len(dear))):
        escalate = _act("escalate_to_human", order_id=o["order_id"], summary="refund above the limit")
        escalate["compare_args"] = ["order_id"]
        tasks.append(_task("refund_over_limit", f"Your {o['item']} does not match its description; you want a "
                           "refund.", f"Your order id is {o['order_id']}.",
                           [_act("get_order", order_id=o["order_id"]), escalate], ["DB", "ACTION"]))
    for o in rng.sample(shipped, 4):
        tasks.append(_task("cancel_shipped", f"You want to cancel your {o['item']} order. If that is not possible "
                           "you want its tracking number.", f"Your order id is {o['order_id']}.",
                           [_act("get_order", order_id=o["order_id"]), _act("track_order", order_id=o["order_id"])],
                           ["DB", "COMMUNICATE"], [o["tracking_number"]]))
    return tasks


def _customer_tasks(rng: random.Random, db: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    tasks = []
    customers = db["customers"]
    orders_of = {c["customer_id"]: [o for o in db["orders"] if o["customer_id"] == c["customer_id"]]
                 for c in customers}
    for c in rng.sample(customers, 5):
        o = rng.choice(orders_of[c["customer_id"]])
        tasks.append(_task("total_by_email", f"You want to know how much your {o['item']} order cost. You do not "
                           "know the order id.", f"Your email is {c['email']}.",
                           [_act("find_customer_by_email", email=c["email"]),
                            _act("list_orders", customer_id=c["customer_id"])],
                           ["DB", "COMMUNICATE"], [f"{o['amount']:.2f}"], unknown="the order id"))
    pairs = []
    for c in customers:
        mine = orders_of[c["customer_id"]]
        for a in (o for o in mine if o["status"] in ("pending", "processing")):
            pairs.extend((c, a, b) for b in mine if b["status"] == "delivered")
    for c, a, b in rng.sample(pairs, min(6, len(pairs))):
        actions = [_act("find_customer_by_email", email=c["email"]), _act("list_orders", customer_id=c["customer_id"]),
                   _act("cancel_order", order_id=a["order_id"], reason="no_longer_needed"),
                   _act("get_order", order_id=b["order_id"])]
        if b["amount"] <= REFUND_LIMIT:
            actions.append(_act("refund_order", order_id=b["order_id"], reason="not_as_described"))
        else:
            actions.append(_act("escalate_to_human", order_id=b["order_id"], summary="refund above the limit"))
            actions[-1]["compare_args"] = ["order_id"]
        tasks.append(_task("cancel_and_refund", f"You no longer need your {a['item']} order and want to cancel "
                           f"it. Your {b['item']} was not as described and you want a refund for it.",
                           f"Your email is {c['email']}.", actions, ["DB", "ACTION"], unknown="the order ids"))
    return tasks


def make_all(seed: int = 7) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[str]]]:
    rng = random.Random(seed)
    db = make_db(rng)
    tasks = _single_order_tasks(rng, db["orders"]) + _customer_tasks(rng, db)
    for n, task in enumerate(tasks):
        task["id"] = f"{n:03d}_{task['id']}"
    split: dict[str, list[str]] = {"train": [], "test": []}
    for n, task in enumerate(tasks):
        split["test" if n % 4 == 3 else "train"].append(task["id"])
    return db, tasks, split


def write(folder: Path = FOLDER, seed: int = 7) -> None:
    db, tasks, split = make_all(seed)
    for name, data in (("db.json", db), ("tasks.json", tasks), ("split.json", split)):
        (folder / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write()
