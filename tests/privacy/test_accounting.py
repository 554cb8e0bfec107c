"""Wiring the accountant into Opacus: σ calibration, the round plan, real DP-SGD training."""

from __future__ import annotations

import pytest
import torch
from opacus import PrivacyEngine
from testkit.privacy import DELTA, google_rdp

from veilfed.errors import UsageError
from veilfed.privacy.accountant import ClientAccountant
from veilfed.privacy.accountant_store import AccountantStore
from veilfed.privacy.accounting import attach, calibrate_noise, plan_round


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_calibrate_noise_hits_target() -> None:
    sigma = calibrate_noise(2.0, DELTA, 0.05, 200)
    eps = google_rdp([(sigma, 0.05, 200)])
    assert 1.95 <= eps <= 2.0 * 1.005
    assert calibrate_noise(4.0, DELTA, 0.05, 200) < sigma
    with pytest.raises(UsageError, match="cannot reach epsilon"):
        calibrate_noise(1e-6, DELTA, 1.0, 10_000)
    with pytest.raises(UsageError, match="sample_rate"):
        calibrate_noise(1.0, DELTA, 1.5, 10)


def test_plan_round_matches_opacus_loader() -> None:
    plan = plan_round(dataset_size=10, batch_size=4, local_epochs=2)
    assert (plan.steps_per_epoch, plan.steps) == (3, 6)
    assert plan.sample_rate == 1 / 3
    with pytest.raises(UsageError, match="batch_size"):
        plan_round(10, 0, 1)


def _train_round(acc: ClientAccountant, sigma: float) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant=acc.mechanism)
    attach(engine, acc)
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    for x, y in loader:  # 2 Poisson batches
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_attach_records_real_opacus_training_across_rounds(tmp_path) -> None:
    store = AccountantStore(tmp_path)
    acc = store.load("c4")
    _train_round(acc, 1.5)
    assert acc.history == [(1.5, 0.5, 2)]
    store.save(acc)
    acc = store.load("c4")  # next round, fresh PrivacyEngine, same persisted history
    _train_round(acc, 1.5)
    assert acc.total_steps == 4
    assert acc.epsilon(DELTA) == pytest.approx(google_rdp([(1.5, 0.5, 4)]), rel=0.01)
    assert acc.epsilon(DELTA) > google_rdp([(1.5, 0.5, 2)])
