"""Run the ServerApp's rounds against the real ClientApp functions in one process, no SuperLink.

Used by the unit tests and the overhead benchmark to separate what the Flower runtime costs (processes,
polling, the wire) from what fedi2i's own code costs. Each call gets a fresh ``Context`` rebuilt from its
protobuf form, and every message's content is serialised to protobuf and back, as between two processes:
what a stage keeps in ``Context.state`` is all it has in the next stage, just as on a SuperNode.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import DEFAULT_TTL, Context, Message, Metadata, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto, recorddict_from_proto, recorddict_to_proto

from fedi2i.fl.flower.clientapp import app as client_app
from fedi2i.fl.flower.rounds import Exchange


def wire(content: RecordDict) -> RecordDict:
    """Serialise a RecordDict the way it travels and read it back."""
    return recorddict_from_proto(recorddict_to_proto(content))


class InProcessTransport:
    """Nodes with their node configs; one shared run config (as the SuperLink hands it to every node)."""

    def __init__(self, node_configs: dict[int, dict[str, Any]], run_config: dict[str, Any],
                 drop: dict[str, set[int]] | None = None) -> None:
        self.run_config = dict(run_config)
        self.states = {n: context_to_proto(Context(run_id=1, node_id=n, node_config=dict(cfg), state=RecordDict(),
                                                   run_config=self.run_config)) for n, cfg in node_configs.items()}
        self.drop = drop or {}  # message type -> nodes that fail to answer it (dropout tests)
        self.calls: list[tuple[str, int]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.states)

    def exchange(self, message_type: str, contents: dict[int, RecordDict], round_index: int) -> Exchange:
        start = time.perf_counter()
        out = Exchange(replies={})
        for node, content in contents.items():
            self.calls.append((message_type, node))
            if node in self.drop.get(message_type, set()):
                out.errors[node] = "dropped (test)"
                continue
            context = context_from_proto(self.states[node])
            message = Message(wire(content), metadata=Metadata(
                run_id=1, message_id=f"m{len(self.calls)}", src_node_id=0, dst_node_id=node, reply_to_message_id="",
                group_id=str(round_index), created_at=time.time(), ttl=DEFAULT_TTL, message_type=message_type))
            try:
                reply = client_app(message=message, context=context)
            except Exception as exc:  # noqa: BLE001 - a failing node is a dropout, as in a deployment
                out.errors[node] = f"{type(exc).__name__}: {exc}"
                continue
            self.states[node] = context_to_proto(context)
            out.replies[node] = wire(reply.content)
        out.seconds = time.perf_counter() - start
        return out
