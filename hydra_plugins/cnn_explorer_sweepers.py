"""cnn_explorer's Hydra sweeper, where Hydra looks for sweepers: a class in the ``hydra_plugins`` namespace, and its
config in Hydra's ConfigStore as ``hydra/sweeper=optuna`` (conf/hparams_search/optuna.yaml selects it). The code is
:mod:`cnn_explorer.optuna_sweeper`."""

from importlib.util import find_spec

# Hydra imports every module here at start: without the `sweeps` extra (optuna) this one stays empty rather than
# fail every run; hparams_search=optuna then says that hydra/sweeper=optuna is not found.
if find_spec("optuna") is not None:
    from hydra.core.config_store import ConfigStore

    from cnn_explorer import optuna_sweeper

    class OptunaSweeper(optuna_sweeper.OptunaSweeper):
        """:class:`cnn_explorer.optuna_sweeper.OptunaSweeper`, registered with Hydra."""

    ConfigStore.instance().store(
        group="hydra/sweeper", name="optuna", node=optuna_sweeper.OptunaSweeperConf, provider="cnn_explorer"
    )
