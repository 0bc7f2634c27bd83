"""``python -m memcallback``: the audit command line of :mod:`memcallback.app.cli`."""

from memcallback.app.cli import main

if __name__ == "__main__":
    main()
