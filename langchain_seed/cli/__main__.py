"""`python -m langchain_seed.cli ...`, the same as `langchain-seed ...`."""

import sys

from langchain_seed.cli import main

sys.exit(main())
