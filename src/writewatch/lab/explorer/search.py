"""The exhaustive search over a :class:`~.machine.Machine`: a depth-first walk of every
interleaving, memoised on the complete state, so that schedules reaching the same state share
the count of their continuations (schedules are counted, not sampled)."""

from __future__ import annotations

from .machine import Machine, State
from .spec import Step

# schedules, losing, dup schedules, dups, deadlocks, loss kinds in any losing completion,
# steps of the shortest completion, steps of the shortest losing completion (_INF: none)
Stats = tuple[int, int, int, int, int, frozenset[str], int, int]
_INF = 1 << 30


class Search:
    """Counts, and the schedules worth showing, of every interleaving of ``m``."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.memo: dict[State, Stats] = {}

    def count(self, st: State) -> Stats:
        memo = self.memo
        got = memo.get(st)
        if got is not None:
            return got
        mvs = self.m.moves(st)
        if not mvs:
            reasons, dup, dead = self.m.final(st)
            res: Stats = (1, 1 if reasons else 0, 1 if dup else 0, dup, int(dead),
                          frozenset(_kind(r) for r in reasons), 0, 0 if reasons else _INF)
        else:
            s_ = lo = ds = dt = dl = 0
            kinds: set[str] = set()
            short = short_lose = _INF
            for _, nxt, loss, dup in mvs:
                cs, cl, cds, cdt, cdl, ck, cmin, cmin_lose = self.count(nxt)
                s_ += cs
                lo += cs if loss else cl
                ds += cs if dup else cds
                dt += cdt + dup * cs
                dl += cdl
                kinds |= ck
                short = min(short, cmin + 1)
                short_lose = min(short_lose, (cmin if loss else cmin_lose) + 1)
                if loss:
                    kinds.add(_kind(loss))
            res = (s_, lo, ds, dt, dl, frozenset(kinds), short, min(short_lose, _INF))
        memo[st] = res
        return res

    def shortest_losing(self, st: State) -> tuple[tuple[Step, ...], tuple[str, ...]]:
        """One losing schedule with the fewest steps (the memo holds the lengths)."""
        path: list[Step] = []
        why: list[str] = []
        s = st
        while mvs := self.m.moves(s):
            want = self.memo[s][6] if why else self.memo[s][7]
            for stp, nxt, loss, _ in mvs:
                c = self.memo[nxt]
                if (c[6] if (why or loss) else c[7]) + 1 == want:
                    path.append(stp)
                    if loss:
                        why.append(loss)
                    s = nxt
                    break
            else:  # pragma: no cover - the memo is consistent by construction
                raise AssertionError("no move realises the memoised shortest length")
        return tuple(path), (*why, *self.m.final(s)[0])

    def losing(self, st: State, limit: int) -> list[tuple[tuple[Step, ...], tuple[str, ...]]]:
        out: list[tuple[tuple[Step, ...], tuple[str, ...]]] = []

        def walk(s: State, path: list[Step], why: tuple[str, ...]) -> None:
            if len(out) >= limit:
                return
            mvs = self.m.moves(s)
            if not mvs:
                reasons = why + self.m.final(s)[0]
                if reasons:
                    out.append((tuple(path), reasons))
                return
            for stp, nxt, loss, _ in mvs:
                if not loss and not why and self.memo[nxt][1] == 0:
                    continue
                path.append(stp)
                walk(nxt, path, why + ((loss,) if loss else ()))
                path.pop()
                if len(out) >= limit:
                    return

        walk(st, [], ())
        return out

    def first_dup(self, st: State) -> tuple[Step, ...]:
        """The first schedule (depth-first) with a duplicate; that step is marked."""
        path: list[Step] = []
        s = st
        while True:
            mvs = self.m.moves(s)
            if not mvs:
                if not self.m.final(s)[1]:
                    return ()
                return (*path, Step(self.m.names[-1], "final collect: reports a page whose "
                                    "content equals the replica [false positive]"))
            for stp, nxt, _, dup in mvs:
                if dup or self.memo[nxt][2]:
                    if dup:
                        tag = " [duplicate]" if self.m.d.sync else " [false positive]"
                        return (*path, stp._replace(action=stp.action + tag),
                                *self._finish(nxt))
                    path.append(stp)
                    s = nxt
                    break
            else:
                return ()

    def _finish(self, s: State) -> tuple[Step, ...]:
        path: list[Step] = []
        while mvs := self.m.moves(s):
            path.append(mvs[0][0])
            s = mvs[0][1]
        return tuple(path)


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0]


__all__ = ["Search", "Stats"]
