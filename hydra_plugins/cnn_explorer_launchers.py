"""cnn_explorer's Hydra launchers, where Hydra looks for launchers: classes in the ``hydra_plugins`` namespace
(conf/hydra/launcher/parallel.yaml and slurm.yaml name them). The code is :mod:`cnn_explorer.launchers`."""

from importlib.util import find_spec

# Hydra imports every module here at start: without the `sweeps` extra (hydra-joblib-launcher,
# hydra-submitit-launcher) this one stays empty rather than warn on every run.
if find_spec("hydra_plugins.hydra_joblib_launcher") is not None and (
    find_spec("hydra_plugins.hydra_submitit_launcher") is not None
):
    from cnn_explorer import launchers

    class ResilientJoblibLauncher(launchers.ResilientJoblibLauncher):
        """:class:`cnn_explorer.launchers.ResilientJoblibLauncher`, registered with Hydra."""

    class ResumingSlurmLauncher(launchers.ResumingSlurmLauncher):
        """:class:`cnn_explorer.launchers.ResumingSlurmLauncher`, registered with Hydra."""
