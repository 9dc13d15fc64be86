"""`python -m spot_drain_worker`: the same as the `spot-drain-worker` console script."""

from .server import main

if __name__ == "__main__":
    raise SystemExit(main())
