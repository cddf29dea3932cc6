"""``python -m xpdl`` runs the command-line tool."""

import sys

try:
    from xpdl.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the tool: stop as an interrupted command does
    sys.exit(130)

sys.exit(main())
