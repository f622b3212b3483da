"""Seeded RSA for the simulated tenant: key pairs and PKCS#1 v1.5 encryption from a seed.

``cryptography`` draws key material and padding bytes from OpenSSL's RNG, which cannot
be seeded; a tenant generated twice from one seed would then differ in every
``encrypt_random_key``. Simulation keys protect nothing, so we generate the primes and
the padding from ``random.Random`` instead and hand the numbers to ``cryptography`` for
serialisation and (in tests) decryption.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asympadding
from cryptography.hazmat.primitives.asymmetric import rsa

PUBLIC_EXPONENT = 65537
KEY_BITS = 2048
_MILLER_RABIN_ROUNDS = 8  # enough for random 1024-bit candidates (FIPS 186-5 table C.2 asks for 5)


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\0\0"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return [i for i in range(limit) if sieve[i]]


_SMALL_PRIMES = _small_primes(1 << 16)  # trial division by one gcd: ~1 in 36 survivors is prime
_SMALL_PRIMES_PRODUCT = math.prod(_SMALL_PRIMES)


def _is_probable_prime(n: int, rng: random.Random) -> bool:
    """Miller–Rabin with seeded bases (the candidate already passed trial division)."""
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(_MILLER_RABIN_ROUNDS):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int, rng: random.Random) -> int:
    """A prime of exactly ``bits`` bits, top two bits set so p*q has exactly 2*bits bits."""
    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if math.gcd(candidate, _SMALL_PRIMES_PRODUCT) != 1:
            continue
        if (candidate - 1) % PUBLIC_EXPONENT == 0:
            continue  # e must be invertible modulo p-1
        if _is_probable_prime(candidate, rng):
            return candidate


@functools.lru_cache(maxsize=16)
def generate_private_key(seed: str) -> rsa.RSAPrivateKey:
    """A deterministic RSA-2048 key (e = 65537) for the given seed string.

    Cached: a key is immutable, and tests generate the same tenant more than once.
    """
    rng = random.Random(f"wxarchive-rsa:{seed}")
    while True:
        p = _random_prime(KEY_BITS // 2, rng)
        q = _random_prime(KEY_BITS // 2, rng)
        if p != q:
            break
    if p < q:
        p, q = q, p
    d = pow(PUBLIC_EXPONENT, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(PUBLIC_EXPONENT, p * q)
    private = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=public,
    )
    return private.private_key()


def private_pem(key: rsa.RSAPrivateKey, pkcs8: bool) -> bytes:
    """PKCS#1 ("BEGIN RSA PRIVATE KEY") or PKCS#8 ("BEGIN PRIVATE KEY"), unencrypted."""
    fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The public half as an admin pastes it into the WeCom console (SubjectPublicKeyInfo)."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class SeededPublicKey:
    """Duck-types ``RSAPublicKey.encrypt`` for ``crypto.encrypt_message`` with seeded padding.

    PKCS#1 v1.5 type-2 padding ``00 02 PS 00 M`` where PS are non-zero bytes from ``rng``;
    any conforming decryptor (OpenSSL, the archiver) cannot tell it from OpenSSL's own.
    """

    n: int
    e: int
    rng: random.Random

    @classmethod
    def of(cls, key: rsa.RSAPrivateKey, rng: random.Random) -> SeededPublicKey:
        numbers = key.public_key().public_numbers()
        return cls(n=numbers.n, e=numbers.e, rng=rng)

    @property
    def key_size(self) -> int:
        return self.n.bit_length()

    def encrypt(self, plaintext: bytes, padding: asympadding.AsymmetricPadding) -> bytes:
        if not isinstance(padding, asympadding.PKCS1v15):
            raise TypeError("only PKCS#1 v1.5 padding is simulated (WeCom uses nothing else)")
        k = (self.n.bit_length() + 7) // 8
        ps_len = k - 3 - len(plaintext)
        if ps_len < 8:
            raise ValueError("message too long for PKCS#1 v1.5 with this key")
        ps = self.rng.randbytes(ps_len).replace(b"\0", b"\x5a")
        m = int.from_bytes(b"\0\2" + ps + b"\0" + plaintext, "big")
        return pow(m, self.e, self.n).to_bytes(k, "big")
