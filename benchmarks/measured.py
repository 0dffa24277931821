"""Run a Python script or module in this process and write its peak memory to a JSON file.

    python benchmarks/measured.py REPORT.json -m dreambooth.cli.main train ...
    python benchmarks/measured.py REPORT.json path/to/script.py --flag ...

The side-by-side benchmark wraps both our CLI and the peer scripts in it, so both are measured the
same way: peak RSS of the process (CPU) and ``torch.cuda.max_memory_allocated`` (GPU), and beside it
``max_memory_reserved``: what the allocator held, which is what a card must have. The two differ most
with ``--cuda-graphs``, whose graphs keep their activations' memory between replays, where replays
allocate nothing.
"""
from __future__ import annotations

import json
import resource
import runpy
import sys


def main() -> int:
    report, target, *rest = sys.argv[1:]
    code = 0
    try:
        if target == "-m":
            module, *args = rest
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *rest]
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:                      # click and argparse end with SystemExit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        figures = {"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cuda_gib": None,
                   "cuda_reserved_gib": None}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            figures["cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
            figures["cuda_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        with open(report, "w") as f:
            json.dump(figures, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
