"""bench-space's memory reading: the app's worker processes count, not only the app itself."""

import os
import subprocess
import sys
import time

from pipelines.bench_space import PeakMemory, tree_rss_mb


def test_tree_memory_counts_child_processes():
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; block = bytearray(300 * 2**20); print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        alone = tree_rss_mb(child.pid)
        assert alone > 290
        peak = PeakMemory(os.getpid(), every_s=0.05)
        assert tree_rss_mb(os.getpid()) > alone + 10  # this process and its child together
        deadline = time.monotonic() + 20
        while peak.peak_mb == 0 and time.monotonic() < deadline:  # a busy machine may start the sampler late
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert peak.stop() > 290
