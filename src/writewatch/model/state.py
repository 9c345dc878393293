"""The model's state, by its former module name: :class:`Mm` and the objects it is made of
(now in :mod:`.mm`, :mod:`.vma`, :mod:`.pagetable`, :mod:`.memory`, :mod:`.pte`)."""

from __future__ import annotations

from .memory import File, World
from .mm import Mm, ModelError, Observer
from .pagetable import Counters, PageTables, Table
from .pte import FAULT_AROUND, PAGE, PAGE_SHIFT, PMD, PMD_SHIFT, PTRS, Bit, Entry
from .uffd import Ring
from .vma import PROT, Vma

__all__ = ["FAULT_AROUND", "PAGE", "PAGE_SHIFT", "PMD", "PMD_SHIFT", "PROT", "PTRS", "Bit",
           "Counters", "Entry", "File", "Mm", "ModelError", "Observer", "PageTables", "Ring",
           "Table", "Vma", "World"]
