"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import json
import struct
import threading
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import requests
from PIL import Image, ImageFile

from stages.data.download import CHUNK_BYTES, FetchSettings, fetch_all
from stages.data.images import BadImageError, decode_image
from tests import imagemaker as make
from tests.conftest import Reply

FAST = FetchSettings(timeout=0.5, retries=2, backoff=0.01, concurrency=4)


def validate(data: bytes) -> None:
    decode_image(data)


def test_retries_5xx_and_timeouts_never_404_and_reports_each_reason(flaky_server, tmp_path):
    ok = flaky_server.add("/ok.png", Reply(body=make.png()))
    flaky = flaky_server.add("/flaky.png", Reply(500), Reply(503), Reply(body=make.png()))
    down = flaky_server.add("/down.png", Reply(500))
    slow = flaky_server.add("/slow.png", Reply(body=make.png(), delay=2.0))
    corrupt = flaky_server.add("/corrupt.png", Reply(body=b"\x89PNG\r\n\x1a\n garbage"))
    missing = flaky_server.url + "/missing.png"
    items = [(1, ok), (2, flaky), (3, down), (4, slow), (5, corrupt), (6, missing)]

    results = {r.key: r for r in fetch_all(items, tmp_path, FAST, validate)}

    assert results[1].error is None and results[1].path.exists()
    assert results[2].error is None  # two 5xx, then success
    assert flaky_server.hits["/flaky.png"] == 3
    assert results[3].error == "HTTP 500 Internal Server Error after 3 attempts"
    assert flaky_server.hits["/down.png"] == 3
    assert results[4].error.startswith("timed out (0.5 s) after 3 attempts")
    assert flaky_server.hits["/slow.png"] == 3
    assert results[5].error.startswith("bad content: not a decodable image")
    assert flaky_server.hits["/corrupt.png"] == 1  # bad content is not fetched again
    assert results[6].error == "HTTP 404 Not Found"
    assert flaky_server.hits["/missing.png"] == 1  # a 404 is never retried
    assert [r.key for r in fetch_all(items[:2], tmp_path, FAST, validate)] == [1, 2]


def test_a_second_run_resumes_from_the_cache(flaky_server, tmp_path):
    urls = [(i, flaky_server.add(f"/{i}.png", Reply(body=make.png()))) for i in range(5)]
    first = fetch_all(urls, tmp_path, FAST, validate)
    assert not any(r.cached for r in first)
    second = fetch_all(urls, tmp_path, FAST, validate)
    assert all(r.cached and r.error is None for r in second)
    assert all(flaky_server.hits[f"/{i}.png"] == 1 for i in range(5))


def test_a_corrupt_leftover_in_the_cache_is_fetched_again(flaky_server, tmp_path):
    url = flaky_server.add("/a.png", Reply(body=make.png()))
    (result,) = fetch_all([(1, url)], tmp_path, FAST, validate)
    result.path.write_bytes(b"half a file")  # as a killed run might leave it
    (again,) = fetch_all([(1, url)], tmp_path, FAST, validate)
    assert again.error is None and not again.cached and flaky_server.hits["/a.png"] == 2
    decode_image(again.path.read_bytes())


def stats_csv() -> bytes:
    """A real-looking stats table: Kaggle's columns, megas, awkward names, blank cells."""
    rows = [
        "#,Name,Type 1,Type 2,Total,Generation",
        "1,Bulbasaur,Grass,Poison,318,1",
        "6,Charizard,Fire,Flying,534,1",
        "6,CharizardMega Charizard X,Fire,Dragon,634,6",
        "7,Squirtle,Water, ,314,1",
        "29,Nidoran♀,Poison, ,275,1",
        "83,Farfetch'd,Normal,Flying,352,1",
        "122,Mr. Mime,Psychic,Fairy,460,1",
        "131,Lapras,Water,Ice,535,1",
        "669,Flabébé,Fairy, ,303,6",
        "772,Type: Null,Normal, ,534,7",
        "999,Missingno,Water, ,0,1",
    ]
    return ("\n".join(rows) + "\n").encode("utf-8")


