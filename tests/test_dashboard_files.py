"""The dashboard never reads a file outside its repository: links in the workspace that leave it,
crafted plot paths (`..`, absolute) in `dvc plots diff` and in a queue task's folder; and the
store's plots may be read by the watcher while a read adds some. Attacks on real git + DVC
repositories of the quick stand-in pipeline (bench/harness/quick_repo.py)."""

from __future__ import annotations

import base64
import shutil
import threading
from pathlib import Path

from PIL import Image

from bench.harness.quick_repo import make_quick_repo, run
from dashboard import store as store_module
from dashboard.app import Dashboard, digest
from dashboard.store import WORKSPACE, ExperimentStore, Plots

IMAGE = "outputs/generated/lora/a-pokemon/seed-0.png"
FOLDER = "outputs/generated/base/a-pkmnlora-pokemon"
CURVE = "outputs/train_lora/plots/metrics/loss.tsv"


def secret_png(path: Path) -> Path:
    """A small PNG of one odd colour at `path`, standing for a private picture."""
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    return path


def link(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


def fake_repo(path: Path) -> Path:
    """A folder that passes the store's check (.git and .dvc), for reads that dvc never does."""
    (path / ".dvc").mkdir(parents=True)
    (path / ".git").mkdir()
    return path


def test_a_workspace_link_to_a_private_file_is_not_shown_and_the_page_says_why(tmp_path: Path):
    repo = make_quick_repo(tmp_path / "repo")
    secret = secret_png(tmp_path / "private.png")
    link(repo / IMAGE, secret)  # e.g. checked out from a teammate's commit
    private = tmp_path / "pictures"
    private.mkdir()
    for seed in range(6):
        shutil.copy(secret, private / f"seed-{seed}.png")
    link(repo / FOLDER, private)  # a folder that links out
    (tmp_path / "secret.tsv").write_text("step\tloss\n0\t12345\n")
    link(repo / CURVE, tmp_path / "secret.tsv")

    store = ExperimentStore(repo)
    plots = store.plots([WORKSPACE])
    images = plots.images
    shown = set(zip(images["kind"], images["prompt"], images["seed"], strict=True))
    assert ("lora", "a pokemon", 0) not in shown
    assert ("lora", "a pokemon", 1) in shown  # the rest is shown
    assert not any(kind == "base" and prompt == "a pkmnlora pokemon" for kind, prompt, _ in shown)
    assert len(shown) == 24 - 1 - 6
    assert CURVE not in plots.curves or 12345 not in plots.curves[CURVE]["value"].tolist()
    reason = plots.missing[WORKSPACE]
    assert IMAGE in reason and "outside the repository" in reason
    # DVC's copy of the private file is not left in the plots folder either
    copies = [f.read_bytes() for f in store._out.rglob("*") if f.is_file()]
    assert copies and secret.read_bytes() not in copies

    app = Dashboard(repo, watch=False)  # no experiments: the workspace is picked
    assert app.state.picked == [WORKSPACE]
    cells = [cell for row in app.panels.gallery.gallery.rows for cell in row["cells"]]
    assert not any(
        base64.b64encode(secret.read_bytes()).decode() in c.get("src", "") for c in cells
    )
    row = next(r for r in app.panels.gallery.gallery.rows if r["label"] == "a pokemon · seed 0")
    lora = [c["label"] for c in app.panels.gallery.gallery.columns].index("workspace · LoRA")
    assert "outside the repository" in row["cells"][lora]["missing"]


def test_links_inside_the_repository_and_into_dvcs_cache_are_shown(tmp_path: Path):
    repo = make_quick_repo(tmp_path / "repo")
    run(repo, "dvc", "config", "cache.type", "symlink")
    run(repo, "dvc", "checkout", "-q", "--relink")
    assert (repo / IMAGE).is_symlink()  # into .dvc/cache
    sibling = repo / "outputs/generated/lora/a-pokemon/seed-1.png"
    link(sibling, Path("seed-2.png"))  # a relative link within the repository
    store = ExperimentStore(repo)
    plots = store.plots([WORKSPACE])
    assert len(plots.images) == 24 and WORKSPACE not in plots.missing

    # a cache folder of its own outside the repository (`dvc cache dir`), linked into
    shutil.copytree(repo / ".dvc" / "cache", tmp_path / "shared-cache")
    run(repo, "dvc", "cache", "dir", str(tmp_path / "shared-cache"))
    run(repo, "dvc", "checkout", "-q", "--relink")
    assert (repo / IMAGE).resolve().is_relative_to(tmp_path / "shared-cache")
    plots = ExperimentStore(repo).plots([WORKSPACE])
    assert len(plots.images) == 24 and WORKSPACE not in plots.missing


def test_crafted_plot_paths_in_dvc_plots_diff_are_refused(tmp_path: Path, monkeypatch):
    """A teammate's dvc.yaml may name any plot path; DVC reads the workspace's copy of it."""
    repo = fake_repo(tmp_path / "repo")
    secret = secret_png(tmp_path / "private.png")
    store = ExperimentStore(repo)
    crafted = {
        "../private/generated/lora/x/seed-0.png": "dotdot.png",
        f"{tmp_path}/generated/lora/x/seed-1.png": "absolute.png",
        "outputs/generated/lora/x/seed-2.png": "fine.png",
    }

    def plots_diff(path, revs, out, timeout):
        data = {}
        for plot, name in crafted.items():
            (out / name).write_bytes(secret.read_bytes())  # as DVC copies what it read
            entry = {"type": "image", "revisions": [WORKSPACE], "url": str(out / name)}
            data[plot] = [entry]
        data["../../secret.tsv"] = [
            {
                "type": "vega",
                "revisions": [WORKSPACE],
                "content": {"data": {"values": [{"step": "0", "loss": "7", "rev": WORKSPACE}]}},
            }
        ]
        return {"data": data}

    monkeypatch.setattr(store_module, "_plots_diff", plots_diff)
    plots = store.plots([WORKSPACE])
    assert plots.images["seed"].tolist() == [2]
    assert all(curve.empty for curve in plots.curves.values())
    assert "../private/generated/lora/x/seed-0.png" in plots.missing[WORKSPACE]
    left = sorted(f.name for f in store._out.rglob("*.png"))
    assert left == ["fine.png"]


def test_a_queue_tasks_curves_stay_inside_its_folder(tmp_path: Path):
    repo = fake_repo(tmp_path / "repo")
    root = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (root / CURVE).parent.mkdir(parents=True)
    (root / CURVE).write_text("step\tloss\n0\t0.5\n")
    (tmp_path / "secret.tsv").write_text("step\tloss\n0\t12345\n")
    (root / "outputs" / "link.tsv").symlink_to(tmp_path / "secret.tsv")
    (repo / "inner.tsv").write_text("step\tloss\n0\t1\n")
    store = ExperimentStore(repo)
    dotdot = "../" * len(root.relative_to(tmp_path).parts) + "secret.tsv"
    assert (root / dotdot).resolve() == (tmp_path / "secret.tsv").resolve()
    paths = [
        CURVE,
        dotdot,
        str(tmp_path / "secret.tsv"),
        "outputs/link.tsv",
        "../../../../inner.tsv",
    ]
    store._plots = {
        "read": Plots(curves={path: store_module.live_curve(root / CURVE, "x") for path in paths})
    }
    assert store.live_files(root) == {CURVE: root / CURVE}
    curves = store.live_plots("task", root).curves
    assert list(curves) == [CURVE] and curves[CURVE]["value"].tolist() == [0.5]
    # a task folder outside the repository, or a link to one, is not read at all
    outside = tmp_path / "elsewhere"
    shutil.copytree(root, outside, symlinks=True)
    assert store.live_files(outside) == {}
    (repo / ".dvc" / "tmp" / "exps" / "tmplink").symlink_to(outside)
    assert store.live_files(repo / ".dvc" / "tmp" / "exps" / "tmplink") == {}


def test_digest_reads_no_file_outside_the_repository(tmp_path: Path, monkeypatch):
    repo = fake_repo(tmp_path / "repo")
    store = ExperimentStore(repo)
    secret = secret_png(tmp_path / "private.png")
    (repo / "link.png").symlink_to(secret)
    inside = repo / "image.png"
    secret_png(inside)
    read = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or read_bytes(self))
    assert digest(str(secret), store) is None
    assert digest(str(repo / "link.png"), store) is None
    assert digest(str(repo / ".." / "private.png"), store) is None
    assert read == []
    assert digest(str(inside), store) is not None and read == [inside.resolve()]
    assert digest(None, store) is None


def test_plots_read_while_the_watcher_lists_them(tmp_path: Path, monkeypatch):
    """The watcher's curve_paths lists the plots read so far while a read adds some."""
    store = ExperimentStore(fake_repo(tmp_path / "repo"))
    monkeypatch.setattr(store_module, "_plots_diff", lambda *args: {})
    errors = []

    class ReadDuringListing:
        """A plots entry whose curves, when listed, make another thread read plots."""

        @property
        def curves(self):
            def read():
                try:
                    store.plots(["another"])
                except Exception as error:  # reported below, in the test's thread
                    errors.append(error)

            thread = threading.Thread(target=read)
            thread.start()
            thread.join(30)
            return {CURVE: None}

    store._plots = {"first": Plots(), "listing": ReadDuringListing(), "last": Plots()}
    assert store.curve_paths() == {CURVE}  # no "dictionary changed size during iteration"
    assert errors == [] and "another" in store._plots
