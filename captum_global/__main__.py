"""``python -m captum_global`` is the ``captum-global`` command."""
import sys

from captum_global.cli import main

sys.exit(main())
