"""``python -m pycsa.cli`` (and ``torchrun -m pycsa.cli train ...``)."""
import sys

from . import main

sys.exit(main())
