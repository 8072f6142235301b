"""Well-framed, semantically wrong AT answers and URCs (issue 13, item 2): a bad field is unknown.

The AT protocol only frames lines; what is inside them reaches status, telemetry and every event
(operator, signal). Fuzzed here: valid answers of every parser with fields of the wrong type,
length or range, `nan`/`inf`, Unicode digits, unbalanced quotes, repeated and missing fields. Then a
real supervisor on a real pty talks to the scripted modem answering such nonsense and sending such
URCs: it keeps running (no "failed" restart), stays online on what it can read, and reports only
sane, strict-JSON values.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.modem import ModemConfig
from agent.modem.at import AtError, AtProtocol, AtResponse, Final
from agent.modem.emulator import ModemEmulator, PtyLink, Scenario
from agent.modem.parse import (
    Operator,
    Registration,
    Signal,
    parse_cgdcont,
    parse_cops,
    parse_cpin,
    parse_csq,
    parse_iccid,
    parse_registration,
)
from agent.modem.supervisor import LinkSupervisor
from agent.modem.vendors.generic import Vendor
from agent.modem.vendors.quectel import parse_qcsq, parse_qeng_servingcell
from agent.modem.vendors.simcom import parse_cpsi
from tests.fieldfuzz import mutate, mutations

pytestmark = pytest.mark.timeout(120)

TEMPLATES = {
    "creg_solicited": '2,1,"1A2B","01A2B3C4",7',
    "creg_urc": '1,"1A2B","01A2B3C4",7',
    "cops": '0,0,"Vigil Test Network",7',
    "csq": "20,99",
    "cpin": "READY",
    "iccid": "8931440400012345678",
    "cgdcont": '1,"IP","internet.example","0.0.0.0",0,0',
    "qeng": '"servingcell","NOCONN","LTE","FDD",001,01,1A2B3C4,123,6300,20,3,3,1A2B,-95,-10,-65,12,12,-,40',
    "qcsq": '"LTE",-65,-95,160,-10',
    "cpsi": "LTE,Online,001-01,0x1A2B,27447044,123,EUTRAN-BAND3,1300,5,5,-100,-950,-650,12",
    "cesq": "99,99,255,255,20,46",
}
BAD_VALUES = [
    "",
    "-",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e999",
    "1E3",
    "0x",
    "0xZZ",
    "0x1F",
    "1_0",
    "²",
    "٣",
    " 5 ",
    "-1",
    "-999999",
    "99",
    "255",
    "256",
    "9" * 40,
    "1.2.3",
    '"',
    '""',
    '"unterminated',
    "LTE",
    "Online",
    "READY",
    "X" * 300,
    "\u200b",
    "\ufffd",
    "ÿ",
    "1A2B3C4D5E6F7A8B9C",
    "GG",
    "+CME ERROR: 10",
]
FIELD = st.one_of(
    st.sampled_from(BAD_VALUES),
    st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=20),
)
MUTATION = mutations(FIELD)


# What a radio can report (3GPP TS 36.133 reporting ranges, with margin for vendor offsets).
PLAUSIBLE = {
    "rssi_dbm": (-150.0, 0.0),
    "csq": (0, 31),
    "ber": (0, 7),
    "rsrp": (-160.0, -20.0),
    "rsrq": (-50.0, 20.0),
    "sinr": (-30.0, 60.0),
}


class OneAnswer:
    """The AT engine as the generic vendor code sees it, answering one +CESQ line (a unit-level fake)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def command(self, command: str) -> AtResponse:
        return AtResponse(command, (f"+CESQ: {self.text}",), "OK")


def parse_cesq(text: str) -> Signal | None:
    return Vendor().signal_details(OneAnswer(text))  # type: ignore[arg-type]


def assert_signal(signal: Signal | None) -> None:
    if signal is None:
        return
    for name, (low, high) in PLAUSIBLE.items():
        value = getattr(signal, name)
        assert value is None or (math.isfinite(value) and low <= value <= high), (name, value)
    json.dumps(signal.as_dict(), allow_nan=False)


def assert_registration(reg: Registration | None) -> None:
    if reg is None:
        return
    assert 0 <= reg.stat <= 255 and reg.state in {
        "not_registered",
        "home",
        "searching",
        "denied",
        "unknown",
        "roaming",
        "emergency_only",
    }
    for value in (reg.area, reg.cell):
        assert value is None or (len(value) <= 16 and all(c in "0123456789abcdefABCDEF" for c in value))
    assert reg.act is None or 0 <= reg.act <= 255


