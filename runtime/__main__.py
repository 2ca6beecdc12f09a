"""`python -m runtime SPEC ...` is `dnetc SPEC ...`: the entry torchrun starts (`torchrun -m runtime`)."""

import os
import sys

from dnetc.runtime.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A data-parallel worker has left its process group and closed its logs and checkpoints by now.
    # Exit without C++ static destructors: c10d's store threads can abort the process there
    # ("terminate called without an active exception", seen once in CI) after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
