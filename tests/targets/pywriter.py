"""Python test target for process tracking: the interactive protocol of ``writer.c``.

``python pywriter.py NPAGES`` prints ``base 0x<addr> <npages> <page_size>`` then obeys one
command per stdin line: ``w I J ...`` (write one byte to those pages of the buffer, answer
``ok``), ``m N`` (mmap N pages and write them all, answer ``map 0x<addr> N``), ``u`` (unmap
the last one, answer ``ok``), ``q`` (exit 0).
"""

import ctypes
import mmap
import sys


def main() -> int:
    npages = int(sys.argv[1])
    ps = mmap.PAGESIZE
    buf = mmap.mmap(-1, npages * ps)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    extra: list[mmap.mmap] = []
    print(f"base {base:#x} {npages} {ps}", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "w":
            for i in map(int, args):
                off = i * ps + i % 64
                buf[off] = (buf[off] + 1) & 0xFF
            print("ok", flush=True)
        elif cmd == "m":
            n = int(args[0])
            m = mmap.mmap(-1, n * ps)
            for i in range(n):
                m[i * ps] = 1
            extra.append(m)
            print(f"map {ctypes.addressof(ctypes.c_char.from_buffer(m)):#x} {n}", flush=True)
        elif cmd == "u":
            extra.pop().close()
            print("ok", flush=True)
        elif cmd == "q":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
