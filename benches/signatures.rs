//! OTA signature verification per algorithm, next to hashing the package it covers (the
//! installer hashes the package once while reading it; the signature is then checked
//! against that digest). Run with `cargo bench --bench signatures`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_agent::ota::signing::{generate, KeyAlgorithm, Keyring, SigningKey, TrustedKey};
use sha2::Digest as _;

fn bench(c: &mut Criterion) {
    let digest: [u8; 32] = sha2::Sha256::digest(b"package").into();
    let mut verify = c.benchmark_group("verify");
    for alg in [
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ] {
        let (private, public) = generate(alg).unwrap();
        let sig = SigningKey::parse(&private).unwrap().sign(&digest).unwrap();
        let ring = Keyring {
            keys: TrustedKey::parse_all(&public, "bench").unwrap(),
        };
        let name = ring.keys[0].algorithm();
        verify.bench_function(name, |b| {
            b.iter(|| ring.verify(&digest, &sig).unwrap());
        });
    }
    verify.finish();
    // The baseline in the same run: hashing 1 MiB of the package.
    let mib = vec![0x5au8; 1 << 20];
    let mut hash = c.benchmark_group("sha256");
    hash.throughput(Throughput::Bytes(mib.len() as u64));
    hash.bench_function("1MiB", |b| b.iter(|| sha2::Sha256::digest(&mib)));
    hash.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
