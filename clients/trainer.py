"""A client's local round: decrypt its shard in memory, train it with the one training loop, report.

The round's training is :func:`veilfed.train.train_steps` with the optimizer ``[train]`` names
(:func:`veilfed.train.build_optimizer`) and, under DP, Opacus with Poisson sampling
(:func:`veilfed.train.make_private`); the accountant is the client's persisted one
(``NodeState``), attached before ``make_private`` so every step lands in the cumulative history.
σ comes from the target ε over *all* planned rounds (:mod:`veilfed.privacy.calibration`) unless
given; FedProx's proximal pull is the loop's ``after_step`` hook. The lr follows ``[train]``'s
schedule over the whole run (rounds × local steps, :func:`round_schedule`), so the client needs
only the round number the message carries and the run's rounds. A round's augmentations are
seeded from (seed, client, round); its DP noise and Poisson sample come from OS entropy
(``veilfed.privacy.noise``), so no one who knows the public seed can replay them, and a re-run
of a round is a new release: a true replay (same run, round and global model) is served from
the node's stored release instead (``veilfed.clients.node_state``), and a real node first checks
the run's privacy settings against its own policy (``veilfed.clients.policy``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from veilfed.augment import build_augmentations
from veilfed.clients.inputs import ClientInputs
from veilfed.clients.node_state import Release, ReleaseKey
from veilfed.clients.sample_cache import CACHE, CachedClips, store_digest
from veilfed.crypto.keys import read_key_file
from veilfed.data.dataset import ClipDataset, collate
from veilfed.data.store import EncryptedStore
from veilfed.data.windowed import OneWindowPerClip, read_span, window_ids
from veilfed.devices import model_device, resolve, to_device
from veilfed.federation.settings import RunSettings
from veilfed.federation.weights import experiment
from veilfed.model import create_model, load_state, numpy_state
from veilfed.model.init import freeze
from veilfed.model.losses import dp_refusal
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.accounting import plan_round
from veilfed.privacy.calibration import memoize_rdp, noise_for
from veilfed.privacy.report_chain import record_round
from veilfed.privacy.report_signing import sign
from veilfed.schedule import schedule_for
from veilfed.train import build_optimizer, make_private, train_collate, train_steps

log = logging.getLogger("veilfed.client")


@dataclass(frozen=True)
class RoundResult:
    arrays: dict[str, np.ndarray]
    num_examples: int
    loss: float  # NaN when the round took no step on data (``TrainStats.loss``)
    report: str | None  # SignedReport JSON (or plain report JSON when signing is off)
    declined: str | None = None


def _seed(settings: RunSettings, cid: str, rnd: int) -> int:
    return int(
        np.random.SeedSequence([settings.seed, zlib.crc32(cid.encode()), rnd]).generate_state(1)[0]
    )


def use_client_threads() -> None:
    # A virtual client gets one Ray CPU; more torch threads would oversubscribe the machine.
    torch.set_num_threads(1)


@functools.lru_cache(maxsize=2)
def _store(path: str, key_file: str, digest: str) -> Any:
    """The store opened once per process and manifest (``digest``: a changed store reopens)."""
    return EncryptedStore.open(path, read_key_file(key_file))


def split_shard(settings: RunSettings, inputs: ClientInputs) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids) of a client's shard; the split is fixed per (seed, client)."""
    ids = list(inputs.clip_ids)
    rng = np.random.default_rng([settings.seed, zlib.crc32(inputs.client_id.encode())])
    order = [ids[i] for i in rng.permutation(len(ids))]
    n_eval = min(len(ids) - 1, max(1, round(settings.federated.holdout * len(ids))))
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def client_dataset(
    settings: RunSettings, inputs: ClientInputs, ids: list[str], train: bool = False, rnd: int = 1
) -> Any:
    """The client's clips, without the modalities its partition lacks, decoded once per process
    and store version (:mod:`veilfed.clients.sample_cache`); the config's augmentations apply per
    use to its training split only. Windowed files train one window per draw, round ``rnd``
    continuing where the earlier rounds' local epochs left off."""
    exp = experiment(settings)
    world = exp.world.world_config()
    specs = exp.train.augmentations if train else []
    root = str(Path(inputs.store).resolve())
    digest = store_digest(root)
    tasks = exp.model.task_specs()
    store = _store(root, inputs.key_file, digest)
    items = window_ids(store, ids, read_span(world, tasks))
    clips = ClipDataset(store, world, ids=items, drop_modalities=inputs.missing, tasks=tasks)
    CACHE.resize(settings.federated.client_cache_mb << 20)
    key = (root, digest, repr(world), tuple(sorted(inputs.missing)), repr(tasks))
    cached = CachedClips(clips, key, augment=build_augmentations(specs) if specs else None)
    if train and len(items) > len(ids):  # windows: the clip (file) stays the unit DP-SGD samples
        offset = (rnd - 1) * settings.federated.local_epochs
        return OneWindowPerClip(cached, items, settings.seed, offset, ids)
    return cached


