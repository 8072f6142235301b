"""What the emulated modem answers: 3GPP TS 27.007 commands, then Quectel and SIMCom extras.

Each handler answers one family of commands the way the real firmware does (formats from the
EC25 and SIM7600 AT manuals and captures). `COMMANDS` is the table the device dispatches through.
"""

from __future__ import annotations

from agent.modem.emulator.scenario import ICCID, IDENTITY
from agent.modem.emulator.table import ERROR, OK, Call, CommandTable, Reply
from agent.modem.parse import split_fields

COMMANDS = CommandTable()
command = COMMANDS.command


# -- basics and identity ---------------------------------------------------------------------------
@command(r"AT|ATZ|AT&F")
def _plain(call: Call) -> Reply:
    return OK


@command(r"ATE([01]?)")
def _echo(call: Call) -> Reply:
    call.state.echo = call.arg() == "1"
    return OK


@command(r"AT\+CMEE=(\d{0,3})")
def _cmee(call: Call) -> Reply:
    call.state.cmee = int(call.arg() or 0)
    return OK


@command(r"ATI")
def _info(call: Call) -> Reply:
    manufacturer, model, firmware, _ = IDENTITY[call.scenario.vendor]
    return Reply((manufacturer, model, f"Revision: {firmware}"))


@command(r"AT\+C?G(MI|MM|MR|SN)")
def _identity(call: Call) -> Reply:
    index = ("MI", "MM", "MR", "SN").index(call.arg())
    return Reply((IDENTITY[call.scenario.vendor][index],))


# -- SIM ---------------------------------------------------------------------------------------------
@command(r"AT\+CPIN\?")
def _cpin_read(call: Call) -> Reply:
    if call.state.sim_state == "missing":
        return Reply(final="+CME ERROR: 10")
    return Reply((f"+CPIN: {call.state.sim_state}",))


@command(r"AT\+CPIN=(.*)")
def _cpin_enter(call: Call) -> Reply:
    state = call.state
    call.counters.pin_attempts += 1
    if state.sim_state != "SIM PIN":
        return Reply(final="+CME ERROR: 3")
    if call.arg().strip('"') == call.scenario.pin:
        state.sim_state = "READY"
        state.radio_on_at = call.now
        return Reply(urcs=("+CPIN: READY",))
    state.pin_left -= 1
    if state.pin_left <= 0:
        state.sim_state = "SIM PUK"
    return Reply(final="+CME ERROR: 16")


def _iccid(call: Call, tag: str) -> Reply:
    if call.state.sim_state == "missing":
        return Reply(final="+CME ERROR: 10")
    return Reply((f"{tag}: {ICCID}",))


@command(r"AT\+CCID")
def _ccid(call: Call) -> Reply:
    return _iccid(call, "+CCID")


@command(r"AT\+QCCID", vendors=("quectel",))
def _qccid(call: Call) -> Reply:
    return _iccid(call, "+QCCID")


@command(r"AT\+CICCID", vendors=("simcom",))
def _ciccid(call: Call) -> Reply:
    return _iccid(call, "+ICCID")


# -- network -----------------------------------------------------------------------------------------
@command(r"AT\+(CREG|CGREG|CEREG)\?")
def _reg_read(call: Call) -> Reply:
    kind, state = call.arg(), call.state
    n = state.reg_n[kind]
    return Reply((f"+{kind}: {n},{state.reg_fields(state.registration_stat(call.now), n)}",))


@command(r"AT\+(CREG|CGREG|CEREG)=(\d{0,3})")
def _reg_urcs(call: Call) -> Reply:
    call.state.reg_n[call.arg()] = int(call.arg(2) or 0)
    return OK


@command(r"AT\+COPS\?")
def _cops_read(call: Call) -> Reply:
    if call.registered:
        return Reply((f'+COPS: 0,0,"{call.scenario.operator}",{call.scenario.act}',))
    return Reply(("+COPS: 0",))


@command(r"AT\+COPS=.*|AT\+CGATT=.*")
def _accepted(call: Call) -> Reply:
    return OK


@command(r"AT\+CSQ")
def _csq(call: Call) -> Reply:
    return Reply((f"+CSQ: {call.scenario.csq if call.registered else 99},99",))


@command(r"AT\+CESQ")
def _cesq(call: Call) -> Reply:
    sc = call.scenario
    if not call.registered:
        return Reply(("+CESQ: 99,99,255,255,255,255",))
    return Reply((f"+CESQ: 99,99,255,255,{(sc.rsrq + 20) * 2},{sc.rsrp + 141}",))


@command(r"AT\+CGATT\?")
def _cgatt_read(call: Call) -> Reply:
    return Reply((f"+CGATT: {1 if call.registered else 0}",))


@command(r"AT\+CGDCONT\?")
def _cgdcont_read(call: Call) -> Reply:
    contexts = call.state.contexts.items()
    return Reply(tuple(f'+CGDCONT: {cid},"{kind}","{apn}","0.0.0.0",0,0' for cid, (kind, apn) in contexts))


