"""fedi2i values <-> Flower records: model vectors, round settings, fit results, SecAgg messages.

Vectors travel as one ``Array`` in an ``ArrayRecord`` (numpy's own byte format, so float32 values
arrive bit for bit). A SecAgg message's ``to_dict()`` form is split by value type: numbers, strings,
bytes and lists of them into a ``ConfigRecord``, numpy arrays (the masked upload) into an
``ArrayRecord``; :func:`fedi2i.fl.secagg.message_from_dict` rebuilds the message on the other side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedi2i.errors import UpdateRejected
from fedi2i.fl.secagg import message_from_dict

VECTOR_KEY = "vector"
_ARRAYS_SUFFIX = ".arrays"
_EMPTY_LIST = "__empty_list__"  # ConfigRecord lists must be typed; an empty one is stored as a marker


def vector_record(vector: Any) -> ArrayRecord:
    """A flat vector (numpy array or torch tensor) as an ArrayRecord (float32 stays float32)."""
    array = vector.detach().cpu().numpy() if hasattr(vector, "detach") else np.asarray(vector)
    return ArrayRecord({VECTOR_KEY: Array(np.ascontiguousarray(array))})


def record_vector(record: ArrayRecord, what: str = "vector") -> np.ndarray:
    """The flat vector of :func:`vector_record` (a writable copy; no torch import, so the
    SecAgg-only stages of the ClientApp stay light)."""
    if VECTOR_KEY not in record:
        raise UpdateRejected(f"{what}: the message holds no '{VECTOR_KEY}' array")
    array = record[VECTOR_KEY].numpy()
    if array.ndim != 1:
        raise UpdateRejected(f"{what}: expected a flat vector, got shape {array.shape}")
    return array.copy()


def secagg_records(message: Any, name: str) -> dict[str, ConfigRecord | ArrayRecord]:
    """Records carrying one SecAgg protocol message under ``name`` (see module doc)."""
    scalars: dict[str, Any] = {}
    arrays: dict[str, Array] = {}
    for key, value in message.to_dict().items():
        if isinstance(value, np.ndarray):
            arrays[key] = Array(np.ascontiguousarray(value))
        elif isinstance(value, (list, tuple)):
            scalars[key] = list(value) if value else _EMPTY_LIST
        else:
            scalars[key] = value
    records: dict[str, ConfigRecord | ArrayRecord] = {name: ConfigRecord(scalars)}
    if arrays:
        records[name + _ARRAYS_SUFFIX] = ArrayRecord(arrays)
    return records


def record_secagg(content: RecordDict, name: str) -> Any:
    """Rebuild the SecAgg message stored by :func:`secagg_records`."""
    if name not in content:
        raise UpdateRejected(f"the message carries no SecAgg record '{name}'")
    d: dict[str, Any] = {}
    for key, value in content[name].items():
        d[key] = [] if value == _EMPTY_LIST else value
    if name + _ARRAYS_SUFFIX in content:
        for key, array in content[name + _ARRAYS_SUFFIX].items():
            d[key] = array.numpy()
    return message_from_dict(d)


def put(content: RecordDict, records: dict[str, ConfigRecord | ArrayRecord]) -> RecordDict:
    for key, record in records.items():
        content[key] = record
    return content


def config_dict(record: ConfigRecord) -> dict[str, Any]:
    return dict(record.items())
