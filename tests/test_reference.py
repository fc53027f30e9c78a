"""djq.reference: the lessons' committed results in data/, written and read back whole."""

from __future__ import annotations

import pandas as pd
import pytest

from djq import reference
from djq.errors import ConfigError

LESSONS = ("07_scaling_laws", "08_leases", "09_group_commit", "10_open_vs_closed")
MAX_BYTES = 64 * 1024  #: "a few KB each": far below this


def test_save_then_load_gives_the_table_and_the_machine(tmp_path):
    frame = pd.DataFrame(
        {"workers": [1, 2], "throughput_per_s": [1000.5, 1800.25], "backend": ["flock", "broker"]}
    )
    written = reference.save(frame, "07_scaling_laws", folder=tmp_path, meta={"tasks": 2000})
    assert written == tmp_path / "07_scaling_laws.csv"
    assert written.stat().st_mode & 0o777 == 0o644
    back = reference.load("07_scaling_laws", folder=tmp_path)
    pd.testing.assert_frame_equal(back.frame, frame)
    assert back.meta["tasks"] == "2000"
    assert back.meta["lesson"] == "07_scaling_laws"
    assert back.meta["cpu_count"] == reference.machine()["cpu_count"]
    assert "CPUs" in back.label()


def test_a_missing_reference_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"09_group_commit\.csv"):
        reference.load("09_group_commit", folder=tmp_path)


@pytest.mark.parametrize("lesson", ["", "../etc/passwd", "07 scaling"])
def test_a_lesson_name_is_a_plain_name(lesson, tmp_path):
    with pytest.raises(ConfigError, match="lesson"):
        reference.path(lesson, tmp_path)


def test_meta_that_would_break_the_header_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="one line"):
        reference.save(pd.DataFrame({"a": [1]}), "08_leases", folder=tmp_path, meta={"note": "two\nlines"})
    assert not (tmp_path / "08_leases.csv").exists()


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_committed_reference_loads(lesson):
    """Each lesson's data/<lesson>.csv is committed, small, and names its machine and versions."""
    found = reference.path(lesson)
    assert found.exists(), f"{found.name} is missing: python3 notebooks/reference.py {lesson} makes it"
    assert found.stat().st_size < MAX_BYTES
    ref = reference.load(lesson)
    assert len(ref.frame) > 0
    for key in ("cpu_count", "python", "djq", "date", "lesson"):
        assert ref.meta.get(key), f"{found.name} has no '{key}' line"
