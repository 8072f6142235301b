"""`vigil-fleet cmd NODE NAME [--args JSON]`: send one signed command to a node and wait for its reply.

With `--fleet DIR --operator NAME` the request is signed with the operator's certificate key
(agent/control/signing.py: node, command, id, time, a nonce and the arguments), carries the
operator's certificate and the fleet's current CRL (so nodes learn of revocations from any signed
command), and goes over mutual TLS as that operator. The broker's ACL lets the operator publish only
the commands its role allows (MQTT 5 says so at once in the PUBACK; over 3.1.1 the broker drops it
silently and the wait times out); the node checks the role again, and the signature, time and nonce.

Without `--fleet` the request is unsigned: for a laptop's `agent --simulate` and a local broker
(nodes in production refuse it). Exit status: 0 the node said ok, 1 it said error (or the broker
refused), 3 no reply within `--timeout` (the request may still be answered: the node keeps its MQTT
session, so a node that is away gets it when it returns, and the ingest stores the reply).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import time
import uuid
from pathlib import Path
from typing import Any

from fleet.commands.common import print_json, seconds
from fleet.errors import FleetError

log = logging.getLogger("fleet.cmd")

EXIT_OK, EXIT_ERROR, EXIT_NO_REPLY = 0, 1, 3


class Signer:
    """The operator's key and certificate, and the fleet's CRL, from the fleet directory."""

    def __init__(self, fleet_dir: Path, operator: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from agent.control.signing import MAX_CRL_CHARS, load_private_key

        folder = fleet_dir / "operators" / operator
        try:
            self.key = load_private_key((folder / f"{operator}.key").read_bytes())
            cert = x509.load_pem_x509_certificate((folder / f"{operator}.crt").read_bytes())
        except (OSError, ValueError) as exc:
            raise FleetError(f"cannot use the key and certificate of operator {operator} in {folder}: {exc}") from None
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.crl_der: bytes | None = None
        try:
            crl = x509.load_pem_x509_crl((fleet_dir / "ca" / "crl.pem").read_bytes())
            self.crl_der = crl.public_bytes(serialization.Encoding.DER)
        except (OSError, ValueError):
            log.warning("no readable fleet CRL in %s/ca: nodes will not learn of revocations from this command",
                        fleet_dir)
        if self.crl_der is not None and len(self.crl_der) * 4 // 3 + 4 > MAX_CRL_CHARS:
            log.warning("the fleet CRL is too large to ride with a command; nodes keep the one they have")
            self.crl_der = None

    def sign(self, node: str, command: str, request_id: str, args: dict[str, Any], actor: str | None) -> bytes:
        from agent.control.signing import sign_request

        request = sign_request(
            self.key, self.cert_der, node=node, command=command, request_id=request_id, args=args,
            actor=actor, crl_der=self.crl_der,
        )
        return json.dumps(request, separators=(",", ":")).encode()


class CommandClient:
    """One MQTT connection: subscribe to the node's replies, publish the request, wait for its reply."""

    def __init__(self, url: str, client_id: str, tls: Any, prefix: str, node: str) -> None:
        from fleet.ingest.mqtt import broker_url

        self.broker = broker_url(url)
        self.client_id = client_id
        self.tls = tls
        self.base = f"{prefix}/{node}"
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1000)

    def run(self, command: str, payload: bytes, request_id: str, timeout: float) -> tuple[str, Any]:
        """("reply", body) | ("refused", reason) | ("timeout", None)."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        for protocol in (paho.MQTTv5, paho.MQTTv311):
            self.events = queue.Queue(maxsize=1000)  # nothing of an earlier attempt's connection
            client = paho.Client(
                callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol
            )
            if self.tls is not None:
                client.tls_set_context(self.tls)
            client.on_connect = lambda c, u, f, rc, p: self._put("connack", rc)
            client.on_subscribe = lambda c, u, mid, codes, p: self._put("suback", codes)
            client.on_publish = lambda c, u, mid, rc, p: self._put("puback", rc)
            client.on_message = lambda c, u, m: self._put("message", m.payload)
            client.on_disconnect = lambda c, u, f, rc, p: self._put("disconnect", rc)
            try:
                client.connect(self.broker.host, self.broker.port, keepalive=30)
            except OSError as exc:
                raise FleetError(f"cannot reach the broker {self.broker}: {exc}") from None
            client.loop_start()
            try:
                kind, rc = self._next({"connack", "disconnect"}, 15.0)
                if kind != "connack" or rc.is_failure:
                    if protocol == paho.MQTTv5:
                        continue  # e.g. a broker without MQTT 5 (RabbitMQ 3.x): try again with 3.1.1
                    raise FleetError(f"the broker {self.broker} refused the connection: {rc}")
                return self._exchange(client, command, payload, request_id, timeout)
            finally:
                client.disconnect()
                client.loop_stop()
        raise FleetError(f"the broker {self.broker} speaks neither MQTT 5 nor 3.1.1")

    def _exchange(self, client: Any, command: str, payload: bytes, request_id: str, timeout: float) -> tuple[str, Any]:
        client.subscribe(f"{self.base}/cmd_result", qos=1)
        kind, codes = self._next({"suback", "disconnect"}, 15.0)
        if kind != "suback" or any(getattr(c, "is_failure", False) for c in codes):
            raise FleetError(f"the broker did not let this operator read {self.base}/cmd_result")
        client.publish(f"{self.base}/cmd/{command}", payload, qos=1)
        kind, rc = self._next({"puback", "disconnect"}, 15.0)
        if kind == "disconnect" or getattr(rc, "is_failure", False):
            return "refused", f"the broker refused cmd/{command} for this operator ({rc}): its role does not allow it"
        until = time.monotonic() + timeout
        while (left := until - time.monotonic()) > 0:
            kind, body = self._next({"message", "disconnect"}, left, quiet=True)
            if kind == "disconnect":
                return "refused", f"the broker closed the connection ({body})"
            if kind != "message":
                break
            try:
                reply = json.loads(body)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("id") == request_id:
                return "reply", reply
        return "timeout", None

    def _put(self, kind: str, value: Any) -> None:
        try:
            self.events.put_nowait((kind, value))
        except queue.Full:
            log.warning("dropping %s: too many messages waiting", kind)

    def _next(self, kinds: set[str], timeout: float, *, quiet: bool = False) -> tuple[str, Any]:
        """The next event of one of `kinds` within `timeout` s; others are skipped. Without one:
        ("timeout", None) if `quiet`, else FleetError."""
        until = time.monotonic() + timeout
        while (left := until - time.monotonic()) > 0:
            try:
                kind, value = self.events.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if kind in kinds:
                return kind, value
        if quiet:
            return "timeout", None
        raise FleetError(f"no answer from the broker {self.broker} within {timeout:.0f}s")


def cmd_cmd(args: argparse.Namespace) -> int:
    from fleet.identity import load_fleet
    from provisioning.names import is_identity

    if not is_identity(args.node):
        raise FleetError(f"{args.node!r} is not a node id")
    try:
        command_args = json.loads(args.args)
    except ValueError as exc:
        raise FleetError(f"--args is not JSON: {exc}") from None
    if not isinstance(command_args, dict):
        raise FleetError("--args must be a JSON object, e.g. '{\"reason\": \"test\"}'")
    fleet_dir = args.fleet or os.environ.get("VIGIL_FLEET")
    if fleet_dir and not args.operator:
        raise FleetError("signing needs --operator NAME (an operator of the fleet with the role the command needs)")
    context = load_fleet(Path(fleet_dir) if fleet_dir else None, args.operator, args.prefix)
    url = args.broker or context.broker
    if not url:
        raise FleetError("--broker mqtt[s]://HOST:PORT is required (or --fleet DIR, whose fleet.toml names it)")
    request_id = f"{args.operator or 'cmd'}-{uuid.uuid4().hex[:16]}"
    if fleet_dir:
        signer = Signer(Path(fleet_dir).expanduser(), args.operator)
        payload = signer.sign(args.node, args.command, request_id, command_args, args.actor or args.operator)
    else:
        log.warning("no --fleet/--operator: sending an unsigned request (only development nodes accept it)")
        body: dict[str, Any] = {"id": request_id, "args": command_args}
        if args.actor:
            body["actor"] = args.actor
        payload = json.dumps(body).encode()
    client_id = args.operator or f"vigil-fleet-cmd-{uuid.uuid4().hex[:8]}"
    client = CommandClient(url, client_id, context.tls, context.prefix, args.node)
    outcome, value = client.run(args.command, payload, request_id, args.timeout)
    if outcome == "refused":
        print(f"vigil-fleet: {value}", flush=True)
        return EXIT_ERROR
    if outcome == "timeout":
        print(
            f"vigil-fleet: no reply from {args.node} within {args.timeout:.0f}s; if it is away it gets the request "
            "when it returns (while the request is fresh) and the ingest stores the reply",
            flush=True,
        )
        return EXIT_NO_REPLY
    reply: dict[str, Any] = value
    if args.json:
        print_json(reply)
    else:
        print(f"{args.node} {args.command}: {reply.get('status')}: {reply.get('message')}")
        if reply.get("data") is not None:
            print(json.dumps(reply["data"], indent=2, default=str))
    return EXIT_OK if reply.get("status") == "ok" else EXIT_ERROR


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cmd",
        help="send a signed command to a node and wait for its reply",
        description="Sign a command with an operator's certificate key (--fleet DIR --operator NAME) and send it "
        "to NODE; prints the node's reply. Commands: ping, status, config/get (viewer), config/set, snapshot "
        "(operator), model/update, modem/reset, restart (admin). Exit 0 ok, 1 error, 3 no reply in time.",
    )
    p.add_argument("node", metavar="NODE")
    p.add_argument("command", metavar="NAME", help="e.g. ping, status, config/set, restart")
    p.add_argument("--args", default="{}", metavar="JSON", help="the command's arguments, a JSON object")
    p.add_argument("--fleet", type=Path, metavar="DIR", help="the fleet directory (or $VIGIL_FLEET)")
    p.add_argument("--operator", metavar="NAME", help="the operator whose certificate signs and connects")
    p.add_argument("--broker", metavar="URL", help="default: the broker in fleet.toml")
    p.add_argument("--prefix", help="topic prefix (default: from fleet.toml, else vigil)")
    p.add_argument("--actor", help="who asks, if not the operator itself (signed along; goes into the audit log)")
    p.add_argument("--timeout", type=seconds, default=60.0, metavar="DURATION", help="wait this long for the reply")
    p.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    p.set_defaults(func=cmd_cmd)
