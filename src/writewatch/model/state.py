"""``writewatch.model.state``: the model's state objects under one name (:class:`Mm` and what it
is made of), for the scripts that import them from here."""

from __future__ import annotations

from .memory import File
from .mm import Mm
from .pagetable import Counters, PageTables, Table
from .pte import FAULT_AROUND, PAGE, PAGE_SHIFT, PMD, PMD_SHIFT, PTRS, Bit, Entry
from .space import AddressSpace, ModelError, Observer, World
from .uffd import Ring
from .vma import PROT, Vma

__all__ = ["FAULT_AROUND", "PAGE", "PAGE_SHIFT", "PMD", "PMD_SHIFT", "PROT", "PTRS",
           "AddressSpace", "Bit", "Counters", "Entry", "File", "Mm", "ModelError", "Observer",
           "PageTables", "Ring", "Table", "Vma", "World"]
