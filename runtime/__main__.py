"""`python -m runtime SPEC ...` is `dnetc SPEC ...`: the entry torchrun starts (`torchrun -m runtime`)."""

import sys

from runtime.cli import main

sys.exit(main())
