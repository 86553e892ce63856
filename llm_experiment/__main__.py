"""``python -m llm_experiment serve``: the same as the ``llm-experiment`` command."""

import sys

from .cli import main

sys.exit(main())
