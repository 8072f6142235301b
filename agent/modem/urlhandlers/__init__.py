"""pyserial URL handlers (`serial.protocol_handler_packages`): `vigilemu://` reaches the built-in modem emulator."""
