"""The dashboard's server against the attacks of issue 11, item 2, on a real Voila server started
as `make dashboard` starts it (`python -m dashboard.serve`): a DNS-rebinding page (a request whose
Host header names another site), a request without the token, the token in the process list,
and a page opened many times over (a kernel each)."""

from __future__ import annotations

import base64
import http.client
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.harness.browser import CHROMIUM_ARGS, Served, chromium_path, voila_server
from dashboard.serve import is_loopback, main, voila_config, without_token

pytestmark = pytest.mark.timeout(300)
EVIL = "evil.example"


def get(
    served: Served, path: str, host: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one request to the server, redirects not followed; `host` is
    the Host header that a browser sends for the name in its address bar."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=180)
    try:
        connection.request(
            "GET", path, headers={"Host": host or f"127.0.0.1:{served.port}", **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def websocket_handshake(served: Served, kernel_id: str, host: str) -> int:
    """The status of a websocket handshake to the kernel's channels as a page of `host` makes
    it (its Origin is its own address): 101 when the server lets it drive the kernel."""
    key = base64.b64encode(os.urandom(16)).decode()
    status, _, _ = get(
        served,
        f"/api/kernels/{kernel_id}/channels",
        host=host,
        headers={
            "Origin": f"http://{host}",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key,
        },
    )
    return status


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def is_page(body: str) -> bool:
    """Whether `body` is the dashboard page, its notebook run (the Dashboard widget's view)."""
    return "<title>dashboard</title>" in body and "widget-view+json" in body


def process_tree(pid: int) -> list[int]:
    """`pid` and every live process below it (Voila runs in the server's process, kernels are
    its children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue  # it ended
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def read_proc(pid: int, name: str) -> str:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kernels(served: Served) -> list[int]:
    """The kernel processes of the server."""
    return [
        pid for pid in process_tree(served.pid)[1:] if "ipykernel" in read_proc(pid, "cmdline")
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    """The server as `make dashboard` runs it: its own random token, a preheated kernel. Its
    repository is no DVC repository (the page says so): light enough for many pages."""
    folder = tmp_path_factory.mktemp("serve")
    with voila_server(folder, folder / "voila.log") as served:
        yield served


def test_the_printed_address_has_a_random_token_and_opens_the_page(served: Served):
    assert re.fullmatch(rf"http://127\.0\.0\.1:{served.port}/\?token=[0-9a-f]{{48}}", served.url)
    status, _, body = get(served, path_of(served.url))
    assert status == 200 and is_page(body)
    assert served.token in served.log.read_text()  # printed once, for the person who started it


def test_a_dns_rebinding_page_is_refused_by_the_host_check(served: Served):
    """A site that points its name at 127.0.0.1 makes the browser send Host: evil.example:PORT
    (and its own Origin), so the server refuses such a request even with the token."""
    port = served.port
    status, _, body = get(served, path_of(served.url))
    assert status == 200
    kernel_id = re.search(r'kernelId": "([0-9a-f-]+)"', body).group(1)
    for path in (path_of(served.url), "/", "/api/kernels"):
        assert get(served, path, host=f"{EVIL}:{port}")[0] == 403, path
    assert websocket_handshake(served, kernel_id, f"{EVIL}:{port}") == 403
    assert "Blocking request with non-local 'Host' evil.example" in served.log.read_text()
    # names of this machine pass: the check refuses only other sites
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert get(served, "/voila/static/voila.js", host=host)[0] == 200


@pytest.mark.browser
def test_chromium_on_a_rebound_name_or_without_the_token_gets_no_page(served: Served):
    """The attack as a browser makes it: Chromium resolves evil.example to 127.0.0.1 (what a
    DNS-rebinding site arranges) and opens the dashboard's address under that name, token and
    all; then the real address without the token (that no kernel starts for it is
    test_a_request_without_the_token_is_refused_and_starts_no_kernel's, on a server of its own:
    this one's preheated pool refills after the earlier tests)."""
    from playwright.sync_api import sync_playwright

    rebound = served.url.replace("127.0.0.1", EVIL)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path(),
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"],
        )
        try:
            page = chromium.new_page()
            response = page.goto(rebound)
            assert response is not None and response.status == 403
            assert "widget-view+json" not in page.content()
            response = page.goto(served.url.split("?")[0])  # the right name, no token
            assert response is not None and "/login" in page.url
            assert "widget-view+json" not in page.content()
            response = page.goto(served.url)  # the printed address: the page itself
            assert response is not None and response.status == 200
            page.wait_for_selector(".jupyter-widgets", timeout=60_000)
        finally:
            chromium.close()


def test_a_request_without_the_token_is_refused_and_starts_no_kernel(tmp_path: Path):
    with voila_server(tmp_path, tmp_path / "voila.log", pool_size=0) as served:
        assert kernels(served) == []
        for path in ("/", "/?token=wrong", f"/?token={served.token[:-1]}", "/api/kernels"):
            status, headers, body = get(served, path)
            assert status in (302, 403) and not is_page(body), path
            if status == 302:
                assert headers["Location"].startswith("/login?next="), path  # Jupyter's login
        assert (
            websocket_handshake(
                served, "0" * 8 + "-0000-0000-0000-" + "0" * 12, f"127.0.0.1:{served.port}"
            )
            == 403
        )
        time.sleep(1)
        assert kernels(served) == []
        assert "Kernel started" not in served.log.read_text()
        status, _, body = get(served, path_of(served.url))  # with the token it does start one
        assert status == 200 and is_page(body) and len(kernels(served)) == 1


def test_ps_shows_no_token_neither_of_the_server_nor_of_its_kernels(tmp_path: Path):
    """The token given as `TOKEN=... make dashboard` gives it (in $DASHBOARD_TOKEN): every
    process's command line, which any user of the machine can read, is free of it, and so is
    the environment of the kernels (the notebook's code and every dvc command it runs)."""
    token = "Make-Given-Token-4f1c9e"
    with voila_server(tmp_path, tmp_path / "voila.log", token=token) as served:
        assert served.token == token and served.url.endswith(f"/?token={token}")
        status, _, body = get(served, path_of(served.url))
        assert status == 200 and is_page(body)
        assert kernels(served)  # the page's kernel, and the preheated next one
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "dashboard.serve" in ps and token not in ps
        for pid in process_tree(served.pid):
            assert token not in read_proc(pid, "cmdline")
        for pid in kernels(served):
            assert token not in read_proc(pid, "environ")
            assert "DASHBOARD_REPO=" in read_proc(pid, "environ")  # the kernel finds the repo
        assert get(served, "/?token=Make-Given")[0] == 302  # a part of it is no token


def test_the_random_token_is_in_no_process_at_all(served: Served):
    get(served, path_of(served.url))
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert served.token not in ps
    for pid in process_tree(served.pid):
        assert served.token not in read_proc(pid, "cmdline")
        assert served.token not in read_proc(pid, "environ")


def test_no_token_keeps_the_host_check(tmp_path: Path):
    """`--no-token` (`make dashboard TOKEN=none`): the old page without a token, but a
    DNS-rebinding page is still refused."""
    with voila_server(tmp_path, tmp_path / "voila.log", no_token=True) as served:
        assert served.token is None and served.url == f"http://127.0.0.1:{served.port}/"
        assert get(served, "/", host=f"{EVIL}:{served.port}")[0] == 403
        status, _, body = get(served, "/")
        assert status == 200 and is_page(body)


def test_no_token_is_refused_beyond_loopback(capsys):
    for argv in (
        ["--no-token", "--host", "0.0.0.0"],
        ["--no-token", "--token", "x"],
        ["--token", ""],
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert "token" in capsys.readouterr().err


def test_the_host_check_is_on_for_loopback_addresses_only():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "", "192.168.1.5", "evil.example"]))
    assert voila_config(8866).Voila.tornado_settings["allow_remote_access"] is False
    assert "tornado_settings" not in voila_config(8866, host="0.0.0.0").Voila


def test_a_kernel_gets_the_address_of_its_page_without_the_token():
    env = {
        "QUERY_STRING": "token=abc&theme=dark",
        "PATH": "/bin",
        "VOILA_REQUEST_URL": "http://127.0.0.1:8866/?token=abc&theme=dark",
    }
    assert without_token(env) == {
        "QUERY_STRING": "theme=dark",
        "PATH": "/bin",
        "VOILA_REQUEST_URL": "http://127.0.0.1:8866/?theme=dark",
    }


def test_all_interfaces_serve_another_machine_that_has_the_token(tmp_path: Path):
    """--host 0.0.0.0 is for opening the page from another machine, by this machine's name:
    the token, not the Host check, then keeps others out."""
    with voila_server(tmp_path, tmp_path / "voila.log", host="0.0.0.0") as served:
        assert f"from another machine: http://{os.uname().nodename}:{served.port}/?token=" in (
            served.log.read_text()
        )
        remote = f"dashboard-host.lan:{served.port}"
        assert get(served, "/", host=remote)[0] == 302
        status, _, body = get(served, path_of(served.url), host=remote)
        assert status == 200 and is_page(body)


def test_pages_beyond_the_cap_are_refused_and_the_kernels_stay_under_it(tmp_path: Path):
    """12 pages at once, a kernel each, on a server that allows 4 kernels (its preheated one
    among them): no more than 4 ever run, the others are refused with a page that says why;
    once the idle ones are shut down, the page opens again."""
    cap, requests = 4, 12
    with voila_server(
        tmp_path, tmp_path / "voila.log", max_kernels=cap, cull_seconds=20
    ) as served:
        most, done = 0, threading.Event()

        def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, len(kernels(served)))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(requests) as pool:
                answers = list(
                    pool.map(lambda _: get(served, path_of(served.url)), range(requests))
                )
        finally:
            done.set()
            watcher.join()
        statuses = [status for status, _, _ in answers]
        assert most <= cap and len(kernels(served)) <= cap
        assert set(statuses) == {200, 503} and statuses.count(503) >= requests - cap
        for status, _, body in answers:
            if status == 503:
                assert "Too many kernels" in body and "--max-kernels" in body
            else:
                assert is_page(body)
        assert "Refused a page" in served.log.read_text()
        # the idle kernels are culled 20 s after their page; then a page opens again (a refused
        # one starts no kernel, so asking every few seconds is harmless)
        deadline = time.monotonic() + 150
        while (answer := get(served, path_of(served.url)))[0] == 503:
            assert time.monotonic() < deadline, "no page opened once the idle kernels were culled"
            time.sleep(3)
        assert answer[0] == 200 and is_page(answer[2])
        assert len(kernels(served)) <= cap
