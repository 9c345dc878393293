"""A write-tracking design of your own, run by the model lab (docs/model.md, "Adding a
design"):

    PYTHONPATH=examples writewatch model compare -w malloc -w shmem-reclaim \\
        -d uffd-async -d model_design:LazyDiscard
    PYTHONPATH=examples writewatch model races -d model_design:LazyDiscard

``LazyDiscard`` is the fault-time proposal without its discard markers: nothing is installed
at arm time, pte_none reads clean, and a discard (MADV_DONTNEED) leaves plain pte_none. Its
kernel side is a ``WpRules`` value (the same rules drive the replay and the race explorer);
its tracker side is uffd-async's (register, PAGEMAP_SCAN get+WP).
"""

from __future__ import annotations

from writewatch import _uapi as U
from writewatch.lab.designs import UffdAsync
from writewatch.model import WpRules


class LazyDiscard(UffdAsync):
    name = "lazy-discard"
    title = "fault-time proposal without discard markers (async)"
    origin = "an example: what the discard marker of the proposal is for"
    rules = WpRules(markers=False, none_protected=True)
    features = int(U.UffdFeature.WP_ASYNC)
    explore = "scan"

    def unavailable(self, profile: object) -> str | None:
        return None  # a kernel patch: every profile can take it


if __name__ == "__main__":
    from writewatch import lab

    for m in lab.compare("malloc", ["fault-time-async", LazyDiscard]):
        print(f"{m.design:18} lost {m.false_negatives:5}  false+ {m.false_positives:6}  "
              f"page tables {m.pt_peak_bytes // 1024} KiB")
