"""The emulated modem's command table: a command pattern → a handler that answers it.

A handler is a small function of one `Call` (the command line, the time, the modem's state) that
returns a `Reply`; it never touches ports, bytes or clocks, so adding a command is one function
with a pattern, and a handler can be unit-tested with a bare `ModemState`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.modem.emulator.scenario import EmulatorCounters, Scenario
from agent.modem.emulator.state import ModemState


@dataclass(frozen=True)
class Reply:
    """A command's answer: information lines, the final result, what follows it."""

    lines: tuple[str, ...] = ()
    final: str = "OK"
    urcs: tuple[str, ...] = ()  # unsolicited lines sent right after the answer
    reboot: bool = False  # the modem reboots once the answer is out (a reset)


OK = Reply()
ERROR = Reply(final="ERROR")


@dataclass(frozen=True)
class Call:
    """One command line as a handler sees it."""

    raw: str  # as sent (APNs keep their case)
    up: str  # upper case, without spaces: what patterns match
    match: re.Match[str]
    now: float
    state: ModemState
    counters: EmulatorCounters

    @property
    def scenario(self) -> Scenario:
        return self.state.scenario

    @property
    def registered(self) -> bool:
        return self.state.registered(self.now)

    def arg(self, group: int = 1) -> str:
        return self.match.group(group) or ""


Handler = Callable[[Call], Reply]


@dataclass(frozen=True)
class Command:
    pattern: re.Pattern[str]
    handler: Handler
    vendors: frozenset[str]  # empty: every vendor

    def serves(self, vendor: str) -> bool:
        return not self.vendors or vendor in self.vendors


class CommandTable:
    """Ordered patterns (full match on the upper-cased command); the first that fits answers."""

    def __init__(self) -> None:
        self._commands: list[Command] = []

    def command(self, pattern: str, *, vendors: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
        """Decorator: `handler` answers commands matching `pattern` (for `vendors` only, if given)."""

        def add(handler: Handler) -> Handler:
            self._commands.append(Command(re.compile(pattern), handler, frozenset(vendors)))
            return handler

        return add

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands)

    def answer(
        self, raw: str, *, now: float, state: ModemState, counters: EmulatorCounters
    ) -> Reply:
        """The reply to one command line; ERROR for what this modem does not know."""
        up = raw.upper().replace(" ", "")
        garbled = state.scenario.garbled.get(up)
        if garbled is not None:
            lines, final = garbled
            return Reply(tuple(lines), final)
        vendor = state.scenario.vendor
        for command in self._commands:
            if not command.serves(vendor):
                continue
            match = command.pattern.fullmatch(up)
            if match is not None:
                return command.handler(Call(raw, up, match, now, state, counters))
        return ERROR
