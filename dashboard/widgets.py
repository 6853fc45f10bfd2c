"""The dashboard's two hand-drawn widgets (anywidget: a JavaScript module and traitlets, no
build step): the experiments table and the gallery of generated Pokémon. Python owns the state;
the browser draws it and reports clicks."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

import anywidget
import traitlets
from PIL import Image

STATIC = Path(__file__).parent / "static"


class ExperimentTable(anywidget.AnyWidget):
    """A virtualised table: `cells` holds the shown columns of every row, `order` the rows to
    show (filtered and sorted in Python), `marks` the highlighted cells ("row,column": kind)."""

    _esm = STATIC / "table.js"
    _css = STATIC / "table.css"
    header = traitlets.List(traitlets.Dict()).tag(sync=True)
    cells = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)
    row_info = traitlets.List(traitlets.Dict()).tag(sync=True)
    order = traitlets.List(traitlets.Int()).tag(sync=True)
    marks = traitlets.Dict().tag(sync=True)
    picked = traitlets.List(traitlets.Unicode()).tag(sync=True)
    colors = traitlets.Dict().tag(sync=True)
    sort = traitlets.Dict().tag(sync=True)
    height = traitlets.Int(420).tag(sync=True)
    empty_text = traitlets.Unicode("No experiments.").tag(sync=True)

    def download(self, name: str, data: str | bytes, mime: str) -> None:
        """Make the browser save `data` as the file `name` (bytes go as a binary buffer)."""
        if isinstance(data, bytes):
            self.send({"download": {"name": name, "mime": mime}}, [data])
        else:
            self.send({"download": {"name": name, "text": data, "mime": mime}})


def image_uri(path: str | Path, max_side: int | None = None) -> str:
    """A PNG file as a data: URI, shrunk to `max_side` pixels when larger."""
    with Image.open(path) as image:
        if max_side and max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
        else:
            data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=4096)
def _thumbnail(file: str, stamp: tuple[int, int], side: int) -> str:
    return image_uri(file, side)


def thumbnail(file: str | Path, side: int) -> str:
    """An image file as a data: URI at most `side` pixels, made once per file version."""
    stat = Path(file).stat()
    return _thumbnail(str(file), (stat.st_mtime_ns, stat.st_size), side)


class Gallery(anywidget.AnyWidget):
    """Images in a grid: `columns` [{key, label, detail, color}], `rows` [{label, cells:
    [{key, src, title} or {missing: reason, text: what the cell says}]}]. A click asks Python
    for the full-size image (`files[key]`, or `images[key]` held in memory) and shows it
    enlarged."""

    _esm = STATIC / "gallery.js"
    _css = STATIC / "gallery.css"
    columns = traitlets.List(traitlets.Dict()).tag(sync=True)
    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    empty_text = traitlets.Unicode("Pick experiments in the table to see their Pokémon.").tag(
        sync=True
    )
    thumb_size = traitlets.Int(128).tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.files: dict[str, Path] = {}
        self.images: dict[str, bytes] = {}  # PNGs held in memory (the playground's), by key
        self.on_msg(self._on_message)

    def _on_message(self, _widget, content, _buffers) -> None:
        key = content.get("enlarge") if isinstance(content, dict) else None
        if key in self.files:
            self.send({"enlarged": {"key": key, "src": image_uri(self.files[key], 1024)}})
        elif key in self.images:
            data = base64.b64encode(self.images[key]).decode("ascii")
            self.send({"enlarged": {"key": key, "src": "data:image/png;base64," + data}})
