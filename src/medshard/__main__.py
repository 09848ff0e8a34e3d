"""``python -m medshard``; guarded, because spawned worker processes import this module."""

from medshard.cli import main

if __name__ == "__main__":
    main()
