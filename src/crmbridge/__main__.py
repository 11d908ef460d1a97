"""Entry point for `python -m crmbridge`."""

from crmbridge.cli import main

if __name__ == "__main__":
    main()
