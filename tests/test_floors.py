"""djq.floors: the append + fdatasync floor is measured in the folder given, and bad sizes are refused."""

from __future__ import annotations

import pytest

from djq import floors
from djq.errors import ConfigError


def test_fdatasync_returns_seconds_per_append_and_cleans_up(tmp_path):
    """A few appends give a positive time well under a second, and leave the folder empty."""
    seconds = floors.fdatasync(tmp_path, ops=6, rounds=3)
    assert 0 < seconds < 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"ops": 0}, "ops"), ({"rounds": 0}, "rounds"), ({"ops": 2, "rounds": 3}, "ops"), ({"ops": 2.5}, "ops")],
    ids=["no-ops", "no-rounds", "fewer-ops-than-rounds", "fractional"],
)
def test_fdatasync_refuses_bad_sizes(tmp_path, kwargs, field):
    """ops and rounds must be integers >= 1, and ops at least rounds."""
    with pytest.raises(ConfigError) as info:
        floors.fdatasync(tmp_path, **kwargs)
    assert info.value.field == field


def test_a_floor_measures_again_and_again_in_one_file_and_removes_it(tmp_path):
    """Floor keeps one file open: each measure appends to it; close removes it, twice is harmless."""
    with floors.Floor(tmp_path) as floor:
        (folder,) = tmp_path.iterdir()
        assert 0 < floor.measure() < 1
        assert 0 < floor.measure(ops=3) < 1
        assert (folder / "journal").stat().st_size == 4 * floors.LINE_BYTES
    assert list(tmp_path.iterdir()) == []
    floor.close()


def test_a_floor_refuses_a_bad_count(tmp_path):
    """measure(ops) needs an integer >= 1."""
    with floors.Floor(tmp_path) as floor, pytest.raises(ConfigError) as info:
        floor.measure(ops=0)
    assert info.value.field == "ops"


def test_a_floor_over_zeros_writes_its_lines_over_zeros_it_wrote_first(tmp_path):
    """over_zeros: the file holds the lines, then zeros; its size is what the zeros made it."""
    with floors.Floor(tmp_path, over_zeros=True) as floor:
        (folder,) = tmp_path.iterdir()
        assert floor.measure(ops=3) > 0  # seconds per write; how many is benchmarks/floors.py's to say
        assert floor.measure() > 0
        data = (folder / "journal").read_bytes()
        assert data[: 4 * floors.LINE_BYTES] == (b"x" * (floors.LINE_BYTES - 1) + b"\n") * 4
        assert not data[4 * floors.LINE_BYTES :].strip(b"\0")
    assert list(tmp_path.iterdir()) == []
    assert floors.fdatasync(tmp_path, ops=4, rounds=2, over_zeros=True) > 0
    assert list(tmp_path.iterdir()) == []
