"""Test target: writes a known set of pages of its own buffer, over and over.

usage: writer.py LOGFILE NPAGES STEP ROUNDS EXIT_CODE
Maps NPAGES pages, logs "<buffer address> <npages> <page indices written...>" to LOGFILE, then
every 20 ms writes one byte to each page i with i % STEP == 0, ROUNDS times (0: forever), and
exits with EXIT_CODE.
"""

import mmap
import sys
import time

log, npages, step, rounds, code = sys.argv[1], *map(int, sys.argv[2:6])
page = mmap.PAGESIZE
buf = mmap.mmap(-1, npages * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = __import__("ctypes").addressof(__import__("ctypes").c_char.from_buffer(buf))
idx = list(range(0, npages, step))
with open(log + ".tmp", "w") as f:
    f.write(f"{addr} {npages} {' '.join(map(str, idx))}\n")
__import__("os").rename(log + ".tmp", log)
r = 0
while rounds == 0 or r < rounds:
    for i in idx:
        buf[i * page] = (r + 1) & 0xFF
    r += 1
    time.sleep(0.02)
sys.exit(code)
