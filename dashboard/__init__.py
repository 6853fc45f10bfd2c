"""The experiment dashboard. `from dashboard import Dashboard; Dashboard(".")` in JupyterLab;
`make dashboard` serves the same app with Voila. Nothing here imports torch or diffusers.

    I/O, no widgets    dvc_cli, store (reads dvc), data (frames, the filter), actions,
                       workspace, locks (writes through dvc and git), serve (the server)
    state, no widgets  state (DashboardState, ExperimentState), views (view models),
                       questions (the text of the confirm questions)
    controller         app.Dashboard: owns the state, the store, the watcher and the plot
                       reader; every command goes through Dashboard.perform
    commands           commands.Launcher (the Run tab) and commands.PickedActions (apply,
                       undo, branch, rename, remove, push, pull): given the controller's
                       narrow interface, called by the panels
    widgets            panels/ (header, table, compare, run, actions), widgets (the anywidget
                       table and gallery), plots (plotly figures), form (the launch form)"""


def __getattr__(name: str):
    if name == "Dashboard":
        from dashboard.app import Dashboard

        return Dashboard
    raise AttributeError(name)


__all__ = ["Dashboard"]
