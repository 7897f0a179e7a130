"""The Flower ServerApp: runs :class:`~fedi2i.fl.flower.rounds.ServerRounds` over Flower's Grid.

The SuperLink starts this app in its own process for each ``flwr run``; the run config (written by
:func:`fedi2i.fl.flower.deploy.write_app`) carries the fedi2i config as YAML and the run folder.
The Grid is polled here with a short interval instead of ``Grid.send_and_receive`` (which sleeps 3 s
between polls): a secure round is five exchanges, so the polling interval adds up.
"""

from __future__ import annotations

import logging
import time

import yaml
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedi2i.config import config_from_dict
from fedi2i.errors import ConfigError
from fedi2i.fl.flower import protocol as P
from fedi2i.fl.flower.rounds import Exchange, ServerRounds
from fedi2i.fl.round_loop import RoundEntry

log = logging.getLogger(__name__)
app = ServerApp()


class GridTransport:
    """Push one message per node, poll for the replies until all arrived or the stage times out."""

    def __init__(self, grid: Grid, poll: float = 0.2, timeout: float = 600.0) -> None:
        self.grid = grid
        self.poll = poll
        self.timeout = timeout

    def node_ids(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def exchange(self, message_type: str, contents: dict[int, RecordDict], round_index: int) -> Exchange:
        start = time.perf_counter()
        nodes = list(contents)
        messages = [Message(contents[n], dst_node_id=n, message_type=message_type, group_id=str(round_index))
                    for n in nodes]
        ids = list(self.grid.push_messages(messages))
        node_of = {mid: n for mid, n in zip(ids, nodes) if mid}
        out = Exchange(replies={}, errors={n: "the SuperLink refused the message" for mid, n in zip(ids, nodes)
                                           if not mid})
        pending = set(node_of)
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                if reply.has_error():
                    out.errors[node_of[mid]] = f"{reply.error.reason} (code {reply.error.code})"
                else:
                    out.replies[node_of[mid]] = reply.content
            if pending:
                time.sleep(self.poll)
        for mid in pending:
            out.errors[node_of[mid]] = f"no reply within {self.timeout:.0f} s (counted as a dropout)"
        out.seconds = time.perf_counter() - start
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point the SuperLink calls: read the run config, run every round, write the results."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rc = context.run_config
    text = rc.get(P.RUN_CONFIG_YAML)
    run_dir = rc.get(P.RUN_DIR)
    if not text or not run_dir:
        raise ConfigError(f"the run config needs '{P.RUN_CONFIG_YAML}' and '{P.RUN_DIR}'; write the app with "
                          "`fedi2i flower config`")
    config = config_from_dict(yaml.safe_load(str(text)) or {}, source="run config")
    if config.train.threads:
        import torch

        torch.set_num_threads(config.train.threads)
    poll = float(rc.get(P.RUN_POLL, 0.2))
    transport = GridTransport(grid, poll=poll, timeout=float(rc.get(P.RUN_TIMEOUT, 600.0)))
    rounds = ServerRounds(config, str(run_dir), transport, min_nodes=int(rc.get(P.RUN_NODES, 0)), poll=poll)

    def progress(done: int, entry: RoundEntry) -> None:
        log.info("round %d/%d done in %.1f s (survivors %s)", done, config.train.rounds, entry.round_seconds,
                 entry.survivors)

    rounds.run(resume=bool(rc.get(P.RUN_RESUME, True)), on_round=progress)
