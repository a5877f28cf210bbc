import sys

from x2core.cli.app import main

sys.exit(main())
