"""This worker with the no-op model (``BENCH_NOOP_MODEL=1``, see ``common.noop_model``):
``python -m benchmarks.peers.worker worker`` runs ``python -m app worker`` with no forwards."""

from __future__ import annotations

import os
import sys

from benchmarks.peers.common import NOOP_MODEL_ENV, noop_model

if __name__ == "__main__":
    if os.environ.get(NOOP_MODEL_ENV) == "1":
        noop_model()
    from app.cli import main

    sys.exit(main())
