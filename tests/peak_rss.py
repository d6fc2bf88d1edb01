"""Run a command and print the peak RSS (bytes) of its whole process tree, sampled every 50 ms."""

import subprocess
import sys
import time

import psutil

proc = subprocess.Popen(sys.argv[1:])
top = psutil.Process(proc.pid)
peak = 0
while proc.poll() is None:
    try:
        tree = [top, *top.children(recursive=True)]
        peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
    except psutil.Error:
        pass
    time.sleep(0.05)
if proc.returncode:
    sys.exit(proc.returncode)
print(peak)
