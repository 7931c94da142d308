"""``make bench``: run every benchmark module in turn; figures go to bench/README.md by hand."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if not m.name.startswith("_"))
    only = sys.argv[1:]
    failed = []
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    for name in names:
        if only and name not in only:
            continue
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"\n===== bench.{name} =====", flush=True)
        if module.main([]) != 0:
            failed.append(name)
    if failed:
        print(f"\ntargets not met: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
