"""LTE modem management: the AT engine, the link supervisor with its recovery ladder, vendor
specifics (Quectel, SIMCom) over a generic 3GPP base, and the emulated modem that tests and
`agent --simulate` use."""
