"""Self and inclusive sample shares per frame of a py-spy ``raw`` profile.

Usage: ``python bench/pyspy_top.py OUTDIR/ws.raw [N]`` (profiles from ``bench/profile.sh``).
A raw profile has one collapsed stack per line, ``frame;frame;...;frame COUNT``.
"""

from __future__ import annotations

import sys
from collections import Counter


def main(path: str, top: int = 30) -> None:
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as profile:
        for line in profile:
            stack, _, count_text = line.rstrip().rpartition(" ")
            count = int(count_text)
            total += count
            frames = stack.split(";")
            self_samples[frames[-1]] += count
            for frame in set(frames):  # a recursive frame counts once per sample
                inclusive[frame] += count
    print("samples", total)
    for title, counter in (("inclusive", inclusive), ("self", self_samples)):
        print(f"--- {title}")
        for frame, count in counter.most_common(top):
            print(f"{count * 100 / max(total, 1):5.1f}% {frame[:150]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)
