"""Hardware checks run on a node, never in CI (the default test run only collects tests/)."""
