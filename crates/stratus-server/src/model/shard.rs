//! Which broker shard carries a topic: its channel, its history stream and its
//! subscriptions all live on the Redis [`shard_of`] names.
//!
//! **Jump consistent hashing** (Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash
//! Algorithm", 2014) over a fixed 64-bit hash of the topic's name. Going from `n` shards to
//! `n + 1` moves about `1/(n + 1)` of the topics, and every topic that moves goes to the new
//! shard: the fewest a stable assignment can move.
//!
//! Why jump hashing and not rendezvous (highest random weight) hashing over the shard
//! URLs, which moves as few topics and also survives removing a shard from the middle:
//! rendezvous hashing names a shard by its URL, so every node would have to spell every
//! shard's URL byte for byte alike. A node reaching a Redis by another host name, through
//! another address, or as another ACL user with its own password in the URL (or a
//! password rotated on one node first) would put topics on other shards than its peers
//! do: its publishes would go where nobody listens. Jump hashing names a shard by its
//! position in the `--broker` list, which every node has to agree on anyway, and costs
//! `O(ln n)` steps instead of `n` hashes per topic. Its price: shards are added at the end
//! of the list only (removing or reordering one moves most topics).
//!
//! The topic's hash is 64-bit FNV-1a followed by MurmurHash3's 64-bit finalizer (FNV-1a
//! alone leaves the high bits of short, similar names, `room:1`, `room:2`, poorly mixed,
//! and jump hashing reads the high bits first). Both are written out here and fixed: the
//! assignment must be the same in every process and every version of Stratus (std's
//! `DefaultHasher` is neither), and the unit tests pin known values. The step itself uses
//! integer arithmetic only, so no floating-point rounding can differ between machines.

/// Most shards a node can be given (each costs every node two or three Redis
/// connections), and most masters of a Redis Cluster.
pub(crate) const MAX_SHARDS: usize = 64;

/// The hash slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// The Redis Cluster hash slot of `key`, as `CLUSTER KEYSLOT` computes it: CRC16
/// (XMODEM) modulo [`SLOTS`] of the key's hash tag (what is between the first `{` and the
/// first `}` after it, if that is not empty), else of the whole key. With Redis Cluster a
/// topic lives on the master that serves [`key_slot`] of its channel (see
/// `model::keyspace::Keyspace`).
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    // 16384 divides 65536: the low 14 bits.
    crc16(tagged.unwrap_or(key)) & (SLOTS as u16 - 1)
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses it.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

/// The shard (an index into the `--broker` list of `shards` URLs) that carries `topic`.
/// One shard (or none) carries everything.
pub(crate) fn shard_of(topic: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let buckets = u32::try_from(shards).unwrap_or(u32::MAX);
    jump(mix(fnv1a(topic.as_bytes())), buckets) as usize
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// MurmurHash3's 64-bit finalizer: every input bit reaches every output bit.
fn mix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Jump consistent hashing: the bucket in `0..buckets` for `key` (`buckets` > 0). The key
/// drives a pseudo-random sequence of ever larger jumps; the answer is the last one that
/// lands below `buckets`. The sequence does not depend on `buckets`, which is why adding a
/// bucket only moves keys into the new one. `floor((b + 1) * 2^31 / (r + 1))` is computed
/// exactly in 128 bits where the paper rounds through a double.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (u64, u64) = (0, 0);
    while j < u64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = u128::from(key >> 33) + 1;
        let next = (u128::from(b) + 1) * (1u128 << 31) / r;
        j = u64::try_from(next).unwrap_or(u64::MAX);
    }
    // `b` is always below `buckets`.
    u32::try_from(b).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_as_published() {
        // The FNV test vectors (Fowler, Noll and Vo's reference results for FNV-1a 64).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn slots_are_redis_clusters() {
        // CRC16/XMODEM's check value, and `CLUSTER KEYSLOT` as a Redis 7 answers it.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        for (key, slot) in [
            ("123456789", 12_739),
            ("foo", 12_182),
            ("bar", 5_061),
            ("somekey", 11_058),
            ("foo{hash_tag}", 2_515),
            ("{user1000}.following", 3_443),
            ("a{}b", 13_694),
            ("stratus:{news}", 5_161),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
        assert_ne!(
            key_slot(b"a{}b"),
            key_slot(b""),
            "an empty tag hashes the whole key"
        );
        assert_eq!(
            key_slot(b"x{t}y{u}"),
            key_slot(b"t"),
            "the first tag counts"
        );
    }

    #[test]
    fn known_topics_stay_on_known_shards() {
        // Pinned (and checked against a separate Python implementation of the same three
        // steps): a change here moves topics between shards of a running cluster, and the
        // nodes of one version would publish where the nodes of another do not listen.
        let pinned: [(&str, [usize; 4]); 6] = [
            ("news", [0, 0, 2, 4]),
            ("chat:1", [0, 1, 1, 3]),
            ("chat:2", [0, 0, 0, 4]),
            ("orders", [0, 0, 0, 0]),
            ("prices/eur", [0, 0, 0, 7]),
            ("a", [0, 1, 1, 5]),
        ];
        let shards = [1, 2, 3, 8];
        for (topic, expected) in pinned {
            let got = shards.map(|n| shard_of(topic, n));
            assert_eq!(got, expected, "{topic} over {shards:?} shards");
        }
    }

    #[test]
    fn one_shard_or_none_carries_everything() {
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0);
    }

    #[test]
    fn topics_spread_evenly_over_the_shards() {
        let topics: Vec<String> = (0..20_000).map(|i| format!("room:{i}")).collect();
        for shards in [2, 3, 5, 8] {
            let mut counts = vec![0usize; shards];
            for topic in &topics {
                counts[shard_of(topic, shards)] += 1;
            }
            let fair = topics.len() / shards;
            for (shard, &count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(fair) * 100 < fair * 5,
                    "shard {shard} of {shards} has {count} topics, fair is {fair}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_only_its_share_of_topics_and_only_to_it() {
        let topics: Vec<String> = (0..20_000).map(|i| format!("user/{i}/inbox")).collect();
        for shards in 1..=8 {
            let moved: Vec<&String> = topics
                .iter()
                .filter(|t| shard_of(t, shards) != shard_of(t, shards + 1))
                .collect();
            for topic in &moved {
                assert_eq!(
                    shard_of(topic, shards + 1),
                    shards,
                    "{topic} moved between old shards"
                );
            }
            let share = topics.len() / (shards + 1);
            assert!(
                moved.len().abs_diff(share) * 100 < share * 5,
                "{} of {} topics moved going to {} shards; about {share} should",
                moved.len(),
                topics.len(),
                shards + 1
            );
        }
    }
}
