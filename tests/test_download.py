"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import json

import pandas as pd
from PIL import Image

from stages.download import FetchSettings, fetch_all
from stages.images import BadImageError, decode_image
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
