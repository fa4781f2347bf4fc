"""Signs a package file with Python's `cryptography`, an implementation independent of
the agent's, for tests/ota_signatures.rs.

    sign_package.py SCHEME PACKAGE SIG_OUT PUBLIC_KEY_OUT

SCHEME: ecdsa-p256 | rsa-pkcs1 | rsa-pss-max | rsa-pss-digest. A new key is made each
time; its public key is written as PEM (SubjectPublicKeyInfo), the signature as the raw
bytes (DER for ECDSA), as `openssl dgst -sign` writes them.
"""
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

scheme, package, sig_out, pub_out = sys.argv[1:5]
data = open(package, "rb").read()
if scheme == "ecdsa-p256":
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
else:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if scheme == "rsa-pkcs1":
        pad = padding.PKCS1v15()
    elif scheme == "rsa-pss-max":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    elif scheme == "rsa-pss-digest":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        sys.exit(f"unknown scheme {scheme}")
    sig = key.sign(data, pad, hashes.SHA256())
open(sig_out, "wb").write(sig)
open(pub_out, "wb").write(
    key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
)
