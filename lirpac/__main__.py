"""``python -m lirpac ...``: the same as the ``lirpac`` command."""
import sys

from lirpac.cli import main

sys.exit(main())
