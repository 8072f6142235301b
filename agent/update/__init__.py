"""Signed agent releases on the node: install into a slot, switch, probation and rollback.

`slots` is the standard-library part that also runs outside any venv (first boot, the launcher);
`release` reads and verifies a release file; `updater` is the `agent/update` command; `stage` confirms
a release on probation and reports rollbacks. Nothing here is imported at agent start-up unless the
update stage is built.
"""
