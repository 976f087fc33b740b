"""``ConnectionBalance``: a worker counts its active connections and gives one up when it holds more than its share."""

from __future__ import annotations

from liverank.serving.conn_balance import ConnectionBalance


def test_active_connections_are_the_distinct_clients_seen_lately() -> None:
    balance = ConnectionBalance()
    for port in (1000, 1001, 1000, 1002):
        assert not balance.on_request(("127.0.0.1", port), "1.1")
    assert not balance.on_request(None, "1.1")  # no client address (a unix socket): nothing to count or close
    assert balance.active() == 3
    forgetful = ConnectionBalance(active_s=-1.0)  # every connection is idle at once
    forgetful.on_request(("127.0.0.1", 1000), "1.1")
    assert forgetful.active() == 0


def test_a_worker_above_its_share_closes_one_connection_per_decision() -> None:
    balance = ConnectionBalance()
    for port in range(6):
        balance.on_request(("10.0.0.1", port), "1.1")
    balance.rebalance(6, [2])  # 8 connections over 2 workers: a share is 4
    assert balance.on_request(("10.0.0.1", 0), "1.1")  # this answer ends its connection
    assert not balance.on_request(("10.0.0.1", 1), "1.1")  # one per decision: counts settle first
    assert balance.active() == 5  # the closed connection no longer counts
    assert balance.closed == 1
    balance.rebalance(4, [4])
    assert not balance.on_request(("10.0.0.1", 1), "1.1")


def test_a_worker_at_or_below_its_share_closes_nothing() -> None:
    balance = ConnectionBalance()
    for mine, others in ((4, [4]), (4, [3]), (3, [4]), (1, []), (0, [0, 0]), (3, [2, 2])):
        balance.rebalance(mine, others)
        assert not balance.on_request(("10.0.0.1", 1), "1.1"), (mine, others)
    assert balance.closed == 0


def test_only_http_1_1_connections_are_closed_to_rebalance() -> None:
    """An HTTP/1.0 answer ends its connection anyway; the decision waits for a keep-alive connection."""
    balance = ConnectionBalance()
    balance.rebalance(3, [1])
    assert not balance.on_request(("10.0.0.1", 1), "1.0")
    assert balance.on_request(("10.0.0.1", 2), "1.1")
