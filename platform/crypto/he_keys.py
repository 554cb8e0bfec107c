"""CKKS key generation and context files: a secret one for clients, a public one for the server.

The coordinator's file holds only the encryption parameters (no secret key, no public key, no
relinearisation or Galois keys): summing ciphertexts needs nothing else, so it can neither
decrypt nor encrypt. Both files carry a random key id, which every encrypted update repeats so the
coordinator can reject updates made under another or an older key before summing them.

File layout: ``MAGIC`` + 4-byte big-endian header length + JSON header + TenSEAL context bytes.
"""

from __future__ import annotations

import json
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenseal as ts

from veilfed.crypto.he_params import HEParams
from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic

MAGIC = b"VFHECTX1"
SECRET_NAME = "secret.ctx"
PUBLIC_NAME = "public.ctx"


@dataclass(frozen=True)
class HEContext:
    """A loaded TenSEAL context with the key id and parameters it was generated with."""

    ts_context: ts.Context
    key_id: str
    params: HEParams

    @property
    def is_private(self) -> bool:
        return self.ts_context.is_private()


def new_context(params: HEParams) -> HEContext:
    """A fresh secret context in memory (tests and benchmarks; files come from :func:`keygen`)."""
    enc = ts.ENCRYPTION_TYPE.SYMMETRIC if params.symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=enc,
            n_threads=1,
        )
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"HE parameters {params.to_dict()} rejected by SEAL: {exc}") from None
    ctx.global_scale = 2.0**params.global_scale_bits
    return HEContext(ctx, secrets.token_hex(16), params)


def public_view(ctx: HEContext) -> HEContext:
    """The coordinator's view of ``ctx``: parameters and key id only."""
    blob = _context_bytes(ctx, secret=False)
    return HEContext(ts.context_from(blob, n_threads=1), ctx.key_id, ctx.params)


def keygen(out_dir: str | Path, params: HEParams, force: bool = False) -> tuple[Path, Path]:
    """Write ``secret.ctx`` (mode 0600, clients) and ``public.ctx`` (coordinator) in ``out_dir``.

    Only aggregation-only parameters (one data prime, ``HEParams.check_aggregation_only``): these
    files are a run's keys. Benchmarks build other parameter sets in memory (:func:`new_context`).
    """
    out = Path(out_dir)
    secret_path, public_path = out / SECRET_NAME, out / PUBLIC_NAME
    params.check_aggregation_only(f"HE keys in {out}")
    if not force:
        for path in (secret_path, public_path):
            if path.exists():
                raise UsageError(f"{path}: already exists; refusing to replace keys (use --force)")
    ctx = new_context(params)
    secret_blob = _pack(ctx, secret=True)
    public_blob = _pack(ctx, secret=False)
    write_bytes_atomic(secret_path, secret_blob, mode=0o600)
    try:
        write_bytes_atomic(public_path, public_blob, mode=0o644)
    except BaseException:
        secret_path.unlink(missing_ok=True)
        raise
    return secret_path, public_path


def load_context(path: str | Path, require_secret: bool) -> HEContext:
    """Load a context file; clients need the secret one, the coordinator must get the public one."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"{path}: HE context file not found; create one with `veilfed he keygen --out DIR`"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read HE context ({exc.strerror})") from None
    header, body = _unpack(path, blob)
    try:
        ctx = ts.context_from(body, n_threads=1)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"{path}: corrupt HE context ({exc}); regenerate it with keygen") from None
    params: HEParams = header["params"]
    if not _header_matches(ctx, params):
        raise UsageError(f"{path}: header parameters do not match the context; regenerate it")
    is_secret = ctx.is_private()
    if is_secret != (header["kind"] == "secret"):
        raise UsageError(f"{path}: header says {header['kind']} context but the keys disagree")
    if require_secret and not is_secret:
        raise UsageError(
            f"{path}: public HE context has no secret key; clients need {SECRET_NAME} from keygen"
        )
    if is_secret and path.stat().st_mode & 0o077:
        raise UsageError(
            f"{path}: HE secret context is readable by others; chmod 600 it (it decrypts every "
            "aggregate)"
        )
    if not require_secret and is_secret:
        raise UsageError(
            f"{path}: holds the HE secret key; the coordinator must load {PUBLIC_NAME} instead"
        )
    return HEContext(ctx, header["key_id"], params)


def _header_matches(ctx: ts.Context, params: HEParams) -> bool:
    """Whether the header's ring degree, scale and modulus chain are the context's own.

    SEAL exposes each level's total modulus bit count and chain position, not each prime. Its
    b-bit primes are the largest below 2^b, so a product of primes of b_i bits has exactly
    sum(b_i) bits: the key level holds every prime, the first data level all but the special one.
    """
    data = ctx.seal_context().data
    key_level, first = data.key_context_data(), data.first_context_data()
    bits = list(params.coeff_mod_bit_sizes)
    return (
        key_level.parms().poly_modulus_degree() == params.poly_modulus_degree
        and ctx.global_scale == 2.0**params.global_scale_bits
        and key_level.chain_index() + 1 == len(bits)
        and key_level.total_coeff_modulus_bit_count() == sum(bits)
        and first.total_coeff_modulus_bit_count() == sum(bits[:-1])
    )


def _context_bytes(ctx: HEContext, secret: bool) -> bytes:
    return ctx.ts_context.serialize(
        save_public_key=not ctx.params.symmetric and secret,
        save_secret_key=secret,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def _pack(ctx: HEContext, secret: bool) -> bytes:
    header = {
        "kind": "secret" if secret else "public",
        "key_id": ctx.key_id,
        "params": ctx.params.to_dict(),
    }
    raw = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + _context_bytes(ctx, secret)


def _unpack(path: Path, blob: bytes) -> tuple[dict[str, Any], bytes]:
    not_ctx = f"{path}: not a veilfed HE context file"
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise UsageError(f"{not_ctx} (bad magic); pass secret.ctx or public.ctx from keygen")
    (size,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start : start + size])
        header["params"] = HEParams.from_dict(header["params"])
        if header["kind"] not in ("secret", "public") or not isinstance(header["key_id"], str):
            raise ValueError("bad kind or key_id")
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{not_ctx} (header unreadable: {exc}); regenerate it") from None
    return header, blob[start + size :]
