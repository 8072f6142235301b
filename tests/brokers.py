"""Real brokers for tests: Mosquitto (and RabbitMQ's MQTT plugin) started on free ports, a collecting
subscriber, and throwaway TLS certificates."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)  # polling a port that is coming up; not synchronisation between our own threads
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if path is None:
        pytest.skip("mosquitto is not installed (./scripts/setup installs the Debian package)")
    return path


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(folder: Path, client_cn: str = "sim-node") -> TlsFiles:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write_key(key, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)

    def cert(subject_cn: str, key, issuer, issuer_key, *, ca: bool, sans=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = cert("test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = cert(
        "localhost",
        server_key,
        ca_name,
        ca_key,
        ca=False,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = cert(client_cn, client_key, ca_name, ca_key, ca=False)
    files = TlsFiles(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files.server_key)
    files.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(client_key, files.client_key)
    return files


class Mosquitto:
    """A mosquitto process on a fixed free port, which can be stopped, killed and started again."""

    def __init__(
        self, folder: Path, *, tls: TlsFiles | None = None, extra: str = "", persistent: bool = False
    ) -> None:
        """`persistent`: keep sessions and queued messages across clean restarts, and never drop what is
        queued for an offline persistent subscriber (the oracle of the loss tests must see everything)."""
        self.folder = folder
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            *(
                ["persistence true", f"persistence_location {folder}/", "max_queued_messages 0"]
                if persistent
                else ["persistence false"]
            ),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_inflight_messages 100",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        log = (self.folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A clean restart (SIGTERM, wait for exit, start again on the same port)."""
        self.stop()
        self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float
    properties: dict = field(default_factory=dict)


class Collector:
    """A subscriber that records every message and lets tests wait for a condition (no sleeps)."""

    def __init__(
        self,
        url: str,
        topics: list[str],
        *,
        tls: TlsFiles | None = None,
        protocol: str = "3.1.1",
        client_id: str = "test-collector",
    ) -> None:
        host, port = url.split("://")[1].rsplit(":", 1)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        if tls is not None:
            self.client.tls_set(
                ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key)
            )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._subscribed.wait(30):  # RabbitMQ's MQTT plugin can take seconds on a busy machine
            raise TimeoutError("collector could not subscribe within 30 s")

    def _on_message(self, client, userdata, message) -> None:
        props = {}
        if getattr(message, "properties", None) is not None and hasattr(message.properties, "UserProperty"):
            props = dict(message.properties.UserProperty)
        with self._cond:
            self.messages.append(
                Received(message.topic, message.payload, bool(message.retain), time.monotonic(), props)
            )
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
