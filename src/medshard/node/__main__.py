"""``python -m medshard.node``: the same as ``python -m medshard.node.server``."""

import sys

from medshard.node.server import main

sys.exit(main())
