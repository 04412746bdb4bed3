import sys

from travis_lab.cli import main

sys.exit(main())
