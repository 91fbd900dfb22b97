"""`python -m ui.cli ...`: the same as the `clusterplan` command."""
import sys

from ui.cli import main

sys.exit(main())
