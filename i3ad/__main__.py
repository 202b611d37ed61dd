import sys

from i3ad.cli import main

sys.exit(main())
