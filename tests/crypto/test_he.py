"""CKKS secure aggregation: encrypted FedAvg matches plaintext FedAvg; bad updates are rejected."""

from __future__ import annotations

import io
import logging
import math
import stat
from pathlib import Path

import numpy as np
import pytest

from veilfed.crypto.he import Decrypted, decrypt_average, encrypt_update
from veilfed.crypto.he_aggregate import aggregate, shadow_average
from veilfed.crypto.he_keys import HEContext, keygen, load_context, new_context, public_view
from veilfed.crypto.he_packing import flatten, unflatten
from veilfed.crypto.he_params import HEParams
from veilfed.crypto.he_update import EncryptedUpdate
from veilfed.errors import CheckFailed, UsageError

SIZE = 5_000  # three ciphertexts at 2048 slots: exercises chunking and the short last chunk
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keygen(tmp_path_factory.mktemp("he"), HEParams.for_bounds())


@pytest.fixture(scope="module")
def keys(key_files: tuple[Path, Path]) -> tuple[HEContext, HEContext]:
    """(client secret context, coordinator public context), loaded from keygen's files."""
    return load_context(key_files[0], True), load_context(key_files[1], False)


def _updates(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    flats = [rng.uniform(-1, 1, SIZE) for _ in range(n)]
    return flats, [int(w) for w in rng.integers(1, 1000, n)]


def test_encrypted_fedavg_matches_plaintext(
    keys: tuple[HEContext, HEContext], key_files: tuple[Path, Path]
) -> None:
    secret, public = keys
    flats, weights = _updates(4)
    messages = {
        f"c{i}": encrypt_update(secret, f, w).to_bytes()
        for i, (f, w) in enumerate(zip(flats, weights, strict=True))
    }
    agg, rejections = aggregate(public, messages)
    assert rejections == [] and agg is not None and agg.clients == 4
    result = decrypt_average(secret, agg.to_bytes())
    error = np.max(np.abs(result.average - shadow_average(flats, weights)))
    assert error <= result.error_bound <= TOLERANCE
    assert result.total_weight == sum(weights)
    # every client decrypts the same bits, so all hold the same global model
    other_client = load_context(key_files[0], True)
    assert np.array_equal(decrypt_average(other_client, agg).average, result.average)
    assert agg.aggregate_ms > 0 and agg.encrypt_ms > 0 and result.decrypt_ms > 0
    assert 1 < agg.bytes_ratio < 10  # FLARE's setup is ~15x


def test_worst_case_lone_client_of_weight_one_within_tolerance(
    keys: tuple[HEContext, HEContext],
) -> None:
    secret, public = keys
    flat = np.random.default_rng(1).choice([-1.0, 1.0], SIZE)  # every value at the bound
    agg, _ = aggregate(public, {"c": encrypt_update(secret, flat, 1)})
    assert agg is not None
    result = decrypt_average(secret, agg)
    assert np.max(np.abs(result.average - flat)) <= secret.params.error_bound(1, 1) <= TOLERANCE


def test_coordinator_context_cannot_decrypt_or_encrypt(keys: tuple[HEContext, HEContext]) -> None:
    secret, public = keys
    assert not public.is_private and not public.ts_context.has_secret_key()
    with pytest.raises(ValueError, match="Secret key"):
        public.ts_context.serialize(save_secret_key=True)
    update = encrypt_update(secret, np.zeros(10), 1)
    agg, _ = aggregate(public, {"c": update})
    with pytest.raises(UsageError, match="secret"):
        decrypt_average(public, agg)
    from tenseal import ckks_vector_from

    vector = ckks_vector_from(public.ts_context, agg.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    with pytest.raises(UsageError, match="secret"):
        encrypt_update(public, np.zeros(10), 1)


def test_keygen_files_modes_and_kinds(tmp_path: Path) -> None:
    secret_path, public_path = keygen(tmp_path, HEParams.for_bounds())
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert public_path.stat().st_size < 1000 < secret_path.stat().st_size  # no keys in public
    assert load_context(secret_path, True).key_id == load_context(public_path, False).key_id
    with pytest.raises(UsageError, match="coordinator must load public.ctx"):
        load_context(secret_path, False)
    with pytest.raises(UsageError, match="no secret key"):
        load_context(public_path, True)
    with pytest.raises(UsageError, match="already exists"):
        keygen(tmp_path, HEParams.for_bounds())


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"hello", "bad magic"), (b"VFHECTX1\x00\x00\x00\x02{]", "header")],
)
def test_load_context_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "x.ctx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as err:
        load_context(path, False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_context_header_must_match_its_keys(tmp_path: Path) -> None:
    public_path = keygen(tmp_path, HEParams.for_bounds())[1]
    blob = public_path.read_bytes()
    public_path.write_bytes(blob.replace(b'"global_scale_bits": 29', b'"global_scale_bits": 30'))
    with pytest.raises(UsageError, match="do not match"):
        load_context(public_path, False)


def test_bad_updates_rejected_and_round_continues(
    keys: tuple[HEContext, HEContext], caplog: pytest.LogCaptureFixture
) -> None:
    secret, public = keys
    flats, weights = _updates(2, seed=3)
    good = {
        f"ok{i}": encrypt_update(secret, f, w).to_bytes()
        for i, (f, w) in enumerate(zip(flats, weights, strict=True))
    }
    stale = new_context(secret.params)  # an older keygen with the same parameters
    valid = good["ok0"]
    flipped = bytearray(valid)
    flipped[-100] ^= 0xFF
    npy = io.BytesIO()
    np.save(npy, flats[0])
    bad = {
        "stale": encrypt_update(stale, flats[0], 5).to_bytes(),
        "truncated": valid[:-7],
        "malformed": valid[:8] + b"\x00\x00\x00\x03{x}" + valid[40:],
        "corrupt": bytes(flipped),
        "plain_array": flats[0],
        "plain_bytes": npy.getvalue(),
        "wrong_size": encrypt_update(secret, flats[0][:100], 5).to_bytes(),
        "unattested": EncryptedUpdate.from_bytes(valid),
    }
    bad["unattested"].attested = {}
    with caplog.at_level(logging.WARNING, logger="veilfed.crypto.he_aggregate"):
        agg, rejections = aggregate(public, {**good, **bad})
    reasons = {r.client: r.reason for r in rejections}
    assert set(reasons) == set(bad)
    assert "stale or foreign key" in reasons["stale"]
    assert "truncated" in reasons["truncated"]
    assert "malformed" in reasons["malformed"]
    assert "CRC-32" in reasons["corrupt"]
    assert "plaintext" in reasons["plain_array"] and "plaintext" in reasons["plain_bytes"]
    assert "expects 5000" in reasons["wrong_size"]
    assert "attest" in reasons["unattested"]
    assert all(f"client {c} rejected" in caplog.text for c in bad)
    result = decrypt_average(secret, agg)
    assert np.max(np.abs(result.average - shadow_average(flats, weights))) <= TOLERANCE


def test_foreign_key_with_forged_key_id_fails_integrity_check(
    keys: tuple[HEContext, HEContext],
) -> None:
    secret, public = keys
    foreign = new_context(secret.params)
    forged = encrypt_update(foreign, np.zeros(SIZE), 3)
    forged.key_id = secret.key_id
    agg, rejections = aggregate(
        public, {"honest": encrypt_update(secret, np.zeros(SIZE), 3), "forged": forged}
    )
    assert rejections == [] and agg is not None  # undetectable without the secret key ...
    with pytest.raises(CheckFailed, match="integrity check"):
        decrypt_average(secret, agg)  # ... but every client catches it after decryption


def test_spliced_foreign_chunk_fails_integrity_check(keys: tuple[HEContext, HEContext]) -> None:
    """A bad *first* ciphertext (far from the sample-count slot) is caught by its check slot."""
    secret, public = keys
    update = encrypt_update(secret, np.zeros(SIZE), 3)
    update.chunks[0] = encrypt_update(new_context(secret.params), np.zeros(SIZE), 3).chunks[0]
    agg, rejections = aggregate(public, {"forger": update.to_bytes()})
    assert rejections == [] and agg is not None
    with pytest.raises(CheckFailed, match="integrity check"):
        decrypt_average(secret, agg)


def test_ciphertext_under_other_parameters_rejected(keys: tuple[HEContext, HEContext]) -> None:
    secret, public = keys
    other = new_context(HEParams.for_bounds(max_total_weight=2**10))  # N=2048, other primes
    update = encrypt_update(other, np.zeros(SIZE), 1)
    update.key_id = secret.key_id
    update.chunks = update.chunks[:3]
    agg, rejections = aggregate(public, {"other": update})
    assert agg is None and "does not fit" in rejections[0].reason


def test_total_weight_beyond_keys_limit_is_detected() -> None:
    params = HEParams.for_bounds(max_total_weight=1)  # limit 2: three clients exceed it
    secret = new_context(params)
    updates = {f"c{i}": encrypt_update(secret, np.full(10, 0.5), 1) for i in range(3)}
    agg, _ = aggregate(public_view(secret), updates)
    with pytest.raises(CheckFailed, match="exceeds the keys' limit 2"):
        decrypt_average(secret, agg)


def test_client_side_checks(keys: tuple[HEContext, HEContext]) -> None:
    secret, public = keys
    with pytest.raises(CheckFailed, match="non-finite"):
        encrypt_update(secret, np.array([0.0, np.nan, np.inf]), 1)
    with pytest.raises(CheckFailed, match="max_abs_update"):
        encrypt_update(secret, np.array([0.0, 1.5]), 1)
    with pytest.raises(CheckFailed, match="L2 norm"):
        encrypt_update(secret, np.full(100, 0.5), 1, max_l2=1.0)
    for weight in (0, 2**21, 2.5, True):
        with pytest.raises(UsageError, match="weight"):
            encrypt_update(secret, np.zeros(3), weight)  # type: ignore[arg-type]
    loose = encrypt_update(secret, np.zeros(3), 1)
    tight = encrypt_update(secret, np.zeros(3), 1, max_l2=0.5)
    agg, rejections = aggregate(public, {"loose": loose, "tight": tight}, require_max_l2=1.0)
    assert [r.client for r in rejections] == ["loose"] and agg is not None and agg.clients == 1


def test_wire_round_trip(keys: tuple[HEContext, HEContext]) -> None:
    update = encrypt_update(keys[0], np.linspace(-1, 1, SIZE), 7, max_l2=100.0)
    blob = update.to_bytes()
    assert EncryptedUpdate.from_bytes(blob) == update and update.wire_bytes == len(blob)
    assert len(update.chunks) == math.ceil((SIZE + 1) / (keys[0].params.slots - 1))


def test_flatten_round_trip() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(2.5), np.ones(4, np.float16)]
    flat, specs = flatten(arrays)
    assert flat.shape == (11,)
    back = unflatten(flat * 2, specs)
    for a, b in zip(arrays, back, strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(b, a * 2)
    with pytest.raises(UsageError, match="11"):
        unflatten(flat[:5], specs)


def test_parameter_choice() -> None:
    default = HEParams.for_bounds()
    assert (default.poly_modulus_degree, default.coeff_mod_bit_sizes) == (4096, (51, 16))
    assert default.capacity >= 2 * default.max_total_weight
    assert default.error_bound(1, 1) <= TOLERANCE
    compact = HEParams.for_bounds(max_total_weight=2**10)
    assert (compact.poly_modulus_degree, compact.coeff_mod_bit_sizes) == (2048, (40, 14))
    assert HEParams.for_bounds(max_total_weight=2**29).coeff_mod_bit_sizes == (60, 16)
    with pytest.raises(UsageError, match="60-bit prime"):
        HEParams.for_bounds(max_total_weight=2**30)
    flare = HEParams.flare()
    assert flare.data_bits == 100 and not flare.symmetric


def test_noise_model_matches_measurement() -> None:
    """The slot-noise std behind for_bounds bounds the measured one, and is not loose by >2x."""
    from veilfed.crypto.he_params import slot_noise_std

    params = HEParams.for_bounds()
    ctx = new_context(params)
    agg, _ = aggregate(ctx, {"c": encrypt_update(ctx, np.zeros(20_000), 1)})
    measured = np.std(decrypt_average(ctx, agg).average) * 2.0**params.global_scale_bits
    assert measured <= slot_noise_std(params.poly_modulus_degree) <= 2 * measured


def test_update_survives_a_flower_message_record(keys: tuple[HEContext, HEContext]) -> None:
    """The blob travels as a bytes value of a Flower ConfigRecord, through its protobuf form."""
    from flwr.common import ConfigRecord, RecordDict
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    secret, public = keys
    flat = np.linspace(-0.5, 0.5, SIZE)
    content = RecordDict(
        {"he": ConfigRecord({"update": encrypt_update(secret, flat, 9).to_bytes()})}
    )
    wire = recorddict_to_proto(content).SerializeToString()
    received = recorddict_from_proto(type(recorddict_to_proto(content)).FromString(wire))
    agg, rejections = aggregate(public, {"c": received["he"]["update"]})
    assert rejections == [] and agg is not None
    assert np.max(np.abs(decrypt_average(secret, agg).average - flat)) <= TOLERANCE


def test_aggregate_never_sums_one_contributor_twice(keys):
    secret, public = keys
    one = encrypt_update(secret, np.zeros(SIZE), 3, contributor="r/1/a").to_bytes()
    other = encrypt_update(secret, np.zeros(SIZE), 3, contributor="r/1/b").to_bytes()
    agg, rejections = aggregate(public, {"a": one, "again": one, "b": other})
    assert agg is not None and sorted(agg.contributors) == ["r/1/a", "r/1/b"]
    assert [(r.client, "summed twice" in r.reason) for r in rejections] == [("again", True)]


def test_decryption_floor_and_forged_counts(keys):
    """Below the floor: refused before decrypting. A count forged with the public context only
    (the update added to itself, a plaintext added to the check slots, a relabelled list) fails
    the contributor tags; the honest aggregate of three passes."""
    import dataclasses

    import tenseal as ts

    secret, public = keys
    flats = [np.full(SIZE, 0.1 * (i + 1)) for i in range(3)]
    updates = {
        f"c{i}": encrypt_update(secret, f, 2, contributor=f"r/1/c{i}") for i, f in enumerate(flats)
    }
    agg, _ = aggregate(public, updates)
    assert decrypt_average(secret, agg, min_clients=3).clients == 3
    lone = updates["c0"]
    with pytest.raises(CheckFailed, match="below this client's floor of 3"):
        decrypt_average(secret, lone, min_clients=3)
    vecs = [ts.ckks_vector_from(public.ts_context, c) for c in lone.chunks]
    labels = ["r/1/c0", "r/1/c1", "r/1/c2"]
    tripled = [(v + v + v).serialize() for v in vecs]
    padded = [(v + ([0.0] * (v.size() - 1) + [2.0])).serialize() for v in vecs]
    for chunks in (tripled, padded):
        forged = dataclasses.replace(lone, chunks=chunks, contributors=labels)
        with pytest.raises(CheckFailed, match="contributor tags"):
            decrypt_average(secret, forged.to_bytes(), min_clients=3)
    relabelled = dataclasses.replace(agg, contributors=["r/1/c0", "r/1/c1", "r/1/x"])
    with pytest.raises(CheckFailed, match="contributor tags"):
        decrypt_average(secret, relabelled, min_clients=3)
    with pytest.raises(CheckFailed, match="only 1 distinct"):
        decrypt_average(secret, dataclasses.replace(lone, contributors=["a"] * 3), min_clients=3)


def _mask_attack(params: HEParams) -> Decrypted:
    """The coordinator, holding only the public context, masks an honest 3-client aggregate's
    tag and check slots onto client A's lone ciphertext (``S·tail + c_A·head``): one
    ciphertext × plaintext multiplication. Returns what a client with the secret key decrypts."""
    import tenseal as ts

    from veilfed.crypto.he_packing import RESERVED_SLOTS

    secret = new_context(params)
    public = public_view(secret)
    rng = np.random.default_rng(0)
    xs = {c: rng.uniform(-0.5, 0.5, 10) for c in "ABC"}
    ups = {c: encrypt_update(secret, xs[c], 5, contributor=f"R/1/{c}") for c in "ABC"}
    honest, _ = aggregate(public, ups)
    chunks = []
    for s_blob, a_blob in zip(honest.chunks, ups["A"].chunks, strict=True):
        s = ts.ckks_vector_from(public.ts_context, s_blob)
        a = ts.ckks_vector_from(public.ts_context, a_blob)
        tail = [0.0] * (s.size() - RESERVED_SLOTS) + [1.0] * RESERVED_SLOTS
        chunks.append((s * tail + a * [1.0 - t for t in tail]).serialize())
    forged = EncryptedUpdate(
        key_id=honest.key_id,
        size=honest.size,
        chunks=chunks,
        contributors=honest.contributors,
        attested=honest.attested,
        encrypt_ms=0.0,
    )
    result = decrypt_average(secret, forged, min_clients=3)
    assert np.max(np.abs(result.average - xs["A"])) < 1e-5  # A's update, exposed
    return result


def test_keys_with_multiplicative_depth_defeat_the_floor_so_clients_refuse_them(
    tmp_path: Path,
) -> None:
    """Why keys get one data prime: with FLARE's (60, 40, 40) chain the masking attack passes the
    floor of 3 and a client decrypts client A's update alone; on the shipped parameters the
    multiplication itself fails. So keygen refuses such parameters and a client refuses to load
    such a secret context."""
    import dataclasses

    from veilfed.clients.secure import secret_context
    from veilfed.crypto.he_keys import _pack

    assert _mask_attack(HEParams.flare()).clients == 3  # the floor is bypassed
    with pytest.raises(ValueError, match="scale out of bounds"):
        _mask_attack(HEParams.for_bounds())
    with pytest.raises(UsageError, match="multiplicative level"):
        keygen(tmp_path / "flare", HEParams.flare())
    assert not (tmp_path / "flare").exists()
    # a FLARE-parameter secret.ctx made outside keygen (same file format) is refused on load,
    # and so is a symmetric one: the depth, not the encryption type, is what matters
    for i, params in enumerate(
        (HEParams.flare(), dataclasses.replace(HEParams.flare(), symmetric=True))
    ):
        path = tmp_path / f"flare{i}.ctx"
        path.write_bytes(_pack(new_context(params), secret=True))
        path.chmod(0o600)
        assert load_context(path, require_secret=True).params.depth == 1
        with pytest.raises(UsageError, match="multiplicative level") as err:
            secret_context(str(path))
        assert str(path) in str(err.value) and "\n" not in str(err.value)
