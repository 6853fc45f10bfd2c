"""The experiment dashboard. `from dashboard import Dashboard; Dashboard(".")` in JupyterLab;
`make dashboard` serves the same app with Voila. The data layer (dashboard.data, dashboard.store)
imports no widgets, and nothing here imports torch or diffusers."""


def __getattr__(name: str):
    if name == "Dashboard":
        from dashboard.app import Dashboard

        return Dashboard
    raise AttributeError(name)


__all__ = ["Dashboard"]
