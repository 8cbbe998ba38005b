"""Same as ``python -m rankmix.tables``: ``python scripts/make_table.py build <table-id>`` (or ``list``)."""

from rankmix.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
