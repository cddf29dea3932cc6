"""``python -m xpdl`` runs the command-line tool."""

import sys

from xpdl.cli import main

sys.exit(main())
