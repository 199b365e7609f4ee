import sys

from pitune_core.cli.main import main

sys.exit(main())
