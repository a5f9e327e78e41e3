import sys

from perceptsr.cli import main

sys.exit(main())