def serve_pokemon(server) -> None:
    """Sprites by id in every awkward format; Missingno's is a 404, Flabébé's is corrupt."""
    server.add("/stats.csv", Reply(body=stats_csv(), content_type="text/csv"))
    sprites = {
        1: make.palette_with_transparency(),
        6: make.animated_gif(),
        7: make.webp_rgba(),
        29: make.la_image(),
        83: make.jpeg(),  # JPEG bytes served as .png
        122: make.png((60, 30)),
        131: make.png(),
        669: b"GIF89a broken",
    }
    for pokemon_id, body in sprites.items():
        server.add(f"/sprites/{pokemon_id:03d}.png", Reply(body=body))
    server.add("/sprites/772.png", Reply(500), Reply(body=make.png()))  # flaky


def url_params(server, max_failures: int) -> dict:
    return {
        "source": "url",
        "stats_url": server.url + "/stats.csv",
        "images_url": server.url + "/sprites/{id:03d}.png",
        "max_failures": max_failures,
        "timeout": 2,
        "retries": 2,
        "backoff": 0.01,
    }


def test_url_source_end_to_end_every_image_processed_or_reported(flaky_server, workdir):
    serve_pokemon(flaky_server)
    workdir.write_params(data=url_params(flaky_server, max_failures=2), resize={"size": 32})
    workdir.run("download_pokemon_stats")
    stats = pd.read_csv(workdir.path / "data/processed/pokemon.csv")
    assert len(stats) == 10 and stats["id"].is_unique
    assert (workdir.path / "data/external/pokemon_stats.csv").read_bytes() == stats_csv()

    workdir.run("scrape_pokemon_images")
    report = json.loads((workdir.path / "data/external/scrape_report.json").read_text())
    reasons = {f["id"]: f["reason"] for f in report["failures"]}
    assert reasons.keys() == {669, 999}
    assert reasons[999] == "HTTP 404 Not Found"
    assert reasons[669].startswith("bad content: not a decodable image")
    raw = {p.name for p in (workdir.path / "data/external/images").iterdir()}
    assert {"0083.jpg", "0007.webp", "0006.gif", "0772.png"} <= raw  # named by their bytes

    workdir.run("resize_pokemon_images")
    folder = workdir.path / "data/processed/images"
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    processed = {m["id"] for m in metadata}
    assert processed | reasons.keys() == set(stats["id"])  # every Pokémon: processed or reported
    assert not processed & reasons.keys()
    names = {m["name"] for m in metadata}
    assert {"Nidoran♀", "Farfetch'd", "Mr. Mime", "Type: Null"} <= names
    transparent = {"Bulbasaur", "Squirtle", "Nidoran♀", "Mr. Mime", "Lapras", "Type: Null"}
    for m in metadata:
        image = Image.open(folder / m["file_name"])
        assert image.size == (32, 32) and image.mode == "RGB"
        if m["name"] in transparent:  # transparency became the background, never black
            assert image.getpixel((0, 0)) == (255, 255, 255), m["name"]
    lora = (workdir.path / "data/processed/lora_dataset/metadata.jsonl").read_text().splitlines()
    assert {json.loads(line)["name"] for line in lora} == {"Squirtle", "Lapras"}


