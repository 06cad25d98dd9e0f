"""labelkit.sysmem: the machine's memory and the ``auto`` kNN budget."""

from __future__ import annotations

from labelkit import config, sysmem


def test_memory_reads_total_and_available_from_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nBuffers: 1 kB\n")
    assert sysmem.memory(f) == (24_000_000 * 1024, 20_000_000 * 1024)
    f.write_text("MemTotal:       24000000 kB\n")  # old kernels: no MemAvailable
    total, available = sysmem.memory(f)
    assert total == 24_000_000 * 1024 and available is None or available > 0  # then sysconf's count, where it has one


def test_auto_is_half_the_available_memory_and_none_when_unknown(monkeypatch):
    monkeypatch.setattr(sysmem, "memory", lambda: (64 * 10**9, 10 * 10**9))
    assert config.budget_bytes("auto") == 5 * 10**9
    assert config.budget_bytes("3GB") == 3 * 10**9 and config.budget_bytes("0") is None
    monkeypatch.setattr(sysmem, "memory", lambda: (None, None))
    assert config.budget_bytes("auto") is None


def test_the_setting_is_kept_as_written_and_auto_is_the_default():
    assert config.PseudolabelConfig().memory_budget == "auto" == config.DetectNoiseConfig().memory_budget
    assert config.PseudolabelConfig(memory_budget=" AUTO ").memory_budget == "auto"
    assert config.PseudolabelConfig(memory_budget=8_000_000_000).memory_budget == "8000000000"