def client_device(settings: RunSettings, simulated: bool) -> torch.device:
    """Where this client trains (``veilfed.devices``): a virtual client uses a GPU only with
    ``[federated] gpus_per_client > 0``; a real node runs on its own hardware, so there ``cuda``
    means its GPU when it has one (as ``auto``) and ``cpu`` the CPU."""
    wanted = experiment(settings).train.device
    if simulated:
        if settings.federated.gpus_per_client <= 0:
            return torch.device("cpu")
        return resolve(wanted, "train.device")
    return resolve("cpu" if wanted == "cpu" else "auto", "train.device")


def round_model(
    settings: RunSettings, arrays: dict[str, np.ndarray], device: torch.device | None = None
) -> torch.nn.Module:
    model = load_state(create_model(experiment(settings).model), arrays)
    return model.to(device) if device is not None else model


def _proximal_step(
    model: torch.nn.Module, anchor: dict[str, torch.Tensor], optimizer: Any, mu: float
) -> None:
    """FedProx: pull weights towards the global model, w -= lr·μ·(w − w_global), at the lr the
    schedule gave the step just taken.

    Applied as its own step after the DP step rather than inside the loss: the term does not
    depend on data, so it costs no privacy, and Opacus would otherwise drop its gradient (it
    replaces ``.grad`` with the noised sum of per-sample gradients).
    """
    rate = optimizer.param_groups[0]["lr"] * mu
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.sub_(rate * (param - anchor[name]))


_UNUSED: dict[str, frozenset[str]] = {}


def _freeze_unused(settings: RunSettings, model: torch.nn.Module, dataset: Any) -> None:
    """Freeze parameters the configured tasks never reach (e.g. pixel decoder without pixel
    tasks): Opacus needs a per-sample gradient for every trainable parameter. Found once per
    config with one plain backward pass on one sample."""
    key = json.dumps(settings.config, sort_keys=True)
    if key not in _UNUSED:
        probe = copy.deepcopy(model)
        batch = to_device(collate([dataset[0]]), model_device(model))
        loss, _ = probe.loss(probe(batch), batch)
        loss.backward()
        _UNUSED[key] = frozenset(
            n for n, q in probe.named_parameters() if q.requires_grad and q.grad is None
        )
    for name, param in model.named_parameters():
        if name in _UNUSED[key]:
            param.requires_grad_(False)


def round_schedule(train: Any, rnd: int, rounds: int, local_steps: int) -> Any:
    """The lr of local step k of round ``rnd`` (1-based) of ``rounds``: the run's schedule over
    ``rounds × local_steps`` steps, this round starting ``(rnd - 1) × local_steps`` in."""
    return schedule_for(train, rounds * local_steps, (rnd - 1) * local_steps)


def _declined(reason: str) -> RoundResult:
    log.warning("%s", reason)
    return RoundResult({}, 0, math.nan, None, declined=reason)


