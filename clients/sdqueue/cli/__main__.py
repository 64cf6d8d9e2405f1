"""`python -m sdqueue.cli`: the `sdqueue` console script."""

from sdqueue.cli import main

raise SystemExit(main())
