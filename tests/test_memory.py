"""The measured side of the memory answer: bandwidth of a cache-sized read next to a plain copy. No timing asserted."""

from analysis.memory import main, measure_bandwidth


def test_measure_bandwidth_counts_the_bytes_it_reads():
    b = measure_bandwidth(3 * 2**20 + 3, "cpu", repeats=2, copy_bytes=2**20)
    assert b.nbytes == 3 * 2**20  # whole float32 elements of the requested size
    assert b.copy_bytes == 2**20 and b.device == "cpu"
    assert b.read_GBps == b.nbytes / b.read_s / 1e9 and b.copy_GBps == 2 * b.copy_bytes / b.copy_s / 1e9
    assert "GB/s" in str(b) and "3.0 MiB" in str(b)


def test_memory_cli_measures_on_the_given_device(capsys):
    assert main(["--measure", "--device", "cpu", "--models", "emoji-dit", "dit-xl-2-256"]) == 0
    out = capsys.readouterr().out
    assert "measured read ms" in out and "GB/s" in out and "plain copy of 256 MiB" in out
    assert "dit-xl-2-256" in out and "pixart" not in out