def train_round(
    settings: RunSettings,
    inputs: ClientInputs,
    rnd: int,
    arrays: dict[str, np.ndarray],
    proximal_mu: float = 0.0,
    model_digest: str = "",
) -> RoundResult:
    """One local round of (DP-)SGD on the client's training split, starting from ``arrays``.

    ``model_digest`` names the global model the message carried (``model_digest``): a round
    with the same run, round and model as the client's last release in that run is a replay and
    gets that release back at no new spend; any other round is a new release, checked against
    the node's policy and budget (``veilfed.clients.node_state``, ``veilfed.clients.policy``).
    A real node pins its accounting δ at its first DP release and declines runs at a larger δ;
    the budget is checked at the run's δ, never above the pinned one.
    """
    p = settings.privacy
    train_ids, _ = split_shard(settings, inputs)
    if inputs.policy is not None:
        reason = inputs.policy.refusal(inputs.client_id, p, len(train_ids))
        if reason is not None:
            return _declined(reason)
    if not p.enabled:
        return _train(settings, inputs, rnd, arrays, proximal_mu, None, train_ids, model_digest)
    reason = dp_refusal(experiment(settings).model.loss_weighting)
    if reason is not None:
        return _declined(f"client {inputs.client_id}: declining to train: {reason}")
    node = inputs.state
    key = ReleaseKey(settings.run_id, rnd, model_digest)
    with node.spending():
        acc = node.accountant(p.accountant, settings.run_id)
        before = acc.release
        cached = node.released(acc, key)
        if cached is not None:
            log.info("client %s: round %d of run %s replayed: same release, no new spend",
                     inputs.client_id, rnd, settings.run_id)  # fmt: skip
            return RoundResult(cached.arrays, cached.num_examples, cached.loss, cached.report)
        if acc.last_round is not None and rnd <= acc.last_round:
            last = (
                "the same" if before is not None and before["model"] == model_digest else "another"
            )
            return _declined(
                f"client {inputs.client_id}: declining to train: round {rnd} of run "
                f"{settings.run_id} is not after its last released round {acc.last_round} "
                f"(from {last} global model); releasing it again would be a second release"
            )
        if inputs.policy is not None:
            reason = inputs.policy.delta_refusal(inputs.client_id, p.delta, acc.delta)
            if reason is not None:
                return _declined(reason)
        result = _train(settings, inputs, rnd, arrays, proximal_mu, acc, train_ids, model_digest)
        if result.declined is None:
            if inputs.policy is not None and acc.delta is None:
                acc.delta = inputs.policy.pinned_delta(p.delta)  # saved with this spend
            node.commit(
                acc, key, Release(result.arrays, result.num_examples, result.loss, result.report)
            )
    return result


def _train(
    settings: RunSettings,
    inputs: ClientInputs,
    rnd: int,
    arrays: dict[str, np.ndarray],
    proximal_mu: float,
    acc: ClientAccountant | None,
    train_ids: list[str],
    model_digest: str,
) -> RoundResult:
    """Train one round; with ``acc``, DP-SGD recorded into it after its budget check."""
    use_client_threads()
    torch.manual_seed(_seed(settings, inputs.client_id, rnd))  # augmentations, not DP noise
    exp = experiment(settings)
    p = settings.privacy
    batch_size = min(exp.train.batch_size, len(train_ids))
    epochs = settings.federated.local_epochs
    plan = plan_round(len(train_ids), batch_size, epochs)
    sigma = 0.0
    budget = p.epsilon_budget if inputs.policy is None else inputs.policy.budget_for(p)
    if acc is not None:
        memoize_rdp()  # the budget check and the report query ε at this round's (q, σ)
        steps = plan.steps * settings.federated.rounds
        sigma = noise_for(
            p.noise_multiplier, p.epsilon, p.delta, plan.sample_rate, steps, p.accountant
        )
        reason = acc.refusal(budget, p.delta, sigma, plan.sample_rate, plan.steps)
        if reason is not None:
            return _declined(reason)

    model = round_model(settings, arrays, client_device(settings, inputs.simulated))
    freeze(model, exp.model.freeze)  # the run's frozen modules keep the global model's weights
    dataset = client_dataset(settings, inputs, train_ids, train=True, rnd=rnd)
    _freeze_unused(settings, model, dataset)
    optimizer = build_optimizer([q for q in model.parameters() if q.requires_grad], exp.train)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=train_collate)
    net: torch.nn.Module = model
    privacy = None
    if acc is not None:
        net, optimizer, loader, privacy = make_private(
            model,
            optimizer,
            loader,
            sigma,
            p.max_grad_norm,
            accountant=acc.opacus,
            accountant_kind=p.accountant,
        )
    after_step = None
    if proximal_mu > 0:
        anchor = {n: q.detach().clone() for n, q in model.named_parameters()}
        after_step = functools.partial(_proximal_step, model, anchor, optimizer, proximal_mu)
    stats = train_steps(
        net,
        loader,
        optimizer,
        epochs=epochs,
        privacy=privacy,
        after_step=after_step,
        lr=round_schedule(exp.train, rnd, settings.federated.rounds, plan.steps),
        clip_grad_norm=exp.train.clip_grad_norm,
        adversarial=exp.train.adversarial,
    )
    report = None
    if acc is not None:
        rep = record_round(
            acc,
            run_id=settings.run_id,
            round=rnd,
            model_digest=model_digest,
            max_grad_norm=p.max_grad_norm,
            delta=p.delta,
            epsilon_budget=budget,
        )
        if settings.federated.sign_reports:
            report = sign(rep, inputs.state.signing_key()).to_json()
        else:
            report = json.dumps(asdict(rep), sort_keys=True)
    return RoundResult(
        numpy_state(model),
        len(train_ids),
        stats.loss,
        report,
    )
