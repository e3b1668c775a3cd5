"""``python -m service.synth ...``: the same as ``riskgate synth ...``."""

import sys

from service.synth.command import main

sys.exit(main())
