"""``python -m maskcore`` is the ``maskcore`` command."""

from maskcore.cli import main

if __name__ == "__main__":
    main()
