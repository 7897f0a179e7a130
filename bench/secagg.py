"""Secure aggregation benchmark: fedi2i SecAgg vs Flower's SecAgg+ primitives, side by side.

Run: ``python bench/secagg.py`` (add ``--quick`` for a smaller, faster run).

What is timed (one round, all stages, every client and the server, one process, one thread):

* **fedi2i**: the real protocol objects (:class:`SecAggClient`, :class:`SecAggServer`) driven
  stage by stage exactly as :func:`fedi2i.fl.secagg.secure_sum` does, with every defence against
  an actively malicious server on: X25519 key pairs signed with each centre's Ed25519 identity key
  (every client verifies every advertisement), Shamir sharing of ``b_u`` and the masking key,
  AES-GCM share transport, quantisation + ChaCha20 masks (self mask and one per peer), the
  consistency round (each survivor signs the survivor set; each verifies the others' signatures
  before it reveals a share), then the server's unmasking (every share checked, the self-mask seed
  against its commitment), range check and dequantisation. The identity keys are long-term (made
  once per federation), so their generation is not timed. The added cost of the consistency round
  and of the signature checks is printed: the round is also run with signature checks and the
  consistency round switched off (:class:`~fedi2i.fl.secagg.Protections`).
* **Flower 1.42**: the same round built from Flower's own SecAgg+ building blocks in
  ``flwr.common.secure_aggregation`` and ``flwr.supercore.primitives.asymmetric``, following
  the client mod ``secaggplus_mod`` (``_setup``, ``_share_keys``, ``_collect_masked_vectors``,
  ``_unmask``) and the server workflow ``SecAggPlusWorkflow`` (``collect_masked_vectors_stage``
  and ``unmask_stage``) line by line, with its default quantisation (clip 8, 2^22 levels,
  modulus 2^32): P-384 key pairs in PEM, ``create_shares``/``combine_shares``, Fernet share
  encryption, ``quantize``, ``pseudo_rand_gen`` for the self mask and every pairwise mask,
  ``parameters_addition``/``subtraction``/``mod`` and ``dequantize``.

Left out on both sides, to compare protocol work only: message transport and serialisation
(Flower's ``ndarray_to_bytes`` / ``parameters_to_ndarrays``; fedi2i's ``to_dict``), and the
example-weight multiplication (Flower's ``parameters_multiply``; the fedi2i engine weights
updates before SecAgg). Both use the complete graph (Flower ``num_shares=1.0``), no dropouts,
threshold 0.5 (Flower: ``round(0.5 n)``, at least 2; fedi2i: a strict majority). Each
configuration runs ``--repeats`` times, alternating the two so both see the same machine load,
and the run with the least CPU time is reported. CPU time (``process_time``, all threads, so
Flower's Shamir thread pool counts) is the headline because this 2-core machine is shared:
waiting for a core inflates wall time for reasons unrelated to the code. Wall time is printed
too.

Upload bytes are everything a client sends in all stages (keys, encrypted shares, masked
vector, unmask shares); Flower's masked vector is counted as serialised by its
``ndarray_to_bytes`` (int64, 8 bytes per parameter).

The last table runs fedi2i with SecAgg+ neighbourhoods (degree ``2 ceil(log2 n)``) on a
smaller vector for 10..100 clients and prints the per-client cost next to the complete graph:
the former grows like ``log n``, the latter like ``n``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import defaultdict

import numpy as np

from fedi2i.fl.secagg import (
    Protections,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    directory_of,
    generate_identities,
    suggested_neighbours,
)
from fedi2i.fl.secagg.messages import UnmaskRequest

try:  # Flower is an optional extra
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt as f_decrypt
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt as f_encrypt
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
        share_keys_plaintext_separate,
    )
    from flwr.compat.common.parameter import ndarray_to_bytes
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    HAVE_FLWR = True
except ImportError:  # pragma: no cover
    HAVE_FLWR = False


class Timer:
    """Accumulates CPU time (``process_time``, all threads) and wall time per key.

    CPU time is the headline: this 2-core machine is often shared, and waiting for a core
    inflates wall time for reasons unrelated to the code; both are printed.
    """

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    def __call__(self, key: str):  # noqa: ANN204
        timer = self

        class _Ctx:
            def __enter__(self) -> None:
                self.c = time.process_time()
                self.w = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                timer.t[key] += time.process_time() - self.c
                timer.wall[key] += time.perf_counter() - self.w

        return _Ctx()


# --------------------------------------------------------------------------- fedi2i
UNHARDENED = Protections(signatures=False, consistency_round=False)
"""Signature checks and the consistency round off: only to print what they add."""


def ours_round(vectors: dict[str, np.ndarray], cfg: SecAggConfig, protections: Protections = Protections()):
    """One fedi2i round; returns (timings, result). Same calls as ``secure_sum``."""
    tm = Timer()
    ids = sorted(vectors)
    identities = generate_identities(ids)  # long-term keys, made once per federation: not timed
    directory = directory_of(identities)
    with tm("server"):
        server = SecAggServer(cfg, ids, vector_length=next(iter(vectors.values())).size, protections=protections)
        setup = server.setup_request()
    with tm("client_keys"):
        clients = {c: SecAggClient(cfg, c, vectors[c], identity=identities[c], directory=directory,
                                   protections=protections) for c in ids}
        replies = [clients[c].advertise_keys(setup) for c in ids]
    with tm("server"):
        req = server.collect_advertise(replies)
    with tm("client_keys"):
        replies = [clients[c].share_keys(r) for c, r in req.items()]
    with tm("server"):
        req = server.collect_shares(replies)
    with tm("client_mask"):
        replies = [clients[c].masked_input(r) for c, r in req.items()]
    with tm("server"):
        req = server.collect_masked_inputs(replies)
    if protections.consistency_round:
        with tm("client_check"):
            replies = [clients[c].consistency(r) for c, r in req.items()]
        with tm("server_check"):
            req = server.collect_consistency(replies)
    else:  # the requests the server sent before the consistency round existed
        server.stage, server.u4 = "unmask", set(server.u3)
        req = {u: UnmaskRequest(tuple(sorted(server.graph[u] & server.u3 | {u})), ()) for u in sorted(server.u3)}
    with tm("client_unmask"):
        replies = [clients[c].unmask(r) for c, r in req.items()]
    with tm("server"):
        result = server.collect_unmask(replies)
    return tm, result


# --------------------------------------------------------------------------- Flower
def flower_round(
    vectors: dict[str, np.ndarray],
    *,
    threshold: float = 0.5,
    clip: float = 8.0,
    target_range: int = 1 << 22,
    mod_range: int = 1 << 32,
):
    """One round with Flower's SecAgg+ primitives (complete graph, no dropouts).

    Returns (timings, mean vector as Flower's workflow outputs it, upload bytes per client).
    """
    tm = Timer()
    names = sorted(vectors)
    n = len(names)
    nids = list(range(1, n + 1))
    xs = {nid: vectors[name] for nid, name in zip(nids, names)}
    # SecAggPlusWorkflow.setup_stage with num_shares=1.0 and a float threshold
    share_num = n
    t = max(round(threshold * share_num), 2)
    up = dict.fromkeys(nids, 0)
    st: dict[int, dict] = {nid: {} for nid in nids}

    with tm("client_keys"):  # secaggplus_mod._setup
        for nid in nids:
            s = st[nid]
            sk1, pk1 = generate_key_pairs()
            sk2, pk2 = generate_key_pairs()
            s["sk1"], s["pk1"] = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
            s["sk2"], s["pk2"] = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
            up[nid] += len(s["pk1"]) + len(s["pk2"])
    public_keys = {nid: (st[nid]["pk1"], st[nid]["pk2"]) for nid in nids}
    forward: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in nids}
    with tm("client_keys"):  # secaggplus_mod._share_keys
        for nid in nids:
            s = st[nid]
            s["pk_dict"] = public_keys
            pk_list = [k for pair in public_keys.values() for k in pair]
            assert len(set(pk_list)) == len(pk_list)
            s["rd_seed"] = os.urandom(32)
            b_shares = create_shares(s["rd_seed"], t, share_num)
            sk1_shares = create_shares(s["sk1"], t, share_num)
            s["b_share"], s["sk1_share"], s["ss2"] = {}, {}, {}
            for idx, (other, (_, pk2)) in enumerate(public_keys.items()):
                if other == nid:
                    s["b_share"][nid], s["sk1_share"][nid] = b_shares[idx], sk1_shares[idx]
                    continue
                key = generate_shared_key(bytes_to_private_key(s["sk2"]), bytes_to_public_key(pk2))
                s["ss2"][other] = key
                ct = f_encrypt(key, share_keys_plaintext_concat(nid, other, b_shares[idx], sk1_shares[idx]))
                forward[other].append((nid, ct))
                up[nid] += len(ct) + 16
    uploads: dict[int, list[np.ndarray]] = {}
    with tm("client_mask"):  # secaggplus_mod._collect_masked_vectors
        for nid in nids:
            s = st[nid]
            available = []
            for src, ct in forward[nid]:
                actual_src, dst, b_sh, sk_sh = share_keys_plaintext_separate(f_decrypt(s["ss2"][src], ct))
                assert actual_src == src and dst == nid
                available.append(src)
                s["b_share"][src], s["sk1_share"][src] = b_sh, sk_sh
            q_ratio = target_range  # num_examples == max_weight: ratio 1
            quantized = quantize([xs[nid]], clip, target_range)
            quantized = factor_combine(q_ratio, quantized)
            dims = [a.shape for a in quantized]
            quantized = parameters_addition(quantized, pseudo_rand_gen(s["rd_seed"], mod_range, dims))
            for other in available:
                key = generate_shared_key(bytes_to_private_key(s["sk1"]), bytes_to_public_key(s["pk_dict"][other][0]))
                mask = pseudo_rand_gen(key, mod_range, dims)
                if nid > other:
                    quantized = parameters_addition(quantized, mask)
                else:
                    quantized = parameters_subtraction(quantized, mask)
            uploads[nid] = parameters_mod(quantized, mod_range)
    for nid in nids:  # serialised size, not timed
        up[nid] += sum(len(ndarray_to_bytes(a)) for a in uploads[nid])
    with tm("server"):  # SecAggPlusWorkflow.collect_masked_vectors_stage
        masked = None
        for nid in nids:
            masked = uploads[nid] if masked is None else parameters_addition(masked, uploads[nid])
        masked = parameters_mod(masked, mod_range)
    active = set(nids)
    collected: dict[int, list[bytes]] = {nid: [] for nid in nids}
    with tm("client_unmask"):  # secaggplus_mod._unmask
        for nid in nids:
            s = st[nid]
            act = sorted(active)
            shares = [s["b_share"][o] for o in act]
            up[nid] += sum(len(x) for x in shares) + 8 * len(act)
            for owner, share in zip(act, shares):
                collected[owner].append(share)
    with tm("server"):  # SecAggPlusWorkflow.unmask_stage (no dropouts: self masks only)
        for nid, share_list in collected.items():
            assert len(share_list) >= t
            secret = combine_shares(share_list)
            private_mask = pseudo_rand_gen(secret, mod_range, get_parameters_shape(masked))
            masked = parameters_subtraction(masked, private_mask)
        recon = parameters_mod(masked, mod_range)
        q_total_ratio, recon = factor_extract(recon)
        inv_dq_total_ratio = target_range / q_total_ratio
        agg = dequantize(recon, clip, target_range)
        offset = -(len(active) - 1) * clip
        for vec in agg:
            vec += offset
            vec *= inv_dq_total_ratio
    return tm, agg[0], {names[i - 1]: b for i, b in up.items()}


# --------------------------------------------------------------------------- report
STAGES = ["client_keys", "client_mask", "client_check", "client_unmask", "server_check", "server"]
LABELS = {
    "client_keys": "signed keys + share (clients)",
    "client_mask": "masking (clients)",
    "client_check": "consistency round (clients)",
    "client_unmask": "unmask reply (clients)",
    "server_check": "consistency round (server)",
    "server": "server (sum + unmask)",
}


def _best(runs: list[Timer]) -> Timer:
    """The least disturbed run: minimum total CPU time."""
    return min(runs, key=lambda tm: sum(tm.t.values()))


def compare(n_clients: int, length: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    vectors = {f"c{i:03d}": rng.normal(0.0, 0.05, length).astype(np.float32) for i in range(n_clients)}
    true = np.sum([v.astype(np.float64) for v in vectors.values()], axis=0)
    cfg = SecAggConfig(enabled=True)
    ours_runs: list[Timer] = []
    bare_runs: list[Timer] = []
    fl_runs: list[Timer] = []
    res = fl_mean = None
    fl_up: dict[str, int] = {}
    for _ in range(repeats):  # alternate, so both see the same machine load
        gc.collect()
        tm, res = ours_round(vectors, cfg)
        ours_runs.append(tm)
        gc.collect()
        bare_runs.append(ours_round(vectors, cfg, UNHARDENED)[0])
        if HAVE_FLWR:
            gc.collect()
            tm, fl_mean, fl_up = flower_round(vectors)
            fl_runs.append(tm)
    assert res is not None
    o = _best(ours_runs)
    bare = _best(bare_runs)
    f = _best(fl_runs) if fl_runs else None
    err = float(np.abs(res.total - true).max())
    ours_bpp = float(np.mean(list(res.upload_bytes.values()))) / length
    ours_vec_bpp = float(np.mean([m.nbytes for m in res.masked_uploads.values()])) / length
    print(f"\n## {n_clients} clients x {length:,} parameters (complete graph, no dropouts), CPU ms, best of {repeats}")
    print(f"{'stage (all clients + server)':30s}{'fedi2i':>10s}{'Flower':>10s}{'ratio':>8s}")
    for k in STAGES:
        line = f"{LABELS[k]:30s}{1e3 * o.t.get(k, 0.0):10.1f}"
        if f is not None:
            fo, ff = o.t.get(k, 0.0), f.t.get(k, 0.0)
            line += f"{1e3 * ff:10.1f}" + (f"{ff / fo:8.1f}" if fo > 1e-4 else f"{'-':>8s}")
        print(line)
    tot_o, wall_o = sum(o.t.values()), sum(o.wall.values())
    vec_o = o.t["client_mask"] + o.t["server"]
    check = o.t["client_check"] + o.t["server_check"]
    added = tot_o - sum(bare.t.values())
    print(f"added by the active-server defences: consistency round {1e3 * check:.1f} ms CPU; signatures and the "
          f"consistency round together {1e3 * added:+.1f} ms ({100 * added / tot_o:+.1f}% of the round; "
          f"{1e3 * added / n_clients:+.2f} ms per client)")
    out = {"ours_cpu": tot_o, "ours_bpp": ours_bpp, "added_cpu": added, "check_cpu": check}
    if f is None:
        print(f"{'TOTAL per round':30s}{1e3 * tot_o:10.1f}")
        print("(flwr not installed: Flower side skipped; pip install 'fedi2i[flower]')")
        print(f"upload bytes per parameter: fedi2i {ours_bpp:.3f}; max |error| {err:.2e}")
        return out
    tot_f, wall_f = sum(f.t.values()), sum(f.wall.values())
    vec_f = f.t["client_mask"] + f.t["server"]
    print(f"{'TOTAL per round (CPU)':30s}{1e3 * tot_o:10.1f}{1e3 * tot_f:10.1f}{tot_f / tot_o:8.1f}")
    print(f"{'TOTAL per round (wall)':30s}{1e3 * wall_o:10.1f}{1e3 * wall_f:10.1f}{wall_f / wall_o:8.1f}")
    print(f"{'masking + server only (CPU)':30s}{1e3 * vec_o:10.1f}{1e3 * vec_f:10.1f}{vec_f / vec_o:8.1f}")
    fl_err = float(np.abs(fl_mean * n_clients - true).max())
    fl_bpp = float(np.mean(list(fl_up.values()))) / length
    print(f"ratio flower_time / ours, whole round: {tot_f / tot_o:.1f}x CPU, {wall_f / wall_o:.1f}x wall  (goal >= 5x)")
    print(
        f"upload bytes per parameter: fedi2i {ours_vec_bpp:.3f} masked vector, {ours_bpp:.3f} all stages; "
        f"Flower {fl_bpp:.3f} all stages  (goal for fedi2i <= 4)"
    )
    print(
        f"max |error| of the sum: fedi2i {err:.2e} (bound {cfg.error_bound(n_clients):.2e}); "
        f"Flower {fl_err:.2e} (its step: 16/2^22 = {16 / 2**22:.1e} per client)"
    )
    out.update(flwr_cpu=tot_f, ratio_cpu=tot_f / tot_o, ratio_wall=wall_f / wall_o, flwr_bpp=fl_bpp)
    return out


def scaling(sizes: list[int], length: int, repeats: int, rng: np.random.Generator) -> None:
    print(f"\n## SecAgg+ scaling: per-client CPU ms, {length:,} parameters, no dropouts, best of {repeats}")
    print(f"{'clients':>8s}{'degree':>8s}{'SecAgg+':>10s}{'complete':>10s}{'server (SecAgg+)':>18s}")
    rows: dict[int, dict[str, tuple[float, float]]] = {}
    for n in sizes:
        vectors = {f"c{i:03d}": rng.normal(0.0, 0.05, length).astype(np.float32) for i in range(n)}
        true = np.sum([v.astype(np.float64) for v in vectors.values()], axis=0)
        deg = min(suggested_neighbours(n), n - 1)
        rows[n] = {}
        for label, cfg in [
            ("plus", SecAggConfig(enabled=True, neighbours=deg)),
            ("full", SecAggConfig(enabled=True)),
        ]:
            best = None
            for _ in range(repeats):
                t, res = ours_round(vectors, cfg)
                assert np.abs(res.total - true).max() <= cfg.error_bound(n), "wrong sum"
                client = (t.t["client_keys"] + t.t["client_mask"] + t.t["client_unmask"]) / n
                if best is None or client < best[0]:
                    best = (client, t.t["server"])
            rows[n][label] = best
        r = rows[n]
        print(f"{n:8d}{deg:8d}{1e3 * r['plus'][0]:10.2f}{1e3 * r['full'][0]:10.2f}{1e3 * r['plus'][1]:18.1f}")
    n0, n1 = sizes[0], sizes[-1]
    print(
        f"per-client growth {n0} -> {n1} clients: SecAgg+ x{rows[n1]['plus'][0] / rows[n0]['plus'][0]:.1f}, "
        f"complete graph x{rows[n1]['full'][0] / rows[n0]['full'][0]:.1f} "
        f"(n grew x{n1 / n0:.0f}, log2 n x{np.log2(n1) / np.log2(n0):.1f}); the server always removes one "
        "self mask per survivor, so its cost grows like n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=2_000_000)
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--scale-length", type=int, default=100_000)
    ap.add_argument("--scale-clients", type=int, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="200k parameters, 1 repeat, scaling up to 50")
    args = ap.parse_args(argv)
    if args.quick:
        args.length, args.repeats, args.scale_length = 200_000, 1, 20_000
        args.scale_clients = [10, 25, 50]
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cores {os.cpu_count()}, single-threaded")
    rng = np.random.default_rng(0)
    for n in args.clients:
        compare(n, args.length, args.repeats, rng)
    scaling(args.scale_clients, args.scale_length, args.repeats, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
