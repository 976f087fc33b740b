"""The synthetic stream: deterministic, event time advances, new and viral items arrive, truth and candidates agree."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from liverank.exporter.auc import roc_auc
from liverank.trainer.events import EventBatch, EventSource
from liverank.trainer.synthetic_stream import ShortVideoStream


def _events(stream: ShortVideoStream, n_batches: int, batch_size: int = 250) -> EventBatch:
    return EventBatch.concat(list(itertools.islice(stream.batches(batch_size), n_batches)))


def _assert_same(a: EventBatch, b: EventBatch) -> None:
    for name in EventBatch.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_is_an_event_source() -> None:
    assert isinstance(ShortVideoStream(0), EventSource)


def test_same_seed_same_events_whatever_the_batch_size() -> None:
    a = _events(ShortVideoStream(7), 12, batch_size=250)
    b = _events(ShortVideoStream(7), 10, batch_size=300)
    _assert_same(a, b)
    other = _events(ShortVideoStream(8), 12, batch_size=250)
    assert not np.array_equal(a.item_ids, other.item_ids)


def test_asking_for_candidates_does_not_change_the_stream() -> None:
    plain = ShortVideoStream(3)
    probed = ShortVideoStream(3)
    rng = np.random.default_rng(0)
    probed.candidates_for(int(probed.user_ids()[0]), 50, probed.start_ms + 300_000, rng)  # grows the catalog early
    _assert_same(_events(plain, 8), _events(probed, 8))


def test_event_time_advances_with_the_simulated_clock() -> None:
    stream = ShortVideoStream(0, events_per_second=500)
    events = _events(stream, 20)  # 5000 events: 10 simulated seconds
    assert (np.diff(events.event_time_ms) >= 0).all()
    assert events.event_time_ms[0] == stream.start_ms
    assert events.event_time_ms[-1] == pytest.approx(stream.start_ms + 10_000, abs=10)
    assert stream.now_ms == events.event_time_ms[-1]


def test_columns_are_well_formed() -> None:
    stream = ShortVideoStream(1, history_len=20, max_tags=5)
    events = _events(stream, 40)
    assert events.hist_item_ids.shape[1] == 20
    assert events.tag_ids.shape[1] == 5
    assert events.tag_lengths.min() >= 1
    assert events.tag_lengths.max() <= 5
    assert events.hist_lengths.max() <= 20
    assert set(np.unique(events.click)) <= {0.0, 1.0}
    assert (events.finish <= events.click).all()  # no click, no finish
    assert 0.1 < events.click.mean() < 0.5
    pad = np.arange(5)[None, :] >= events.tag_lengths[:, None]
    assert (events.tag_ids[pad] == 0).all()
    # Ids are spread over 63 bits, not small consecutive integers.
    assert events.item_ids.max() > 2**60
    assert events.item_ids.max() < 2**63


def test_history_holds_the_users_earlier_clicks_most_recent_first() -> None:
    stream = ShortVideoStream(2, n_users=50, events_per_second=200)
    events = _events(stream, 40, batch_size=200)  # 40 whole simulated seconds
    clicked: dict[int, list[int]] = {}
    for second in range(40):
        part = events.take(slice(200 * second, 200 * (second + 1)))
        for user, hist, n in zip(part.user_ids.tolist(), part.hist_item_ids, part.hist_lengths.tolist(), strict=True):
            assert hist[:n].tolist() == clicked.get(user, [])[::-1][:n]
            assert n == min(len(clicked.get(user, [])), 20)
        for user, item in zip(
            part.user_ids[part.click > 0].tolist(), part.item_ids[part.click > 0].tolist(), strict=True
        ):
            clicked.setdefault(user, []).append(item)
    user = int(events.user_ids[-1])
    assert stream.user_history(user).tolist() == clicked[user][::-1][:20]


def test_new_items_keep_arriving_and_get_traffic() -> None:
    stream = ShortVideoStream(0, initial_items=500, new_items_per_s=2.0, events_per_second=500)
    assert stream.n_items_at(stream.start_ms) == 500
    assert stream.n_items_at(stream.start_ms + 100_000) == 700
    events = _events(stream, 240, batch_size=250)  # 120 simulated seconds
    arrived = stream.item_arrival_ms(events.item_ids)
    assert (arrived <= events.event_time_ms).all()
    late = events.event_time_ms > stream.start_ms + 60_000
    new_share = float((arrived[late] > stream.start_ms).mean())
    assert new_share > 0.3  # recency: much of the traffic goes to items that did not exist at the start


def test_viral_items_exist_and_get_a_click_boost_after_arrival() -> None:
    stream = ShortVideoStream(0, initial_items=200, new_items_per_s=5.0, viral_fraction=0.2)
    at_ms = stream.start_ms + 120_000
    viral = stream.viral_items(at_ms)
    assert len(viral) > 5
    assert (stream.item_arrival_ms(viral) > stream.start_ms).all()  # only new items go viral
    user = stream.user_ids()[:1]
    arrival = stream.item_arrival_ms(viral)
    before = np.array([stream.ground_truth_click(user, viral[i : i + 1], int(t)) for i, t in enumerate(arrival)])
    during = stream.ground_truth_click(user, viral, at_ms)
    assert float(during.mean()) > float(before.mean()) + 0.05


def test_candidates_and_ground_truth() -> None:
    stream = ShortVideoStream(4)
    at_ms = stream.start_ms + 60_000
    user = int(stream.user_ids()[3])
    candidates = stream.candidates_for(user, 300, at_ms, np.random.default_rng(1))
    assert len(candidates) == 300
    assert len(np.unique(candidates.item_ids)) == 300
    assert (stream.item_arrival_ms(candidates.item_ids) <= at_ms).all()
    assert [len(tags) for tags in candidates.tag_lists()] == candidates.tag_lengths.tolist()
    again = stream.candidates_for(user, 300, at_ms, np.random.default_rng(1))
    np.testing.assert_array_equal(candidates.item_ids, again.item_ids)
    p_click = stream.ground_truth_click(np.asarray([user], np.uint64), candidates.item_ids, at_ms)
    p_finish = stream.ground_truth_finish(np.asarray([user], np.uint64), candidates.item_ids, at_ms)
    assert p_click.shape == (300,)
    assert ((p_click > 0) & (p_click < 1)).all()
    assert (p_finish <= p_click).all()
    assert float(p_click.std()) > 0.05  # the truth separates candidates: there is something to rank
    with pytest.raises(ValueError, match="unknown item"):
        stream.ground_truth_click(np.asarray([user], np.uint64), np.asarray([12345], np.uint64), at_ms)


def test_labels_follow_the_ground_truth() -> None:
    stream = ShortVideoStream(5)
    events = _events(stream, 20)
    truth = np.concatenate(
        [
            stream.ground_truth_click(events.user_ids[i : i + 1], events.item_ids[i : i + 1], int(t))
            for i, t in enumerate(events.event_time_ms.tolist())
        ]
    )
    assert float(truth.mean()) == pytest.approx(float(events.click.mean()), abs=0.03)
    assert roc_auc(events.click, truth) > 0.75


def test_generates_at_least_20k_events_per_second() -> None:
    stream = ShortVideoStream(0)
    started = time.perf_counter()
    n = sum(len(b) for b in itertools.islice(stream.batches(256), 400))
    rate = n / (time.perf_counter() - started)
    assert rate > 20_000, f"{rate:.0f} events/s"


def test_roc_auc() -> None:
    assert roc_auc(np.asarray([0, 0, 1, 1]), np.asarray([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.asarray([1, 1, 0, 0]), np.asarray([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.asarray([0, 1, 0, 1]), np.asarray([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc(np.asarray([0, 1, 1]), np.asarray([0.2, 0.2, 0.9])) == 0.75
    assert np.isnan(roc_auc(np.asarray([1, 1]), np.asarray([0.1, 0.2])))
