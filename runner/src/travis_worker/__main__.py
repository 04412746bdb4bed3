"""`python -m travis_worker` == `travis-worker`."""

import sys

from travis_worker.cli import main

sys.exit(main())
