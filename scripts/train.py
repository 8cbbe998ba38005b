"""Same as ``python -m rankmix.train``: ``python scripts/train.py [overrides...]``."""

from rankmix.train import main

if __name__ == "__main__":
    main()
