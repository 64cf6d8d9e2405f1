"""`python -m sdqueue`: the same command tree as the `sdqueue` console script."""

from sdqueue.cli import main

raise SystemExit(main())
