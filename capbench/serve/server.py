"""Run the reward service with uvicorn: in the foreground (``capbench serve``) or in a thread of this process.

The port is bound before the judges load, so a port in use is named at once. SIGTERM and SIGINT
stop it gracefully: it stops accepting connections, answers every request it has accepted, then
exits (with status 0).
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import threading
import time
from typing import Any

from capbench import ConfigError
from capbench.errors import MissingDependencyError
from capbench.serve.config import ServeConfig
from capbench.serve.service import Service, prepare


class _Stopped(Exception):
    """SIGTERM arrived after uvicorn's graceful stop (uvicorn raises the signal again once done)."""


def require() -> None:
    """Check that the service's packages are installed.

    Raises:
        MissingDependencyError: fastapi or uvicorn is missing (the message names the ``serve`` extra).
    """
    for package in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(package, "serve", "capbench serve")


def bind(host: str, port: int) -> socket.socket:
    """Open the listening socket.

    Raises:
        ConfigError: the address cannot be used (a port in use, an unknown host).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc}); check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(service: Service, sock: socket.socket, log: Any = None) -> Any:
    import uvicorn

    from capbench.serve.app import create_app

    app = create_app(service, log, url_of(sock))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", server_header=False
    )
    return uvicorn.Server(config)


def serve(config: ServeConfig) -> None:
    """Check the settings, bind the port, load the judges and serve until SIGTERM or SIGINT.

    Raises:
        ConfigError: a setting is wrong or the port cannot be bound (before any judge loads).
        EngineError: a served judge cannot be reached.
    """
    require()
    setup = prepare(config)
    sock = bind(config.host, config.port)
    try:
        server = _server(Service(setup), sock)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stopped) if main else None
        try:
            server.run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):
            pass  # the graceful stop is done; the signal only ends the process
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    finally:
        sock.close()


def _stopped(signum: int, frame: Any) -> None:
    raise _Stopped


class Running:
    """A service running in a thread of this process (tests, notebooks): ``url``, then :meth:`stop`.

    Example::

        with Running(ServeConfig(judge="openai:...", port=0)) as running:
            httpx.post(f"{running.url}/v1/score", json=...)
    """

    def __init__(self, config: ServeConfig | Service, log: Any = None, start_timeout: float = 60.0) -> None:
        require()
        service = config if isinstance(config, Service) else Service(prepare(config))
        settings = service.setup.config
        self.sock = bind(settings.host, settings.port)
        self.url = url_of(self.sock)
        self.server = _server(service, self.sock, log)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the reward service did not start within {start_timeout:g} s")
            time.sleep(0.01)

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop as SIGTERM would: refuse new connections, answer accepted requests, then end the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
