"""The UDP command channel with valid commands: exact replies for add,
remove, list and shutdown, canonical domains, tolerated line ends, loopback
sources other than 127.0.0.1, IPv6 loopback, and long list replies."""

import socket

import pytest

from helpers import parse_list, udp_command, udp_send, wait_for


def test_add_replies_ok_and_list_shows_route(server):
    assert server.cmd("add example.com 5665") == "ok"
    assert server.cmd("list") in ("example.com 5665\nok", "example.com 5665\nok\n")


def test_list_empty_is_just_ok(server):
    assert server.cmd("list") in ("ok", "ok\n")


def test_list_is_sorted_by_domain(server):
    for d, p in (("zeta.test", 3), ("alpha.test", 1), ("mid.test", 2)):
        assert server.cmd(f"add {d} {p}") == "ok"
    assert server.routes() == ["alpha.test 1", "mid.test 2", "zeta.test 3"]


def test_add_overrides_previous_port(server):
    assert server.cmd("add example.com 5665") == "ok"
    assert server.cmd("add example.com 7000") == "ok"
    assert server.routes() == ["example.com 7000"]


def test_remove_replies_ok_and_route_is_gone(server):
    server.add("a.test", 1000)
    server.add("b.test", 2000)
    assert server.cmd("remove a.test") == "ok"
    assert server.routes() == ["b.test 2000"]


def test_remove_is_case_insensitive(server):
    server.add("a.test", 1000)
    assert server.cmd("remove A.TEST.") == "ok"
    assert server.routes() == []


def test_domain_is_stored_lower_case_without_trailing_dot(server):
    assert server.cmd("add WWW.Example.COM. 8080") == "ok"
    assert server.routes() == ["www.example.com 8080"]
    assert server.cmd("add www.example.com 8081") == "ok"      # same domain: override
    assert server.routes() == ["www.example.com 8081"]


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_trailing_newline_is_tolerated(server, ending):
    assert server.cmd(f"add nl.test 4000{ending}") == "ok"
    assert server.routes() == ["nl.test 4000"]


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_accepted(server, port):
    assert server.cmd(f"add edge.test {port}") == "ok"
    assert server.routes() == [f"edge.test {port}"]


def test_longest_valid_domain_accepted(server):
    label = "a" * 63
    name = ".".join([label, label, label, "b" * 61])      # 253 characters
    assert len(name) == 253
    assert server.cmd(f"add {name} 4242") == "ok"
    assert server.routes() == [f"{name} 4242"]


def test_hyphen_and_digits_in_labels_accepted(server):
    assert server.cmd("add my-app1.x-2.test 4000") == "ok"
    assert server.cmd("add 123.test 4001") == "ok"
    assert server.routes() == ["123.test 4001", "my-app1.x-2.test 4000"]


def test_reply_goes_to_sender_from_other_loopback_address(server):
    # 127.0.0.0/8 is loopback: a sender bound to 127.0.0.5 is accepted and answered.
    replies = udp_send(server.udp_port, "add five.test 5005", bind=("127.0.0.5", 0))
    assert replies == [b"ok"]
    assert server.routes() == ["five.test 5005"]


def test_ipv6_loopback_sender_is_accepted(server):
    try:
        r = udp_command(server.udp_port, "add six.test 6006", host="::1", family=socket.AF_INET6)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback on this machine: {e}")
    assert r == "ok", "a command from ::1 must be accepted (the command port must listen on IPv6 too)"
    assert server.routes() == ["six.test 6006"]


def test_many_routes_list_over_several_datagrams(server):
    # 400 routes of ~200 bytes: ~80 KB, more than one reply datagram.
    n = 400
    names = [f"h{i:04d}-{'x' * 57}.{'y' * 63}.{'z' * 63}.test" for i in range(n)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    for i, name in enumerate(names):
        s.sendto(f"add {name} {10000 + i}".encode(), ("127.0.0.1", server.udp_port))
        assert s.recvfrom(100)[0] == b"ok"
    s.close()
    replies = udp_send(server.udp_port, "list", timeout=5)
    assert len(replies) >= 2, "a list reply longer than one datagram is split"
    for d in replies[:-1]:
        assert d.endswith(b"\n"), "datagrams split at line boundaries"
    lines = parse_list(b"".join(replies).decode())
    assert lines == [f"{name} {10000 + i}" for i, name in enumerate(names)]


def test_shutdown_replies_ok_and_server_exits_cleanly(server):
    assert server.cmd("shutdown") == "ok"
    rc = server.wait_exit(15)
    assert rc == 0, f"exit status after shutdown: {rc}"
    assert udp_command(server.udp_port, "list", timeout=0.5) == ""


def test_commands_from_many_senders_all_answered(server):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    try:
        for i, s in enumerate(socks):
            s.settimeout(5)
            s.sendto(f"add burst{i}.test {2000 + i}".encode(), ("127.0.0.1", server.udp_port))
        for s in socks:
            assert s.recvfrom(100)[0] == b"ok"
    finally:
        for s in socks:
            s.close()
    assert sorted(server.routes()) == sorted(f"burst{i}.test {2000 + i}" for i in range(20))


def test_route_change_is_saved_before_reply(server):
    server.add("saved.test", 1234)
    # "ok" is sent after the change is durable: the file already has it.
    assert server.routes_file.read_text() == "saved.test 1234\n"


def test_remove_of_unknown_domain_is_error(server):
    server.add("a.test", 1000)
    r = server.cmd("remove nothere.test")
    assert r.startswith("error: no route for nothere.test"), r
    assert server.routes() == ["a.test 1000"]


def test_status_reports_one_route(server):
    server.add("a.test", 1000)
    assert server.cmd("status A.Test") == "a.test 1000"
    assert server.cmd("status b.test") == "error: no route for b.test"


def test_identical_add_is_ok(server):
    server.add("a.test", 1000)
    assert server.cmd("add a.test 1000") == "ok"
    assert server.routes() == ["a.test 1000"]
