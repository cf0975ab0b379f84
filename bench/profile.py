"""Summarise py-spy raw profiles (collapsed stacks: ``frame;frame;... count`` per line).

    .venv/bin/python -m bench.profile DIR/broker-step3.txt DIR/edge0-step3.txt [--top 15]

For each file: the share of samples in each function's own code (*self*: the leaf frame) and
in each function with what it calls (*total*; entry points under nearly every sample left
out), idle samples (the event loop waiting in
``epoll``) counted apart, so the shares are of busy time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME_RX = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
IDLE = ("epoll", "select", "poll (", "_epoll_wait", "get_events", "wait (threading")


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: one name per function."""
    m = FRAME_RX.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    short = "/".join(path.rsplit("/", 2)[-2:]) if "/" in path else path
    return f"{m.group('func')} ({short})"


def parse(lines) -> list[tuple[list[str], int]]:
    out = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        out.append(([frame_name(f) for f in stack.split(";") if f], int(n)))
    return out


def is_idle(frames: list[str]) -> bool:
    return bool(frames) and any(k in frames[-1] for k in IDLE)


def summarise(stacks: list[tuple[list[str], int]], top: int = 15) -> dict:
    total = sum(n for _, n in stacks)
    idle = sum(n for f, n in stacks if is_idle(f))
    busy = total - idle
    self_c: Counter = Counter()
    incl: Counter = Counter()
    for frames, n in stacks:
        if is_idle(frames) or not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    pct = (lambda n: round(100.0 * n / busy, 1)) if busy else (lambda n: 0.0)
    return {
        "samples": total,
        "idle_share": round(idle / total, 3) if total else None,
        "self": [(f, pct(n)) for f, n in self_c.most_common(top)],
        # frames under (nearly) every busy sample are the process's entry points: left out
        "total": [(f, pct(n)) for f, n in incl.most_common() if n < 0.9 * busy][:top],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    for path in args.files:
        with open(path) as f:
            s = summarise(parse(f), args.top)
        print(f"== {path}: {s['samples']} samples, idle {s['idle_share']:.0%}")
        print("  self (% of busy samples):")
        for name, share in s["self"]:
            print(f"    {share:5.1f}  {name}")
        print("  total (% of busy samples, with callees):")
        for name, share in s["total"]:
            print(f"    {share:5.1f}  {name}")


if __name__ == "__main__":
    main()
