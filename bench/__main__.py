"""``make bench``: run every benchmark module in turn; figures go to bench/README.md by hand."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if not m.name.startswith("_"))
    # python -m bench [NAME ...] [--flags for them]: the flags go to each one named
    args = sys.argv[1:]
    flags_at = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    only, flags = args[:flags_at], args[flags_at:]
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
        if module.main(flags if only else []) != 0:
            failed.append(name)
    if failed:
        print(f"\ntargets not met: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
