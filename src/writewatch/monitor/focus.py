"""``mapping=`` / ``--mapping SPEC``: keep only the pages of some of the target's mappings.

A spec is one of:

* ``largest`` — the largest writable mapping that is not executable, chosen at the first
  sample (a VM's guest RAM under QEMU/KVM or TCG: TCG's translation buffer is mapped
  ``rwx``, so it is not picked; see docs/monitor.md, "Will this VM live-migrate?");
* an address range ``0xSTART-0xEND`` (hexadecimal, as in ``/proc/PID/maps``; ``0x`` optional)
  or ``0xSTART+SIZE`` (SIZE in bytes or with a K/M/G suffix, binary);
* a path (starts with ``/``): the mappings of that file;
* a label: a mapping's name (``[heap]``, ``[stack]``, ``libc.so.6``), its distinguishing
  name (``memfd:pc.ram``, ``[anon] 0x7f12a4000000 1.0 GiB``), or a memfd's name without
  the ``memfd:`` prefix (``pc.ram``).

Paths and labels are matched at every sample, so a mapping that appears later is included;
``largest`` and address ranges are fixed when resolved. Pages outside every matched
mapping are dropped before anything is counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..pages import Pages
from .series import Region

__all__ = ["Focus", "parse_focus"]

_RANGE = re.compile(r"^(?:0x)?([0-9a-f]+)-(?:0x)?([0-9a-f]+)$", re.I)
_SIZED = re.compile(r"^(?:0x)?([0-9a-f]+)\+(0x[0-9a-f]+|[0-9]+)([kmg]?)$", re.I)
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class _Spec:
    text: str
    kind: str  #: "largest", "range", "path", "label"
    start: int = 0
    end: int = 0


def _parse_one(text: str) -> _Spec:
    t = text.strip()
    if not t:
        raise errors.InvalidTarget("empty mapping spec",
                                   hint="give a label, a path, 0xSTART-0xEND or 'largest'")
    if t == "largest":
        return _Spec(t, "largest")
    m, sized = _RANGE.match(t), _SIZED.match(t)
    if m or sized:
        if m:
            start, end = int(m.group(1), 16), int(m.group(2), 16)
        else:
            assert sized is not None
            start = int(sized.group(1), 16)
            end = start + int(sized.group(2), 0) * _SUFFIX[sized.group(3).lower()]
        if end <= start:
            raise errors.InvalidTarget(f"mapping range {t!r} is empty",
                                       hint="give 0xSTART-0xEND with END > START")
        if end > 1 << 64:
            raise errors.InvalidTarget(f"mapping range {t!r} ends beyond 2**64",
                                       hint="give addresses of the target's address space")
        return _Spec(t, "range", start, end)
    if t.startswith("/"):
        return _Spec(t, "path")
    return _Spec(t, "label")


def parse_focus(specs: str | Iterable[str] | None) -> Focus | None:
    """A :class:`Focus` from one spec or several (``None`` or empty: no focus). Raises
    :class:`writewatch.InvalidTarget` on a malformed spec, before anything starts."""
    if specs is None:
        return None
    if not isinstance(specs, str) and not (isinstance(specs, Iterable) and
                                           all(isinstance(s, str) for s in specs)):
        raise errors.InvalidTarget(f"mapping={specs!r} is not a spec",
                                   hint="give a string, or a list of strings: a label, a "
                                        "path, 0xSTART-0xEND or 'largest'")
    items = [specs] if isinstance(specs, str) else list(specs)
    if not items:
        return None
    return Focus(tuple(_parse_one(s) for s in items))


def _matches(spec: _Spec, g: Region) -> bool:
    if spec.kind == "path":
        return g.label.removesuffix(" (deleted)") == spec.text
    t = spec.text
    return t in (g.name, g.ident, g.label) or (g.label.startswith("/memfd:") and
                                               g.ident == f"memfd:{t}")


class Focus:
    """The mappings a monitor keeps (see the module docstring)."""

    def __init__(self, specs: Sequence[_Spec]) -> None:
        self.specs = tuple(specs)
        self._fixed: dict[int, tuple[int, int]] = {}  # spec index -> resolved range

    @property
    def description(self) -> str:
        parts = []
        for i, s in enumerate(self.specs):
            r = self._fixed.get(i)
            parts.append(f"{s.text} ({r[0]:#x}-{r[1]:#x})" if s.kind == "largest" and r
                         else s.text)
        return ", ".join(parts)

    def ranges(self, regions: Sequence[Region]) -> list[tuple[int, int]]:
        """The address ranges kept, given the target's mappings now."""
        out: list[tuple[int, int]] = []
        for i, s in enumerate(self.specs):
            if s.kind == "range":
                out.append((s.start, s.end))
            elif s.kind == "largest":
                if i not in self._fixed:
                    cand = [g for g in regions if g.perms[1:2] in ("w", "") and
                            g.perms[2:3] != "x"]
                    if not cand:
                        continue  # nothing mapped yet: resolved at a later sample
                    best = max(cand, key=lambda g: (g.length, -g.start))
                    self._fixed[i] = (best.start, best.end)
                out.append(self._fixed[i])
            else:
                out += [(g.start, g.end) for g in regions if _matches(s, g)]
        return out

    def check(self, regions: Sequence[Region]) -> None:
        """Raise :class:`writewatch.InvalidTarget` when a label or path spec matches none of
        ``regions`` (the mappings at the start): a typo should not monitor nothing."""
        names = sorted({g.ident for g in regions})
        for s in self.specs:
            if s.kind in ("label", "path") and not any(_matches(s, g) for g in regions):
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise errors.InvalidTarget(f"no mapping matches --mapping {s.text!r}",
                                           hint=f"mappings now: {shown}")

    def select(self, pages: Pages, regions: Sequence[Region]) -> Pages:
        """``pages`` inside the kept ranges."""
        keep = self.ranges(regions)
        if not keep:
            return Pages((), pages.page_size)
        ps = pages.page_size  # whole pages: a page any byte of a range is on is kept
        cover = Pages(np.array(sorted((a // ps * ps, min(-(-b // ps) * ps, (1 << 64) - ps))
                                      for a, b in keep), np.uint64).reshape(-1, 2), ps)
        return pages & cover
