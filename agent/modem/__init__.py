"""LTE modem management.

`supervisor.LinkSupervisor` is the stage's thin loop over `port` (ModemManager check, opening, the
AT engine of `at`/`atproto`), `setup` (identity, SIM, APN, radio, GNSS), `poller` (one frozen
`sample.LinkSample` per poll) and `ladder` (the pure recovery decision); `report` publishes the
result. `vendors` holds Quectel/SIMCom specifics over the 3GPP base. `emulator` is the scripted
modem tests and `agent --simulate` use; production code reaches it only through `urlhandlers`.
"""
