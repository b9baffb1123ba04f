"""`python -m agent.cli` is `dknn-agent`."""

import sys

from agent.cli import main

sys.exit(main())
