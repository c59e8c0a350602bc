"""Acme Shop's tools: look up customers and orders, cancel, refund, change an address, hand off to a human.

Each tool takes the episode's ``MockDatabase`` first, returns JSON-able data, and raises ``ToolError`` with
a message for the model when the request is invalid or against the policy (``policy.md``): cancel only
pending/processing orders, refund only delivered orders of at most ``REFUND_LIMIT``, change the address only
before shipping. ``escalate_to_human`` ends the episode (a terminal tool) and changes nothing.
"""
from __future__ import annotations

from typing import Any, Literal

from environments.db import MockDatabase
from environments.tools import ToolError

REFUND_LIMIT = 200.00
Status = Literal["pending", "processing", "shipped", "delivered", "cancelled", "refunded"]


def _order(db: MockDatabase, order_id: str) -> dict[str, Any]:
    rows = db.query("SELECT * FROM orders WHERE order_id = ?", (order_id,))
    if not rows:
        raise ToolError(f"no order with id {order_id!r}")
    return rows[0]


def find_customer_by_email(db: MockDatabase, email: str) -> dict[str, Any]:
    """Find a customer by their email address.

    Args:
        email: The customer's email address, e.g. "jane.doe@example.com".
    """
    rows = db.query("SELECT * FROM customers WHERE lower(email) = lower(?)", (email.strip(),))
    if not rows:
        raise ToolError(f"no customer with email {email!r}")
    return rows[0]


def get_order(db: MockDatabase, order_id: str) -> dict[str, Any]:
    """Get the details of an order: status, amount, item, shipping address.

    Args:
        order_id: The 6-digit order id, e.g. "104233".
    """
    return _order(db, order_id)


def list_orders(db: MockDatabase, customer_id: str, status: Status | None = None) -> list[dict[str, Any]]:
    """List a customer's orders, optionally only those with one status.

    Args:
        customer_id: The customer's id, e.g. "C007".
        status: Only orders with this status.
    """
    if status is None:
        return db.query("SELECT * FROM orders WHERE customer_id = ? ORDER BY order_id", (customer_id,))
    return db.query("SELECT * FROM orders WHERE customer_id = ? AND status = ? ORDER BY order_id",
                    (customer_id, status))


def track_order(db: MockDatabase, order_id: str) -> dict[str, Any]:
    """Get the carrier and tracking number of a shipped or delivered order.

    Args:
        order_id: The 6-digit order id.
    """
    order = _order(db, order_id)
    if order["status"] not in ("shipped", "delivered"):
        raise ToolError(f"order {order_id} has status {order['status']} and no tracking yet")
    return {"order_id": order_id, "status": order["status"], "carrier": order["carrier"],
            "tracking_number": order["tracking_number"]}


def cancel_order(db: MockDatabase, order_id: str, reason: Literal["no_longer_needed", "ordered_by_mistake"]) -> str:
    """Cancel an order that has not shipped yet (status pending or processing).

    Args:
        order_id: The 6-digit order id.
        reason: Why the customer cancels.
    """
    order = _order(db, order_id)
    if order["status"] not in ("pending", "processing"):
        raise ToolError(f"order {order_id} has status {order['status']}; only pending or processing "
                        "orders can be cancelled")
    db.execute("UPDATE orders SET status = 'cancelled', cancel_reason = ? WHERE order_id = ?", (reason, order_id))
    return f"Order {order_id} is cancelled."


def refund_order(db: MockDatabase, order_id: str, reason: Literal["damaged", "not_as_described", "other"]) -> str:
    """Refund a delivered order in full (only up to the policy's refund limit).

    Args:
        order_id: The 6-digit order id.
        reason: Why the customer wants a refund.
    """
    order = _order(db, order_id)
    if order["status"] != "delivered":
        raise ToolError(f"order {order_id} has status {order['status']}; only delivered orders can be "
                        "refunded")
    if order["amount"] > REFUND_LIMIT:
        raise ToolError(f"policy: order {order_id} amounts to {order['amount']:.2f}, above the refund limit "
                        f"of {REFUND_LIMIT:.2f}; escalate to a human agent")
    db.execute("UPDATE orders SET status = 'refunded', cancel_reason = ? WHERE order_id = ?", (reason, order_id))
    return f"Order {order_id} is refunded: {order['amount']:.2f} USD."


def change_address(db: MockDatabase, order_id: str, address: str) -> str:
    """Change the shipping address of an order that has not shipped yet.

    Args:
        order_id: The 6-digit order id.
        address: The new full shipping address.
    """
    order = _order(db, order_id)
    if order["status"] not in ("pending", "processing"):
        raise ToolError(f"order {order_id} has status {order['status']}; the address can only change "
                        "before shipping")
    db.execute("UPDATE orders SET address = ? WHERE order_id = ?", (address.strip(), order_id))
    return f"The shipping address of order {order_id} is now {address.strip()}."


def escalate_to_human(db: MockDatabase, order_id: str, summary: str) -> str:
    """Hand the conversation over to a human agent (ends the conversation).

    Args:
        order_id: The order the request is about.
        summary: A short summary of the customer's request for the human agent.
    """
    _order(db, order_id)
    return "You are being transferred to a human agent. Please hold on."


TOOLS = [find_customer_by_email, get_order, list_orders, track_order, cancel_order, refund_order, change_address,
         escalate_to_human]
TERMINAL_TOOLS = frozenset({"escalate_to_human"})
