"""test_bench_fleet_figure.py — bench/run.sh case (i)'s three-node figure:
core_server, three release-mode nodes on a real 3-member etcd (etcd.py,
fleet.py), `add` of a new name on all three at once -> the first verified
HTTPS 200 from every node (the time until the first node serves and until
the last). Pebble (validation sleeps off, its 5 % badNonce rejection on)
validates through fleet.py's router, pointed at a node other than the one
that orders: once one node logs that it is ordering, the router targets the
next node (before the order's challenge is posted in nearly every round;
the router is set to node 1 beforehand, so validation lands on a node
other than node 0 in any case).

Not part of the normal `make integration` (test_store_etcd.py covers the
behaviour): it runs only with CORE_BENCH_FIGURES=1, which bench/run.sh
sets."""

import os
import threading
import time

import pytest

from pebble import pebble_ca  # noqa: F401  (a fixture)
from test_release_acme import unique

if os.environ.get("CORE_BENCH_FIGURES") != "1":
    pytest.skip("bench figure: run by bench/run.sh case (i) (CORE_BENCH_FIGURES=1)",
                allow_module_level=True)
if not os.path.exists("/usr/bin/etcd"):
    pytest.skip("/usr/bin/etcd is missing: run tests/install-deps.sh (Debian's etcd-server)",
                allow_module_level=True)

from etcd import etcd_cluster  # noqa: E402,F401  (a fixture)
from fleet import fleet  # noqa: E402,F401  (a fixture)


def test_fleet_add_on_three_nodes_to_https_on_every_node(etcd_cluster, fleet):
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd)
    nodes = f.nodes_up(3)
    name = unique("fleetfig")
    f.router.target(nodes[1])
    stop = threading.Event()
    picked = {}

    def steer():   # validation at a node other than the orderer
        while not stop.is_set():
            for i, n in enumerate(nodes):
                if n.orders(name):
                    other = nodes[(i + 1) % 3]
                    f.router.target(other)
                    picked["orderer"], picked["validator"] = n, other
                    return
            time.sleep(0.005)
    th = threading.Thread(target=steer, daemon=True)
    th.start()
    served = {}

    def wait(n):
        n.wait_https(name, timeout=60)
        served[n.name] = time.monotonic()
    t0 = time.monotonic()
    f.add_all(name)
    ws = [threading.Thread(target=wait, args=(n,)) for n in nodes]
    for w in ws:
        w.start()
    for w in ws:
        w.join(70)
    stop.set()
    th.join(5)
    assert len(served) == 3, f"served: {sorted(served)}\n" + f.logs()
    first = (min(served.values()) - t0) * 1000
    last = (max(served.values()) - t0) * 1000
    assert len(f.orders(name)) == 1, f.logs()
    validated = [k for k in ("http", "tls") if f.router.count(kind=k, mode="target")]
    orderer = picked.get("orderer")
    vnodes = sorted({n for _, m, n in f.router.seen if m == "target"})
    print(f"\nFIGURE fleet add on 3 nodes -> first node HTTPS 200: {first:.0f} ms")
    print(f"FIGURE fleet add on 3 nodes -> all 3 nodes HTTPS 200: {last:.0f} ms")
    print(f"FLEET orderer {orderer.name if orderer else '?'}; validation connections "
          f"({','.join(validated)}) to {','.join(vnodes)}")
