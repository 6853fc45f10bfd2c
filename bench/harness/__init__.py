"""What the dashboard's benchmark and its tests share: real DVC repositories of a quick stand-in
pipeline (quick_repo, quick_pipeline/), a real Voila server and Debian's Chromium (browser), and
the project's own params.yaml (project). The tests import it from here; nothing here imports
the tests."""
