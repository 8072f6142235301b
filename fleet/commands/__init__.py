"""One module per `vigil-fleet` command; each has `register(subparsers)` (see fleet.cli.COMMAND_MODULES)."""
