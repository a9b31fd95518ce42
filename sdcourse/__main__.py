"""``python -m sdcourse ...`` is the ``sdcourse`` command (see :mod:`sdcourse.cli`)."""
import sys

from sdcourse.cli import main

sys.exit(main())