def assert_operator(op: Operator | None) -> None:
    if op is None:
        return
    assert op.name is None or (len(op.name) <= 64 and op.name.isprintable())
    assert op.act is None or 0 <= op.act <= 255


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(sorted(TEMPLATES)), st.lists(MUTATION, min_size=1, max_size=4))
def test_semantically_wrong_answers_give_unknown_fields(kind: str, edits):
    text = mutate(TEMPLATES[kind], edits)
    assert_registration(parse_registration(text, solicited=True))
    assert_registration(parse_registration(text, solicited=False))
    assert_operator(parse_cops(text))
    assert_signal(parse_csq(text))
    for parser in (parse_qeng_servingcell, parse_qcsq, parse_cpsi, parse_cesq):
        assert_signal(parser(text))
    state = parse_cpin(text)
    assert len(state) <= 32 and state.isprintable()
    iccid = parse_iccid(text)
    assert iccid is None or (iccid.isascii() and iccid.isalnum())
    for context in parse_cgdcont([text]):
        assert len(context.apn) <= 100 and len(context.pdp_type) <= 16


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(["+CME ERROR:", "+CMS ERROR:", "+CEREG:", "+CSQ:", "RDY"]), FIELD),
        min_size=1,
        max_size=6,
    )
)
def test_error_results_and_urcs_with_nonsense_never_raise(lines):
    proto = AtProtocol()
    proto.begin("AT+CSQ")
    data = "".join(f"\r\n{prefix} {value}\r\n" for prefix, value in lines).encode("utf-8", errors="replace")
    for event in proto.feed(data + b"\r\nERROR\r\n"):
        if isinstance(event, Final) and not event.response.ok:
            error = AtError("AT+CSQ", event.response.final, event.response.lines)
            assert error.code is None or 0 <= error.code <= 999999
            assert len(error.reason) <= 80


def test_a_unicode_digit_in_an_error_code_is_not_a_number():
    """`+CME ERROR: ²` (bytes C2 B2): str.isdigit() says yes, int() raises."""
    error = AtError("AT+CGATT?", "+CME ERROR: ²")
    assert error.code is None and error.reason == "²"


# -- real parts -------------------------------------------------------------------------------------
@pytest.fixture
def link(tmp_path: Path) -> Iterator[list[PtyLink]]:
    links: list[PtyLink] = []
    yield links
    for item in links:
        item.stop()


def config(port: str) -> ModemConfig:
    return ModemConfig(
        port=port,
        poll_interval_s=0.1,
        command_timeout_s=0.4,
        recovery_grace_s=0.3,
        step_wait_s=0.6,
        retry_max_s=2.0,
        reopen_max_s=0.4,
        unresponsive_after=2,
    )


GARBLED = {
    "AT+CSQ": (("+CSQ: nan,99",), "OK"),
    "AT+COPS?": (('+COPS: 0,0,"' + "Ø" * 300 + '\x7f",inf',), "OK"),
    'AT+QENG="SERVINGCELL"': (
        (
            '+QENG: "servingcell","NOCONN","LTE","FDD",001,01,1A2B3C4,123,6300,20,3,3,1A2B,nan,1e999,+40,-inf,12',
        ),
        "OK",
    ),
    "AT+QCSQ": (('+QCSQ: "LTE",99999,-950000,inf,²',), "OK"),
    "AT+CGATT?": ((), "+CME ERROR: ²"),
    "AT+CGMR": (("EC25" + "\x00" * 3 + "A" * 500,), "OK"),
}
URCS = [
    "+CEREG: nan",
    '+CEREG: 1,"ZZZZ","not hex at all",99999999999999',
    "+CREG: ²",
    "+CPIN: " + "X" * 500,
    '+CGREG: 5,"1A2B","01A2B3C4",7,"extra","fields",,,',
    "+QIND: " + '"' * 51,
]


def test_the_supervisor_keeps_running_on_nonsense_answers_and_urcs(tmp_path: Path, link):
    emulator = ModemEmulator(
        Scenario(boot_s=0.0, register_delay_s=0.2, reboot_s=0.3, garbled=GARBLED), name="nonsense"
    )
    link.append(PtyLink(emulator, tmp_path / "vigil-at").start())
    sup = LinkSupervisor(config(str(tmp_path / "vigil-at")), users_probe=None).start()
    try:
        st = sup.wait_for(lambda s: s["state"] == "online", 15)
        assert st is not None, sup.status()
        polled = st["counters"]["commands"]
        for line in URCS:
            emulator.inject(line)
        later = sup.wait_for(lambda s: s["counters"]["commands"] > polled + 40, 20)
        assert later is not None, sup.status()
        for _ in range(3):  # the URCs again, now in the middle of polls
            for line in URCS:
                emulator.inject(line)
        final = sup.wait_for(lambda s: s["counters"]["commands"] > later["counters"]["commands"] + 40, 20)
        assert final is not None, sup.status()
        assert final["state"] == "online", final  # never "failed" (the supervisor's bug path)
        json.dumps(final, allow_nan=False)
        assert final["signal"]["rssi_dbm"] is None and final["signal"]["rsrp_dbm"] is None
        assert final["operator"] is None or len(final["operator"]) <= 64
        assert len(final["modem"]["firmware"]) <= 32 and final["modem"]["firmware"].isprintable()
        assert final["sim"]["state"] == "READY"
        assert final["registration"]["state"] == "home"
        json.dumps(sup.link_context(), allow_nan=False)
    finally:
        t0 = time.monotonic()
        sup.stop()
        assert time.monotonic() - t0 < 3.0
