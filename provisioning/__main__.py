"""`python -m provisioning` is `vigil-provision`."""

from provisioning.cli import main

raise SystemExit(main())
