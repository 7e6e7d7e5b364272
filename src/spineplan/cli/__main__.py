import sys

from spineplan.cli import main

sys.exit(main())