def test_too_many_failures_fail_the_stage_and_say_so(flaky_server, workdir):
    serve_pokemon(flaky_server)
    workdir.write_params(data=url_params(flaky_server, max_failures=1))
    workdir.run("download_pokemon_stats")
    result = workdir.run("scrape_pokemon_images", check=False)
    assert result.returncode == 2
    assert "2 of 10 images failed, more than data.max_failures (1)" in result.stderr
    assert "scrape_report.json" in result.stderr and "Traceback" not in result.stderr
    assert not (workdir.path / "data/external/images").exists()  # nothing half-written
    report = json.loads((workdir.path / "data/external/scrape_report.json").read_text())
    assert report["failed"] == 2
    # raising the limit finishes the job from the download cache: nothing is fetched again
    hits = sum(flaky_server.hits.values())
    workdir.write_params(data=url_params(flaky_server, max_failures=2))
    workdir.run("scrape_pokemon_images")
    new = sum(flaky_server.hits.values()) - hits
    assert new == 2  # only the two failures are asked again (a 404 and a corrupt file)


def test_unreachable_stats_url_is_a_clear_error(flaky_server, workdir):
    workdir.write_params(
        data={**url_params(flaky_server, 0), "stats_url": flaky_server.url + "/nope.csv"}
    )
    result = workdir.run("download_pokemon_stats", check=False)
    assert result.returncode == 2
    assert (
        f"data.stats_url {flaky_server.url}/nope.csv: download failed: HTTP 404" in result.stderr
    )


def test_stats_csv_without_a_type_column_is_a_clear_error(tmp_path, workdir):
    csv = tmp_path / "odd.csv"
    csv.write_text("Number,Species,Colour\n1,Bulbasaur,green\n")
    workdir.write_params(
        data={"source": "url", "stats_url": str(csv), "images_url": str(tmp_path)}
    )
    result = workdir.run("download_pokemon_stats", check=False)
    assert result.returncode == 2
    assert "has no column for type1" in result.stderr and "Colour" in result.stderr


def test_local_folder_source_matches_ids_and_names(tmp_path, workdir):
    csv = tmp_path / "stats.csv"
    csv.write_text("ID,Name,Type1\n25,Pikachu,Electric\n122,Mr. Mime,Psychic\n7,Squirtle,Water\n")
    folder = tmp_path / "sprites"
    folder.mkdir()
    (folder / "025.png").write_bytes(make.png())
    (folder / "mr-mime.jpg").write_bytes(make.jpeg())
    (folder / "Squirtle.PNG").write_bytes(b"broken")
    workdir.write_params(data={"source": "url", "stats_url": str(csv), "images_url": str(folder)})
    workdir.run("download_pokemon_stats")
    workdir.run("scrape_pokemon_images")
    raw = sorted(p.name for p in (workdir.path / "data/external/images").iterdir())
    assert raw == ["0025.png", "0122.jpg"]
    report = json.loads((workdir.path / "data/external/scrape_report.json").read_text())
    assert [(f["id"], f["reason"].split(" (")[0]) for f in report["failures"]] == [
        (7, "not a decodable image")
    ]


def test_bad_image_error_is_a_value_error():
    assert issubclass(BadImageError, ValueError)


# --- Limits: a hostile server cannot hang a download or fill the memory -----------------------


@dataclass
class Body:
    """A body of `size` zero bytes, written `chunk` bytes at a time, `interval` s apart."""

    size: int
    chunk: int = 64 * 1024
    interval: float = 0.0
    declare_length: bool = True  # send Content-Length; else the end is the connection's close


@dataclass
class RogueServer:
    url: str
    routes: dict[str, Body]
    sent: Counter  # body bytes that reached the socket, per path


@pytest.fixture
def rogue_server() -> Iterator[RogueServer]:
    """An HTTP/1.0 server on 127.0.0.1 that streams long or slow bodies, never holding them."""
    routes: dict[str, Body] = {}
    sent: Counter = Counter()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes[self.path]
            self.send_response(200)
            if body.declare_length:
                self.send_header("Content-Length", str(body.size))
            self.end_headers()
            piece = bytes(body.chunk)
            left = body.size
            try:
                while left > 0:
                    self.wfile.write(piece[:left])
                    self.wfile.flush()
                    sent[self.path] += min(left, body.chunk)
                    left -= body.chunk
                    time.sleep(body.interval)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what the limits are for

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield RogueServer(f"http://127.0.0.1:{server.server_address[1]}", routes, sent)
    server.shutdown()
    server.server_close()


