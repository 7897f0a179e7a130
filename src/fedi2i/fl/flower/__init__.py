"""Flower deployment runtime: each hospital a SuperNode, the same training, secure aggregation and record.

The in-process engine (:mod:`fedi2i.fl.engine`) is the default on one machine; this package runs the same
logic on Flower (Message API) when a federation spans machines:

- :mod:`.clientapp` (``ClientApp``): on each SuperNode, trains the node's centre with
  :class:`~fedi2i.fl.client.LocalTrainer` and answers fedi2i's SecAgg stages with
  :class:`~fedi2i.fl.secagg.SecAggClient`, whose secrets persist in ``Context.state`` (:mod:`.state`).
- :mod:`.serverapp` (``ServerApp``) runs :class:`.rounds.ServerRounds`: the engine's sampling, learning
  rate, :class:`~fedi2i.fl.server.Aggregator`, curious-server record and checkpoint format.
- :mod:`.deploy`: the app's ``pyproject.toml``, Flower's connection file, the SuperLink/SuperNode commands,
  and a loopback federation (:class:`.deploy.LocalFederation`, :func:`.deploy.run_local`).
- :mod:`.inprocess`: the same ServerApp rounds against the ClientApp functions in one process (tests, bench).

Flower is an optional extra (``pip install fedi2i[flower]``): importing this package does not import flwr;
:mod:`.deploy`'s file writers and :mod:`.protocol` work without it, the apps need it.
"""
