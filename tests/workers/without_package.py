"""Worker: `tulu-train ARGS` in a process where the package PACKAGE is not installed (its import fails,
as it does where it is missing); the process's modules are restored afterwards (a pool rank runs on).

    python tests/workers/without_package.py PACKAGE [tulu-train overrides ...]
"""

import sys

name, args = sys.argv[1], sys.argv[2:]
saved = {k: v for k, v in sys.modules.items() if k == name or k.startswith(name + ".")}
try:
    for k in saved:
        del sys.modules[k]
    sys.modules[name] = None  # import fails; importlib.util.find_spec answers None
    from tulu_mcore.cli.train import main

    main(args)
finally:
    sys.modules.pop(name, None)
    sys.modules.update(saved)
