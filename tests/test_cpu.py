"""djq.cpu: the machine's busy cores from /proc/stat text (no timing, no load)."""

from __future__ import annotations

import math

import pytest

from djq import cpu

STAT = "cpu  {} 0 {} {} {} 0 {} {} 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\nintr 12345\n"


def test_parse_adds_busy_fields_and_counts_iowait_as_idle():
    """busy = user + nice + system + irq + softirq + steal; total adds idle and iowait."""
    times = cpu.parse(STAT.format(100, 40, 800, 60, 10, 5))
    assert times == cpu.CpuTimes(busy=155, total=1015)


def test_parse_refuses_text_without_the_cpu_line():
    """Only per-core lines, or a short line, is a ValueError."""
    with pytest.raises(ValueError, match="cpu"):
        cpu.parse("cpu0 1 2 3 4 5 6 7 8\n")
    with pytest.raises(ValueError, match="cpu"):
        cpu.parse("cpu  1 2 3\n")


def test_read_parses_the_file_and_is_none_without_one(tmp_path):
    """read() parses the given file; a missing or foreign file gives None, not an error."""
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(1, 2, 3, 4, 5, 6))
    assert cpu.read(stat) == cpu.parse(stat.read_text())
    assert cpu.read(tmp_path / "missing") is None
    (tmp_path / "foreign").write_text("nothing here\n")
    assert cpu.read(tmp_path / "foreign") is None


def test_busy_cores_is_the_busy_share_times_the_cores():
    """Half of the ticks busy on 4 cores: 2 cores busy on average."""
    before, after = cpu.CpuTimes(busy=1000, total=4000), cpu.CpuTimes(busy=1500, total=5000)
    assert cpu.busy_cores(before, after, cpus=4) == 2.0


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, cpu.CpuTimes(1, 2)), (cpu.CpuTimes(1, 2), None), (cpu.CpuTimes(5, 10), cpu.CpuTimes(5, 10))],
    ids=["no-before", "no-after", "no-time"],
)
def test_busy_cores_is_nan_without_two_readings_apart(before, after):
    """A missing reading, or none of the time passed, gives NaN."""
    assert math.isnan(cpu.busy_cores(before, after, cpus=2))


def test_this_machine_reads_when_it_has_proc_stat():
    """On Linux a reading exists and its busy ticks never exceed the total."""
    times = cpu.read()
    if not cpu.STAT.exists():
        assert times is None
    else:
        assert times is not None
        assert 0 <= times.busy <= times.total


def test_parse_skips_blank_lines():
    """A blank line before the cpu line is no error."""
    assert cpu.parse("\n" + STAT.format(1, 1, 1, 1, 1, 1)) == cpu.CpuTimes(busy=4, total=6)
