"""`python -m training.resplit`: the re-split evaluation under the name the project brief uses.

The code lives in `training.evaluation.resplit`; this entry point only runs it.
"""

import sys

from training.evaluation.resplit import main

if __name__ == "__main__":
    sys.exit(main())
