"""The AT protocol (framing, echo, final codes, URCs mid-response) and the 27.007/vendor parsers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.modem.at import (
    MAX_LINE,
    AtError,
    AtProtocol,
    Final,
    Urc,
    default_timeout,
    redact,
    response_prefix,
)
from agent.modem.parse import (
    parse_cgdcont,
    parse_cops,
    parse_csq,
    parse_iccid,
    parse_registration,
    split_fields,
)
from agent.modem.vendors import Quectel, SimCom, Vendor, choose_vendor
from agent.modem.vendors.quectel import parse_qcsq, parse_qeng_servingcell
from agent.modem.vendors.simcom import parse_cpsi

pytestmark = pytest.mark.timeout(60)  # fuzzing must never hang


def run(proto: AtProtocol, command: str, data: bytes) -> tuple[list[str], list[Final]]:
    proto.begin(command)
    events = proto.feed(data)
    return [e.line for e in events if isinstance(e, Urc)], [e for e in events if isinstance(e, Final)]


def test_response_with_echo_and_ok():
    proto = AtProtocol()
    urcs, finals = run(proto, "AT+CSQ", b"AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n")
    assert urcs == []
    (final,) = finals
    assert final.response.ok and final.response.first("+CSQ:") == "20,99"
    assert proto.stats.echoes == 1 and not proto.busy


@pytest.mark.parametrize(
    ("final", "code", "reason"),
    [
        ("ERROR", None, "ERROR"),
        ("+CME ERROR: 10", 10, "SIM not inserted"),
        ("+CME ERROR: SIM PIN required", 11, "SIM PIN required"),
        ("+CMS ERROR: 500", 500, "error 500"),
        ("NO CARRIER", None, "NO CARRIER"),
    ],
)
def test_error_results_end_the_command(final: str, code: int | None, reason: str):
    proto = AtProtocol()
    _, (result,) = run(proto, "AT+CPIN?", f"\r\n{final}\r\n".encode())
    assert not result.response.ok
    err = AtError("AT+CPIN?", result.response.final)
    assert err.code == code and err.reason == reason


def test_urcs_mid_response_go_to_listeners_and_the_answer_stays_whole():
    proto = AtProtocol()
    data = (
        b"\r\n+CEREG: 2\r\n"  # URC form (one field) before the answer to AT+CEREG?
        b"\r\n+CEREG: 2,1,\"1A2B\",\"01A2B3C4\",7\r\n"
        b"\r\n+QIURC: \"pdpdeact\",1\r\n"
        b"\r\n+CEREG: 1,\"1A2B\",\"01A2B3C4\",7\r\n"  # URC form with location, after the answer
        b"\r\nRDY\r\n\r\nOK\r\n"
    )
    urcs, (final,) = run(proto, "AT+CEREG?", data)
    assert urcs == ["+CEREG: 2", '+QIURC: "pdpdeact",1', '+CEREG: 1,"1A2B","01A2B3C4",7', "RDY"]
    assert final.response.lines == ('+CEREG: 2,1,"1A2B","01A2B3C4",7',)
    reg = parse_registration(final.response.first("+CEREG:") or "", solicited=True)
    assert reg is not None and reg.state == "home" and reg.technology == "LTE"


def test_bare_information_lines_and_unknown_unsolicited_lines():
    proto = AtProtocol()
    _, (final,) = run(proto, "AT+CGSN", b"\r\n866758041234567\r\n\r\nOK\r\n")
    assert final.response.lines == ("866758041234567",)
    events = proto.feed(b"\r\nSOMETHING NEW\r\n")  # outside a command: delivered as a URC
    assert events == [Urc("SOMETHING NEW")]


def test_late_answer_of_a_timed_out_command_is_dropped():
    proto = AtProtocol()
    proto.begin("AT+COPS=?")
    proto.abandon()
    events = proto.feed(b'\r\n+COPS: (2,"Net","Net","00101",7)\r\n\r\nOK\r\n\r\n+CEREG: 1\r\n')
    assert events == [Urc("+CEREG: 1")]  # the late answer is swallowed, the URC is not
    assert proto.stats.late >= 1 and proto.stats.timeouts == 1
    _, (final,) = run(proto, "AT", b"\r\nOK\r\n")
    assert final.response.ok


def test_control_bytes_and_overlong_lines_are_counted_not_fatal():
    proto = AtProtocol()
    data = b"\x00\x01\xff\r\n" + b"X" * (MAX_LINE + 10) + b"\r\nOK\r\n"
    _, finals = run(proto, "AT", data)
    assert finals and finals[0].response.ok
    assert proto.stats.garbage_bytes >= MAX_LINE


def test_pins_never_reach_errors_or_logs():
    assert redact('AT+CPIN="1234"') == "AT+CPIN=<hidden>"
    assert redact("AT+CSQ") == "AT+CSQ"
    err = AtError('AT+CPIN="1234"', "+CME ERROR: 16")
    assert "1234" not in str(err) and err.reason == "incorrect password"
    proto = AtProtocol()
    _, (final,) = run(proto, 'AT+CPIN="1234"', b'AT+CPIN="1234"\r\r\n+CME ERROR: 16\r\n')
    assert "1234" not in final.response.command


def test_timeouts_and_prefixes():
    assert default_timeout("AT+COPS=?") == 180.0
    assert default_timeout("AT+CFUN=1,1") == 15.0
    assert default_timeout("AT+CSQ", 4.0) == 4.0
    assert response_prefix('AT+QENG="servingcell"') == "+QENG:"
    assert response_prefix("ATI") is None


# -- parsers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "solicited", "state", "stat", "tech"),
    [
        ("0,1", True, "home", 1, None),
        ("2,5,\"1A2B\",\"01A2B3C4\",7", True, "roaming", 5, "LTE"),
        ("2,3", True, "denied", 3, None),
        ("1,2", True, "searching", 2, None),
        ("11", False, "emergency_only", 11, None),  # two-digit stat as a URC
        ("2,10,\"00C3\",\"0001ABCD\",9", True, "roaming", 10, "NB-IoT"),
        ("1,\"1A2B\",\"01A2B3C4\",7", False, "home", 1, "LTE"),
    ],
)
def test_registration(text: str, solicited: bool, state: str, stat: int, tech: str | None):
    reg = parse_registration(text, solicited=solicited)
    assert reg is not None and (reg.state, reg.stat, reg.technology) == (state, stat, tech)


def test_operator_signal_sim_contexts():
    op = parse_cops('0,0,"Vodafone NL",7')
    assert op is not None and op.name == "Vodafone NL" and op.technology == "LTE"
    assert parse_cops("0") is not None and parse_cops("0").name is None  # not registered
    sig = parse_csq("20,99")
    assert sig is not None and sig.rssi_dbm == -73.0 and sig.csq == 20 and sig.ber is None
    assert parse_csq("99,99").rssi_dbm is None
    assert parse_iccid("8931440400012345678F") == "8931440400012345678F"
    ctx = parse_cgdcont(['1,"IPV4V6","internet","0.0.0.0",0,0', '2,"IP","ims"', "bogus"])
    assert [(c.cid, c.pdp_type, c.apn) for c in ctx] == [(1, "IPV4V6", "internet"), (2, "IP", "ims")]
    assert split_fields('1,"a,b", c') == ["1", "a,b", "c"]


def test_vendor_signal_formats():
    # real EC25-family line: RSRP/RSRQ/RSSI/SINR at fields 13..16, SINR in dB
    q = parse_qeng_servingcell(
        '"servingcell","NOCONN","LTE","FDD",310,260,1452808,315,5035,12,2,2,3AFD,-104,-11,-78,12,20'
    )
    assert q is not None and (q.rsrp, q.rsrq, q.rssi_dbm, q.sinr) == (-104, -11, -78, 12)
    assert parse_qeng_servingcell('"servingcell","SEARCH"') is None
    c = parse_qcsq('"LTE",-65,-95,160,-10')  # SINR in fifths of a dB from -20 dB
    assert c is not None and c.sinr == 12.0 and c.rsrp == -95
    s = parse_cpsi("LTE,Online,404-45,0x21F9,322642,453,EUTRAN-BAND40,39275,4,4,-168,-1126,-773,7")
    assert s is not None and (s.rsrq, s.rsrp, s.rssi_dbm, s.sinr) == (-16.8, -112.6, -77.3, 7)
    assert parse_cpsi("NO SERVICE,Online") is None


def test_vendor_choice():
    assert isinstance(choose_vendor("auto", "Quectel", "EC25"), Quectel)
    assert isinstance(choose_vendor("auto", "SIMCOM INCORPORATED", "SIMCOM_SIM7600E-H"), SimCom)
    assert type(choose_vendor("auto", "Telit", "LE910")) is Vendor
    assert isinstance(choose_vendor("simcom", "Quectel", "EC25"), SimCom)


# -- fuzzing -----------------------------------------------------------------------------------------
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AT_ALPHABET = st.sampled_from(list(b'\r\n+:,"OKERRORCME 0123456789AT?=\x00\xff'))


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_random_bytes_never_raise(chunks: list[bytes], pending: bool):
    proto = AtProtocol()
    if pending:
        proto.begin("AT+CEREG?")
    for chunk in chunks:
        for event in proto.feed(chunk):
            assert isinstance(event, Urc | Final)
        assert len(proto._buf) <= MAX_LINE


@FUZZ
@given(st.lists(st.lists(AT_ALPHABET, max_size=200).map(bytes), max_size=8))
def test_at_shaped_noise_never_raises(chunks: list[bytes]):
    proto = AtProtocol()
    proto.begin("AT+COPS?")
    for chunk in chunks:
        for event in proto.feed(chunk):
            if isinstance(event, Final):
                proto.begin("AT+CSQ")


@FUZZ
@given(st.text(max_size=80))
def test_parsers_never_raise(text: str):
    parse_registration(text, solicited=True)
    parse_registration(text, solicited=False)
    parse_cops(text)
    parse_csq(text)
    parse_iccid(text)
    parse_cgdcont([text])
    parse_qeng_servingcell(text)
    parse_qcsq(text)
    parse_cpsi(text)
