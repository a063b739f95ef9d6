"""`python -m wizard_runner` is the `wizard-runner` command."""

import sys

from wizard_runner.entry import main

sys.exit(main())