@command(r"AT\+CGDCONT=(\d+)(,.*)?")
def _cgdcont_write(call: Call) -> Reply:
    f = split_fields(call.raw.split("=", 1)[1])  # the raw line: an APN keeps its case
    call.state.contexts[int(call.arg())] = (f[1] if len(f) > 1 else "IP", f[2] if len(f) > 2 else "")
    return OK


@command(r"AT\+CFUN\?")
def _cfun_read(call: Call) -> Reply:
    return Reply((f"+CFUN: {call.state.cfun}",))


@command(r"AT\+CFUN=1,1")
def _cfun_reset(call: Call) -> Reply:
    call.counters.resets += 1
    return Reply(reboot=True)  # the reboot, not the command, clears a stuck stack


@command(r"AT\+CFUN=([014])(,\d)?")
def _cfun(call: Call) -> Reply:
    state, level = call.state, int(call.arg())
    if level == 1 and state.cfun != 1:
        call.counters.radio_cycles += 1
        state.radio_stuck = False
        state.radio_on_at = call.now
    state.cfun = level
    return OK


@command(r"AT\+CRESET", vendors=("simcom",))
def _creset(call: Call) -> Reply:
    call.counters.resets += 1
    return Reply(reboot=True)


# -- vendor signal details -----------------------------------------------------------------------------
@command(r'AT\+QENG="SERVINGCELL"', vendors=("quectel",))
def _qeng(call: Call) -> Reply:
    sc = call.scenario
    if not call.registered:
        return Reply(('+QENG: "servingcell","SEARCH"',))
    return Reply(
        (
            f'+QENG: "servingcell","NOCONN","LTE","FDD",{sc.mcc_mnc[:3]},{sc.mcc_mnc[3:]},'
            f"1A2B3C4,123,6300,20,3,3,1A2B,{sc.rsrp},{sc.rsrq},{sc.rssi},{sc.sinr},12,-,40",
        )
    )


@command(r"AT\+QCSQ", vendors=("quectel",))
def _qcsq(call: Call) -> Reply:
    sc = call.scenario
    if not call.registered:
        return Reply(('+QCSQ: "NOSERVICE"',))
    return Reply((f'+QCSQ: "LTE",{sc.rssi},{sc.rsrp},{(sc.sinr + 20) * 5},{sc.rsrq}',))


@command(r"AT\+CPSI\?", vendors=("simcom",))
def _cpsi(call: Call) -> Reply:
    sc = call.scenario
    if not call.registered:
        return Reply(("+CPSI: NO SERVICE,Online",))
    mcc, mnc = sc.mcc_mnc[:3], sc.mcc_mnc[3:]
    return Reply(
        (
            f"+CPSI: LTE,Online,{mcc}-{mnc},0x1A2B,27447044,123,EUTRAN-BAND3,1300,5,5,"
            f"{sc.rsrq * 10},{sc.rsrp * 10},{sc.rssi * 10},{sc.sinr}",
        )
    )


# -- GNSS --------------------------------------------------------------------------------------------
def _gnss_start(call: Call, *, already_on: str) -> Reply:
    """Switch the GNSS engine on (NMEA follows shortly); a second switch-on is the vendor's error."""
    if call.state.gnss_on:
        return Reply(final=already_on)
    call.state.gnss_on = True
    call.state.nmea_next = call.now + 0.2
    return OK


def _gnss_stop(call: Call) -> Reply:
    call.state.gnss_on = False
    return OK


@command(r"AT\+QGPSCFG=.*", vendors=("quectel",))
def _qgpscfg(call: Call) -> Reply:
    return OK


@command(r"AT\+QGPS=1", vendors=("quectel",))
def _qgps_on(call: Call) -> Reply:
    return _gnss_start(call, already_on="+CME ERROR: 504")  # Quectel: session is ongoing


@command(r"AT\+QGPS\?", vendors=("quectel",))
def _qgps_read(call: Call) -> Reply:
    return Reply((f"+QGPS: {1 if call.state.gnss_on else 0}",))


@command(r"AT\+QGPSEND", vendors=("quectel",))
def _qgps_off(call: Call) -> Reply:
    return _gnss_stop(call)


@command(r"AT\+CGPS=1(,1)?", vendors=("simcom",))
def _cgps_on(call: Call) -> Reply:
    return _gnss_start(call, already_on="ERROR")


@command(r"AT\+CGPS\?", vendors=("simcom",))
def _cgps_read(call: Call) -> Reply:
    return Reply((f"+CGPS: {1 if call.state.gnss_on else 0},1",))


@command(r"AT\+CGPS=0", vendors=("simcom",))
def _cgps_off(call: Call) -> Reply:
    return _gnss_stop(call)


__all__ = ["COMMANDS", "ERROR", "OK", "Reply"]