def test_a_server_that_drips_a_byte_a_second_is_cut_at_the_deadline(
    rogue_server, flaky_server, tmp_path
):
    # 40 bytes, one every 0.5 s: every read gets a byte well within the 5 s time-out, so only an
    # overall deadline stops it (the whole body would take 20 s)
    rogue_server.routes["/drip.png"] = Body(40, chunk=1, interval=0.5)
    ok = flaky_server.add("/ok.png", Reply(body=make.png()))
    settings = FetchSettings(timeout=5, retries=0, backoff=0.01, concurrency=2, deadline=1.5)
    started = time.monotonic()
    results = fetch_all(
        [(1, rogue_server.url + "/drip.png"), (2, ok)], tmp_path, settings, validate
    )
    elapsed = time.monotonic() - started
    drip, fine = results
    assert drip.error.startswith("deadline: not complete within data.deadline (1.5 s)")
    assert "raise data.deadline in params.yaml" in drip.error and drip.path is None
    assert fine.error is None and fine.path.exists()
    assert elapsed < 1.5 + 3  # cut at the deadline, not after the 20 s the drip takes
    assert rogue_server.sent["/drip.png"] < 40


def zero_count(monkeypatch) -> Counter:
    """Count the body bytes that requests hands over (Response.content reads through this too)."""
    counted: Counter = Counter()
    real = requests.models.Response.iter_content

    def counting(self, *args, **kwargs):
        for chunk in real(self, *args, **kwargs):
            counted[self.url] += len(chunk)
            yield chunk

    monkeypatch.setattr(requests.models.Response, "iter_content", counting)
    return counted


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_a_50_mb_body_is_refused_at_the_cap_without_being_read(
    rogue_server, tmp_path, monkeypatch, declare_length
):
    rogue_server.routes["/huge.png"] = Body(50_000_000, declare_length=declare_length)
    url = rogue_server.url + "/huge.png"
    read = zero_count(monkeypatch)
    settings = FetchSettings(timeout=5, retries=0, concurrency=1, max_bytes=2_000_000)
    tracemalloc.start()
    try:
        (result,) = fetch_all([(1, url)], tmp_path, settings, validate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.path is None and not list(tmp_path.iterdir())
    assert "over data.max_bytes (2.0 MB): refused; raise data.max_bytes" in result.error
    if declare_length:
        assert result.error.startswith("50.0 MB (Content-Length), over data.max_bytes")
        assert read[url] == 0  # refused from the header: not a byte of the body read
    else:
        assert result.error.startswith("more than 2.0 MB, over data.max_bytes")
        assert 2_000_000 < read[url] <= 2_000_000 + CHUNK_BYTES  # the cap plus one chunk
    assert peak < 8_000_000  # bytes held in memory at once: a few times the cap, not 50 MB
    assert rogue_server.sent["/huge.png"] < 30_000_000  # the rest never left the server


def bomb_png(side: int = 30_000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of side x side black pixels, about 110 KB
    that decode to 900 megapixels (900 MB in Pillow); built row by row, never held whole."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = bomb_png()
    # it is real: the header claims 30,000 x 30,000 and the data inflates to every row of it
    assert len(data) < 200_000 and struct.unpack(">II", data[16:24]) == (30_000, 30_000)
    inflater, idat = zlib.decompressobj(), data[8 + 25 + 8 : -12 - 4]
    inflated = 0
    for start in range(0, len(idat), 4096):
        inflated += len(inflater.decompress(idat[start : start + 4096]))
    assert inflated == 30_000 * (1 + 30_000 // 8)
    return data


def test_a_decompression_bomb_is_refused_before_decoding(bomb, monkeypatch):
    def no_decoding(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(BadImageError) as refused:
        decode_image(bomb, max_pixels=40_000_000)
    assert str(refused.value) == (
        "900 megapixels, over data.max_pixels (40 megapixels): refused before decoding, as a "
        "possible decompression bomb; raise data.max_pixels in params.yaml if it is genuine"
    )
    # under Pillow's own limit but over the cap: the size read from the header is enough
    with pytest.raises(BadImageError) as refused:
        decode_image(make.png((1100, 1000)), max_pixels=1_000_000)
    assert str(refused.value).startswith(
        "1100 x 1000 pixels (1.1 megapixels), over data.max_pixels (1 megapixels): refused"
    )


def test_a_bomb_and_an_oversized_image_are_two_failures_and_the_rest_succeeds(
    bomb, flaky_server, workdir
):
    serve_pokemon(flaky_server)
    flaky_server.add("/sprites/122.png", Reply(body=bomb))  # Mr. Mime's sprite is a bomb
    flaky_server.add("/sprites/131.png", Reply(body=make.png((1100, 1000))))  # 1.1 megapixels
    params = {**url_params(flaky_server, max_failures=4), "max_pixels": 1_000_000}
    workdir.write_params(data=params)
    workdir.run("download_pokemon_stats")
    result = workdir.run("scrape_pokemon_images", check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir.path / "data/external/scrape_report.json").read_text())
    reasons = {f["id"]: f["reason"] for f in report["failures"]}
    assert reasons.keys() == {122, 131, 669, 999} and report["images"] == 6
    assert reasons[122].startswith("bad content: 900 megapixels, over data.max_pixels (1 megap")
    assert reasons[131].startswith("bad content: 1.1 megapixels, over data.max_pixels")
    assert "refused before decoding" in reasons[122] and "raise data.max_pixels" in reasons[131]
    raw = sorted(p.name for p in (workdir.path / "data/external/images").iterdir())
    assert raw == ["0001.png", "0006.gif", "0007.webp", "0029.png", "0083.jpg", "0772.png"]


def test_a_slow_or_huge_stats_csv_stops_the_stage_with_the_reason(rogue_server, workdir):
    rogue_server.routes["/drip.csv"] = Body(100, chunk=1, interval=0.5)
    rogue_server.routes["/huge.csv"] = Body(50_000_000)
    for name, expected in [
        ("/drip.csv", "download failed: deadline: not complete within data.deadline (1.5 s)"),
        ("/huge.csv", "download failed: 50.0 MB (Content-Length), over data.max_bytes (1.0 MB)"),
    ]:
        params = {
            "source": "url",
            "stats_url": rogue_server.url + name,
            "retries": 0,
            "images_url": rogue_server.url + "/{id}.png",
            "deadline": 1.5,
            "max_bytes": 1_000_000,
        }
        workdir.write_params(data=params)
        result = workdir.run("download_pokemon_stats", check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"data.stats_url {rogue_server.url}{name}: {expected}" in result.stderr
    assert rogue_server.sent["/drip.csv"] < 100 and rogue_server.sent["/huge.csv"] < 30_000_000


def test_an_over_long_stats_csv_is_refused(tmp_path, workdir):
    csv = tmp_path / "long.csv"
    rows = [f"{i},Mon{i},Water" for i in range(1, 52)]
    csv.write_text("ID,Name,Type1\n" + "\n".join(rows) + "\n")
    workdir.write_params(
        data={"source": "url", "stats_url": str(csv), "images_url": str(tmp_path), "max_rows": 50}
    )
    result = workdir.run("download_pokemon_stats", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"data.stats_url {csv}: more than data.max_rows (50) rows" in result.stderr
    assert "Raise data.max_rows in params.yaml" in result.stderr
    assert not (workdir.path / "data/processed/pokemon.csv").exists()
    csv.write_text("ID,Name,Type1\n" + "\n".join(rows[:50]) + "\n")  # 50 rows: allowed
    workdir.run("download_pokemon_stats")
    assert len(pd.read_csv(workdir.path / "data/processed/pokemon.csv")) == 50
