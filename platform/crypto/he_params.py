"""CKKS parameters sized for secure aggregation, and the noise model that justifies them.

Summation needs no ciphertext multiplication, so one data prime is enough: a long modulus chain
(FLARE's N=8192, [60, 40, 40], scale 2^40) only makes every ciphertext bigger. The serialized
ciphertext grows with the data prime's bit count, so :meth:`HEParams.for_bounds` picks the
*smallest* prime that holds the summed, sample-count-weighted update at the requested precision.
docs/he.md has the measurements behind these choices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from veilfed.errors import UsageError

# SEAL's 128-bit-security bound on the total coefficient-modulus bits for each ring degree. Larger
# rings only add noise: one data prime (at most 60 bits) already fits N=4096's budget.
MAX_MODULUS_BITS = {2048: 54, 4096: 109}
# Smallest prime size SEAL can find with p = 1 mod 2N; TenSEAL always wants a second (special)
# prime for the relinearisation key it generates, which aggregation never uses, so keep it minimal.
SPECIAL_PRIME_BITS = {2048: 14, 4096: 16}
MAX_PRIME_BITS = 60
# SEAL samples fresh-encryption noise with standard deviation 3.2 (centred binomial).
NOISE_STD = 3.2
# Tail bound on one slot's noise: |e| <= TAIL_SIGMAS * sigma fails with probability ~1e-15.
TAIL_SIGMAS = 8.0


@dataclass(frozen=True)
class HEParams:
    """CKKS parameters plus the bounds they were dimensioned for.

    ``max_abs_update`` bounds every coordinate of a client update and ``max_total_weight`` the sum
    of the sample counts aggregated in one round; clients enforce both before encrypting, because
    a sum beyond :attr:`capacity` wraps around the modulus and decrypts to garbage.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    global_scale_bits: int
    symmetric: bool = True
    max_abs_update: float = 1.0
    max_total_weight: int = 2**20

    @classmethod
    def for_bounds(
        cls,
        max_abs_update: float = 1.0,
        max_total_weight: int = 2**20,
        tolerance: float = 1e-5,
    ) -> HEParams:
        """Smallest ring and data prime that average updates within ``tolerance`` (max abs).

        Worst case for precision is a lone client of weight 1, whose noise is not divided down by
        the total weight, so the scale is chosen for that (with a 2x margin); the data prime then
        adds the integer bits of ``max(U, 1) * W`` (the sample-count slot holds W too), one sign
        bit and one guard bit.
        """
        if not (0 < max_abs_update < math.inf and max_total_weight >= 1 and 0 < tolerance < 1):
            raise UsageError(
                "HE bounds: need a finite max_abs_update > 0, max_total_weight >= 1, "
                "0 < tolerance < 1"
            )
        integer_bits = math.ceil(math.log2(max(max_abs_update, 1.0) * max_total_weight))
        for n in sorted(MAX_MODULUS_BITS):
            scale_bits = math.ceil(math.log2(TAIL_SIGMAS * slot_noise_std(n) / (tolerance / 2)))
            data_bits = scale_bits + integer_bits + 2
            special = SPECIAL_PRIME_BITS[n]
            if data_bits <= MAX_PRIME_BITS and data_bits + special <= MAX_MODULUS_BITS[n]:
                return cls(
                    n, (data_bits, special), scale_bits, True, max_abs_update, max_total_weight
                )
        raise UsageError(
            f"HE bounds: max_abs_update={max_abs_update} x max_total_weight={max_total_weight} "
            f"at tolerance {tolerance} needs more than a {MAX_PRIME_BITS}-bit prime; "
            "lower the bounds or relax the tolerance"
        )

    @classmethod
    def flare(cls) -> HEParams:
        """NVIDIA FLARE's default CKKS setup, kept for side-by-side benchmarks only.

        Its two spare data primes allow multiplication, so clients refuse it
        (:meth:`check_aggregation_only`)."""
        return cls(8192, (60, 40, 40), 40, symmetric=False)

    @property
    def depth(self) -> int:
        """Ciphertext × plaintext multiplications (each needs one rescale) the chain allows."""
        return len(self.coeff_mod_bit_sizes) - 2

    def check_aggregation_only(self, where: str) -> None:
        """Refuse (``UsageError``) parameters with any multiplicative depth for clients' keys.

        The clients' contributor floor (``decrypt_average``) holds only if the coordinator, with
        the public context, cannot multiply ciphertexts by plaintexts: with a spare data prime it
        can mask an honest aggregate's tag slots onto one client's values (``S·tail + c_A·head``)
        and another client decrypts client A's update as "an aggregate of k clients". Summation
        needs no multiplication, so keys for a run get exactly one data prime.
        """
        if self.depth > 0:
            raise UsageError(
                f"{where}: HE parameters with moduli {list(self.coeff_mod_bit_sizes)} leave "
                f"{self.depth} multiplicative level(s); a coordinator could mask one client's "
                "update into an aggregate and defeat the contributor floor. Use keys from "
                "`veilfed he keygen` (one data prime)"
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives at (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def capacity(self) -> float:
        """Largest |sum of weighted values| that decrypts correctly (beyond it, it wraps)."""
        return 2.0 ** (self.data_bits - 1 - self.global_scale_bits)

    def error_bound(self, clients: int, total_weight: float) -> float:
        """Bound on the max abs error of the decrypted *average* over ``clients`` updates."""
        per_client = TAIL_SIGMAS * slot_noise_std(self.poly_modulus_degree, self.symmetric)
        return math.sqrt(clients) * per_client / (2.0**self.global_scale_bits * total_weight)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HEParams:
        return cls(
            poly_modulus_degree=int(data["poly_modulus_degree"]),
            coeff_mod_bit_sizes=tuple(int(b) for b in data["coeff_mod_bit_sizes"]),
            global_scale_bits=int(data["global_scale_bits"]),
            symmetric=bool(data["symmetric"]),
            max_abs_update=float(data["max_abs_update"]),
            max_total_weight=int(data["max_total_weight"]),
        )


def slot_noise_std(poly_modulus_degree: int, symmetric: bool = True) -> float:
    """Std of one decoded slot's error, in units of the scale, for a fresh ciphertext.

    A slot is the polynomial evaluated at a root of unity, so independent coefficient noise of
    variance v gives slot variance N * v. Symmetric encryption adds one fresh error term plus the
    encoder's rounding (variance 1/12); public-key encryption adds u*e0 + e1 + e2*s, each product
    of a ternary and a Gaussian polynomial contributing N * 2/3 * sigma^2 per coefficient.
    """
    n = poly_modulus_degree
    coeff_var = NOISE_STD**2 + 1 / 12
    if not symmetric:
        coeff_var += 2 * n * (2 / 3) * NOISE_STD**2
    return math.sqrt(n * coeff_var)
