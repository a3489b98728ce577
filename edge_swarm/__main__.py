"""``python -m edge_swarm`` is the ``edge-swarm`` command."""

import sys

from edge_swarm.cli.main import main

sys.exit(main())
