"""Flower deployment runtime: each hospital a SuperNode, the same training, secure aggregation and record.

The in-process client pool (:mod:`fedi2i.fl.engine`) is the default on one machine; this package is the
other client pool of the same :class:`~fedi2i.fl.round_loop.RoundLoop`, on Flower (Message API), when a
federation spans machines. Flower only carries messages:

- :mod:`.clientapp` (``ClientApp``): on each SuperNode, trains the node's centre with
  :class:`~fedi2i.fl.client.LocalTrainer` and answers fedi2i's SecAgg stages with
  :class:`~fedi2i.fl.secagg.SecAggClient`, whose secrets persist in ``Context.state`` (:mod:`.state`).
- :mod:`.serverapp` (``ServerApp``) runs :class:`.rounds.ServerRounds`: the RoundLoop over
  :class:`.rounds.FlowerPool`, so sampling, learning rate, evaluation cadence, the
  :class:`~fedi2i.fl.server.Aggregator`, the record and the checkpoints are the in-process run's.
- :mod:`.deploy`: the app's ``pyproject.toml``, Flower's connection file, the SuperLink/SuperNode commands,
  and a loopback federation (:class:`.deploy.LocalFederation`, :func:`.deploy.run_local`).
- :mod:`.inprocess`: the same ServerApp rounds against the ClientApp functions in one process (tests, bench).

Flower is an optional extra (``pip install fedi2i[flower]``): importing this package does not import flwr;
:mod:`.deploy`'s file writers and :mod:`.protocol` work without it, the apps need it.
"""
