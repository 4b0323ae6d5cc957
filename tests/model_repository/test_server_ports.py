"""TritonServer.start refuses a port another process listens on, before it starts anything
(otherwise the other server's readiness answers for it). No tritonserver is started here."""

from __future__ import annotations

import os
import socket

import pytest

from samrt.model_repository.server import TritonLaunchError, TritonServer

pytestmark = pytest.mark.triton  # start() is called (it refuses before launching anything)


@pytest.mark.parametrize("which, flag", [("http_port", "--http-port"), ("grpc_port", "--grpc-port"),
                                         ("metrics_port", "--metrics-port")])
def test_a_port_with_a_listener_is_refused_before_anything_starts(tmp_path, which, flag):
    with socket.socket() as other:  # another server's listener
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = TritonServer(str(tmp_path / "repo"), work_dir=str(tmp_path / "work"), **{which: port})
        with pytest.raises(TritonLaunchError, match=rf"port {port} on 127.0.0.1: in use .*expected a free port.*{flag}"):
            server.start()
    assert server.process is None and not os.path.exists(tmp_path / "work")  # nothing started, nothing written


def test_a_port_a_stopped_server_left_in_time_wait_is_free(tmp_path):
    """A connection closed by the listener's side leaves its port in TIME_WAIT: the check must not
    refuse it (a restart on the same ports right after a stop). The listener sets SO_REUSEADDR, as
    tritonserver's do (Linux lets a bind over TIME_WAIT only when both sockets set it)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    TritonServer(str(tmp_path / "repo"), http_port=port)._check_ports_free()


def test_samrt_serve_checks_its_ports_before_it_exports_or_builds(tmp_path, monkeypatch, capsys):
    """A busy port is found before minutes of export and engine builds, and a refused start does
    not say a server stopped."""
    from samrt.app import pipeline
    from samrt.model_repository.launch import serve_forever

    built = []
    monkeypatch.setattr(pipeline, "build_repository", lambda *a, **k: built.append(a))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(TritonLaunchError, match=rf"HTTP port {port} on 127.0.0.1: in use"):
            pipeline.serve(str(tmp_path / "build"), http_port=port, grpc_port=port + 1 if port < 65535 else 1,
                           metrics_port=port - 1)
        assert built == []
        with pytest.raises(TritonLaunchError, match="in use"):
            serve_forever(TritonServer(str(tmp_path / "repo"), work_dir=str(tmp_path / "work"), grpc_port=port))
    assert "tritonserver stopped" not in capsys.readouterr().out
